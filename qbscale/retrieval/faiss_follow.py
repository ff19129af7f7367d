"""A faiss index that follows an updatable normaliser's gallery.

An index built for an updatable normaliser (:mod:`qbscale.retrieval.living`)
holds its items under their ids (``faiss.IndexIDMap2``) and stores shifts
centred and scaled by a ``(centre, weight)`` fixed when it was built, kept in
a trailer after faiss's own bytes (faiss reads its index and ignores them)::

    <faiss index> b"\\n" <json: centre, weight, bank_rows, factory> <8-byte length> QBSCFAI1

Adding or removing gallery items leaves every other item's shift as it was,
so :func:`follow` appends the new items' vectors and deletes the removed ids;
a grown or merged bank changes every shift, and an index type that cannot
delete (HNSW) cannot follow a removal: those are built again.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from qbscale.errors import ConfigError, InputError

MAGIC = b"QBSCFAI1"


def trailer(centring: tuple[np.ndarray, np.ndarray], bank_rows: int | None,
            factory: str | None, settings: str = "") -> bytes:
    """The bytes written after an index of an updatable normaliser."""
    text = json.dumps({"centre": [float(c) for c in centring[0]],
                       "weight": [float(w) for w in centring[1]],
                       "bank_rows": bank_rows, "factory": factory,
                       "settings": settings}).encode()
    return b"\n" + text + len(text).to_bytes(8, "little") + MAGIC


def settings(norm: Any) -> str:
    """What an index's shifts depend on besides the bank: method, values, params."""
    config = norm.config
    return json.dumps([config.method, list(config.values), config.param_dict])


def read_trailer(path: str, n_values: int
                 ) -> tuple[tuple[np.ndarray, np.ndarray] | None, int | None, str | None]:
    """``(centring, bank_rows, factory)`` of an index file; ``(None, None, None)``
    for an index without a trailer (built for a normaliser that is not updatable)."""
    meta = _meta(path)
    if meta is None:
        return None, None, None
    try:
        centre = np.asarray(meta["centre"], np.float64)
        weight = np.asarray(meta["weight"], np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: its qbscale trailer is damaged ({exc})") from exc
    if centre.shape != (n_values,) or weight.shape != (n_values,):
        raise InputError(f"{path} stores {centre.size} shift coordinates; the normaliser "
                         f"has {n_values} values")
    rows = meta.get("bank_rows")
    return (centre, weight), None if rows is None else int(rows), meta.get("factory")


def _meta(path: str) -> dict[str, Any] | None:
    """The trailer's JSON, or None when the file has none."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        fh.seek(max(0, size - 16))
        tail = fh.read(16)
        if len(tail) < 16 or tail[8:] != MAGIC:
            return None
        length = int.from_bytes(tail[:8], "little")
        if length > size - 16:
            raise InputError(f"{path}: its qbscale trailer is damaged (length {length})")
        fh.seek(size - 16 - length)
        try:
            meta = json.loads(fh.read(length))
        except ValueError as exc:
            raise InputError(f"{path}: its qbscale trailer is damaged ({exc})") from exc
    if not isinstance(meta, dict):
        raise InputError(f"{path}: its qbscale trailer is damaged")
    return meta


def check_ids(index: Any, path: str) -> None:
    """Refuse an index whose item ids are not the normaliser's."""
    ids = index.ids
    record = getattr(index.norm, "record", None)
    if record is None:
        raise InputError(f"{path} follows an updatable normaliser; this normaliser is not "
                         "one")
    if not np.array_equal(np.sort(ids), record.item_ids):
        raise InputError(f"{path} holds other gallery items than the normaliser "
                         f"({np.setdiff1d(ids, record.item_ids).size} ids it does not have, "
                         f"{np.setdiff1d(record.item_ids, ids).size} missing): follow its "
                         "updates with `qbscale index NORM --follow OLD.faiss`")


def follow(old: Any, norm: Any, factory: str | None = None) -> tuple[Any, str]:
    """The index ``old`` (a :class:`~qbscale.retrieval.faiss_index.FaissSearch`
    of an earlier version of ``norm``) made to serve ``norm``: ``(index, how)``,
    ``how`` ``"followed"`` (items appended and deleted in place: ``old`` is
    changed) or ``"rebuilt"`` (the bank changed, or the index cannot delete).
    """
    from qbscale.retrieval import living
    from qbscale.retrieval.faiss_index import FaissSearch

    record = getattr(norm, "record", None)
    if record is None or old.centring is None:
        raise ConfigError("only an index built for an updatable normaliser follows its "
                          "updates: build it with `qbscale index`")
    if old.norm.config != norm.config:
        raise InputError("the index serves a normaliser of other settings")
    kind = factory or old.factory or "Flat"
    if norm.state.n_rows != old.bank_rows:
        return FaissSearch.build(norm, norm.fitted_gallery(), kind), "rebuilt"
    held = old.ids
    gone, new = np.setdiff1d(held, record.item_ids), np.setdiff1d(record.item_ids, held)
    if gone.size:
        try:
            old.index.remove_ids(gone)
        except RuntimeError:  # HNSW and others cannot delete
            return FaissSearch.build(norm, norm.fitted_gallery(), kind), "rebuilt"
    if new.size:
        positions = np.searchsorted(record.item_ids, new)
        rows = living.rows_of_ids(record, new)
        centre, weight = old.centring
        side = (norm.shift[:, positions] - centre[:, None]) / weight[:, None]
        old.index.add_with_ids(np.ascontiguousarray(np.hstack([rows, side.T]), np.float32), new)
    return FaissSearch(old.index, norm, old.dim, old.centring, old.bank_rows, kind), "followed"



def follow_file(path: str, norm: Any, factory: str | None = None) -> tuple[Any, str]:
    """:func:`follow` for the index file ``path`` (built for an earlier version
    of ``norm``: the same settings, checked)."""
    from qbscale.retrieval.faiss_index import FaissSearch, _faiss

    faiss = _faiss()
    from qbscale.storage.durability.paths import check_regular

    check_regular(path)
    meta = _meta(path)
    if meta is None:
        raise ConfigError(f"{path} was not built for an updatable normaliser: build it "
                          "again with `qbscale index`")
    if meta.get("settings") != settings(norm):
        raise InputError(f"{path} serves a normaliser of other settings "
                         f"({meta.get('settings')}) than {settings(norm)}")
    try:
        index = faiss.read_index(path)
    except RuntimeError as exc:
        raise InputError(f"{path} is not a faiss index: {str(exc).splitlines()[0]}") from exc
    centring, bank_rows, kind = read_trailer(path, len(norm.values))
    old = FaissSearch(index, norm, index.d - len(norm.values), centring, bank_rows, kind)
    return follow(old, norm, factory)
