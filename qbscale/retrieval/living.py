"""A living normaliser: follow a growing bank and a changing gallery without a refit.

:meth:`qbscale.Normaliser.fit` with ``updatable=True`` keeps, beside the
shifts, the mergeable statistics of :mod:`qbscale.engine.living` (each bank
row's top-k, each item's top-K bank similarities when the method averages
them) and a :class:`Record` of what it was fitted on: the bank and gallery
embeddings (parts, in order), the ids of the gallery items it covers, and
the history of updates.  The functions here compute the statistics of only
what changed and return the new state:

* :func:`grow`: new bank rows against the current gallery;
* :func:`add`: the whole bank against the new items;
* :func:`remove`: the bank rows whose top-k held a removed item, against
  the items kept (the bank must be at hand: embeddings, or similarities);
* :func:`merge`: states of disjoint bank shards over one gallery.

Gallery items have ids: their positions in the concatenation of every
gallery part ever added.  Removed ids are never reused; the normaliser's
columns are the ids kept, in increasing order, which is the gallery a fit
from scratch sees.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qbscale.engine import living
from qbscale.engine.living import BankState
from qbscale.errors import ConfigError, InputError
from qbscale.retrieval.bank_state import (
    Needs,
    state_of_embeddings,
    state_of_similarities,
    state_of_source,
)

EMBEDDINGS, SIMILARITIES = "embeddings", "similarities"


@dataclass(frozen=True)
class Record:
    """What a living normaliser was fitted on.

    Parameters
    ----------
    kind : str
        ``"embeddings"`` (similarities computed from the parts) or
        ``"similarities"`` (given as matrices: none are kept).
    bank_parts : tuple
        The bank embeddings, arrays or paths, in row order (one per fit or
        ``partial_fit``); None for a part held in memory and not saved.
    gallery_parts : tuple
        The gallery embeddings, one per fit or ``add_items`` (as bank_parts).
    item_ids : numpy.ndarray
        (n_gallery,) int64 increasing: the ids of the current items.
    n_ids : int
        Ids handed out so far (the next item added gets this one).
    history : tuple of dict
        Every operation, in order (``op`` and its sizes and ids).
    """

    kind: str
    bank_parts: tuple[Any, ...]
    gallery_parts: tuple[Any, ...]
    item_ids: np.ndarray
    n_ids: int
    history: tuple[dict[str, Any], ...] = field(default=())


# ---------------------------------------------------------------- similarities


def _open(part: Any, what: str) -> Any:
    if part is None:
        raise InputError(f"the {what} were held in memory when the normaliser was fitted "
                         "and were not saved with it: fit it again from files")
    if isinstance(part, str):
        from qbscale.storage.outputs.normaliser_store import open_embeddings

        return open_embeddings(part, what)
    return part


def _open_check(part: Any) -> None:
    if part is None:
        _open(part, "bank and gallery embeddings")


def _rows(parts: Sequence[Any], what: str) -> Any:
    """The embeddings of ``parts`` one after the other (numpy, or lazy dask)."""
    arrays = [_open(p, what) for p in parts]
    if len(arrays) == 1:
        return arrays[0]
    if any(hasattr(a, "dask") for a in arrays):
        import dask.array as da

        return da.concatenate([da.asarray(a) for a in arrays])
    return np.concatenate([np.asarray(a) for a in arrays])


def gallery_ref(record: Record) -> Any:
    """The gallery a normaliser keeps as ``gallery``: its one part while no
    item was added or removed (a path or an array), else None (built when
    searched: :func:`gallery`)."""
    parts = record.gallery_parts
    whole = record.n_ids == len(record.item_ids)
    return parts[0] if record.kind == EMBEDDINGS and len(parts) == 1 and whole else None


def gallery(record: Record) -> Any:
    """The current gallery embeddings: the parts' rows at ``item_ids`` (lazy
    dask when several parts or removed items: nothing is copied now)."""
    whole = gallery_ref(record)
    if whole is not None:
        return whole
    import dask.array as da

    arrays = [da.asarray(_open(p, "gallery embeddings")) for p in record.gallery_parts]
    rows = arrays[0] if len(arrays) == 1 else da.concatenate(arrays)
    if record.n_ids == len(record.item_ids):
        return rows
    return rows[record.item_ids]


def rows_of_ids(record: Record, ids: np.ndarray) -> np.ndarray:
    """The gallery embeddings of items ``ids`` (increasing), float32, read from
    the parts that hold them only."""
    parts = [_open(p, "gallery embeddings") for p in record.gallery_parts]
    starts = np.cumsum([0, *(int(p.shape[0]) for p in parts)])
    out = []
    for part, a, b in zip(parts, starts[:-1], starts[1:], strict=True):
        mine = ids[(ids >= a) & (ids < b)] - a
        if mine.size:
            rows = part[int(mine[0]):int(mine[-1]) + 1]
            rows = rows.compute() if hasattr(rows, "dask") else rows
            out.append(np.asarray(rows, np.float32)[mine - mine[0]])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def bank(record: Record) -> Any:
    """The bank embeddings, every part's rows in order."""
    if record.kind != EMBEDDINGS:
        raise InputError("the normaliser was fitted from similarities, which it does not "
                         "keep: pass the bank's similarities (bank_sims=)")
    return _rows(record.bank_parts, "bank embeddings")


