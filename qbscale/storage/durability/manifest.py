"""Chunk manifests: every chunk's checksum bound to its place in its array.

The crc32c codec makes each chunk carry the CRC-32C of its own bytes, so a
damaged chunk is found; it cannot tell a chunk from another one that was
moved into its place.  When qbscale publishes an array (ingest, a gallery
bank, a saved run, a fitted normaliser) it writes, beside the array's
``zarr.json``, the file ``<array>/qbscale_chunks.json``::

    {"format": 2, "store": "5be1...", "array": "test",
     "shape": [300, 100], "chunks": [50, 100], "dtype": "float32",
     "endian": "little", "dimension_names": ["query", "gallery"], "attributes": {},
     "crc32c": {"c/0/0": [2871461227, 20004], "c/1/0": [...], ...}}

``crc32c`` maps every chunk key (relative to the array) to the CRC-32C its
codec stored (the chunk's last 4 bytes, little-endian) and its size in
bytes.  A read compares the chunk it got with its entry (a dict lookup and
two integer comparisons), so a swapped, replaced or missing chunk is refused;
the shape, chunking, dtype, dimension names and attributes recorded are
compared with the ``zarr.json`` files, so an edited shape or label is refused
too.  Each manifest names the store it belongs to (``store``: the store's
``store_id``) and its array, and the store's sealed root attributes hold the
SHA-256 of every manifest (:mod:`qbscale.storage.durability.seal`): an array
copied whole from another store, with its manifest, and a chunk copied with
its manifest entry are refused as not this store's (:func:`binding_problem`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

FILE = "qbscale_chunks.json"
FORMAT = 2
MISSING = f"its chunk manifest {FILE} is missing: restore it or ingest again"
#: the most bytes a chunk manifest may have (a regular file; about 40 bytes a chunk)
MAX_BYTES = 1 << 30
#: a chunk key of the default v3 encoding: ``<array path>/c/<i>/<j>...``
CHUNK_KEY = re.compile(r"(?:(?P<array>.+)/)?(?P<chunk>c(?:/\d+)+)")


def split_key(key: str) -> tuple[str, str] | None:
    """``(array path, chunk key in it)`` of a chunk key, None for any other key
    (the path is ``""`` for a store that is one array).

    >>> split_key("runs/ab/scores/c/0/2/0"), split_key("test/zarr.json"), split_key("c/1")
    (('runs/ab/scores', 'c/0/2/0'), None, ('', 'c/1'))
    """
    match = CHUNK_KEY.fullmatch(key)
    return None if match is None else (match["array"] or "", match["chunk"])


def path(name: str) -> str:
    """The key of array ``name``'s chunk manifest (``""``: the store is the array)."""
    return f"{name}/{FILE}" if name else FILE


def describe(meta: Any) -> dict[str, Any]:
    """Shape, chunk shape, dtype and byte order of an array's ``zarr.json`` (parsed).

    Raises
    ------
    ValueError
        ``meta`` is not the metadata of a v3 array (a KeyError or TypeError inside
        becomes one).
    """
    try:
        if meta.get("node_type") != "array":
            raise ValueError(f"node_type {meta.get('node_type')!r}, not 'array'")
        endian = next((c.get("configuration", {}).get("endian") for c in meta["codecs"]
                       if c.get("name") == "bytes"), None)
        names = meta.get("dimension_names")
        return {"shape": list(meta["shape"]),
                "chunks": list(meta["chunk_grid"]["configuration"]["chunk_shape"]),
                "dtype": meta["data_type"], "endian": endian,
                "dimension_names": None if names is None else list(names),
                "attributes": dict(meta.get("attributes") or {})}
    except (KeyError, TypeError, AttributeError, StopIteration) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc


def checksummed(meta: dict[str, Any]) -> bool:
    """True when the array's codecs end with crc32c."""
    codecs = meta.get("codecs") or []
    return bool(codecs) and codecs[-1].get("name") == "crc32c"


