"""The updates of an updatable :class:`qbscale.Normaliser` (a mixin).

:meth:`~Updatable.partial_fit` grows the bank, :meth:`~Updatable.add_items`
and :meth:`~Updatable.remove_items` change the gallery, :meth:`~Updatable.merge`
combines bank shards; each returns a new normaliser equal to a fit on the
final bank and gallery (:mod:`qbscale.retrieval.living` computes, from what
changed only).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from qbscale.errors import ConfigError
from qbscale.retrieval import living

if TYPE_CHECKING:
    from typing import Self

    from qbscale.config import RunConfig
    from qbscale.engine.living import BankState


class Updatable:
    """Updates of a normaliser fitted with ``updatable=True``.

    A mixin of :class:`qbscale.Normaliser`: it needs the attributes
    ``config``, ``fingerprint``, ``state`` and ``record``.
    """

    config: RunConfig
    fingerprint: dict[str, Any]
    state: BankState | None
    record: living.Record | None

    @classmethod
    def _fit_updatable(cls, inputs: Any, config: Any, bank_emb: Any) -> Self:
        from qbscale.engine import living as engine
        from qbscale.storage.stores.store import check_unchanged

        state, record = living.fitted(inputs, config, bank_emb)
        check_unchanged(inputs.experiment)
        make: Any = cls  # a Normaliser
        out: Self = make(config, engine.shifts(config, state), engine.activation(state),
                         dict(inputs.fingerprint), gallery=inputs.gallery, state=state,
                         record=record)
        return out

    def _living(self, what: str) -> tuple[BankState, living.Record]:
        if self.state is None or self.record is None:
            raise ConfigError(f"this normaliser cannot {what}: it was not fitted with "
                              "updatable=True (qbscale fit --updatable)")
        return self.state, self.record

    def _updated(self, state: BankState, record: living.Record, entry: dict[str, Any],
                 drop: tuple[str, ...]) -> Self:
        """A new normaliser of ``state``, ``record`` with ``entry`` added to its history."""
        from qbscale.engine import living as engine

        record = replace(record, history=(*record.history, entry))
        fingerprint = {k: v for k, v in self.fingerprint.items() if k not in drop}
        fingerprint["n_gallery"] = state.n_items
        make: Any = type(self)  # a Normaliser
        out: Self = make(self.config, engine.shifts(self.config, state),
                         engine.activation(state), fingerprint,
                         gallery=living.gallery_ref(record), state=state, record=record)
        return out

    def partial_fit(self, bank: Any = None, *, bank_emb: Any = None) -> Self:
        """The normaliser of the bank grown by new rows, from the new rows only.

        Parameters
        ----------
        bank : array-like, str or os.PathLike, optional
            The ``(rows, n_gallery)`` similarities of the new bank rows to the
            current gallery (numpy, dask or xarray), or the path or URL of a
            store from ``qbscale ingest`` whose bank they are.  Give either
            ``bank`` or ``bank_emb``.
        bank_emb : array-like or str, optional
            The new rows' embeddings (an array, or a ``.npy`` / Zarr path), for
            a normaliser fitted from embeddings.

        Returns
        -------
        Normaliser
            A new normaliser, equal to a fit on the whole bank (``logZ`` to a
            few ulp, the activation set exactly); ``self`` is unchanged.

        Raises
        ------
        ConfigError
            The normaliser was not fitted with ``updatable=True``, or not
            exactly one of ``bank`` and ``bank_emb`` was given.
        InputError
            The new rows do not fit the normaliser (embeddings for one fitted
            from similarities, another number of gallery items).
        """

        state, record = self._living("grow its bank")
        if (bank is None) == (bank_emb is None):
            raise ConfigError("give the new bank rows as bank= (similarities) or bank_emb=")
        embeddings = bank_emb is not None
        new, rows = living.grow(self.config, state, record, bank_emb if embeddings else bank,
                                embeddings)
        if embeddings:
                record = replace(record, bank_parts=(*record.bank_parts, _kept(bank_emb)))
        return self._updated(new, record, {"op": "partial_fit", "bank_rows": rows},
                             ("bank_checksum",))

    def add_items(self, gallery_emb: Any = None, *, bank_sims: Any = None) -> Self:
        """The normaliser of the gallery with new items appended.

        The new items get the ids from ``record.n_ids`` on; only the bank's
        similarities to them are computed.

        Parameters
        ----------
        gallery_emb : array-like or str, optional
            The new items' embeddings (an array, or a ``.npy`` / Zarr path), for
            a normaliser fitted from embeddings (the bank embeddings recorded
            are read against them).  Give either ``gallery_emb`` or
            ``bank_sims``.
        bank_sims : array-like, optional
            The ``(n_bank, new items)`` similarities of the whole bank to the
            new items (numpy, dask or xarray).

        Returns
        -------
        Normaliser
            A new normaliser, equal to a fit on the bank over the grown
            gallery; ``self`` is unchanged.

        Raises
        ------
        ConfigError
            The normaliser was not fitted with ``updatable=True``, or not
            exactly one of ``gallery_emb`` and ``bank_sims`` was given.
        InputError
            ``bank_sims`` has another number of rows than the bank, or
            ``gallery_emb`` was given for a normaliser fitted from similarities.
        """

        state, record = self._living("add gallery items")
        if (gallery_emb is None) == (bank_sims is None):
            raise ConfigError("give the new items as gallery_emb= or bank_sims=")
        embeddings = gallery_emb is not None
        new, count = living.add(self.config, state, record,
                                gallery_emb if embeddings else bank_sims, embeddings)
        ids = np.arange(record.n_ids, record.n_ids + count, dtype=np.int64)
        record = replace(record, item_ids=np.concatenate([record.item_ids, ids]),
                         n_ids=record.n_ids + count,
                         gallery_parts=(*record.gallery_parts, _kept(gallery_emb))
                         if embeddings else record.gallery_parts)
        return self._updated(new, record, {"op": "add_items", "items": count,
                                           "first_id": int(ids[0])}, ("gallery_sha256",))

    def remove_items(self, ids: Any, *, bank_sims: Any = None) -> Self:
        """The normaliser of the gallery without the items ``ids``.

        Only the bank rows whose top-k held a removed item are computed again,
        from the bank embeddings recorded, or from ``bank_sims`` (the whole
        bank's similarities to the items kept; only those rows are read).

        Parameters
        ----------
        ids : array-like of int
            The ids of the gallery items to remove (their positions in the
            concatenation of every gallery part added, as in
            ``record.item_ids``); removed ids are never reused.
        bank_sims : array-like, optional
            The ``(n_bank, items kept)`` similarities of the whole bank to the
            items kept (numpy, dask or xarray), of which only the rows to
            compute again are read; needed for a normaliser fitted from
            similarities.  By default the bank and gallery embeddings recorded
            are read.

        Returns
        -------
        Normaliser
            A new normaliser, equal to a fit on the bank over the items kept;
            ``self`` is unchanged.

        Raises
        ------
        ConfigError
            The normaliser was not fitted with ``updatable=True``, or fewer
            than ``k`` items would be left.
        InputError
            An id is not in the normaliser, or the bank is not at hand
            (fitted from similarities without ``bank_sims``, or from
            embeddings held in memory and not saved).
        """

        state, record = self._living("remove gallery items")
        ids = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        new, keep = living.remove(self.config, state, record, ids, bank_sims)
        record = replace(record, item_ids=record.item_ids[keep])
        return self._updated(new, record, {"op": "remove_items", "ids": ids.tolist()},
                             ("gallery_sha256",))

    @classmethod
    def merge(cls, normalisers: Iterable[Self]) -> Self:
        """One normaliser from normalisers fitted on disjoint shards of a bank.

        The shards, in the order given, cover one gallery; the result is the
        normaliser a fit on the shards one after the other gives.

        Parameters
        ----------
        normalisers : iterable of Normaliser
            Updatable normalisers of the same settings, fitted on disjoint
            shards of one bank over the same gallery, in bank row order.

        Returns
        -------
        Normaliser
            The normaliser of the whole bank; the inputs are unchanged.

        Raises
        ------
        ConfigError
            No normaliser given, or one was not fitted with ``updatable=True``.
        InputError
            The normalisers differ in settings or gallery, or share bank rows.
        """

        norms = list(normalisers)
        if not norms:
            raise ConfigError("merge needs at least one normaliser")
        parts = [n._living("be merged") for n in norms]
        living.check_mergeable([n.config for n in norms], [r for _, r in parts],
                               [dict(n.fingerprint) for n in norms])
        state = living.merge(norms[0].config, [s for s, _ in parts])
        record = living.merged_record([r for _, r in parts], [s.n_rows for s, _ in parts])
        entry = record.history[0]
        return norms[0]._updated(state, replace(record, history=()), entry, ("bank_checksum",))

    @property
    def history(self) -> list[dict[str, Any]]:
        """What an updatable normaliser was fitted on, operation by operation."""
        return [] if self.record is None else [dict(h) for h in self.record.history]



def _kept(part: Any) -> Any:
    """A part as a record keeps it: a path absolute, an array as it is."""
    from qbscale.retrieval.fitting import absolute

    return absolute(os.fspath(part)) if isinstance(part, str | os.PathLike) else part
