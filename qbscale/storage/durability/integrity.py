"""Chunk integrity: checksummed arrays, verified reads, clear errors.

Every array qbscale writes carries zarr v3's standard ``crc32c`` codec as its
last codec (bytes codec, then an optional compressor, then crc32c): the last
4 bytes of every stored chunk are the little-endian CRC-32C of the rest, and
zarr verifies them on every read.  Float arrays are filled with NaN and every
chunk is written (``write_empty_chunks``), so a chunk that is absent is never
part of the data: a read that finds one missing or damaged stops with
:class:`~qbscale.errors.DamagedStoreError` instead of returning fill values.

Each published array also has a chunk manifest (:mod:`qbscale.storage.durability.manifest`)
binding every chunk's checksum to its place.  Readers open stores through
:func:`open_group` / :func:`verified_store`, a zarr store wrapper that refuses a
missing chunk and one that is not the chunk recorded there (also under xarray
and dask); the direct chunk-file reads check the same (:func:`verified_body`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from qbscale.errors import DamagedStoreError
from qbscale.storage.durability import manifest, seal
from qbscale.storage.durability.regular import NotRegularError, open_regular, read_regular

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
    if not isinstance(arr.store, VerifiedStore.cls or ()):  # a verified store checks itself
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


# ---------------------------------------------------------------- chunk manifests

#: ``{url: bytes of its root zarr.json or None}``, ``{(url, array): bytes of its chunk
#: manifest or None}`` and ``{(url, array): manifest or None}`` (checked to be the
#: store's, as sealed): what this process read
_ROOTS: dict[str, bytes | bytearray | None] = {}
_RAW: dict[tuple[str, str], bytes | bytearray | None] = {}
_MANIFESTS: dict[tuple[str, str], dict[str, Any] | None] = {}
_UNREAD: Any = object()
#: the root attributes of a store and of a normaliser
ROOT_ATTRS = {"qbscale": "store", "qbscale_normaliser": "normaliser"}


def forget() -> None:
    """Drop the chunk manifests read so far (a store may have been rewritten)."""
    _ROOTS.clear()
    _RAW.clear()
    _MANIFESTS.clear()


def _unreadable_manifest(url: str, name: str, exc: Exception) -> DamagedStoreError:
    return DamagedStoreError(f"store {url}: the chunk manifest {manifest.path(name)} "
                             f"cannot be read ({exc}): {REPAIR}")


def root_attrs(data: bytes | bytearray | None) -> tuple[dict[str, Any], str] | None:
    """``(attributes, "store" or "normaliser")`` of a root ``zarr.json`` (its bytes);
    None when it is no qbscale store or normaliser (a plain Zarr array or group)."""
    try:
        meta = json.loads(data) if data is not None else None
    except ValueError:
        return None  # unreadable: the store's opener says so
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    attrs = meta.get("attributes")
    if not isinstance(attrs, dict):
        return None
    for key, kind in ROOT_ATTRS.items():
        if isinstance(attrs.get(key), dict) and attrs[key]:
            return attrs[key], kind
    return None


def _read(url: str, key: str, options: tuple[tuple[str, Any], ...]) -> bytes | bytearray | None:
    try:
        return manifest.read_key(url, dict(options) or None, key)
    except NotRegularError as exc:
        raise DamagedStoreError(f"store {url}: {key} is {exc.reason}: {REPAIR}") from None


def _bind(url: str, name: str, root: bytes | bytearray | None, data: bytes | bytearray | None
          ) -> dict[str, Any] | None:
    """The manifest of array ``name`` (``data``: its bytes), once checked to be the one
    the store's seal records; a store without a seal is refused."""
    try:
        recorded = None if data is None else manifest.check_manifest(json.loads(data))
    except ValueError as exc:
        raise _unreadable_manifest(url, name, exc) from exc
    found = root_attrs(root)
    if found is None:  # no qbscale store: a plain Zarr array (gallery embeddings)
        return recorded
    attrs, kind = found
    refused = seal.refusal(url, attrs, kind)
    if refused is not None:
        raise DamagedStoreError(refused)
    why = manifest.binding_problem(name, data, recorded, attrs)
    if why is not None:
        raise DamagedStoreError(f"store {url}: array {name}: {why}")
    return recorded


