"""The writers behind :class:`qbscale.storage.outputs.hits.HitsWriter`: one per file format.

Each sink writes the columns of successive blocks to one (partial) file; its
``close`` finishes the file, and ``discard`` (where it has one) drops what it
holds, also after a failed write.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from qbscale.errors import ConfigError, InputError

COLUMNS = ("query", "rank", "item", "score", "variant")
#: the run tag of TREC lines
TREC_TAG = "qbscale"
PARQUET_HINT = "pip install pyarrow (or, in a qbscale clone, pip install '.[parquet]')"


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise ConfigError(f"writing .parquet hits needs pyarrow: {PARQUET_HINT}") from exc
    return pyarrow


class _Sink(Protocol):
    def write(self, cols: dict[str, np.ndarray]) -> None: ...

    def close(self) -> None: ...


class _TextSink:
    def __init__(self, path: Path, trec: bool) -> None:
        self.trec = trec
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        if not trec:
            self.file.write("\t".join(COLUMNS) + "\n")

    def write(self, cols: dict[str, np.ndarray]) -> None:
        q, rank, item, score, variant = (cols[c].tolist() for c in COLUMNS)
        if self.trec:
            lines = [f"{a} Q0 {c} {r} {s!r} {TREC_TAG}\n"
                     for a, r, c, s in zip(q, rank, item, score, strict=True)]
        else:
            lines = [f"{a}\t{r}\t{c}\t{s!r}\t{v}\n"
                     for a, r, c, s, v in zip(q, rank, item, score, variant, strict=True)]
        self.file.writelines(lines)

    def close(self) -> None:
        self.file.close()


class _ParquetSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: Any = None
        self.file: Any = None  # ours to close, also when the writer's close fails

    def write(self, cols: dict[str, np.ndarray]) -> None:
        pa = _pyarrow()
        table = pa.table({name: cols[name] for name in COLUMNS})
        if self.writer is None:
            self.file = pa.OSFile(str(self.path), "wb")
            self.writer = pa.parquet.ParquetWriter(self.file, table.schema)
        self.writer.write_table(table.cast(self.writer.schema))

    def close(self) -> None:
        if self.file is None:  # no block: an empty file with the columns
            pa = _pyarrow()
            empty = pa.table({c: pa.array([], t) for c, t in zip(
                COLUMNS, (pa.int64(), pa.int64(), pa.int64(), pa.float64(), pa.string()),
                strict=True)})
            pa.parquet.write_table(empty, str(self.path))
            return
        try:
            if self.writer is not None:  # (None when writing its header failed)
                self.writer.close()
        finally:
            self.file.close()

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class _NpzSink:
    """Columns spooled block by block to a scratch file beside the output, then
    copied into the ``.npz`` one block at a time (memory: one block)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.spool_path = path.with_name(path.name + ".spool")
        self.spool = open(self.spool_path, "w+b")  # noqa: SIM115 - closed by close()
        self.blocks: list[dict[str, tuple[np.dtype, int, int]]] = []

    def write(self, cols: dict[str, np.ndarray]) -> None:
        entry = {}
        for c in COLUMNS:
            data = np.ascontiguousarray(cols[c])
            entry[c] = (data.dtype, data.size, self.spool.tell())
            self.spool.write(data.tobytes())
        self.blocks.append(entry)

    def close(self) -> None:
        import zipfile

        try:
            if self.spool.closed:
                return
            with zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED) as archive:
                for c in COLUMNS:
                    self._member(archive, c)
        finally:
            self.discard()

    def discard(self) -> None:
        self.spool.close()
        self.spool_path.unlink(missing_ok=True)

    def _dtype(self, column: str, kinds: list[np.dtype]) -> np.dtype:
        """The column's dtype over all blocks (refusing ids that would lose digits)."""
        if not kinds:
            return np.dtype(np.float64 if column == "score" else
                            "<U1" if column == "variant" else np.int64)
        try:
            dtype: np.dtype = np.result_type(*kinds)
        except TypeError:
            dtype = np.dtype(object)
        if dtype.kind == "O" or (dtype.kind == "f" and all(k.kind in "iu" for k in kinds)):
            # e.g. uint64 and int64 ids would meet in float64, losing ids above 2**53
            raise InputError(f"hits file {self.path}: the {column} ids of the blocks "
                             f"mix types ({', '.join(sorted({str(k) for k in kinds}))})")
        return dtype

    def _member(self, archive: Any, column: str) -> None:
        parts = [b[column] for b in self.blocks]
        dtype = self._dtype(column, [dt for dt, _, _ in parts])
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                  "shape": (sum(n for _, n, _ in parts),)}
        with archive.open(f"{column}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_2_0(member, header)
            for dt, count, offset in parts:
                self.spool.seek(offset)
                block = np.fromfile(self.spool, dtype=dt, count=count)
                member.write(block.astype(dtype, copy=False).tobytes())


SINKS: dict[str, Callable[[Path], _Sink]] = {
    ".parquet": _ParquetSink,
    ".tsv": lambda path: _TextSink(path, trec=False),
    ".trec": lambda path: _TextSink(path, trec=True),
    ".npz": _NpzSink,
}
