"""``qbscale check``: verify every chunk of a store, one chunk at a time.

Each chunk of each array is read once and checked: present, of the right
size, its crc32c matching (arrays written with checksums) or decodable (older
ones), and the chunk its array's chunk manifest records at its place (arrays
written before manifests: not checked, and named).  Every array's
``zarr.json`` is read as JSON first (a garbage one is one bad entry, not a
traceback) and compared with its copy in the root ``zarr.json`` and with its
manifest.  Memory stays at one chunk.  The chunks of a resume manifest may be
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
    unplaced: list[str] = field(default_factory=list)  # arrays without a chunk manifest
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
    if found.get("complete") is not True:
        report.bad["zarr.json"] = "incomplete: its write was interrupted; write it again"
    elif seal.problem(found) is not None:
        report.bad["zarr.json"] = str(seal.problem(found))
    listed = (root.get("consolidated_metadata") or {}).get("metadata") or {}
    inputs = [n for n in listed if n in layout.DIMS] if found is attrs.get(layout.ATTR) \
        else list(listed)
    return found, inputs


def _arrays(url: str, options: dict[str, Any] | None, report: CheckReport
            ) -> tuple[list[tuple[str, Any]], bool]:
    """The store's arrays that zarr can open (the others go to ``report.bad``), and
    whether the store declared chunk manifests for them."""
    import zarr

    from qbscale.storage.durability.manifest import arrays_under, declared, layout_problems
    from qbscale.storage.stores.results import unpublished_prefixes

    names = arrays_under(url, options, "")
    attrs, listed = _root(url, options, report, names)
    # an interrupted run's results are not the store's: nothing reads them but --resume,
    # which verifies what it reuses (its chunks may be missing or half-written)
    report.unpublished = unpublished_prefixes(url, options) if attrs else []
    names = [n for n in names if not any(n.startswith(f"{p}/") for p in report.unpublished)]
    for name in listed:
        if name not in names:
            report.bad[f"{name}/zarr.json"] = "missing: the array is gone; restore it or " \
                                              "ingest again"
    manifests = declared(attrs)
    problems = layout_problems(url, options, names, manifests=manifests)
    out = []
    for name in names:
        if name in problems and problems[name][0].startswith(UNREADABLE):
            report.bad[f"{name}/zarr.json"] = problems[name][0].removeprefix("its zarr.json ")
            continue
        try:
            arr = zarr.open_array(url, path=name, mode="r", storage_options=options)
        except Exception as exc:  # any unreadable metadata: one line, never a traceback
            report.bad[f"{name}/zarr.json"] = (f"cannot be read ({type(exc).__name__}: "
                                               f"{str(exc).splitlines()[0] if str(exc) else ''})")
            continue
        if name in problems:
            report.bad[name] = problems[name][0]
        out.append((name, arr))
    return out, manifests


def _grid(arr: Any) -> Iterator[tuple[int, ...]]:
    grid = arr.shards or arr.chunks
    return np.ndindex(*(-(-int(s) // int(c)) for s, c in zip(arr.shape, grid, strict=True)))


def _problem(url: str, name: str, arr: Any, coords: tuple[int, ...],
             options: tuple[tuple[str, Any], ...], optional: bool,
             recorded: dict[str, Any] | None) -> str | None:
    """What is wrong with one chunk (None if nothing)."""
    from qbscale.storage.durability import manifest

    key = chunk_key(name, arr, coords)
    raw = _direct_codecs(arr)
    if raw is not None and "://" not in url:
        if optional and not os.path.isfile(os.path.join(url, key)):
            return None
        try:
            data = np.fromfile(os.path.join(url, key), dtype=np.uint8)
        except FileNotFoundError:
            return "missing"
        if raw:
            crc, size = manifest.tail(data)
            if data.size < 4 or integrity.crc32c(data[:-4]) != crc:
                return "damaged (crc32c mismatch)"
            placed = None if recorded is None else \
                manifest.problem(recorded, key[len(name) + 1:], crc, size)
            if placed is not None:
                return placed
            data = data[:-4]
        want = int(np.prod([int(c) for c in arr.chunks])) * arr.dtype.itemsize
        return None if data.size == want else f"damaged ({data.size} bytes, expected {want})"
    if not exists(url, options, key):
        return None if optional else "missing"
    try:
        arr.get_block_selection(coords) if arr.shards is None else arr[
            tuple(slice(c * s, (c + 1) * s) for c, s in zip(coords, arr.shards, strict=True))]
    except (ValueError, RuntimeError, TypeError):
        return "damaged (crc32c mismatch)" if has_checksums(arr) else "damaged (cannot decode)"
    if recorded is not None:
        got = manifest.read_tail(url, dict(options) or None, key)
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
        ``unchecked`` names arrays written before checksums (only presence
        and size or decoding were checked), ``unplaced`` those written before
        chunk manifests (chunk positions not checked), ``unpublished`` the run
        prefixes no root points at (an interrupted run's results: not checked,
        not damage).
    """
    from tqdm import tqdm

    from qbscale.storage.durability import manifest

    url = layout.local_path(os.fspath(url))
    options = freeze_options(storage_options)
    report = CheckReport(url)
    arrays, manifests = _arrays(url, storage_options, report)
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
                if recorded is None and not optional and not manifests:
                    report.unplaced.append(name)
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
                         f"(method {last.get('method')}, values {last.get('values')}) with the "
                         "same --save-* options")
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
                         f"ingest the store again{origin} with --overwrite")
    return lines
