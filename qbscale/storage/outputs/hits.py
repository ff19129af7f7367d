"""Hits files: the top-k gallery items of every query, one line (row) per hit.

The format follows the file's suffix:

==========  ==================================================================
``.parquet``  columns ``query, rank, item, score, variant`` (needs pyarrow:
              ``pip install pyarrow``), one row group per block
``.tsv``      the same columns, tab-separated, with a header line
``.trec``     the TREC run format that IR evaluation tools read:
              ``qid Q0 item rank score qbscale`` (one variant per file)
``.npz``      the same five columns as 1-D arrays (blocks spooled to disk)
==========  ==================================================================

Ranks are 1-based; rows go query by query, then variant, then rank.  A
*variant* is one value of the method's swept parameter (``dis:beta=20``).
:class:`HitsWriter` appends blocks of queries in order (a search over
millions of queries never holds them all); :func:`write_hits` writes one
array.  A file is written under a hidden temporary name and renamed into
place when complete, so an interrupted write never looks finished.

Examples
--------
>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "run.trec")
>>> write_hits(path, np.array([[0.9, 0.5]]), np.array([[3, 1]]))
>>> print(open(path).read(), end="")
0 Q0 3 1 0.9 qbscale
0 Q0 1 2 0.5 qbscale
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from qbscale.errors import ConfigError, InputError, OutputError
from qbscale.storage.durability.atomic import check_writable, partial_path, publish_file
from qbscale.storage.outputs.hit_sinks import COLUMNS, PARQUET_HINT, SINKS, TREC_TAG, _pyarrow

__all__ = ["COLUMNS", "PARQUET_HINT", "SUFFIXES", "TREC_TAG", "HitsWriter", "check_hits_path",
           "read_hits", "store_ids", "variant_labels", "write_hits", "write_run_hits"]

if TYPE_CHECKING:
    from qbscale.types import Experiment, RunResult

SUFFIXES = (".parquet", ".tsv", ".trec", ".npz")


def check_hits_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, after checking its suffix, its directory and (for
    ``.parquet``) that pyarrow is installed; call before any work starts."""
    out = Path(path)
    if out.suffix not in SUFFIXES:
        raise ConfigError(f"hits file {out}: unknown suffix {out.suffix or '(none)'!r}; "
                          f"use one of {', '.join(SUFFIXES)}")
    if not out.parent.is_dir():
        raise ConfigError(f"hits file {out}: no such directory {out.parent}")
    if out.is_dir():
        raise ConfigError(f"hits file {out} is a directory")
    if out.suffix == ".parquet":
        _pyarrow()
    check_writable(out)
    return out


def _blocks(scores: Any, indices: Any) -> tuple[np.ndarray, np.ndarray]:
    """Scores and indices as (n_values, n_queries, K) arrays of the same shape."""
    s, idx = np.asarray(scores), np.asarray(indices)
    if s.ndim == 2:
        s, idx = s[None], idx[None] if idx.ndim == 2 else idx
    if s.ndim != 3 or s.shape != idx.shape:
        raise InputError(f"hits: scores {np.shape(scores)} and indices {np.shape(indices)} "
                         "must have one shape, (n_queries, K) or (n_values, n_queries, K)")
    if idx.dtype.kind not in "iu":
        raise InputError(f"hits: indices hold {idx.dtype} values; expected integers")
    return s.astype(np.float64), idx.astype(np.int64)


def _ids(values: Any, what: str, n: int | None = None) -> np.ndarray:
    ids = np.asarray(values)
    if ids.ndim != 1 or (n is not None and ids.size != n):
        raise InputError(f"hits: {what} ids have shape {ids.shape}, expected ({n},)")
    if ids.dtype.kind not in "iuU":
        ids = ids.astype(str)
    if ids.dtype.kind == "U" and any(any(ch.isspace() for ch in i) for i in ids.tolist()):
        raise InputError(f"hits: {what} ids may not hold white space")
    return ids