# ---------------------------------------------------------------- operations


def _same_items(a: int, b: int, what: str) -> None:
    if a != b:
        raise InputError(f"{what} has {b} gallery items, the normaliser covers {a}")


def grow(config: Any, state: BankState, record: Record, new: Any, embeddings: bool
         ) -> tuple[BankState, int]:
    """``state`` with new bank rows (embeddings, or similarities to the current
    gallery) stacked below; and how many rows were added."""
    if embeddings:
        if record.kind != EMBEDDINGS:
            raise InputError("the normaliser was fitted from similarities: give the new "
                             "rows' similarities, not embeddings")
        new_state = state_of_embeddings(living.needs(config), _open(new, "bank embeddings"),
                                        _current(record))
    elif isinstance(new, str | os.PathLike):  # a store from qbscale ingest: its bank
        from qbscale.storage.stores.store import check_unchanged, open_experiment

        experiment = open_experiment(new)
        _same_items(state.n_items, experiment.n_gallery, f"the store {os.fspath(new)}")
        new_state = state_of_source(living.needs(config), experiment.bank)
        check_unchanged(experiment)
    else:
        new_state = state_of_similarities(living.needs(config), new)
        _same_items(state.n_items, new_state.n_items, "the new bank rows")
    return living.stack_rows([state, new_state], living.needs(config)[2]), new_state.n_rows


def _current(record: Record) -> Any:
    gal = gallery(record)
    return _open(gal, "gallery embeddings") if isinstance(gal, str | os.PathLike) else gal


def add(config: Any, state: BankState, record: Record, new: Any, embeddings: bool
        ) -> tuple[BankState, int]:
    """``state`` with new gallery items appended; and how many."""
    want = living.needs(config)
    if embeddings:
        items = _open(new, "gallery embeddings")
        part = state_of_embeddings(want, bank(record), items, state.n_items)
    else:
        part = state_of_similarities(want, new, state.n_items)
        if part.n_rows != state.n_rows:
            raise InputError(f"the new items' bank similarities have {part.n_rows} rows, "
                             f"the bank has {state.n_rows}")
    return living.join_items([state, part], want[1]), part.n_items


def remove(config: Any, state: BankState, record: Record, ids: np.ndarray,
           bank_sims: Any = None) -> tuple[BankState, np.ndarray]:
    """``state`` without the items ``ids``; and the kept positions' mask.

    Only the bank rows whose top-k held a removed item are computed again,
    from the bank embeddings (or ``bank_sims``: the whole bank's similarities
    to the items kept, of which only those rows are read).
    """
    if bank_sims is None:  # the bank must be at hand, whether or not a row needs it
        for part in (*record.bank_parts, *record.gallery_parts):
            _open_check(part)
        bank(record)
    keep = ~np.isin(record.item_ids, ids)
    unknown = np.setdiff1d(ids, record.item_ids)
    if unknown.size:
        raise InputError(f"gallery item id {int(unknown[0])} is not in the normaliser "
                         f"({unknown.size} of {len(ids)} ids unknown)")
    k = living.needs(config)[1]
    if int(keep.sum()) < k:
        raise ConfigError(f"removing {len(ids)} items leaves {int(keep.sum())}, fewer than "
                          f"k={k}")
    cut, stale = living.remove_items(state, keep)
    if not stale.size:
        return cut, keep
    rows_only: Needs = ((), k, 0)
    if bank_sims is not None:
        fresh = state_of_similarities(rows_only, _stale_rows(bank_sims, stale, cut.n_items))
    else:
        emb = bank(record)
        kept = Record(record.kind, record.bank_parts, record.gallery_parts,
                      record.item_ids[keep], record.n_ids)
        fresh = state_of_embeddings(rows_only, np.asarray(emb[stale]), _current(kept))
    return living.replace_rows(cut, stale, fresh.row_values, fresh.row_items), keep


def _stale_rows(bank_sims: Any, stale: np.ndarray, n_items: int) -> Any:
    from qbscale.retrieval.fitting import unwrap

    data = unwrap(bank_sims)
    _same_items(n_items, int(data.shape[1]), "bank_sims")
    return data[stale]


def merge(config: Any, states: Sequence[BankState]) -> BankState:
    """States of disjoint bank shards (in order) over one gallery, as one."""
    return living.stack_rows(states, living.needs(config)[2])


# ---------------------------------------------------------------- a fit


