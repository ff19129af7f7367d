"""``qbscale check``: verify every chunk of a store, one chunk at a time.

A store without a seal (written by an older qbscale, or its seal deleted) is
refused.  Each chunk of each array is read once and checked: a regular file
(a FIFO or a device is bad, never read), present, of the right size, its
crc32c matching, and the chunk its array's chunk manifest records at its
place.  Every array's ``zarr.json`` is read as JSON first (a garbage one is
one bad entry, not a traceback) and compared with its copy in the root
``zarr.json`` and with its manifest, and every manifest must be the one the
store's seal records, naming this store (an array copied from another store
is bad).  Memory stays at one chunk.  The chunks of a resume manifest may be
absent by design (a block not yet done); every other absent chunk is bad.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qbscale.engine import interrupt
from qbscale.errors import DamagedStoreError
from qbscale.storage import layout
from qbscale.storage.durability import integrity, seal
from qbscale.storage.durability.integrity import chunk_key, exists, has_checksums
from qbscale.storage.stores.sources import _direct_codecs, freeze_options

#: how :func:`qbscale.storage.durability.manifest.layout_problems` starts an unreadable zarr.json
UNREADABLE = ("its zarr.json cannot", "its zarr.json is missing")


@dataclass
class CheckReport:
    """What :func:`check_store` found: ``bad`` maps chunk keys (or an array's
    ``zarr.json``, or an array whose metadata disagrees) to what is wrong."""

    url: str
    arrays: int = 0
    chunks: int = 0
    bad: dict[str, str] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)  # arrays without checksums
    #: ``runs/<token>`` prefixes no root points at (an interrupted run's; not checked)
    unpublished: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad


#: the attributes of a store (``qbscale``) and of a normaliser
ROOT_ATTRS = (layout.ATTR, "qbscale_normaliser")


def _root(url: str, options: dict[str, Any] | None, report: CheckReport,
          names: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The qbscale attributes of the store's root ``zarr.json`` and the input arrays
    its consolidated metadata lists; a missing, unreadable or unfinished root goes
    to ``report.bad["zarr.json"]``.

    Raises
    ------
    StoreNotFoundError
        Nothing at ``url``, a file, or a Zarr group that is no qbscale store.
    DamagedStoreError
        The store (or normaliser) has no seal.
    """
    from qbscale.errors import StoreNotFoundError
    from qbscale.storage.durability.manifest import read_json

    if not layout.is_url(url) and not os.path.isdir(url):
        raise StoreNotFoundError(f"no qbscale store at {url}")
    try:
        root = read_json(url, options, "zarr.json")
    except (ValueError, OSError) as exc:
        report.bad["zarr.json"] = f"cannot be read ({exc}): restore it or ingest again"
        return {}, []
    if root is None:
        if not names:
            raise StoreNotFoundError(f"no qbscale store at {url}")
        report.bad["zarr.json"] = "missing: the store's root metadata is gone; restore it " \
                                  "or ingest again"
        return {}, []
    if not isinstance(root, dict) or root.get("node_type") != "group":
        report.bad["zarr.json"] = "not the metadata of a Zarr group: restore it or ingest again"
        return {}, []
    attrs = root.get("attributes") or {}
    found = next((attrs[a] for a in ROOT_ATTRS if isinstance(attrs, dict) and a in attrs), None)
    if not isinstance(found, dict) or not found:
        raise StoreNotFoundError(f"{url} is a Zarr group but not a qbscale store")
    kind = "store" if found is attrs.get(layout.ATTR) else "normaliser"
    if found.get("complete") is not True:
        report.bad["zarr.json"] = "incomplete: its write was interrupted; write it again"
    elif seal.unsealed(found):
        raise DamagedStoreError(str(seal.refusal(url, found, kind)))
    elif seal.problem(found) is not None:
        report.bad["zarr.json"] = f"{seal.problem(found)}: restore it or {seal.FIX[kind]}"
    listed = (root.get("consolidated_metadata") or {}).get("metadata") or {}
    inputs = [n for n in listed if n in layout.DIMS] if found is attrs.get(layout.ATTR) \
        else list(listed)
    return found, inputs