class HitsWriter:
    """Append blocks of queries' top-k hits, in query order, to one file.

    Parameters
    ----------
    path : ``.parquet``, ``.tsv``, ``.trec`` or ``.npz`` (see the module docstring)
    item_ids : optional (n_gallery,) ids of the gallery items (default: their index)
    variant : a label, or one per value (default: ``""`` for one value, else
        the value's index); a ``.trec`` file holds one variant

    Use as a context manager (the file is renamed into place on a clean
    exit and removed on an error), or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], *, item_ids: Any = None,
                 variant: str | Sequence[str] | None = None) -> None:
        self.path = check_hits_path(path)
        self.item_ids = None if item_ids is None else _ids(item_ids, "item")
        self.variants = [variant] if isinstance(variant, str) else \
            None if variant is None else [str(v) for v in variant]
        if self.path.suffix == ".trec" and self.variants is not None and len(self.variants) > 1:
            raise ConfigError(_trec_one(self.path, len(self.variants)))
        self.partial = partial_path(self.path)
        self.n_queries = 0
        with self._failing():
            self._sink = SINKS[self.path.suffix](self.partial)

    def append(self, scores: Any, indices: Any, query_ids: Any = None) -> None:
        """Add the hits of the next block of queries.

        ``scores``/``indices``: (r, K) or (n_values, r, K), best first;
        ``query_ids``: (r,) (default: running integer ids, 0-based).
        """
        s, idx = _blocks(scores, indices)
        n_values, rows, k = s.shape
        variants = self._variants(n_values)
        qids = (np.arange(self.n_queries, self.n_queries + rows) if query_ids is None
                else _ids(query_ids, "query", rows))
        flat = idx.transpose(1, 0, 2).ravel()
        if self.item_ids is not None:
            if flat.size and (flat.min() < 0 or flat.max() >= self.item_ids.size):
                raise InputError(f"hits: an index is outside the {self.item_ids.size} item ids")
            items: np.ndarray = self.item_ids[flat]
        else:
            items = flat
        with self._failing():
            self._sink.write({
                "query": np.repeat(qids, n_values * k),
                "rank": np.tile(np.arange(1, k + 1, dtype=np.int64), rows * n_values),
                "item": items,
                "score": s.transpose(1, 0, 2).ravel(),
                "variant": np.tile(np.repeat(np.asarray(variants, dtype=str), k), rows),
            })
        self.n_queries += rows

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        """An OSError of the sink (full disk, EIO) as an OutputError naming the file;
        the half-written file is removed."""
        try:
            yield
        except OSError as exc:
            if isinstance(exc, OutputError):
                raise
            self.abort()
            raise OutputError(f"could not write {self.path}: "
                              f"{exc.strerror or exc}") from exc

    def _variants(self, n_values: int) -> list[str]:
        if self.variants is None:
            self.variants = [""] if n_values == 1 else [str(b) for b in range(n_values)]
        if len(self.variants) != n_values:
            raise InputError(f"hits: {n_values} values in this block, {len(self.variants)} "
                             "variant labels")
        if self.path.suffix == ".trec" and n_values > 1:
            raise ConfigError(_trec_one(self.path, n_values))
        return self.variants

    def close(self) -> Path:
        """Finish the file and move it into place
        (:func:`~qbscale.storage.durability.atomic.publish_file`: the umask's mode,
        fsynced, renamed); returns its path."""
        try:
            with self._failing():
                self._sink.close()
        except BaseException:  # a file that failed to finish never looks finished
            self.partial.unlink(missing_ok=True)
            raise
        publish_file(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the half-written file."""
        sink = getattr(self, "_sink", None)
        try:
            with contextlib.suppress(OSError):
                if sink is not None:
                    getattr(sink, "discard", sink.close)()
        finally:
            self.partial.unlink(missing_ok=True)

    def __enter__(self) -> HitsWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def _trec_one(path: Path, n: int) -> str:
    return (f"hits file {path}: a TREC run holds one variant, this one has {n}: "
            "run one value, or write .tsv, .parquet or .npz")


def write_hits(path: str | os.PathLike[str], scores: Any, indices: Any, *,
               query_ids: Any = None, item_ids: Any = None,
               variant: str | Sequence[str] | None = None) -> None:
    """Write top-k hits to ``path`` (format by suffix: see the module docstring).

    Parameters
    ----------
    scores, indices : (n_queries, K) or (n_values, n_queries, K), best first;
        indices are gallery positions
    query_ids : optional (n_queries,) ids (default: 0, 1, ...)
    item_ids : optional (n_gallery,) ids of the gallery items (default: index)
    variant : a label, or one per value (see :class:`HitsWriter`)
    """
    with HitsWriter(path, item_ids=item_ids, variant=variant) as writer:
        writer.append(scores, indices, query_ids)


