"""Writing an experiment store safely: checked block writes, hashes, attrs.

Used by :mod:`qbscale.storage.stores.ingest`.  The store is built where
:func:`qbscale.storage.durability.stage.staging` says (a hidden sibling directory renamed
into place, or a remote store written in place, ``complete`` set last).
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from qbscale.engine import interrupt
from qbscale.errors import ConfigError, InputError
from qbscale.storage import layout
from qbscale.storage.durability import seal
from qbscale.storage.durability.integrity import record_manifests
from qbscale.storage.durability.stage import (  # re-exported: the writers' one entry point
    LocalStage,
    RemoteStage,
)
from qbscale.storage.inputs.readers import InputMatrix

if TYPE_CHECKING:
    import zarr


@dataclass
class Target:
    """One 2-D array to write: its store name, input, stored dtype and chunks.

    ``transform(block, first_row)`` (optional) turns a checked input block into
    the stored block.  ``label`` names the input in messages (by default
    ``source.label(name)``, e.g. ``"bank (sims.pkl)"``).
    """

    name: str
    source: InputMatrix
    dtype: np.dtype
    chunks: tuple[int, int]
    transform: Callable[[np.ndarray, int], np.ndarray] | None = None
    label: str | None = None


def check_options(codec: str, dtype: Any = None) -> np.dtype | None:
    """Check a codec and a stored dtype (the one check every writer makes).

    ``dtype`` may be any numpy spelling of one of :data:`layout.DTYPES`
    (``"float32"``, ``"f4"``, ``np.float32``); None keeps each input's own.

    Returns
    -------
    numpy.dtype or None
        The stored dtype asked for.

    Raises
    ------
    ConfigError
        A codec not in :data:`layout.CODECS`, or a dtype not in :data:`layout.DTYPES`.

    >>> check_options("none", "f4")
    dtype('float32')
    """
    if codec not in layout.CODECS:
        raise ConfigError(f"unknown codec {codec!r}; choose one of {', '.join(layout.CODECS)}")
    if dtype is None:
        return None
    try:
        stored = np.dtype(dtype)
    except TypeError:
        stored = None
    if stored is None or str(stored) not in layout.DTYPES:
        raise ConfigError(f"unsupported dtype {dtype!r}; choose one of "
                          f"{', '.join(layout.DTYPES)}")
    return stored


def stored_dtype(src: InputMatrix, label: str, dtype: np.dtype | None) -> np.dtype:
    """The dtype to store ``src`` as: ``dtype`` if given, else its own float type.

    Raises
    ------
    InputError
        ``src`` does not hold floats, or holds a float type a store cannot.
    """
    if src.dtype.kind != "f":
        raise InputError(f"{label} holds {src.dtype} values; expected floats "
                         f"({', '.join(layout.DTYPES)})")
    if dtype is not None:
        return dtype
    if src.dtype.itemsize not in (2, 4, 8):
        raise InputError(f"{label} holds {src.dtype}; pass dtype= one of "
                         f"{', '.join(layout.DTYPES)}")
    return np.dtype(f"float{8 * src.dtype.itemsize}")


def unit_rows(label: str) -> Callable[[np.ndarray, int], np.ndarray]:
    """A block transform scaling rows to unit L2 norm (a zero row is refused).

    Rows are scaled in at least float32 and stored in the block's dtype.
    """

    def scale(block: np.ndarray, first_row: int) -> np.ndarray:
        work = block.astype(np.promote_types(block.dtype, np.float32), copy=False)
        norms = np.linalg.norm(work, axis=1)
        zero = np.flatnonzero(norms == 0)
        if zero.size:
            raise InputError(f"{label} has a zero vector at row {first_row + int(zero[0])} "
                             f"({zero.size} in rows {first_row}-{first_row + len(block) - 1}): "
                             "it cannot be normalised")
        return (work / norms[:, None]).astype(block.dtype, copy=False)

    return scale


#: bytes of input read (and written to the store) per step, rounded to whole chunks
READ_BYTES = 64 * 2**20
#: chunks written per step at most: zarr makes a task of each, and an interruption
#: (SIGTERM, Ctrl-C) cancels the step's tasks, which takes time in their number
STEP_CHUNKS = 512


class FiniteCheck:
    """Counts NaN and inf over the blocks of one matrix and remembers the first."""

    def __init__(self, label: str, note: str = "") -> None:
        self.label, self.note = label, note
        self.nan = self.inf = 0
        self.first: tuple[int, int] | None = None

    def __call__(self, block: np.ndarray, first_row: int) -> bool:
        """True while every value seen so far is finite (the block may be written)."""
        finite = np.isfinite(block)
        if finite.all():
            return self.first is None
        nan = int(np.count_nonzero(np.isnan(block)))
        self.nan += nan
        self.inf += finite.size - int(np.count_nonzero(finite)) - nan
        if self.first is None:
            row, col = np.unravel_index(int(np.argmin(finite)), finite.shape)
            self.first = (first_row + int(row), int(col))
        return False

    def raise_if_bad(self) -> None:
        if self.first is None:
            return
        raise InputError(
            f"{self.label} holds {self.nan + self.inf} non-finite values ({self.nan} NaN, "
            f"{self.inf} inf){self.note}; the first is at row {self.first[0]}, "
            f"column {self.first[1]}"
        )


def compressors(codec: str) -> Any:
    """The zarr compressor of a codec name (None for ``"none"``)."""
    import zarr.codecs

    if codec == "none":
        return None
    if codec == "lz4":
        return zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    return zarr.codecs.ZstdCodec()


def write_matrix(group: zarr.Group, target: Target, codec: str, bar: Any) -> None:
    """Create ``target.name`` and fill it block by block, checking every value.

    After the first non-finite value, blocks are only scanned (to count them
    all) and the error is raised at the end.  An array of that name already
    in ``group`` is replaced.
    """
    from qbscale.storage.durability.integrity import create_array

    src = target.source
    arr = create_array(group.store, target.name, shape=src.shape, dtype=target.dtype,
                       chunks=target.chunks, compressor=compressors(codec),
                       dimension_names=layout.DIMS[target.name], overwrite=True)
    row_bytes = src.shape[1] * target.dtype.itemsize
    chunk_rows = target.chunks[0]
    col_chunks = -(-src.shape[1] // target.chunks[1])
    step = chunk_rows * max(1, min(READ_BYTES // max(1, chunk_rows * row_bytes),
                                   STEP_CHUNKS // col_chunks))
    narrower = target.dtype.itemsize < src.dtype.itemsize
    check = FiniteCheck(target.label or src.label(target.name),
                        f" after conversion to {target.dtype}" if narrower else "")
    for r0, block in src.blocks(step):
        interrupt.check()
        with np.errstate(over="ignore"):  # overflow to inf is reported by the check
            block = np.asarray(block, dtype=target.dtype)
        if check(block, r0):
            arr[r0:r0 + len(block)] = block if target.transform is None else \
                target.transform(block, r0)
        bar.update(len(block))
    check.raise_if_bad()


def write_vector(group: zarr.Group, name: str, values: np.ndarray, codec: str,
                 chunk_bytes: int) -> None:
    """Write a small 1-D array (query mask, ground truth, ids) in one go; strings are
    stored as zarr's variable-length UTF-8, checksummed like every other array.  An
    array of that name already in ``group`` is replaced."""
    from qbscale.storage.durability.integrity import create_array

    text = values.dtype.kind in "UO"
    rows = max(1, min(len(values), chunk_bytes // max(1, values.dtype.itemsize)))
    arr = create_array(group.store, name, shape=values.shape, dtype=str if text else values.dtype,
                       chunks=(rows,), compressor=compressors(codec),
                       dimension_names=layout.DIMS[name], overwrite=True)
    arr[...] = values


def describe(src: InputMatrix) -> dict[str, Any]:
    """The ``sources`` entry of an input (its sha256 is filled in later)."""
    return {"file": None if src.in_memory else src.name, "sha256": None,
            "dtype": str(src.dtype), "shape": list(src.shape)}


class Hashes:
    """SHA-256 of the input files, computed in a background thread meanwhile."""

    def __init__(self, inputs: Mapping[str, InputMatrix]) -> None:
        self.inputs = inputs

    def __enter__(self) -> Hashes:
        self.cancel = threading.Event()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="qbscale-sha256")
        self.futures = {role: self.pool.submit(src.sha256, self.cancel)
                        for role, src in self.inputs.items()}
        return self

    def results(self) -> dict[str, str | None]:
        return {role: future.result() for role, future in self.futures.items()}

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.cancel.set()
        self.pool.shutdown(wait=True, cancel_futures=True)


def write_store(stage: LocalStage | RemoteStage, targets: Sequence[Target],
                vectors: Mapping[str, np.ndarray | None], attrs: Mapping[str, Any],
                inputs: Mapping[str, InputMatrix | None], codec: str, progress: bool) -> None:
    """Write every array of a store into ``stage``, then mark it complete."""
    from tqdm import tqdm

    present = {role: src for role, src in inputs.items() if src is not None}
    sources = {role: describe(src) for role, src in present.items()}
    # a fresh id per write: a reader that sees it change knows the store was
    # replaced under it (qbscale.storage.stores.store.check_unchanged)
    attrs = {**attrs, "store_id": uuid.uuid4().hex, "sources": sources, "complete": False}
    total = sum(t.source.shape[0] for t in targets)
    with Hashes(present) as hashes:
        group = stage.create_group({layout.ATTR: attrs})
        with tqdm(total=total, unit="row", file=sys.stderr, disable=not progress,
                  desc="ingest", dynamic_ncols=True) as bar:
            for target in targets:
                bar.set_postfix_str(target.name)
                write_matrix(group, target, codec, bar)
        for name, values in vectors.items():
            if values is not None:
                write_vector(group, name, values, codec, attrs["chunking"]["chunk_bytes"])
        for role, digest in hashes.results().items():
            sources[role]["sha256"] = digest
    digests = record_manifests(os.fspath(stage.target), getattr(stage, "options", None),
                               store=attrs[seal.ID])
    finish(group, seal.sealed({**attrs, "sources": sources, seal.MANIFESTS: digests,
                               "complete": True}))


def consolidate(store: Any) -> None:
    """Consolidate a group's metadata (without zarr's "not in the v3 spec" warning)."""
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        # the lock of a run or replacement (qbscale.lock) is no zarr node
        warnings.filterwarnings("ignore", message="Object at .* is not recognized")
        zarr.consolidate_metadata(store)


def finish(group: zarr.Group, attrs: dict[str, Any]) -> None:
    """Consolidate the metadata, then set the attributes with ``complete`` last."""
    import zarr

    consolidate(group.store)
    zarr.open_group(group.store, mode="r+").attrs.update({layout.ATTR: attrs})
