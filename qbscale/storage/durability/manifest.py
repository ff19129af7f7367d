"""Chunk manifests: every chunk's checksum bound to its place in its array.

The crc32c codec makes each chunk carry the CRC-32C of its own bytes, so a
damaged chunk is found; it cannot tell a chunk from another one that was
moved into its place.  When qbscale publishes an array (ingest, a gallery
bank, a saved run, a fitted normaliser) it writes, beside the array's
``zarr.json``, the file ``<array>/qbscale_chunks.json``::

    {"format": 1, "shape": [300, 100], "chunks": [50, 100],
     "dtype": "float32", "endian": "little",
     "crc32c": {"c/0/0": [2871461227, 20004], "c/1/0": [...], ...}}

``crc32c`` maps every chunk key (relative to the array) to the CRC-32C its
codec stored (the chunk's last 4 bytes, little-endian) and its size in
bytes.  A read compares the chunk it got with its entry (a dict lookup and
two integer comparisons), so a swapped, replaced or missing chunk is refused;
the shape, chunking and dtype recorded are compared with the ``zarr.json``
files, so an edited shape is refused too.  Arrays written before manifests
have none and keep their codec checks only; a store (or normaliser) written
with them says so in its attributes (``"chunk_manifests": 1``), and there a
missing manifest is damage, not age: deleting one must not switch its checks
off.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

FILE = "qbscale_chunks.json"
FORMAT = 1
#: the key of a store's (or normaliser's) attributes saying every array it
#: published has a chunk manifest of this format
ATTR = "chunk_manifests"
MISSING = f"its chunk manifest {FILE} is missing: restore it or ingest again"
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
        return {"shape": list(meta["shape"]),
                "chunks": list(meta["chunk_grid"]["configuration"]["chunk_shape"]),
                "dtype": meta["data_type"], "endian": endian}
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


def build(meta: dict[str, Any], tails: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """The manifest of an array: its ``zarr.json`` and its chunks' ``(crc, size)``."""
    return {"format": FORMAT, **describe(meta),
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
    for what in ("shape", "chunks", "dtype", "endian"):
        label = "chunk shape" if what == "chunks" else what
        if root is not None and root[what] != own[what]:
            out.append(f"the root zarr.json says {label} {root[what]}, its own zarr.json "
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


def read_key(url: str, options: dict[str, Any] | None, key: str) -> bytes | None:
    """The bytes of key ``key`` of the store at ``url`` (None if absent)."""
    from qbscale.storage.layout import is_url, local_path

    if not is_url(url):
        try:
            with open(os.path.join(local_path(url), key), "rb") as fh:
                return fh.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
    fs, root = _fs(url, options)
    try:
        return bytes(fs.cat_file(f"{root}/{key}"))
    except FileNotFoundError:
        return None


def read_tail(url: str, options: dict[str, Any] | None, key: str) -> tuple[int, int] | None:
    """``(stored crc32c, size)`` of chunk ``key`` read from its last 4 bytes (None: absent)."""
    from qbscale.storage.layout import is_url, local_path

    if not is_url(url):
        try:
            with open(os.path.join(local_path(url), key), "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                fh.seek(max(0, size - 4))
                last = fh.read(4)
        except (FileNotFoundError, NotADirectoryError):
            return None
    else:
        fs, root = _fs(url, options)
        try:
            size = int(fs.size(f"{root}/{key}"))
        except FileNotFoundError:
            return None
        last = bytes(fs.cat_file(f"{root}/{key}", start=max(0, size - 4), end=size))
    return (int.from_bytes(last, "little") if len(last) == 4 else -1), size


def read_json(url: str, options: dict[str, Any] | None, key: str) -> Any:
    """The parsed JSON of key ``key`` (None if absent; ValueError if not JSON)."""
    data = read_key(url, options, key)
    return None if data is None else json.loads(data)


def load(url: str, options: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """The chunk manifest of array ``name`` (None for an array written before them).

    Raises
    ------
    ValueError
        The manifest is there but unreadable.
    """
    manifest = read_json(url, options, path(name))
    return None if manifest is None else check_manifest(manifest)


def record(url: str, options: dict[str, Any] | None, names: list[str]) -> None:
    """Write the chunk manifest of each array ``names`` of the store (those with checksums).

    Raises
    ------
    DamagedStoreError
        A chunk of one of them is missing (every chunk of an array qbscale
        writes is stored, fill values included).
    """
    from qbscale.errors import DamagedStoreError

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
        _write(url, options, path(name), json.dumps(build(meta, tails)).encode())


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


def declared(attrs: Any) -> bool:
    """True when a store's (or normaliser's) attributes say its arrays have manifests."""
    return isinstance(attrs, dict) and attrs.get(ATTR) == FORMAT


def layout_problems(url: str, options: dict[str, Any] | None, names: list[str],
                    required: bool = True, manifests: bool = False) -> dict[str, list[str]]:
    """What is wrong with the metadata of arrays ``names``: an unreadable ``zarr.json``,
    or shapes, chunks, dtypes that the root ``zarr.json``, the array's own and its
    chunk manifest disagree on.  ``required=False`` skips arrays without a ``zarr.json``;
    ``manifests=True`` (a store that :func:`declared` them): an array with checksums
    but no chunk manifest is a problem too."""
    try:
        root = read_json(url, options, "zarr.json") or {}
        copies = (root.get("consolidated_metadata") or {}).get("metadata") or {}
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
            recorded = load(url, options, name)
        except ValueError as exc:
            out[name] = [f"its chunk manifest {FILE} cannot be read ({exc})"]
            continue
        found = metadata_problems(own, copy, recorded)
        if not found and recorded is None and manifests and checksummed(meta):
            found = [MISSING]
        if found:
            out[name] = found
    return out
