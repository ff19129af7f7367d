"""A faiss index that follows an updatable normaliser's gallery.

An index built for an updatable normaliser (:mod:`qbscale.retrieval.living`)
holds its items under their ids (``faiss.IndexIDMap2``) and stores shifts
centred and scaled by a ``(centre, weight)`` fixed when it was built, kept
after faiss's own bytes (:mod:`qbscale.retrieval.faiss_trailer`).

Adding or removing gallery items leaves every other item's shift as it was,
so :func:`follow` appends the new items' vectors and deletes the removed ids;
a grown or merged bank changes every shift, and an index type that cannot
delete (HNSW) cannot follow a removal: those are built again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qbscale.errors import ConfigError, InputError
from qbscale.retrieval.faiss_trailer import read_trailer, settings, trailer_meta


def follow(old: Any, norm: Any, factory: str | None = None) -> tuple[Any, str]:
    """Make the index ``old`` of an earlier version of ``norm`` serve ``norm``.

    Items added to the gallery since are appended and removed items deleted,
    in place; when the bank changed (grown or merged: every shift moved) or
    the index type cannot delete (HNSW), the index is built again.

    Parameters
    ----------
    old : FaissSearch
        The index (:class:`~qbscale.retrieval.faiss_index.FaissSearch`) built
        for an earlier version of ``norm``, with the same settings; changed in
        place when it is followed.
    norm : Normaliser
        The updatable normaliser (:class:`qbscale.Normaliser` fitted with
        ``updatable=True``) after its updates.
    factory : str, optional
        The faiss index factory string of an index built again; by default
        the one ``old`` was built with, else ``"Flat"``.

    Returns
    -------
    index : FaissSearch
        The index serving ``norm``.
    how : {"followed", "rebuilt"}
        ``"followed"`` when items were appended and deleted in place (``old``
        is changed), ``"rebuilt"`` when the index was built again.

    Raises
    ------
    ConfigError
        ``old`` was not built for an updatable normaliser, or ``norm`` is not
        updatable.
    InputError
        ``old`` serves a normaliser of other settings.
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
    meta = trailer_meta(path)
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