def _manifest(url: str, name: str, options: tuple[tuple[str, Any], ...] = (),
              fresh: bool = False) -> dict[str, Any] | None:
    key = (url, name)
    if not fresh and key in _MANIFESTS:
        return _MANIFESTS.get(key)
    # local copies: another thread may forget() the caches meanwhile
    root = _ROOTS.get(url, _UNREAD) if not fresh else _UNREAD
    if root is _UNREAD:
        root = _ROOTS[url] = _read(url, "zarr.json", options)
    data = _RAW.get(key, _UNREAD) if not fresh else _UNREAD
    if data is _UNREAD:
        data = _RAW[key] = _read(url, manifest.path(name), options)
    bound = _MANIFESTS[key] = _bind(url, name, root, data)  # type: ignore[arg-type]
    return bound


def bound_manifest(url: str, name: str, options: tuple[tuple[str, Any], ...] = ()
                   ) -> dict[str, Any] | None:
    """The chunk manifest of array ``name`` of the store at ``url``, checked to be the
    one the store sealed (read again once on a refusal: a run may have published
    meanwhile); None for an array of no qbscale store, or a run not published.

    Raises
    ------
    DamagedStoreError
        The store has no seal, or the manifest is missing, unreadable, edited or
        another store's.
    """
    try:
        return _manifest(url, name, options)
    except DamagedStoreError:
        return _manifest(url, name, options, fresh=True)


def verify_position(url: str, key: str, crc: int, size: int,
                    options: tuple[tuple[str, Any], ...] = ()) -> None:
    """Refuse chunk ``key`` of ``(crc, size)`` unless its array's manifest says it is
    the chunk written there (arrays of no qbscale store without a manifest:
    nothing to compare).

    A dict lookup per chunk; the manifest is read once per process (and again
    on a mismatch, in case the store was rewritten meanwhile).
    """
    parts = manifest.split_key(key)
    if parts is None:
        return
    why: str | None = None
    for fresh in (False, True):
        try:
            expected = _manifest(url, parts[0], options, fresh)
        except DamagedStoreError:
            if fresh:
                raise
            continue
        why = None if expected is None else manifest.problem(expected, parts[1], crc, size)
        if why is None:
            return
    raise damaged(url, key, str(why))


def expected_size(url: str, key: str, options: tuple[tuple[str, Any], ...] = ()
                  ) -> int | None:
    """The size chunk ``key`` has in its array's manifest (None: no manifest, or
    not in it); the store's seal and the manifest's binding checked first."""
    parts = manifest.split_key(key)
    if parts is None:
        return None
    recorded = bound_manifest(url, parts[0], options)
    entry = None if recorded is None else recorded["crc32c"].get(parts[1])
    return None if entry is None else int(entry[1])


def read_chunk(url: str, path: str, key: str, limit: int | None) -> bytearray:
    """The bytes of the local chunk file ``path`` (key ``key``), a regular file of at
    most ``limit`` bytes.

    Raises
    ------
    DamagedStoreError
        Absent, no regular file (a FIFO, a device), or larger than ``limit``.
    """
    try:
        return read_regular(path, limit)
    except (FileNotFoundError, NotADirectoryError):
        raise damaged(url, key) from None
    except NotRegularError as exc:
        raise damaged(url, key, exc.reason) from None


def verified_body(url: str, key: str, raw: np.ndarray, checksum: bool) -> np.ndarray:
    """The bytes of chunk file ``key`` (``raw``) without their checksum, after checking
    its crc32c and its place (:func:`verify_position`); ``checksum=False``: ``raw``."""
    if not checksum:
        return raw
    body = raw[:-4]
    stored = int(raw[-4:].view("<u4")[0]) if raw.size >= 4 else -1
    if raw.size < 4 or crc32c(body) != stored:
        raise damaged(url, key, "damaged (its crc32c checksum does not match)")
    verify_position(url, key, stored, int(raw.size))
    return body


