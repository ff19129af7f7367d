"""A store's query and gallery ids: written, recorded, read and added later.

A store may hold the ids of its test queries and gallery items as the 1-D
arrays ``query`` and ``gallery`` (:data:`qbscale.storage.layout.QUERY_IDS`,
``GALLERY_IDS``): the coordinates of those dimensions, as xarray stores
them.  They are written by the same checked writer as every array (crc32c
on each chunk, a chunk manifest) and recorded in the store's sealed
``qbscale`` attribute::

    "ids": {"arrays": ["query", "gallery"], "id": "4b1f..."}

An id array the record does not list (written by hand, or by an
:func:`add_ids` on object storage that was interrupted) is not part of the
store: readers and ``qbscale check`` ignore it, the next :func:`add_ids`
replaces it.  :func:`add_ids` adds ids to an existing store under its lock,
and publishes them with the store's root ``zarr.json`` in one atomic write
(:func:`qbscale.storage.durability.publish.replace_root_attrs`): a reader
sees the old ids or the new ones, never a mix.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from qbscale.errors import ConfigError, StoreExistsError
from qbscale.storage import layout
from qbscale.storage.inputs.ids import IdSource, read_ids

if TYPE_CHECKING:
    from qbscale.types import Experiment

#: the id arrays, in the order of their dimensions (queries, gallery)
ARRAYS = layout.ID_ARRAYS
RECORD = layout.IDS_RECORD
#: the id arrays a store's attributes record
recorded = layout.recorded_ids


def record(names: list[str] | tuple[str, ...]) -> dict[str, Any] | None:
    """The ``ids`` attribute of a store holding the id arrays ``names`` (None: no ids)."""
    arrays = [n for n in ARRAYS if n in names]
    return {"arrays": arrays, "id": uuid.uuid4().hex} if arrays else None


def read_store_ids(url: str, attrs: dict[str, Any] | None,
                   storage_options: dict[str, Any] | None = None
                   ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(query ids, gallery ids)`` of the store at ``url``, None where it has none;
    every chunk read is checked (present, crc32c, its place in the manifest)."""
    from qbscale.storage.durability.integrity import open_group, read_array
    from qbscale.storage.stores.sources import freeze_options

    names = recorded(attrs)
    if not names:
        return None, None
    group: Any = open_group(url, storage_options, use_consolidated=False)
    out: dict[str, np.ndarray] = {}
    for name in names:
        values = read_array(url, name, group[name], freeze_options(storage_options))
        out[name] = values if values.dtype.kind in "iu" else \
            np.asarray(values.tolist(), dtype=str)  # zarr's variable-length strings
    return out.get(layout.QUERY_IDS), out.get(layout.GALLERY_IDS)


def experiment_ids(experiment: Experiment) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(query ids, gallery ids)`` of an experiment's store (None, None without one)."""
    if experiment.url is None:
        return None, None
    return read_store_ids(experiment.url, experiment.attrs, experiment.storage_options)


def read_given(query_ids: IdSource | None, gallery_ids: IdSource | None, n_queries: int,
               n_gallery: int) -> dict[str, np.ndarray]:
    """The ids given, read and checked against the store's shape, by array name."""
    out = {}
    for name, given, n in ((layout.QUERY_IDS, query_ids, n_queries),
                           (layout.GALLERY_IDS, gallery_ids, n_gallery)):
        if given is not None:
            out[name] = read_ids(given, name, n)
    return out


