"""``qbscale check``: verify every chunk of a store, one chunk at a time.

Each chunk of each array is read once and checked: present, of the right
size, its crc32c matching (arrays written with checksums) or decodable (older
ones).  Memory stays at one chunk.  The chunks of a resume manifest may be
absent by design (a block not yet done); every other absent chunk is bad.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qbscale.errors import DamagedStoreError
from qbscale.storage import layout
from qbscale.storage.integrity import chunk_key, exists, has_checksums
from qbscale.storage.sources import _direct_codecs, freeze_options, read_chunk_file


@dataclass
class CheckReport:
    """What :func:`check_store` found: ``bad`` maps chunk keys to what is wrong."""

    url: str
    arrays: int = 0
    chunks: int = 0
    bad: dict[str, str] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)  # arrays without checksums

    @property
    def ok(self) -> bool:
        return not self.bad


def _arrays(url: str, options: dict[str, Any] | None) -> list[tuple[str, Any]]:
    import zarr

    group = zarr.open_group(url, mode="r", use_consolidated=False, storage_options=options)
    with warnings.catch_warnings():  # the lock object is not a zarr node
        warnings.filterwarnings("ignore", message="Object at .* is not recognized")
        members = list(group.members(max_depth=None))
    return sorted((name, node) for name, node in members if isinstance(node, zarr.Array))


def _grid(arr: Any) -> Iterator[tuple[int, ...]]:
    grid = arr.shards or arr.chunks
    return np.ndindex(*(-(-int(s) // int(c)) for s, c in zip(arr.shape, grid, strict=True)))


def _problem(url: str, name: str, arr: Any, coords: tuple[int, ...],
             options: tuple[tuple[str, Any], ...], optional: bool) -> str | None:
    """What is wrong with one chunk (None if nothing)."""
    key = chunk_key(name, arr, coords)
    raw = _direct_codecs(arr)
    if raw is not None and "://" not in url:
        if optional and not os.path.isfile(os.path.join(url, key)):
            return None
        try:
            data = read_chunk_file(url, key, np.dtype(np.uint8), raw)
        except DamagedStoreError as exc:
            return "missing" if "missing" in str(exc) else "damaged (crc32c mismatch)"
        want = int(np.prod([int(c) for c in arr.chunks])) * arr.dtype.itemsize
        return None if data.size == want else f"damaged ({data.size} bytes, expected {want})"
    if not exists(url, options, key):
        return None if optional else "missing"
    try:
        arr.get_block_selection(coords) if arr.shards is None else arr[
            tuple(slice(c * s, (c + 1) * s) for c, s in zip(coords, arr.shards, strict=True))]
    except (ValueError, RuntimeError, TypeError):
        return "damaged (crc32c mismatch)" if has_checksums(arr) else "damaged (cannot decode)"
    return None


def check_store(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None,
                progress: bool = False) -> CheckReport:
    """Verify every chunk of every array of the store at ``url``.

    Returns
    -------
    CheckReport
        ``bad`` lists each missing or damaged chunk by key (e.g.
        ``test/c/2/0``); ``unchecked`` names arrays written before checksums
        (only presence and size or decoding were checked).
    """
    from tqdm import tqdm

    url = layout.local_path(os.fspath(url))
    options = freeze_options(storage_options)
    arrays = _arrays(url, storage_options)
    report = CheckReport(url, arrays=len(arrays))
    total = sum(int(np.prod(arr.cdata_shape)) if arr.shards is None else
                len(list(_grid(arr))) for _, arr in arrays)
    with tqdm(total=total, unit="chunk", file=sys.stderr, disable=not progress,
              desc="check", dynamic_ncols=True) as bar:
        for name, arr in arrays:
            if not has_checksums(arr):
                report.unchecked.append(name)
            optional = f"/{'manifest'}/" in f"/{name}"
            bar.set_postfix_str(name)
            for coords in _grid(arr):
                why = _problem(url, name, arr, tuple(int(c) for c in coords), options, optional)
                if why is not None:
                    report.bad[chunk_key(name, arr, tuple(int(c) for c in coords))] = why
                report.chunks += 1
                bar.update()
    return report


def repair_hint(report: CheckReport, storage_options: dict[str, Any] | None = None
                ) -> list[str]:
    """One line per damaged array of ``report``'s store: how to get it back."""
    import zarr

    from qbscale.storage.results import published_prefix

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