class VerifiedStore:
    """Factory of :class:`zarr.storage.WrapperStore` subclasses (zarr imported lazily)."""

    cls: Any = None

    @classmethod
    def wrap(cls, inner: Any, url: str, places: bool = True) -> Any:
        if cls.cls is None:
            cls.cls = _verified_store_class()
        return cls.cls(inner, url, places)


def _verified_store_class() -> Any:
    import asyncio

    from zarr.storage import WrapperStore

    from qbscale.storage.layout import is_url

    class Verified(WrapperStore[Any]):
        """Every chunk read is present, a regular file, and with a chunk manifest the
        one written there, its store sealed: :class:`DamagedStoreError` otherwise,
        never zarr's fill value.  ``places=False`` (``qbscale check``, which compares
        chunks itself): only files that are no regular files are refused."""

        def __init__(self, store: Any, url: str = "", places: bool = True) -> None:
            super().__init__(store)
            self.url = url
            self.places = places
            root = getattr(store, "root", None)  # a LocalStore: read files safely
            self.local = None if root is None or is_url(url) else os.fspath(root)

        def _with_store(self, store: Any) -> Any:
            return type(self)(store, self.url, self.places)

        def __reduce__(self) -> Any:
            return (VerifiedStore.wrap, (self._store, self.url, self.places))

        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            if self.local is not None:
                if byte_range is not None:  # (qbscale writes no shards)
                    await asyncio.to_thread(self._check_regular, key)
                    return await self._store.get(key, prototype, byte_range)
                return await asyncio.to_thread(self._get_local, key, prototype)
            buf = await self._store.get(key, prototype, byte_range)
            if byte_range is not None or manifest.split_key(key) is None or not self.places:
                return buf
            if buf is None:
                raise damaged(self.url, key)
            await self._preload(key, prototype)
            crc, size = _tail(buf)
            verify_position(self.url, key, crc, size, self._options())
            return buf

        def _check_regular(self, key: str) -> None:
            path = os.path.join(self.local or "", key)
            if os.path.lexists(path):
                os.close(_regular_fd(self.url, key, path))

        def _get_local(self, key: str, prototype: Any) -> Any:
            """A local key, read only from a regular file, a chunk at most its size in
            the manifest."""
            path = os.path.join(self.local or "", key)
            if manifest.split_key(key) is None:  # metadata, manifests
                try:
                    data = read_regular(path, manifest.MAX_BYTES)
                except (FileNotFoundError, NotADirectoryError):
                    return None
                except NotRegularError as exc:
                    raise DamagedStoreError(f"store {self.url}: {key} is {exc.reason}: "
                                            f"{REPAIR}") from None
            elif not self.places:
                if not os.path.lexists(path):
                    return None  # qbscale check names it missing itself
                data = read_chunk(self.url, path, key, None)
            else:
                data = read_chunk(self.url, path, key, expected_size(self.url, key))
                crc, size = manifest.tail(data)
                verify_position(self.url, key, crc, size)
            return prototype.buffer.from_bytes(data)

        async def _preload(self, key: str, prototype: Any) -> None:
            """Read the store's root and the chunk's array manifest through this store,
            once (checked by :func:`verify_position`)."""
            name = (manifest.split_key(key) or (key, ""))[0]
            if self.url not in _ROOTS:
                root = await self._store.get("zarr.json", prototype)
                _ROOTS[self.url] = None if root is None else root.to_bytes()
            if (self.url, name) not in _RAW:
                data = await self._store.get(manifest.path(name), prototype)
                _RAW[(self.url, name)] = None if data is None else data.to_bytes()

        def _options(self) -> tuple[tuple[str, Any], ...]:
            fs = getattr(self._store, "fs", None)
            return tuple(sorted(getattr(fs, "storage_options", {}).items())) \
                if fs is not None else ()

    return Verified


def _regular_fd(url: str, key: str, path: str) -> int:
    try:
        return open_regular(path)
    except (FileNotFoundError, NotADirectoryError):
        raise damaged(url, key) from None
    except NotRegularError as exc:
        raise damaged(url, key, exc.reason) from None