def read_hits(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The columns ``query, rank, item, score, variant`` of a hits file.

    Ids are int64 when every one is an integer, else strings; a ``.trec``
    file's variant column holds its run tag.
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"hits file {path}: unknown suffix {path.suffix!r}")
    if not path.is_file():
        raise InputError(f"hits file {path}: no such file")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {c: data[c] for c in COLUMNS}
    if path.suffix == ".parquet":
        table = _pyarrow().parquet.read_table(str(path))
        cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in COLUMNS}
        return {c: v.astype(str) if c == "variant" else _typed(v) for c, v in cols.items()}
    return _read_text(path)


def _read_text(path: Path) -> dict[str, np.ndarray]:
    """A ``.tsv`` or ``.trec`` file's columns, parsed by pandas (C speed)."""
    import pandas as pd

    trec = path.suffix == ".trec"
    if trec and path.stat().st_size == 0:  # a run without a query
        return {"query": np.zeros(0, np.int64), "rank": np.zeros(0, np.int64),
                "item": np.zeros(0, np.int64), "score": np.zeros(0),
                "variant": np.zeros(0, str)}
    names = ["query", "q0", "item", "rank", "score", "variant"] if trec else list(COLUMNS)
    what = ("not a TREC run (qid Q0 item rank score tag)" if trec else
            f"expected the header {' '.join(COLUMNS)}")
    if not trec:
        with open(path, encoding="utf-8", errors="replace") as f:
            if f.readline().rstrip("\n") != "\t".join(COLUMNS):
                raise InputError(f"{path}: {what}")
    try:
        frame = pd.read_csv(path, sep=" " if trec else "\t", header=None if trec else 0,
                            names=names, dtype={"query": str, "q0": str, "item": str,
                                                "variant": str},
                            keep_default_na=False, na_filter=False)
        score = frame["score"].to_numpy(np.float64)
        rank = frame["rank"].to_numpy(np.int64)
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: {what} ({exc})") from exc
    if trec and not (frame["q0"] == "Q0").all():
        raise InputError(f"{path}: {what}")
    return {"query": _typed(frame["query"].to_numpy(str)), "rank": rank,
            "item": _typed(frame["item"].to_numpy(str)), "score": score,
            "variant": frame["variant"].to_numpy(str)}


def _typed(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "iuf":
        return values
    try:
        return values.astype(np.int64)
    except (ValueError, OverflowError):
        return values.astype(str)


# ------------------------------------------------------------- runs and stores


def store_ids(experiment: Experiment) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(query ids, item ids)`` from the store's coordinate arrays ``query`` and
    ``gallery`` (1-D, as xarray stores coordinates), None where it has none.

    ``qbscale ingest`` writes no coordinates, so a store it wrote gives
    ``(None, None)`` (integer ids); add them with e.g. ``zarr`` to label hits.
    """
    if experiment.url is None:
        return None, None
    import zarr

    from qbscale.storage.durability.integrity import verified_store

    # every file read a regular file (a FIFO or /dev/zero is refused, never read)
    store = verified_store(str(experiment.url), experiment.storage_options, places=False)
    out = []
    for name, n in (("query", experiment.n_queries), ("gallery", experiment.n_gallery)):
        try:  # directly: the consolidated metadata is refreshed only when a run publishes
            arr: Any = zarr.open_array(store, path=name, mode="r")
        except (FileNotFoundError, KeyError, zarr.errors.BaseZarrError):
            arr = None
        out.append(None if arr is None or arr.shape != (n,) else np.asarray(arr[...]))
    return out[0], out[1]


def variant_labels(result: RunResult) -> list[str]:
    """One label per value of a run: ``dis:beta=20`` (``none`` for the baseline)."""
    config = result.config
    if not config.normalises:
        return [config.label]
    return [f"{config.label}:{config.variant_name}={v:g}" for v in config.values]


def write_run_hits(path: str | os.PathLike[str], result: RunResult,
                   experiment: Experiment | None = None) -> Path:
    """Write a run's top-k after normalisation (``run(..., topk=K)``) to ``path``,
    one variant per value, with the store's ids when it has them."""
    if result.topk_index is None or result.topk_score is None:
        raise ConfigError("hits need the run's top-k: run with topk=K (--topk K)")
    query_ids, item_ids = store_ids(experiment) if experiment is not None else (None, None)
    with HitsWriter(path, item_ids=item_ids, variant=variant_labels(result)) as writer:
        writer.append(result.topk_score, result.topk_index, query_ids)
    return writer.path
