"""Block sources: where the engine's tasks get one block of a matrix from.

A source is a small picklable object with a chunk grid and ``read(i, c)``
returning block ``(i, c)`` as a numpy array.  Tasks read their own block, so
the graph holds one fused task per block and a source works unchanged in
threads, processes or on a distributed cluster.

* :class:`ZarrMatrix` - a 2-D array of a Zarr store (local path or fsspec URL).
* :class:`NumpyMatrix` - an in-memory array (used for pickles given directly).
* :class:`EmbeddingMatrix` - similarities ``queries @ gallery.T`` computed
  block by block from two embedding matrices, never stored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from qbscale.engine.grid import offsets, split
from qbscale.storage import layout
from qbscale.types import MatrixSource


@lru_cache(maxsize=64)
def _open_zarr(url: str, name: str, options: tuple[tuple[str, Any], ...]) -> Any:
    from qbscale.storage.durability.integrity import open_group

    return open_group(url, dict(options) or None)[name]


def forget_open_arrays() -> None:
    """Drop this process's cached array handles (a store may have been rewritten)."""
    _open_zarr.cache_clear()


def freeze_options(options: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """Storage options as a hashable, picklable tuple."""
    return tuple(sorted((options or {}).items()))


#: newest zarr (major, minor) whose chunk files the direct reads were checked against;
#: above it every read goes through zarr
DIRECT_READS_MAX_ZARR = (3, 1)


def direct_reads_enabled() -> bool:
    """False with ``QBSCALE_DIRECT_READS=0`` or a zarr newer than the checked one."""
    if os.environ.get("QBSCALE_DIRECT_READS", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    import zarr

    try:
        version = tuple(int(p) for p in zarr.__version__.split(".")[:2])
    except ValueError:
        return False
    return version <= DIRECT_READS_MAX_ZARR


def read_chunk_file(url: str, key: str, dtype: np.dtype, checksum: bool = False,
                    limit: int | None = None) -> np.ndarray:
    """The values of chunk file ``key`` of the local store ``url``, its crc32c verified.

    The file must be a regular file (a FIFO or ``/dev/zero`` is refused, never
    read) of at most ``limit`` bytes and, with ``checksum``, at most the size its
    array's chunk manifest records; its last 4 bytes must be the little-endian
    CRC-32C of the rest, and the chunk the one its manifest records there.

    Raises
    ------
    DamagedStoreError
        The file is absent, no regular file, too large, its checksum does not
        match, or it is not the chunk written at ``key``; the store has no seal.
    """
    from qbscale.storage.durability.integrity import expected_size, read_chunk, verified_body

    if checksum:
        recorded = expected_size(url, key)  # the store's seal and the array's binding
        limit = recorded if recorded is not None else limit
    raw = np.frombuffer(read_chunk(url, os.path.join(url, key), key, limit), dtype=np.uint8)
    body = verified_body(url, key, raw, checksum)  # crc32c, and the chunk's place
    return body.view(dtype) if body.size % dtype.itemsize == 0 else body


def _direct_codecs(arr: Any) -> bool | None:
    """Whether chunks carry a checksum (True / False), or None when not raw bytes."""
    from qbscale.storage.durability.integrity import has_checksums

    if arr.filters or arr.shards is not None or np.dtype(arr.dtype).kind not in "biufc":
        return None  # (variable-length strings are no raw bytes)
    endian = getattr(arr.serializer, "endian", None)
    if endian is not None and getattr(endian, "value", endian) != "little":
        return None
    if not arr.compressors:
        return False
    return True if len(arr.compressors) == 1 and has_checksums(arr) else None


def _raw_chunk(url: str, name: str, arr: Any, index: tuple[int, ...], r0: int, c0: int,
               n_rows: int, n_cols: int) -> np.ndarray | None:
    """Block ``[r0:r0+n_rows, c0:c0+n_cols]`` read straight from its chunk file,
    or None when that shortcut does not apply.

    zarr 3 funnels every read through one event-loop thread; an unsharded
    local chunk without compression is its little-endian bytes (plus, with the
    crc32c codec, 4 bytes of checksum, verified here), and reading the file
    directly is ~1.7x faster.  Only a block that is exactly one stored chunk
    qualifies (leading ``index`` axes must have chunks of 1).  Off with
    ``QBSCALE_DIRECT_READS=0`` and for zarr newer than ``DIRECT_READS_MAX_ZARR``.
    """
    if "://" in url or arr.metadata.zarr_format != 3 or not direct_reads_enabled():
        return None
    checksum = _direct_codecs(arr)
    if checksum is None or any(int(c) != 1 for c in arr.chunks[:len(index)]):
        return None
    rows, cols = (int(x) for x in arr.chunks[len(index):])
    if r0 % rows or c0 % cols or n_rows > rows or n_cols > cols or \
            (n_rows < rows and r0 + n_rows != arr.shape[-2]) or \
            (n_cols < cols and c0 + n_cols != arr.shape[-1]):
        return None
    from qbscale.storage.durability.integrity import chunk_key, damaged

    key = chunk_key(name, arr, (*index, r0 // rows, c0 // cols))
    data = read_chunk_file(url, key, arr.dtype.newbyteorder("<"), bool(checksum),
                           rows * cols * arr.dtype.itemsize + 4 * bool(checksum))
    if data.size != rows * cols or data.dtype != arr.dtype.newbyteorder("<"):
        raise damaged(url, key, f"damaged ({data.nbytes} bytes, expected "
                                f"{rows * cols * arr.dtype.itemsize})")
    return data.reshape(rows, cols)[:n_rows, :n_cols]


@dataclass(frozen=True)
class ZarrMatrix:
    """A 2-D array ``name`` inside the Zarr group at ``url``.

    The block grid is the stored chunk grid, optionally coarsened to
    ``rows_per_block`` rows (a multiple of the stored chunk rows reads whole
    chunks only).
    """

    url: str
    name: str
    shape: tuple[int, int]
    row_chunks: tuple[int, ...]
    col_chunks: tuple[int, ...]
    dtype: str
    options: tuple[tuple[str, Any], ...] = ()
    index: tuple[int, ...] = ()
    reads: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def open(cls, url: str, name: str, options: dict[str, Any] | None = None,
             rows_per_block: int | None = None, index: tuple[int, ...] = ()) -> ZarrMatrix:
        """Open array ``name`` (or its 2-D slice ``index``, for 3-D arrays).

        A ``file://`` URL is kept as a local path (:func:`qbscale.storage.layout.is_url`).
        """
        url = layout.local_path(url)
        frozen = freeze_options(options)
        arr = _open_zarr(url, name, frozen)
        n_rows, n_cols = (int(s) for s in arr.shape[len(index):])
        chunk_rows, chunk_cols = (int(c) for c in arr.chunks[len(index):])
        step = rows_per_block or chunk_rows
        return cls(url, name, (n_rows, n_cols), split(n_rows, step), split(n_cols, chunk_cols),
                   str(arr.dtype), frozen, tuple(index))

    def read(self, i: int, c: int) -> np.ndarray:
        r0, c0 = offsets(self.row_chunks)[i], offsets(self.col_chunks)[c]
        arr = _open_zarr(self.url, self.name, self.options)
        if self.reads is not None:
            self.reads(self.name, i, c)
        raw = _raw_chunk(self.url, self.name, arr, self.index, r0, c0,
                         self.row_chunks[i], self.col_chunks[c])
        if raw is not None:
            return raw
        from qbscale.storage.durability.integrity import checked_read

        return checked_read(self.url, self.name, arr, self.options,
                            (*self.index, slice(r0, r0 + self.row_chunks[i]),
                             slice(c0, c0 + self.col_chunks[c])))


@dataclass(frozen=True)
class NumpyMatrix:
    """An in-memory 2-D array cut into row blocks (one column block)."""

    array: np.ndarray
    row_chunks: tuple[int, ...]
    col_chunks: tuple[int, ...]

    @classmethod
    def wrap(cls, array: np.ndarray, rows_per_block: int) -> NumpyMatrix:
        n_rows, n_cols = array.shape
        return cls(array, split(n_rows, rows_per_block), (n_cols,))

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.array.shape[0]), int(self.array.shape[1]))

    def read(self, i: int, c: int) -> np.ndarray:
        r0, c0 = offsets(self.row_chunks)[i], offsets(self.col_chunks)[c]
        return self.array[r0:r0 + self.row_chunks[i], c0:c0 + self.col_chunks[c]]


@dataclass(frozen=True)
class EmbeddingMatrix:
    """Similarities ``queries @ gallery.T`` computed per block, never stored.

    ``queries`` and ``gallery`` are sources of shape ``(n, dim)`` with a single
    column block; the block grid is the queries' row blocks times gallery
    blocks of ``gallery_rows`` items.
    """

    queries: MatrixSource
    gallery: MatrixSource
    row_chunks: tuple[int, ...]
    col_chunks: tuple[int, ...]

    @classmethod
    def build(cls, queries: MatrixSource, gallery: MatrixSource) -> EmbeddingMatrix:
        if queries.shape[1] != gallery.shape[1]:
            from qbscale.errors import InputError

            raise InputError(
                f"query embeddings have dimension {queries.shape[1]}, "
                f"gallery embeddings {gallery.shape[1]}"
            )
        return cls(queries, gallery, queries.row_chunks, gallery.row_chunks)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.queries.shape[0], self.gallery.shape[0])

    def read(self, i: int, c: int) -> np.ndarray:
        q = np.asarray(self.queries.read(i, 0), dtype=np.float32)
        g = np.asarray(self.gallery.read(c, 0), dtype=np.float32)
        return q @ g.T


@dataclass(frozen=True)
class Transposed:
    """Another source read the other way round: block ``(i, c)`` is block
    ``(c, i)`` of ``source``, transposed (a contiguous copy of one block).

    The other retrieval direction of a stored test matrix (video -> text
    from text -> video) needs no transposed copy: a row block of the
    transpose is a column block of the store, read chunk by chunk.
    """

    source: MatrixSource

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.source.shape
        return (cols, rows)

    @property
    def row_chunks(self) -> tuple[int, ...]:
        return self.source.col_chunks

    @property
    def col_chunks(self) -> tuple[int, ...]:
        return self.source.row_chunks

    def read(self, i: int, c: int) -> np.ndarray:
        return transpose(self.source.read(c, i))


#: rows per strip of :func:`transpose`
TRANSPOSE_STRIP = 256


def transpose(block: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``block.T``, strip by strip of rows: each strip is
    read contiguously and its columns land in cache-sized runs (~5x faster
    than numpy's whole-array transposed copy of a 64 MiB block).

    >>> transpose(np.arange(6).reshape(2, 3))
    array([[0, 3],
           [1, 4],
           [2, 5]])
    """
    out = np.empty((block.shape[1], block.shape[0]), block.dtype)
    for r in range(0, block.shape[0], TRANSPOSE_STRIP):
        out[:, r:r + TRANSPOSE_STRIP] = block[r:r + TRANSPOSE_STRIP].T
    return out


@dataclass(frozen=True)
class NoMatrix:
    """An absent bank of ``n_cols`` columns (no rows): a direction without a
    querybank runs the baseline only; reading it is a bug."""

    n_cols: int

    @property
    def shape(self) -> tuple[int, int]:
        return (0, self.n_cols)

    @property
    def row_chunks(self) -> tuple[int, ...]:
        return ()

    @property
    def col_chunks(self) -> tuple[int, ...]:
        return (self.n_cols,)

    def read(self, i: int, c: int) -> np.ndarray:
        raise AssertionError("an absent bank is never read")
