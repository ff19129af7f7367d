"""Hubness: how unevenly the gallery items fill the queries' top-k lists.

Everything here works on the top-k lists a run returns (``run(..., topk=K)``:
``RunResult.base_topk_index`` before normalisation, ``topk_index`` after), so
it costs no extra pass over the data.

* ``N_k(j)``, the *k-occurrence* of gallery item ``j``: how many test queries
  have ``j`` in their top-k (Radovanovic et al., JMLR 2010).  Its mean is
  always ``k * n_queries / n_gallery``; hubs are items with a large ``N_k``.
* *skewness* of ``N_k``: its third standardised moment,
  ``mean((N - mean)^3) / std^3`` (population moments, as ``scipy.stats.skew``);
  0 for a symmetric spread, large and positive when a few hubs dominate.
* *Robin Hood index*: ``sum_j |N_k(j) - mean| / (2 * sum_j N_k(j))``, the
  share of all top-k slots that would have to move from items above the mean
  to items below it for every item to have the mean (Feldbauer et al. 2018);
  0 is perfectly even, values near 1 mean a few items take nearly everything.
* *hub occupation*: the share of all top-k slots taken by the top 1% of items
  by ``N_k``.
* *antihub rate*: the share of items in no query's top-k (``N_k = 0``).

Examples
--------
Three queries over four items, top-2 each: item 0 is in every list.

>>> nk = k_occurrence(np.array([[0, 1], [0, 2], [0, 1]]), 4, 2)
>>> nk
array([3, 2, 1, 0])
>>> robin_hood(nk), antihub_rate(nk)
(0.3333333333333333, 0.25)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from qbscale.errors import ConfigError

if TYPE_CHECKING:
    from qbscale.types import RunResult

#: share of the gallery counted as hubs (hub occupation, lost hubs)
HUB_SHARE = 0.01


def k_occurrence(topk_index: np.ndarray, n_gallery: int, k: int | None = None,
                 mask: np.ndarray | None = None) -> np.ndarray:
    """``N_k`` of every gallery item: a bincount of the queries' top-k lists.

    Parameters
    ----------
    topk_index : (n_queries, K) gallery indices, best first
    n_gallery : number of gallery items
    k : use the first ``k <= K`` columns (default: all ``K``)
    mask : optional (n_queries,) bool; False drops the query (as in the metrics)
    """
    idx = np.asarray(topk_index)
    if idx.ndim != 2:
        raise ConfigError(f"top-k lists must be (n_queries, K), got shape {idx.shape}")
    k = idx.shape[1] if k is None else k
    if not 1 <= k <= idx.shape[1]:
        raise ConfigError(f"k must be between 1 and the {idx.shape[1]} items per list, got {k}")
    if mask is not None:
        idx = idx[np.asarray(mask, dtype=bool)]
    return np.bincount(idx[:, :k].ravel(), minlength=n_gallery).astype(np.int64)


def skewness(nk: np.ndarray) -> float:
    """Third standardised moment of ``N_k`` (0 when every item has the same)."""
    x = np.asarray(nk, dtype=np.float64)
    centred = x - x.mean()
    std = math.sqrt(float(np.mean(centred**2)))
    return 0.0 if std == 0 else float(np.mean(centred**3)) / std**3


def robin_hood(nk: np.ndarray) -> float:
    """Share of top-k slots to move for every item to reach the mean ``N_k``."""
    x = np.asarray(nk, dtype=np.float64)
    total = x.sum()
    return 0.0 if total == 0 else float(np.abs(x - x.mean()).sum() / (2 * total))


def hubs(nk: np.ndarray, share: float = HUB_SHARE) -> np.ndarray:
    """Indices of the top ``share`` of items by ``N_k`` (at least one), largest
    first, ties to the lower index."""
    count = max(1, math.ceil(share * len(nk)))
    return np.argsort(-np.asarray(nk), kind="stable")[:count]


def hub_occupation(nk: np.ndarray, share: float = HUB_SHARE) -> float:
    """Share of all top-k slots taken by the top ``share`` of items."""
    total = int(np.sum(nk))
    return 0.0 if total == 0 else float(np.asarray(nk)[hubs(nk, share)].sum() / total)


def antihub_rate(nk: np.ndarray) -> float:
    """Share of items in no query's top-k."""
    return float(np.mean(np.asarray(nk) == 0))


@dataclass(frozen=True)
class Hubness:
    """The hubness measures of one ``N_k`` (see the module docstring)."""

    k: int
    skewness: float
    robin_hood: float
    hub_occupation: float
    antihub_rate: float
    max_occurrence: int

    @classmethod
    def of(cls, nk: np.ndarray, k: int) -> Hubness:
        return cls(k, skewness(nk), robin_hood(nk), hub_occupation(nk), antihub_rate(nk),
                   int(np.max(nk, initial=0)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lost_hubs(before: np.ndarray, after: np.ndarray, share: float = HUB_SHARE) -> np.ndarray:
    """Hubs before (top ``share`` by ``N_k``) that are not hubs after, by ``N_k`` before."""
    gone = np.setdiff1d(hubs(before, share), hubs(after, share))
    return gone[np.argsort(-before[gone], kind="stable")]


def occurrences(result: RunResult, k: int | None = None) -> dict[str | float, np.ndarray]:
    """``N_k`` of every gallery item before and after each variant.

    Parameters
    ----------
    result : RunResult
        A run made with ``topk >= k``.
    k : int, optional
        The depth counted; by default the run's ``topk``.

    Returns
    -------
    dict of str or float to numpy.ndarray
        (n_gallery,) counts, under ``"before"`` and under each variant's value.
    """
    if result.topk_index is None or result.base_topk_index is None:
        raise ConfigError("hubness needs the run's top-k lists: run with topk=K")
    out: dict[str | float, np.ndarray] = {
        "before": k_occurrence(result.base_topk_index, result.n_gallery, k, result.mask)}
    if result.config.normalises:
        for b, value in enumerate(result.config.values):
            out[value] = k_occurrence(result.topk_index[b], result.n_gallery, k, result.mask)
    return out