def _arrays(url: str, options: dict[str, Any] | None, report: CheckReport
            ) -> list[tuple[str, Any]]:
    """The store's arrays that zarr can open (the others go to ``report.bad``), each
    read only from regular files."""
    import zarr

    from qbscale.storage.durability.manifest import arrays_under, layout_problems
    from qbscale.storage.stores.results import unpublished_prefixes

    names = arrays_under(url, options, "")
    attrs, listed = _root(url, options, report, names)
    # id arrays the store does not record (an interrupted `qbscale ids`) are no part of it
    orphans = set(layout.ID_ARRAYS) - set(layout.recorded_ids(attrs))
    names = [n for n in names if n not in orphans]
    listed = [n for n in listed if n not in orphans]
    # an interrupted run's results are not the store's: nothing reads them but --resume,
    # which verifies what it reuses (its chunks may be missing or half-written)
    report.unpublished = unpublished_prefixes(url, options) if attrs else []
    names = [n for n in names if not any(n.startswith(f"{p}/") for p in report.unpublished)]
    for name in listed:
        if name not in names:
            report.bad[f"{name}/zarr.json"] = "missing: the array is gone; restore it or " \
                                              "ingest again"
    sealed = attrs if attrs and not seal.unsealed(attrs) else None
    problems = layout_problems(url, options, names, root=sealed)
    out = []
    for name in names:
        if name in problems and problems[name][0].startswith(UNREADABLE):
            report.bad[f"{name}/zarr.json"] = problems[name][0].removeprefix("its zarr.json ")
            continue
        try:  # files that are no regular files refused, never read
            arr = zarr.open_array(integrity.verified_store(url, options, places=False),
                                  path=name, mode="r")
        except Exception as exc:  # any unreadable metadata: one line, never a traceback
            report.bad[f"{name}/zarr.json"] = (f"cannot be read ({type(exc).__name__}: "
                                               f"{str(exc).splitlines()[0] if str(exc) else ''})")
            continue
        if name in problems:
            report.bad[name] = problems[name][0]
        out.append((name, arr))
    return out