def add_ids(store: str | os.PathLike[str], query_ids: IdSource | None = None,
            gallery_ids: IdSource | None = None, *, overwrite: bool = False,
            storage_options: dict[str, Any] | None = None) -> str:
    """Add query and/or gallery ids to an existing store.

    The ids are checked (:func:`qbscale.storage.inputs.ids.read_ids`) before
    anything is written; under the store's lock, the arrays are written with
    checksums and chunk manifests in a hidden directory beside the store, swapped
    into it by renames and published with the root ``zarr.json`` in one atomic
    write: a failure leaves the store as it was, byte for byte.  (On object
    storage, which cannot rename, they are written in place; ids being replaced
    are dropped from the record first, so an interrupted replacement leaves none
    of that kind, never a mix.)  Ids of the other kind already in the store are
    kept.

    Parameters
    ----------
    store : path or URL
        A complete store from :func:`qbscale.ingest`.
    query_ids, gallery_ids : path or array-like, optional
        One id per test query / gallery item: a text file (one a line), a
        ``.npy``, ``FILE.parquet[:COLUMN]`` or the ids.
    overwrite : bool
        Replace ids of a kind the store already has.
    storage_options : dict, optional
        The fsspec options for a URL ``store``.

    Returns
    -------
    str
        The store.

    Raises
    ------
    ConfigError
        Neither kind of ids given.
    InputError
        Ids that do not fit the store (count, duplicates, white space).
    StoreExistsError
        The store has ids of a kind given and ``overwrite`` is False.
    StoreLockedError
        Another process is writing into the store.
    """
    from qbscale.storage.durability import seal
    from qbscale.storage.durability.lock import StoreLock
    from qbscale.storage.stores.results import root_attrs
    from qbscale.storage.stores.store import open_experiment

    if query_ids is None and gallery_ids is None:
        raise ConfigError("give query ids, gallery ids or both (--queries FILE, "
                          "--gallery FILE)")
    url = layout.local_path(os.fspath(store))
    experiment = open_experiment(url, storage_options)  # refuses missing / damaged stores
    given = read_given(query_ids, gallery_ids, experiment.n_queries, experiment.n_gallery)
    with StoreLock.acquire(url, storage_options, "adding ids"):
        experiment = open_experiment(url, storage_options)  # as it is now, under the lock
        attrs = root_attrs(experiment)
        have = recorded(attrs)
        clash = [n for n in given if n in have]
        if clash and not overwrite:
            flag = " and ".join("--queries" if n == layout.QUERY_IDS else "--gallery"
                                for n in clash)
            raise StoreExistsError(f"{url} already has {' and '.join(clash)} ids: pass "
                                   f"--overwrite (overwrite=True) to replace them ({flag})")
        kept = [n for n in have if n not in given]
        codec = str(attrs.get("codec", "none"))
        chunk_bytes = int((attrs.get("chunking") or {}).get("chunk_bytes")
                          or layout.DEFAULT_CHUNK_BYTES)
        # the seal is made once the new arrays' manifests are written (their digests)
        new_attrs = _with_record(attrs, [*kept, *given])
        new_attrs[seal.MANIFESTS] = {name: digest for name, digest
                                     in dict(attrs.get(seal.MANIFESTS) or {}).items()
                                     if name not in given}
        if layout.is_url(url):
            _add_in_place(url, storage_options, attrs, given, kept, codec, chunk_bytes,
                          new_attrs)
        else:
            _add_local(url, given, codec, chunk_bytes, new_attrs)
    return url