def _tail(buf: Any) -> tuple[int, int]:
    return manifest.tail(buf.as_numpy_array())


def open_group(url: str, options: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """:func:`zarr.open_group` (read-only) on the store at ``url``, every chunk read
    verified (:class:`VerifiedStore`); ``kwargs`` go to zarr (``path``, ``use_consolidated``)."""
    import zarr

    return zarr.open_group(verified_store(url, options), mode="r", **kwargs)


def verified_store(url: str, options: dict[str, Any] | None = None, places: bool = True
                   ) -> Any:
    """The store at ``url`` (local path or fsspec URL), every chunk read verified
    (``places=False``: only that every file read is a regular file)."""
    from zarr.core.sync import sync
    from zarr.storage._common import make_store_path

    path = sync(make_store_path(url, mode="r", storage_options=options))
    return VerifiedStore.wrap(path.store, url, places)


def home(path: str, options: dict[str, Any] | None = None) -> tuple[str, str]:
    """``(store, path inside it)`` to open the Zarr node at ``path`` through: an array
    of a qbscale store or normaliser (``exp.zarr/gallery_emb``) is opened through
    that store, so its seal and the array's binding to it are checked too;
    anything else is its own store (``(path, "")``).

    >>> home("/nowhere/emb.zarr")
    ('/nowhere/emb.zarr', '')
    """
    parent, _, base = path.rstrip("/").rpartition("/")
    if parent and base:
        try:
            top = manifest.read_key(parent, options, "zarr.json")
        except (NotRegularError, OSError):
            top = None
        if root_attrs(top) is not None:
            return parent, base
    return path, ""


def open_array(path: str, options: dict[str, Any] | None = None) -> Any:
    """The Zarr array at ``path``, opened read-only through its :func:`home`, every
    chunk read verified."""
    import zarr

    url, inner = home(path, options)
    return zarr.open_array(verified_store(url, options), path=inner, mode="r")


def record_manifests(url: str, options: dict[str, Any] | None, prefix: str = "",
                     store: str = "") -> dict[str, str]:
    """Write the chunk manifest of every array at or below ``prefix`` of the store
    whose ``store_id`` is ``store`` (:func:`qbscale.storage.durability.manifest.record`):
    the last step before publishing.  Returns ``{array: SHA-256 of its manifest}``,
    for the store's seal."""
    url = os.fspath(url)
    return manifest.record(url, options, manifest.arrays_under(url, options, prefix), store)


def check_metadata(url: str, options: dict[str, Any] | None, names: list[str],
                   required: bool = True, root: dict[str, Any] | None = None) -> None:
    """Refuse arrays ``names`` of the store at ``url`` whose metadata is unreadable or
    disagrees with its other copies, or (``root``: the sealed root attributes) whose
    chunk manifest is not the one sealed
    (:func:`qbscale.storage.durability.manifest.layout_problems`).

    Raises
    ------
    DamagedStoreError
        ``store X: array test: the root zarr.json says shape [100, 100], its own
        zarr.json [200, 100]: ...``, for the first problem found.
    """
    for name, problems in manifest.layout_problems(url, options, names, required,
                                                   root).items():
        raise DamagedStoreError(f"store {url}: array {name} {problems[0]}"
                                if problems[0].startswith("has ") else
                                f"store {url}: array {name}: {problems[0]}")


def check_store_metadata(url: str, options: dict[str, Any] | None, names: set[str],
                         prefix: str | None, root: dict[str, Any] | None = None) -> None:
    """:func:`check_metadata` of a store's inputs among ``names`` (its arrays, as the
    root zarr.json lists them) and of the arrays of its published run ``prefix``;
    ``root``: the store's sealed attributes, each array's manifest checked against."""
    from qbscale.storage import layout

    inputs = [n for n in layout.DIMS if n in names]
    check_metadata(url, options, inputs, root=root)
    if prefix:
        check_metadata(url, options, manifest.arrays_under(url, options, prefix),
                       required=False, root=root)
