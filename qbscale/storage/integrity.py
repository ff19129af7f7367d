"""Chunk integrity: checksummed arrays, verified reads, clear errors.

Every array qbscale writes carries zarr v3's standard ``crc32c`` codec as its
last codec (bytes codec, then an optional compressor, then crc32c): the last
4 bytes of every stored chunk are the little-endian CRC-32C of the rest, and
zarr verifies them on every read.  Float arrays are filled with NaN and every
chunk is written (``write_empty_chunks``), so a chunk that is absent is never
part of the data: a read that finds one missing or damaged stops with
:class:`~qbscale.errors.DamagedStoreError` instead of returning fill values.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from qbscale.errors import DamagedStoreError

CHECKSUM = "crc32c"
#: message of every missing / damaged chunk error
REPAIR = "re-ingest or restore it"


def crc32c(data: Any) -> int:
    """CRC-32C of a bytes-like object (hardware-accelerated, releases the GIL)."""
    try:
        from crc32c import crc32c as fast
    except ImportError:  # pragma: no cover - the dependency is declared
        import google_crc32c

        return int(google_crc32c.value(data))
    return int(fast(data))


def codecs(compressor: Any = None) -> dict[str, Any]:
    """``compressors=`` for :func:`zarr.create_array`: the compressor, then crc32c."""
    from zarr.codecs import Crc32cCodec

    return {"compressors": [*([] if compressor is None else [compressor]), Crc32cCodec()]}


def create_array(store: Any, name: str, *, shape: tuple[int, ...], dtype: Any,
                 chunks: tuple[int, ...], compressor: Any = None, fill_value: Any = None,
                 **kwargs: Any) -> Any:
    """:func:`zarr.create_array` with checksums, NaN fill for floats and every chunk stored.

    ``kwargs`` go to zarr (``dimension_names``, ``overwrite``, ``storage_options``).
    """
    import zarr

    dtype = np.dtype(dtype)
    if fill_value is None and dtype.kind == "f":
        fill_value = np.nan
    return zarr.create_array(store, name=name, shape=shape, dtype=dtype, chunks=chunks,
                             fill_value=fill_value, config={"write_empty_chunks": True},
                             **codecs(compressor), **kwargs)


def has_checksums(arr: Any) -> bool:
    """True when array ``arr``'s codecs end with crc32c."""
    from zarr.codecs import Crc32cCodec

    chain = [*getattr(arr, "compressors", ())]
    return bool(chain) and isinstance(chain[-1], Crc32cCodec)


def chunk_key(name: str, arr: Any, coords: tuple[int, ...]) -> str:
    """The store key of chunk ``coords`` of array ``name`` (e.g. ``test/c/2/0``)."""
    return f"{name}/{arr.metadata.encode_chunk_key(coords)}"


def damaged(url: str, key: str, why: str = "missing") -> DamagedStoreError:
    """The one-line error of a missing or damaged chunk."""
    fix = "run again with the same options, or restore it" if key.startswith("runs/") \
        else REPAIR
    return DamagedStoreError(f"store {url}: chunk {key} is {why}: {fix}")


def chunks_of(arr: Any, index: tuple[int, ...], rows: slice, cols: slice
              ) -> Iterator[tuple[int, ...]]:
    """The chunk coordinates a block ``arr[*index, rows, cols]`` reads from."""
    grid = tuple(int(c) for c in (arr.shards or arr.chunks))
    lead = tuple(i // grid[d] for d, i in enumerate(index))
    r_chunk, c_chunk = grid[len(index)], grid[len(index) + 1]
    for r in range(rows.start // r_chunk, -(-rows.stop // r_chunk)):
        for c in range(cols.start // c_chunk, -(-cols.stop // c_chunk)):
            yield (*lead, r, c)


def exists(url: str, options: tuple[tuple[str, Any], ...], key: str) -> bool:
    """True when key ``key`` of the store at ``url`` exists."""
    from qbscale.storage.layout import is_url, local_path

    if not is_url(url):
        return os.path.isfile(os.path.join(local_path(url), key))
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **dict(options))
    return bool(fs.exists(f"{root.rstrip('/')}/{key}"))


def checked_read(url: str, name: str, arr: Any, options: tuple[tuple[str, Any], ...],
                 selection: tuple[Any, ...]) -> np.ndarray:
    """``arr[selection]`` through zarr, after making sure no chunk it reads is absent.

    ``selection`` is ``(*index, rows, cols)`` with ``rows`` and ``cols`` slices.
    A chunk that zarr cannot decode (checksum mismatch, bad compression, wrong
    size) raises :class:`DamagedStoreError` naming it.
    """
    if len(selection) == 1:  # a vector
        step = int((arr.shards or arr.chunks)[0])
        stop = selection[0].stop
        coords: list[tuple[int, ...]] = [(i,) for i in range(-(-stop // step))]
    else:
        *index, rows, cols = selection
        coords = list(chunks_of(arr, tuple(index), rows, cols))
    for c in coords:
        if not exists(url, options, chunk_key(name, arr, c)):
            raise damaged(url, chunk_key(name, arr, c))
    try:
        return np.asarray(arr[selection])
    except (ValueError, RuntimeError, TypeError) as exc:
        bad = next((c for c in coords if not _decodes(arr, c)), coords[0])
        raise damaged(url, chunk_key(name, arr, bad), _why(arr)) from exc


def _decodes(arr: Any, coords: tuple[int, ...]) -> bool:
    try:
        arr.get_block_selection(coords)
    except (ValueError, RuntimeError, TypeError):
        return False
    return True


def _why(arr: Any) -> str:
    return "damaged (its crc32c checksum does not match)" if has_checksums(arr) else \
        "damaged (it cannot be decoded)"


def read_array(url: str, name: str, arr: Any, options: tuple[tuple[str, Any], ...] = ()
               ) -> np.ndarray:
    """A whole small 1-D array (mask, ground truth), every chunk checked."""
    n = int(arr.shape[0])
    return checked_read(url, name, arr, options, (slice(0, n),)) if arr.ndim == 1 and n else \
        np.asarray(arr[...])