def _add_local(url: str, given: dict[str, np.ndarray], codec: str, chunk_bytes: int,
               attrs: dict[str, Any]) -> None:
    """Write the id arrays beside the store, swap each into it, publish the root.

    The arrays (with their chunk manifests) and the new root ``zarr.json`` are
    written in full in a hidden sibling directory; then, without a byte written,
    each array is exchanged with the store's (or renamed in) and the root renamed
    over the store's.  On any failure up to that last rename the swaps are
    undone: the store is as it was, byte for byte.
    """
    import shutil
    from pathlib import Path

    import zarr

    from qbscale.storage.durability import manifest, seal
    from qbscale.storage.durability.atomic import publish_file
    from qbscale.storage.durability.publish import replace_root_attrs
    from qbscale.storage.durability.rename import exchange, rename_noreplace
    from qbscale.storage.durability.stage import _owner, settle_zarr_writes
    from qbscale.storage.stores.writer import write_vector

    root = Path(url)
    for stale in root.parent.glob(f".{root.name}.ids-partial-*"):  # killed writers' (we
        shutil.rmtree(stale, ignore_errors=True)                   # hold the store's lock)
    side = root.with_name(f".{root.name}.ids-partial-{_owner()}")
    moved: list[tuple[str, bool]] = []  # (array, exchanged with one the store had)
    try:
        group = zarr.create_group(os.fspath(side), overwrite=True)
        for name, values in given.items():
            write_vector(group, name, values, codec, chunk_bytes)
        digests = manifest.record(os.fspath(side), None, list(given),
                                  str(attrs.get(seal.ID, "")))
        attrs = seal.sealed({**attrs, seal.MANIFESTS: {**attrs[seal.MANIFESTS], **digests}})
        new_root = _new_root(root, side, list(given), attrs)
        for name in given:
            had = os.path.lexists(root / name)
            if had:
                exchange(side / name, root / name)
            else:
                rename_noreplace(side / name, root / name)
            moved.append((name, had))
        if new_root is None:  # a store without consolidated metadata: zarr builds it
            replace_root_attrs(url, None, attrs)
        else:
            publish_file(new_root, root / "zarr.json")
    except BaseException:
        settle_zarr_writes()
        for name, had in reversed(moved):  # back as they were
            if had:
                exchange(side / name, root / name)
            else:
                rename_noreplace(root / name, side / name)
        raise
    finally:
        shutil.rmtree(side, ignore_errors=True)


def _new_root(root: Any, side: Any, names: list[str], attrs: dict[str, Any]) -> Any:
    """The store's root ``zarr.json`` with ``attrs`` and the metadata of the arrays
    ``names`` (as written in ``side``) consolidated, written to ``side/zarr.root``;
    its path, or None when the store's root holds no consolidated metadata."""
    import json

    meta = json.loads((root / "zarr.json").read_bytes())
    listed = (meta.get("consolidated_metadata") or {}).get("metadata")
    if not isinstance(listed, dict):
        return None
    for name in names:
        listed[name] = json.loads((side / name / "zarr.json").read_bytes())
    meta["attributes"] = {**(meta.get("attributes") or {}), layout.ATTR: attrs}
    path = side / "zarr.root"
    path.write_bytes(json.dumps(meta, indent=2).encode())
    return path


def _add_in_place(url: str, options: dict[str, Any] | None, attrs: dict[str, Any],
                  given: dict[str, np.ndarray], kept: list[str], codec: str,
                  chunk_bytes: int, new_attrs: dict[str, Any]) -> None:
    """Object storage (no rename): ids replaced are first unrecorded (the store then
    has none of that kind), written in place, and published with the root."""
    import zarr

    from qbscale.storage.durability import seal
    from qbscale.storage.durability.integrity import record_manifests
    from qbscale.storage.durability.publish import replace_root_attrs
    from qbscale.storage.stores.writer import write_vector

    if any(n in recorded(attrs) for n in given):
        unrecorded = _with_record(attrs, kept)
        unrecorded[seal.MANIFESTS] = new_attrs[seal.MANIFESTS]
        replace_root_attrs(url, options, seal.sealed(unrecorded))
    group = zarr.open_group(url, mode="r+", use_consolidated=False, storage_options=options)
    digests = {}
    for name, values in given.items():
        write_vector(group, name, values, codec, chunk_bytes)
        digests.update(record_manifests(url, options, name, str(attrs.get(seal.ID, ""))))
    replace_root_attrs(url, options, seal.sealed(
        {**new_attrs, seal.MANIFESTS: {**new_attrs[seal.MANIFESTS], **digests}}))


def _with_record(attrs: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """``attrs`` recording the id arrays ``names`` (none: the record dropped)."""
    out = {k: v for k, v in attrs.items() if k != RECORD}
    entry = record(names)
    if entry is not None:
        out[RECORD] = entry
    return out
