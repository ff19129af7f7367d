"""Combine rules for the partial results of :mod:`qbscale.engine.kernels`.

Each streaming statistic is declared as data: how two partials combine (an
associative, commutative function, so any tree of chunks gives the same
answer).

==============  =========================  ===============================
statistic       partial per chunk          combine
==============  =========================  ===============================
log normaliser  column logsumexp (nb, G)   ``np.logaddexp``
activation set  bool mask over the gallery ``np.logical_or``
row top-k       (values, indices) per row  keep the k best, ties -> index
column top-k    k largest values per col   keep the k largest values
row counts      top-1 and counts per row   max-with-index, ``+``
==============  =========================  ===============================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial, reduce
from typing import Any

import numpy as np

from qbscale.engine.kernels import RowCounts


@dataclass(frozen=True)
class Reduction:
    """An associative reduction of partials: ``combine(a, b)``."""

    name: str
    combine: Callable[[Any, Any], Any]

    def tree(self, parts: Sequence[Any]) -> Any:
        """Combine a list of partials (used inside one task)."""
        return reduce(self.combine, parts)


def _merge_topk(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Merge two per-row top-k lists over disjoint column sets."""
    vals = np.concatenate([a[0], b[0]], axis=1)
    idx = np.concatenate([a[1], b[1]], axis=1)
    order = np.lexsort((idx, -vals), axis=-1)[:, :k]
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(idx, order, axis=1)


def _merge_counts(a: RowCounts, b: RowCounts) -> RowCounts:
    """Combine counts of the same rows over two disjoint gallery slices."""
    # ties on the maximum go to the lowest column index
    take_b = (b.top_val > a.top_val) | ((b.top_val == a.top_val) & (b.top_idx < a.top_idx))

    def add(x: np.ndarray | None, y: np.ndarray | None) -> np.ndarray | None:
        return None if x is None or y is None else x + y

    return RowCounts(
        top_val=np.where(take_b, b.top_val, a.top_val),
        top_idx=np.where(take_b, b.top_idx, a.top_idx),
        above=a.above + b.above,
        equal=a.equal + b.equal,
        norm_above=add(a.norm_above, b.norm_above),
        norm_equal=add(a.norm_equal, b.norm_equal),
    )


def _logaddexp(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.logaddexp``, quiet about inf/nan partials (the Normaliser refuses them)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.logaddexp(a, b)  # type: ignore[no-any-return]


LOG_NORMALISER = Reduction("log_normaliser", _logaddexp)
ACTIVATION = Reduction("activation", np.logical_or)


def row_topk(k: int) -> Reduction:
    """Per-row top-k merge keeping ``k`` entries (ties -> lowest index)."""
    return Reduction(f"row_top{k}", partial(_merge_topk, k=k))


def _merge_column_topk(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Merge two column top-k value lists over disjoint bank rows (largest first)."""
    both = np.concatenate([a, b], axis=0)
    keep = min(k, both.shape[0])
    if keep < both.shape[0]:
        both = np.partition(both, both.shape[0] - keep, axis=0)[both.shape[0] - keep:]
    return np.ascontiguousarray(np.sort(both, axis=0)[::-1])


def column_topk(k: int) -> Reduction:
    """Per-column top-k values over the bank axis (:func:`qbscale.engine.kernels.column_topk`)."""
    return Reduction(f"column_top{k}", partial(_merge_column_topk, k=k))

ROW_COUNTS = Reduction("row_counts", _merge_counts)


def topk_to_mask(indices: np.ndarray, n_gallery: int) -> np.ndarray:
    """Bool mask over the gallery of every column named in ``indices``."""
    mask = np.zeros(n_gallery, dtype=bool)
    mask[indices.ravel()] = True
    return mask