def fitted(inputs: Any, config: Any, bank_emb: Any = None) -> tuple[BankState, Record]:
    """The state and record of a fit over ``inputs`` (:mod:`qbscale.retrieval.fitting`):
    every block of the bank read once."""
    from qbscale.storage import layout

    if config.bank_sample is not None:
        raise ConfigError("an updatable normaliser is fitted on the whole bank: drop "
                          "bank_sample")
    state = state_of_source(living.needs(config), inputs.experiment.bank)
    experiment = inputs.experiment
    kind = SIMILARITIES
    bank_parts: tuple[Any, ...] = ()
    gallery_parts: tuple[Any, ...] = ()
    if bank_emb is not None:
        from qbscale.retrieval.fitting import absolute

        kind = EMBEDDINGS
        bank_parts = (absolute(os.fspath(bank_emb)) if isinstance(bank_emb, str | os.PathLike)
                      else bank_emb,)
        gallery_parts = (inputs.gallery,)
    elif (experiment.attrs or {}).get("kind") == layout.KIND_EMBEDDINGS:
        kind = EMBEDDINGS
        bank_parts = (f"{inputs.gallery.rsplit('/', 1)[0]}/{layout.BANK_EMB}",)
        gallery_parts = (inputs.gallery,)
    n_bank, n_items = state.n_rows, state.n_items
    record = Record(kind, bank_parts, gallery_parts, np.arange(n_items, dtype=np.int64),
                    n_items, ({"op": "fit", "bank_rows": n_bank, "items": n_items},))
    return state, record


def check_mergeable(configs: Sequence[Any], records: Sequence[Record],
                    fingerprints: Sequence[dict[str, Any]]) -> None:
    """One clear error unless the normalisers share settings and gallery."""
    for n, (config, record, fp) in enumerate(zip(configs, records, fingerprints, strict=True)):
        if config != configs[0]:
            raise InputError(f"normaliser {n} has other settings ({config.label} "
                             f"{list(config.values)} k={config.k}) than normaliser 0 "
                             f"({configs[0].label} {list(configs[0].values)} "
                             f"k={configs[0].k})")
        same = (record.kind == records[0].kind
                and np.array_equal(record.item_ids, records[0].item_ids)
                and fp.get("gallery_sha256") == fingerprints[0].get("gallery_sha256")
                and len(record.gallery_parts) == len(records[0].gallery_parts)
                and all(_same_part(a, b) for a, b in zip(record.gallery_parts,
                                                         records[0].gallery_parts,
                                                         strict=True)))
        if not same:
            raise InputError(f"normaliser {n} was fitted on another gallery than normaliser 0 "
                             f"({len(record.item_ids)} and {len(records[0].item_ids)} items): "
                             "only shards of one bank over one gallery merge")
    check_disjoint(records)


def check_disjoint(records: Sequence[Record]) -> None:
    """Refuse normalisers sharing a bank part (a path): their rows would count twice."""
    seen: dict[str, int] = {}
    for n, record in enumerate(records):
        for part in record.bank_parts:
            if isinstance(part, str) and seen.setdefault(part, n) != n:
                raise InputError(f"normalisers {seen[part]} and {n} were both fitted on the "
                                 f"bank rows of {part}: only disjoint shards merge")


def _same_part(a: Any, b: Any) -> bool:
    """The same gallery part: one path, or arrays of equal values."""
    if a is b or isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return a is b or (isinstance(a, str) and a == b)
    return bool(a.shape == b.shape and np.array_equal(np.asarray(a), np.asarray(b)))


def merged_record(records: Sequence[Record], rows: Sequence[int]) -> Record:
    """The record of a merge of ``records`` (bank parts one after the other)."""
    first = records[0]
    entry = {"op": "merge", "bank_rows": [int(r) for r in rows],
             "parts": [list(r.history) for r in records]}
    return Record(first.kind, tuple(p for r in records for p in r.bank_parts),
                  first.gallery_parts, first.item_ids, first.n_ids, (entry,))


# ---------------------------------------------------------------- on disk


def to_saved(state: BankState, record: Record) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(living attribute, state arrays)`` to save (parts held in memory are
    recorded as None)."""
    def paths(parts: tuple[Any, ...]) -> list[str | None]:
        return [p if isinstance(p, str) else None for p in parts]

    attrs = {"kind": record.kind, "bank_parts": paths(record.bank_parts),
             "gallery_parts": paths(record.gallery_parts), "n_ids": record.n_ids,
             "history": list(record.history), "n_bank": state.n_rows,
             "k": int(state.row_values.shape[1]),
             "column_rows": 0 if state.column_top is None else int(state.column_top.shape[0])}
    arrays = {"row_values": state.row_values, "row_items": state.row_items,
              "item_ids": record.item_ids}
    if state.column_top is not None:
        arrays["column_top"] = state.column_top
    return attrs, arrays


def from_saved(config: Any, shift: np.ndarray, attrs: dict[str, Any],
               arrays: dict[str, np.ndarray]) -> tuple[BankState, Record]:
    """The state and record :func:`to_saved` wrote (``log_z`` is the is/dis shift)."""
    betas = living.needs(config)[0]
    state = BankState(arrays["row_values"].astype(np.float64),
                      arrays["row_items"].astype(np.int64), shift if betas else None,
                      arrays.get("column_top"), int(shift.shape[1]))
    record = Record(str(attrs["kind"]), tuple(attrs["bank_parts"]),
                    tuple(attrs["gallery_parts"]), arrays["item_ids"].astype(np.int64),
                    int(attrs["n_ids"]), tuple(dict(h) for h in attrs["history"]))
    return state, record