def _grid(arr: Any) -> Iterator[tuple[int, ...]]:
    grid = arr.shards or arr.chunks
    return np.ndindex(*(-(-int(s) // int(c)) for s, c in zip(arr.shape, grid, strict=True)))


def _problem(url: str, name: str, arr: Any, coords: tuple[int, ...],
             options: tuple[tuple[str, Any], ...], optional: bool,
             recorded: dict[str, Any] | None) -> str | None:
    """What is wrong with one chunk (None if nothing)."""
    from qbscale.storage.durability import manifest
    from qbscale.storage.durability.regular import NotRegularError, read_regular

    key = chunk_key(name, arr, coords)
    raw = _direct_codecs(arr)
    want = int(np.prod([int(c) for c in arr.chunks])) * arr.dtype.itemsize
    if raw is not None and "://" not in url:
        if optional and not os.path.lexists(os.path.join(url, key)):
            return None
        entry = None if recorded is None else recorded["crc32c"].get(key[len(name) + 1:])
        limit = max(want + 4 * bool(raw), 0 if entry is None else int(entry[1]))
        try:  # a regular file, read up to the size it may have
            data = np.frombuffer(read_regular(os.path.join(url, key), limit), np.uint8)
        except (FileNotFoundError, NotADirectoryError):
            return "missing"
        except NotRegularError as exc:
            return exc.reason
        if raw:
            crc, size = manifest.tail(data)
            if data.size < 4 or integrity.crc32c(data[:-4]) != crc:
                return "damaged (crc32c mismatch)"
            placed = None if recorded is None else \
                manifest.problem(recorded, key[len(name) + 1:], crc, size)
            if placed is not None:
                return placed
            data = data[:-4]
        return None if data.size == want else f"damaged ({data.size} bytes, expected {want})"
    if "://" not in url and os.path.lexists(os.path.join(url, key)):
        pass  # a dangling symlink, a FIFO, a device: the verified store names it
    elif not exists(url, options, key):
        return None if optional else "missing"
    try:
        arr.get_block_selection(coords) if arr.shards is None else arr[
            tuple(slice(c * s, (c + 1) * s) for c, s in zip(coords, arr.shards, strict=True))]
    except DamagedStoreError as exc:
        return str(exc).split(f"chunk {key} is ", 1)[-1].rsplit(": ", 1)[0]
    except (ValueError, RuntimeError, TypeError):
        return "damaged (crc32c mismatch)" if has_checksums(arr) else "damaged (cannot decode)"
    if recorded is not None:
        try:
            got = manifest.read_tail(url, dict(options) or None, key)
        except NotRegularError as exc:
            return exc.reason
        return None if got is None else manifest.problem(recorded, key[len(name) + 1:], *got)
    return None


def check_store(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None,
                progress: bool = False) -> CheckReport:
    """Verify every chunk of every array of the store at ``url``.

    Returns
    -------
    CheckReport
        ``bad`` lists each missing, damaged or misplaced chunk by key (e.g.
        ``test/c/2/0``), each unreadable ``zarr.json`` (``test/zarr.json``)
        and each array whose metadata disagrees with its copies (``test``);
        and each array whose manifest is not the one the store sealed (copied
        from another store, edited); ``unchecked`` names arrays without
        checksums (only presence and size or decoding were checked);
        ``unpublished`` the run prefixes no root points at (an interrupted
        run's results: not checked, not damage).

    Raises
    ------
    DamagedStoreError
        The store has no seal (written by an older qbscale, or edited).
    """
    from tqdm import tqdm

    from qbscale.storage.durability import manifest
    from qbscale.storage.durability.paths import check_filesystem

    url = layout.local_path(os.fspath(url))
    check_filesystem(url)
    options = freeze_options(storage_options)
    report = CheckReport(url)
    arrays = _arrays(url, storage_options, report)
    report.arrays = len(arrays)
    total = sum(int(np.prod(arr.cdata_shape)) if arr.shards is None else
                len(list(_grid(arr))) for _, arr in arrays)
    with tqdm(total=total, unit="chunk", file=sys.stderr, disable=not progress,
              desc="check", dynamic_ncols=True) as bar:
        for name, arr in arrays:
            if not has_checksums(arr):
                report.unchecked.append(name)
            optional = f"/{'manifest'}/" in f"/{name}"
            try:
                recorded = None if optional else manifest.load(url, storage_options, name)
            except ValueError:
                recorded = None  # reported by _arrays
            bar.set_postfix_str(name)
            for coords in _grid(arr):
                interrupt.check()
                c = tuple(int(i) for i in coords)
                why = _problem(url, name, arr, c, options, optional, recorded)
                if why is not None:
                    report.bad[chunk_key(name, arr, c)] = why
                report.chunks += 1
                bar.update()
    return report


def repair_hint(report: CheckReport, storage_options: dict[str, Any] | None = None
                ) -> list[str]:
    """One line per damaged array of ``report``'s store: how to get it back."""
    import zarr

    from qbscale.storage.stores.results import published_prefix

    group = zarr.open_group(report.url, mode="r", storage_options=storage_options)
    attrs: dict[str, Any] = dict(group.attrs.get(layout.ATTR) or {})  # type: ignore[arg-type]

    sources = attrs.get("sources") or {}
    published = published_prefix(attrs)
    lines = []
    for name in sorted({key.split("/c/")[0] for key in report.bad}):
        if name.startswith("runs/") and published and name.startswith(f"{published}/"):
            last = attrs.get("last_run") or {}
            lines.append(f"{name}: saved results of the last run: run it again "
                         f"(method {last.get('method')}, values {last.get('values')}): "
                         "`qbscale run` with the same --save-scores, --save-ranks and --topk")
        elif name in layout.ID_ARRAYS:
            lines.append(f"{name}: the store's {name} ids: add them again with `qbscale ids "
                         f"STORE --{'queries' if name == layout.QUERY_IDS else 'gallery'} "
                         "FILE --overwrite`")
        elif name.startswith("runs/"):
            lines.append(f"{name}: an interrupted run: `qbscale run STORE ... --resume` redoes "
                         "its blocks, any new run without --resume deletes it")
        else:
            role = {layout.BANK: "bank", layout.TEST: "test", layout.QUERY_MASK: "masks",
                    layout.GT_INDEX: "gt_index"}.get(name, name.removesuffix("_emb"))
            src = sources.get(role) or sources.get(name) or {}
            digest = f" (sha256 {src['sha256']})" if src.get("sha256") else ""
            origin = f" from {src.get('file')}{digest}" if src.get("file") else ""
            lines.append(f"{name}: input data: restore the chunk files from a backup, or "
                         f"ingest the store again{origin}: `qbscale ingest ... --overwrite`")
    return lines