def chunk_keys(shape: list[int], chunks: list[int]) -> Iterator[str]:
    """Every chunk key of a regular grid.

    >>> list(chunk_keys([3, 4], [2, 4]))
    ['c/0/0', 'c/1/0']
    """
    grid = tuple(-(-int(s) // int(c)) for s, c in zip(shape, chunks, strict=True))
    for coords in np.ndindex(*grid):
        yield "/".join(["c", *(str(int(i)) for i in coords)])


def build(meta: dict[str, Any], tails: dict[str, tuple[int, int]], store: str = "",
          array: str = "") -> dict[str, Any]:
    """The manifest of array ``array`` of the store ``store`` (its ``store_id``): its
    ``zarr.json`` and its chunks' ``(crc, size)``."""
    return {"format": FORMAT, "store": store, "array": array, **describe(meta),
            "crc32c": {key: [int(crc), int(size)] for key, (crc, size) in sorted(tails.items())}}


def tail(data: Any) -> tuple[int, int]:
    """``(stored crc32c, size)`` of a chunk's bytes (its last 4 bytes, little-endian)."""
    raw = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    crc = int(raw[-4:].view("<u4")[0]) if raw.size >= 4 else -1
    return crc, int(raw.size)


def problem(manifest: dict[str, Any], chunk: str, crc: int, size: int) -> str | None:
    """What is wrong with chunk ``chunk`` of ``(crc, size)`` (None: it is the one written)."""
    entry = manifest["crc32c"].get(chunk)
    if entry is None:
        return "not in the array's chunk manifest (the array's shape was changed)"
    if size != entry[1]:
        return f"damaged ({size} bytes, its manifest says {entry[1]})"
    if crc != entry[0]:
        return "not the chunk written there (swapped or replaced)"
    return None


def check_manifest(manifest: Any) -> dict[str, Any]:
    """``manifest`` after checking its form (ValueError naming what is wrong)."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
            not isinstance(manifest.get("crc32c"), dict):
        raise ValueError(f"not a chunk manifest of format {FORMAT}")
    return manifest


def metadata_problems(own: dict[str, Any], root: dict[str, Any] | None,
                      recorded: dict[str, Any] | None) -> list[str]:
    """How the root ``zarr.json``'s copy and the chunk manifest disagree with an
    array's own ``zarr.json`` (each a :func:`describe` result; None: absent)."""
    out = []
    if own.get("endian") == "big" and (recorded is None or recorded.get("endian") != "big"):
        itemsize = np.dtype(str(own["dtype"])).itemsize if isinstance(own["dtype"], str) \
            else "?"
        kind = str(own["dtype"])[0] if isinstance(own["dtype"], str) else "?"
        out.append(f"has byte-swapped dtype >{kind}{itemsize} (big-endian; qbscale writes "
                   "little-endian): its zarr.json was edited; restore it or ingest again")
    for what in ("shape", "chunks", "dtype", "endian", "dimension_names", "attributes"):
        label = {"chunks": "chunk shape", "dimension_names": "dimension names"}.get(what, what)
        if root is not None and root.get(what) != own[what]:
            out.append(f"the root zarr.json says {label} {root.get(what)}, its own zarr.json "
                       f"{own[what]}: the metadata was edited; restore it or ingest again")
        elif recorded is not None and recorded.get(what) != own[what]:
            out.append(f"its zarr.json says {label} {own[what]}, its chunk manifest "
                       f"{recorded.get(what)}: the metadata was edited; restore it or "
                       "ingest again")
    return out[:1] if out and out[0].startswith("has byte-swapped") else out


# ---------------------------------------------------------------- I/O


def _fs(url: str, options: dict[str, Any] | None) -> tuple[Any, str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **(options or {}))
    return fs, root.rstrip("/")


def read_key(url: str, options: dict[str, Any] | None, key: str,
             limit: int | None = MAX_BYTES) -> bytes | bytearray | None:
    """The bytes of key ``key`` of the store at ``url`` (None if absent).

    Raises
    ------
    NotRegularError
        A local key that is no regular file (a FIFO, a device), or larger than ``limit``.
    """
    from qbscale.storage.durability.regular import NotRegularError, read_regular
    from qbscale.storage.layout import is_url, local_path

    if not is_url(url):
        try:
            return read_regular(os.path.join(local_path(url), key), limit)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except NotRegularError as exc:
            if exc.reason.endswith("(a directory)"):
                return None  # no file there, as before: its readers name it missing
            raise
    fs, root = _fs(url, options)
    try:
        return bytes(fs.cat_file(f"{root}/{key}"))
    except FileNotFoundError:
        return None


def read_tail(url: str, options: dict[str, Any] | None, key: str) -> tuple[int, int] | None:
    """``(stored crc32c, size)`` of chunk ``key`` read from its last 4 bytes (None: absent).

    Raises
    ------
    NotRegularError
        A local chunk that is no regular file (a FIFO, a device).
    """
    from qbscale.storage.durability.regular import open_regular
    from qbscale.storage.layout import is_url, local_path

    if not is_url(url):
        try:
            fd = open_regular(os.path.join(local_path(url), key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            size = os.fstat(fd).st_size
            last = os.pread(fd, 4, max(0, size - 4))
        finally:
            os.close(fd)
    else:
        fs, root = _fs(url, options)
        try:
            size = int(fs.size(f"{root}/{key}"))
        except FileNotFoundError:
            return None
        last = bytes(fs.cat_file(f"{root}/{key}", start=max(0, size - 4), end=size))
    return (int.from_bytes(last, "little") if len(last) == 4 else -1), size


def read_json(url: str, options: dict[str, Any] | None, key: str) -> Any:
    """The parsed JSON of key ``key`` (None if absent; ValueError if not JSON or
    not a regular file)."""
    from qbscale.storage.durability.regular import NotRegularError

    try:
        data = read_key(url, options, key)
    except NotRegularError as exc:
        raise ValueError(str(exc)) from None
    return None if data is None else json.loads(data)


def load_raw(url: str, options: dict[str, Any] | None, name: str
             ) -> tuple[bytes | bytearray | None, dict[str, Any] | None]:
    """The bytes and the parsed chunk manifest of array ``name`` (None, None: absent).

    Raises
    ------
    ValueError
        The manifest is there but unreadable (or no regular file).
    """
    from qbscale.storage.durability.regular import NotRegularError

    try:
        data = read_key(url, options, path(name))
    except NotRegularError as exc:
        raise ValueError(str(exc)) from None
    return (None, None) if data is None else (data, check_manifest(json.loads(data)))


def load(url: str, options: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """The chunk manifest of array ``name`` (None when there is none).

    Raises
    ------
    ValueError
        The manifest is there but unreadable.
    """
    return load_raw(url, options, name)[1]


def sha256(data: bytes | bytearray) -> str:
    """The digest of a manifest file's bytes that a store's seal records."""
    return hashlib.sha256(data).hexdigest()


def record(url: str, options: dict[str, Any] | None, names: list[str], store: str = ""
           ) -> dict[str, str]:
    """Write the chunk manifest of each array ``names`` of the store whose
    ``store_id`` is ``store`` (those with checksums); returns ``{array: SHA-256 of
    its manifest}`` for the store's seal.

    Raises
    ------
    DamagedStoreError
        A chunk of one of them is missing (every chunk of an array qbscale
        writes is stored, fill values included).
    """
    from qbscale.errors import DamagedStoreError

    digests = {}
    for name in names:
        meta = read_json(url, options, f"{name}/zarr.json")
        if not checksummed(meta):
            continue
        own = describe(meta)
        tails = {}
        for chunk in chunk_keys(own["shape"], own["chunks"]):
            got = read_tail(url, options, f"{name}/{chunk}")
            if got is None:
                raise DamagedStoreError(f"store {url}: chunk {name}/{chunk} is missing "
                                        "right after it was written: nothing was published")
            tails[chunk] = got
        data = json.dumps(build(meta, tails, store, name)).encode()
        _write(url, options, path(name), data)
        digests[name] = sha256(data)
    return digests


def _write(url: str, options: dict[str, Any] | None, key: str, data: bytes) -> None:
    from qbscale.storage.layout import is_url, local_path

    if is_url(url):
        fs, root = _fs(url, options)
        fs.pipe_file(f"{root}/{key}", data)
        return
    from qbscale.storage.durability.atomic import write_now

    write_now(os.path.join(local_path(url), key), data)


def arrays_under(url: str, options: dict[str, Any] | None, prefix: str) -> list[str]:
    """Paths of the arrays at or below ``prefix`` of the store (``""``: all of them)."""
    from qbscale.storage.layout import is_url, local_path

    found = []
    if not is_url(url):
        top = os.path.join(local_path(url), prefix)
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if d != "c" and not d.startswith(".")]
            if "zarr.json" in files:
                rel = os.path.relpath(folder, local_path(url)).replace(os.sep, "/")
                found.append("" if rel == "." else rel)
    else:
        fs, root = _fs(url, options)
        base = f"{root}/{prefix}".rstrip("/")
        found = [path[len(root) + 1:-len("/zarr.json")] if path != f"{root}/zarr.json" else ""
                 for path in fs.find(base) if path.endswith("/zarr.json") and "/c/" not in
                 path[len(root):]]
    out = []
    for name in sorted(found):
        try:
            meta = read_json(url, options, f"{name}/zarr.json" if name else "zarr.json")
        except ValueError:
            meta = {"node_type": "array"}  # unreadable: its readers say so
        group = isinstance(meta, dict) and meta.get("node_type") == "group"
        if name and not group:
            out.append(name)
    return out


def unsealed_ok(name: str, attrs: dict[str, Any]) -> bool:
    """True for an array that a store's seal leaves out by design: the arrays of a
    run not published (one being written, or interrupted and kept for
    ``--resume``, which checks its chunks against its own records) and a gallery
    bank being written (not read until recorded)."""
    from qbscale.storage import layout

    last = attrs.get("last_run")
    prefix = last.get("prefix") if isinstance(last, dict) else None
    if name.startswith("runs/"):
        return not (isinstance(prefix, str) and prefix and
                    (name == prefix or name.startswith(f"{prefix}/")))
    return name in (layout.GALLERY_BANK, layout.GALLERY_BANK_EMB) and \
        layout.GALLERY_BANK_RECORD not in attrs


def binding_problem(name: str, data: bytes | bytearray | None, recorded: dict[str, Any] | None,
                    attrs: dict[str, Any]) -> str | None:
    """What ties array ``name``'s manifest (``data``, parsed ``recorded``; None:
    absent) to another store than the one whose sealed root attributes are
    ``attrs`` (None: it is this store's, as sealed)."""
    from qbscale.storage.durability import seal

    sealed = attrs.get(seal.MANIFESTS)
    sealed = sealed if isinstance(sealed, dict) else {}
    if name not in sealed:
        if unsealed_ok(name, attrs):
            return None
        return ("it is not sealed by the store's zarr.json (copied in from elsewhere, or "
                "written before chunk checksums): restore it or ingest again")
    if data is None or recorded is None:
        return MISSING
    if recorded.get("store") != attrs.get(seal.ID):
        return (f"its chunk manifest belongs to another store (store_id "
                f"{recorded.get('store')!r}, this store's is {attrs.get(seal.ID)!r}): the "
                "array was copied from another store; restore it or ingest again")
    if recorded.get("array") != name:
        return (f"its chunk manifest is that of array {recorded.get('array')!r} (moved or "
                "copied): restore it or ingest again")
    if sha256(data) != sealed[name]:
        return ("its chunk manifest is not the one the store sealed (edited, or entries "
                "copied from another store): restore it or ingest again")
    return None


def layout_problems(url: str, options: dict[str, Any] | None, names: list[str],
                    required: bool = True, root: dict[str, Any] | None = None
                    ) -> dict[str, list[str]]:
    """What is wrong with the metadata of arrays ``names``: an unreadable ``zarr.json``,
    or shapes, chunks, dtypes, dimension names or attributes that the root
    ``zarr.json``, the array's own and its chunk manifest disagree on.
    ``required=False`` skips arrays without a ``zarr.json``; ``root`` (the sealed
    root attributes of a store or normaliser): each array's manifest must be there
    and be the one sealed (:func:`binding_problem`)."""
    try:
        top = read_json(url, options, "zarr.json") or {}
        copies = (top.get("consolidated_metadata") or {}).get("metadata") or {}
    except (ValueError, AttributeError):
        copies = {}  # the root is opened (and reported) by its readers
    out: dict[str, list[str]] = {}
    for name in names:
        try:
            meta = read_json(url, options, f"{name}/zarr.json")
            if meta is None:
                if required:
                    out[name] = ["its zarr.json is missing: restore it or ingest again"]
                continue
            own = describe(meta)
        except ValueError as exc:
            out[name] = [f"its zarr.json cannot be read ({exc}): restore it or ingest again"]
            continue
        try:
            copy = describe(copies[name]) if isinstance(copies, dict) and name in copies \
                else None
        except ValueError:
            copy = None
        try:
            data, recorded = load_raw(url, options, name)
        except ValueError as exc:
            out[name] = [f"its chunk manifest {FILE} cannot be read ({exc})"]
            continue
        found = metadata_problems(own, copy, recorded)
        if not found and root is not None:
            bound = binding_problem(name, data, recorded, root)
            found = [] if bound is None else [bound]
        if found:
            out[name] = found
    return out
