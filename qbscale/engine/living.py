"""What a normaliser keeps to be updated without a refit, on plain numpy arrays.

QB-Norm's statistics are mergeable over bank rows and separable over gallery
items, so a normaliser that keeps a little more than its shifts can follow a
changing bank and gallery:

==================  ==========================  ===============================
kept                shape                       combine
==================  ==========================  ===============================
``log_z``           (n_betas, n_gallery) f8     bank rows: ``np.logaddexp``;
                                                items: side by side
``row_values``,     (n_bank, k) f8, i8          bank rows: stacked; items:
``row_items``                                   merged, ties -> lowest item
``column_top``      (min(K, n_bank), n_gallery) bank rows: keep the K largest;
                                                items: side by side
==================  ==========================  ===============================

``row_*`` are each bank row's top-k (values and gallery positions, best
first, ties to the lowest position): their union is the activation set, and
a new item that beats a row's k-th entry moves it.  ``column_top`` holds each
item's ``K`` largest bank similarities (``K`` the largest ``kc`` of csls or
``nnn_k`` of nnn), from which their means, the csls and nnn shifts, follow.

A :class:`BankState` is built per block (:func:`block_state`), joined side by
side over gallery blocks (:func:`join_items`), stacked over bank rows
(:func:`stack_rows`), cut to the items kept (:func:`remove_items`, which
names the rows whose top-k must be computed again) and turned into shifts
(:func:`shifts`).  Every step gives what one pass over the final bank and
gallery gives: the activation set exactly, ``logZ`` to a few ulp (the sums
are grouped otherwise), column means exactly.

Nothing here reads a file (:mod:`qbscale.retrieval.living` does).

Examples
--------
>>> bank = np.array([[0.0, 1.0, 2.0], [3.0, 1.0, 0.0]])
>>> a = block_state(bank[:1], (1.0,), 1, 0)
>>> b = block_state(bank[1:], (1.0,), 1, 0)
>>> both = stack_rows([a, b])
>>> both.row_items.ravel().tolist(), activation(both).tolist()
([2, 0], [True, False, True])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from qbscale.engine import kernels, methods
from qbscale.engine.reductions import LOG_NORMALISER, column_topk, row_topk, topk_to_mask
from qbscale.errors import ConfigError

if TYPE_CHECKING:
    from qbscale.config import RunConfig

#: methods a normaliser can be updated for, and why the others cannot
REFUSED = {"dual-is": "its gallery-bank term (logW) needs the gallery bank's similarities "
                      "to every new item, which a normaliser does not keep"}


@dataclass(frozen=True)
class BankState:
    """The mergeable statistics of some bank rows over some gallery items.

    Parameters
    ----------
    row_values : numpy.ndarray
        (n_rows, k) float64, each bank row's k largest similarities, best first.
    row_items : numpy.ndarray
        (n_rows, k) int64, their gallery positions (ties to the lowest).
    log_z : numpy.ndarray or None
        (n_betas, n_items) float64 column ``logsumexp(beta * B)``; None when
        the method needs none.
    column_top : numpy.ndarray or None
        (min(K, n_rows), n_items) each item's K largest bank similarities,
        largest first, in the bank's dtype; None when the method needs none.
    n_items : int
        The gallery positions covered.
    """

    row_values: np.ndarray
    row_items: np.ndarray
    log_z: np.ndarray | None
    column_top: np.ndarray | None
    n_items: int

    @property
    def n_rows(self) -> int:
        return int(self.row_values.shape[0])


def needs(config: RunConfig) -> tuple[tuple[float, ...], int, int]:
    """``(betas, k, K)`` a state of ``config``'s method keeps (a one-line
    :class:`ConfigError` for a method that cannot be updated)."""
    if config.method in REFUSED:
        raise ConfigError(f"a {config.method} normaliser cannot be updated: "
                          f"{REFUSED[config.method]}; fit it again")
    want = methods.get(config.method).needs(config.values, config.param_dict)
    bank = want[methods.QUERY_BANK]
    return bank.betas, int(config.k), bank.column_k


def block_state(block: np.ndarray, betas: Sequence[float], k: int, column_k: int,
                col0: int = 0) -> BankState:
    """The state of one block of bank rows x gallery items ``col0:col0 + width``.

    ``row_items`` are global positions (``col0`` added); a block narrower than
    ``k`` keeps all its items.
    """
    values, items = kernels.row_topk(block, k, col0)
    log_z = kernels.bank_logsumexp(block, np.asarray(betas, np.float64)) if betas else None
    top = kernels.column_topk(block, column_k) if column_k else None
    return BankState(values, items, log_z, top, int(block.shape[1]))


def join_items(parts: Sequence[BankState], k: int) -> BankState:
    """States of the same bank rows over consecutive gallery blocks, side by side.

    Row top-k merge keeping ``k`` (ties to the lowest position, as one pass
    over the whole row gives); per-item statistics are concatenated.
    """
    merge = row_topk(k)
    values, items = merge.tree([(p.row_values, p.row_items) for p in parts])
    log_z = None if parts[0].log_z is None else \
        np.concatenate([p.log_z for p in parts if p.log_z is not None], axis=1)
    top = None if parts[0].column_top is None else _side_by_side(
        [p.column_top for p in parts if p.column_top is not None])
    return BankState(values, items, log_z, top, sum(p.n_items for p in parts))


def _side_by_side(tops: list[np.ndarray]) -> np.ndarray:
    rows = min(t.shape[0] for t in tops)  # equal: the same bank rows
    return np.concatenate([t[:rows] for t in tops], axis=1)


def stack_rows(parts: Sequence[BankState], column_k: int = 0) -> BankState:
    """States of disjoint bank rows (in this order) over the same gallery items.

    ``log_z`` combines with ``np.logaddexp`` (float64, left to right), column
    top-k keeps the ``column_k`` largest values, row top-k are stacked.
    """
    sizes = {p.n_items for p in parts}
    if len(sizes) != 1:
        raise ConfigError(f"states over different galleries cannot be stacked: "
                          f"{sorted(sizes)} items")
    log_z = None if parts[0].log_z is None else \
        LOG_NORMALISER.tree([p.log_z for p in parts])
    top = None
    if parts[0].column_top is not None:
        tops = [p.column_top for p in parts if p.column_top is not None]
        top = column_topk(column_k or max(t.shape[0] for t in tops)).tree(tops)
    return BankState(np.concatenate([p.row_values for p in parts]),
                     np.concatenate([p.row_items for p in parts]), log_z, top,
                     parts[0].n_items)


def remove_items(state: BankState, keep: np.ndarray) -> tuple[BankState, np.ndarray]:
    """``state`` over the items where ``keep`` is True, renumbered; and the bank
    rows whose top-k held a removed item (their ``row_*`` must be computed
    again over the items kept: :func:`replace_rows`; a removed item is -1
    until then).

    >>> s = block_state(np.array([[1.0, 3.0, 2.0], [5.0, 0.0, 4.0]]), (), 1, 0)
    >>> cut, stale = remove_items(s, np.array([True, False, True]))
    >>> cut.row_items.ravel().tolist(), stale.tolist()
    ([-1, 0], [0])
    """
    keep = np.asarray(keep, bool)
    position = np.cumsum(keep) - 1
    stale = np.flatnonzero(~keep[state.row_items].all(axis=1))
    items = np.where(keep[state.row_items], position[state.row_items], -1)
    log_z = None if state.log_z is None else state.log_z[:, keep]
    top = None if state.column_top is None else np.ascontiguousarray(state.column_top[:, keep])
    return BankState(state.row_values.copy(), items.astype(np.int64), log_z, top,
                     int(keep.sum())), stale


def replace_rows(state: BankState, rows: np.ndarray, values: np.ndarray,
                 items: np.ndarray) -> BankState:
    """``state`` with the top-k of bank ``rows`` replaced."""
    row_values, row_items = state.row_values.copy(), state.row_items.copy()
    row_values[rows], row_items[rows] = values, items
    return BankState(row_values, row_items, state.log_z, state.column_top, state.n_items)


def activation(state: BankState) -> np.ndarray:
    """The activation set: the union of every bank row's top-k items."""
    return topk_to_mask(state.row_items, state.n_items)


def top_means(ks: Sequence[int], top: np.ndarray) -> dict[int, np.ndarray]:
    """Mean of each column's ``k`` largest values, per ``k``: summed in float64
    from the largest down, one row at a time (as the bank stage sums them)."""
    out = {}
    total = np.zeros(top.shape[1])
    done = 0
    with np.errstate(over="ignore", invalid="ignore"):  # refused by the normaliser
        for k in sorted(ks):
            for row in top[done:min(k, len(top))]:
                total += row
            done = max(done, min(k, len(top)))
            out[int(k)] = total / done
    return out


def shifts(config: RunConfig, state: BankState) -> np.ndarray:
    """The ``(n_values, n_gallery)`` shifts of ``config``'s method from ``state``."""
    method = methods.get(config.method)
    want = method.needs(config.values, config.param_dict)[methods.QUERY_BANK]
    means = {} if state.column_top is None else top_means(want.column_means, state.column_top)
    stats = {methods.QUERY_BANK: methods.BankStats(state.log_z, means, activation(state))}
    with np.errstate(over="ignore", invalid="ignore"):  # inf/nan: refused on creation
        return np.asarray(method.shifts(config.values, config.param_dict, stats),
                          dtype=np.float64)
