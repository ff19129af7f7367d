"""Embedding matrices read row block by row block, for search.

:func:`gallery_source` and :func:`query_source` turn what a user passes as
embeddings (a numpy or dask array, a Zarr array, the path of a ``.npy``
file, of a Zarr array or of an embeddings store) into a small picklable
block source (:class:`qbscale.types.MatrixSource`): a task reads its own
rows, in threads, processes or on a cluster, and nothing is read whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

from qbscale.engine.checks import check_finite as check_finite  # its old home
from qbscale.engine.grid import offsets, split
from qbscale.errors import InputError
from qbscale.storage import layout
from qbscale.storage.durability.paths import check_regular


def _open_path(path: str) -> Any:
    """A ``.npy`` file memory-mapped, or a Zarr array (a store's ``gallery_emb``).

    Opened once per process and file: the cache is keyed on the absolute path
    and the identity of what is there now (device, inode, size, modification
    time of the file, or of a store's root ``zarr.json``), so a relative path
    met from another working directory, or a file replaced at the same path,
    is opened anew instead of serving the old one's rows.
    """
    return _open_identified(os.path.abspath(path), _identity(path))


def _identity(path: str) -> tuple[int, ...]:
    """What is at ``path`` now (nothing: an empty tuple; a URL: not stat-able)."""
    out: tuple[int, ...] = ()
    for candidate in (path, os.path.join(path, "zarr.json")):
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        out += (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return out


@lru_cache(maxsize=16)
def _open_identified(path: str, identity: tuple[int, ...]) -> Any:
    if path.endswith(".npy"):  # header checked first: empty, truncated, lying, object
        from qbscale.storage.inputs.readers import NpyInput

        return NpyInput(path).memmap()
    import zarr

    from qbscale.storage.durability.integrity import home, verified_store

    try:  # every chunk read verified: a missing one is an error, not its fill value
        url, inner = home(path)  # an array of a store: through the store, its seal checked
        node = zarr.open(verified_store(url), path=inner, mode="r")
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise InputError(f"no .npy file or Zarr array at {path}") from exc
    if isinstance(node, zarr.Group):
        if layout.GALLERY_EMB not in set(node.array_keys()):
            raise InputError(f"{path} is a Zarr group without a {layout.GALLERY_EMB} array")
        node = node[layout.GALLERY_EMB]
    return node


@dataclass(frozen=True)
class RowMatrix:
    """Rows of an (n, d) matrix in blocks (one column block: the dimension).

    ``data`` is an array (numpy, dask, Zarr) or a path opened where the
    block is read (:func:`_open_path`), so a path travels to workers as text.
    """

    data: Any
    shape: tuple[int, int]
    row_chunks: tuple[int, ...]
    chunk: int | None = None  # the stored chunk rows, when stored in chunks
    what: str = "the embeddings"  # for messages: "the queries (q.npy)"

    @property
    def col_chunks(self) -> tuple[int, ...]:
        return (self.shape[1],)

    def blocks(self, rows: int) -> RowMatrix:
        """The same matrix in blocks of ``rows`` rows."""
        return replace(self, row_chunks=split(self.shape[0], max(1, rows)))

    def read(self, i: int, c: int = 0) -> np.ndarray:
        r0 = offsets(self.row_chunks)[i]
        data = _open_path(self.data) if isinstance(self.data, str) else self.data
        block = data[r0:r0 + self.row_chunks[i]]
        if hasattr(block, "dask"):
            block = block.compute(scheduler="synchronous")
        return np.asarray(block)


def _open(source: Any, what: str) -> tuple[Any, tuple[int, ...], int | None]:
    """``(data, shape, stored chunk rows)`` of an embeddings input."""
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if not os.path.exists(path) and "://" not in path:
            raise InputError(f"{what}: no such file: {path}")
        check_regular(path, dir_ok=True)  # a directory is a Zarr array
        if "://" not in path:  # workers may run elsewhere in the tree: an absolute path
            path = os.path.abspath(path)
        data = _open_path(path)
        chunks = getattr(data, "chunks", None)
        return path, tuple(data.shape), int(chunks[0]) if chunks else None
    shape = tuple(int(s) for s in getattr(source, "shape", ()))
    chunks = getattr(source, "chunks", None)
    if chunks is not None and not isinstance(source, np.ndarray):
        first = chunks[0]
        chunk = int(first[0]) if isinstance(first, tuple) else int(first)
        return source, shape, chunk
    return np.asarray(source), shape, None


def _source(source: Any, what: str, rows: int) -> RowMatrix:
    data, shape, chunk = _open(source, what)
    if isinstance(data, str):
        what = f"{what} ({data})"
    if len(shape) != 2 or 0 in shape:
        raise InputError(f"{what} must be a non-empty (n, dim) matrix, got shape {shape}")
    dtype = np.dtype((_open_path(data) if isinstance(data, str) else data).dtype)
    if dtype.kind not in "fiu":
        raise InputError(f"{what} hold {dtype} values; expected floats")
    n, d = shape
    return RowMatrix(data, (n, d), split(n, rows), chunk, what)


def gallery_source(source: Any, what: str = "the gallery embeddings") -> RowMatrix:
    """The gallery embeddings as a block source (blocks set later with ``.blocks``)."""
    return _source(source, what, rows=2**62)


def query_source(source: Any, rows: int, what: str = "the queries") -> RowMatrix:
    """Query embeddings in blocks of ``rows`` (read when a task needs them)."""
    return _source(source, what, rows)


def as_dask(path: str | os.PathLike[str]) -> Any:
    """The embeddings at ``path`` as a dask array (for checksums, read lazily)."""
    import dask.array as da

    data = _open_path(os.fspath(path))
    return da.from_array(data, chunks=(max(1, 2**24 // max(1, data.shape[1])), -1))
