"""Atomic publication: the store's root ``zarr.json`` replaced in one write.

A run's arrays are written under their own ``runs/<token>/`` prefix, which no
reader looks at; the run becomes visible when the root ``zarr.json`` (its
``qbscale`` attribute with ``last_run`` and the consolidated metadata of every
node) is replaced, in one step: a rename on local disk, one PUT on object
storage.  A reader therefore sees the previous run's results or the new ones,
never a mix.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable
from typing import Any

from qbscale.storage import layout

ROOT = "zarr.json"


def _local(url: str) -> str | None:
    from qbscale.storage.layout import is_url, local_path

    return None if is_url(url) else local_path(url)


async def _root_metadata(url: str, options: dict[str, Any] | None,
                         attrs: dict[str, Any]) -> bytes:
    """The root ``zarr.json`` with ``attrs`` as its ``qbscale`` attribute and the
    consolidated metadata of every node below (as :func:`zarr.consolidate_metadata`)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import AsyncGroup, ConsolidatedMetadata, GroupMetadata
    from zarr.storage._common import make_store_path

    store_path = await make_store_path(url, mode="r", storage_options=options)
    group = await AsyncGroup.open(store_path, use_consolidated=False)
    members = {}
    async for key, node in group.members(max_depth=None, use_consolidated_for_children=False):
        meta = node.metadata
        if isinstance(meta, GroupMetadata) and meta.consolidated_metadata is None:
            meta = dataclasses.replace(meta, consolidated_metadata=ConsolidatedMetadata({}))
        members[key] = meta
    ConsolidatedMetadata._flat_to_nested(members)
    metadata = dataclasses.replace(
        group.metadata, attributes={**group.metadata.attributes, layout.ATTR: attrs},
        consolidated_metadata=ConsolidatedMetadata(metadata=members))
    buffers = metadata.to_buffer_dict(default_buffer_prototype())
    return bytes(buffers[ROOT].to_bytes())


def replace_root_attrs(url: str, options: dict[str, Any] | None, attrs: dict[str, Any]) -> None:
    """Set the store's ``qbscale`` attribute and consolidate, in one atomic write."""
    from zarr.core.sync import sync

    with warnings.catch_warnings():  # the lock object is not a zarr node
        warnings.filterwarnings("ignore", message="Object at .* is not recognized")
        data = sync(_root_metadata(url, options, attrs))
    local = _local(url)
    if local is None:
        import fsspec

        fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        fs.pipe_file(f"{root.rstrip('/')}/{ROOT}", data)  # one PUT: atomic
        return
    from qbscale.storage.durability.atomic import write_now

    # beside and renamed, with the replaced file's mode (mkstemp's 0600 would
    # lock other users out of the store)
    write_now(os.path.join(local, ROOT), data)


def delete_nodes(url: str, options: dict[str, Any] | None, paths: Iterable[str],
                 budget: float | None = None) -> None:
    """Delete arrays or groups ``paths`` of the store (absent ones are skipped).

    ``budget``: seconds to spend at most on a local store; a detached process
    deletes what is left then (:func:`qbscale.storage.durability.removal.remove_tree`)."""
    from qbscale.storage.durability.removal import remove_tree

    local = _local(url)
    fs = root = None
    if local is None:
        import fsspec

        fs, root = fsspec.core.url_to_fs(url, **(options or {}))
    for path in paths:
        if local is not None:
            remove_tree(os.path.join(local, path), budget)
        elif fs is not None and fs.exists(f"{root}/{path}"):
            fs.rm(f"{root}/{path}", recursive=True)
