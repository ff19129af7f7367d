"""Will QB-Norm help here, and is this querybank the right one?

:func:`diagnose` answers without a ground truth, from one read of the bank and
one of the test matrix (:mod:`qbscale.engine.diagnostics`):

* **hub agreement**: does the bank see the same hubs as the test queries?
  The bank's view of item ``j`` is ``logZ[j]`` (the inverted softmax's shift:
  large when many bank queries are close to ``j``) and the activation set;
  the test queries' own view is ``N_k[j]``, how many test queries have ``j``
  in their raw top-``depth`` (:mod:`qbscale.analysis.hubness`).  Reported:
  the Spearman rank correlation of ``logZ`` and ``N_k`` (ties averaged), the
  overlap of the top 1% of items by each, and the share of the test's hubs
  inside the activation set.
* **domain gap**: each bank query's top-1 similarity against each test
  query's: quantiles, and the two-sample Kolmogorov-Smirnov statistic ``D``
  (the largest gap between the two empirical distribution functions; 0 when
  they coincide, 1 when they do not overlap).  A bank from another
  distribution than the test queries (e.g. the training split of a model that
  fits it closely) has a shifted top-1 distribution.
* **activated share**: the share of test rows whose raw top-1 is in the
  activation set, i.e. the rows DIS normalises.

With a ground truth, the run's figures before and after (the default
dynamic inverted softmax, from the same test read), so the readings can be
checked against what happened.  :func:`reading` turns the figures into one
paragraph with the thresholds below.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qbscale.analysis import hubness as hub
from qbscale.analysis.reading import THRESHOLDS, reading
from qbscale.config import RunConfig
from qbscale.errors import InputError
from qbscale.types import Experiment, RunResult

#: quantiles reported of the top-1 similarity distributions
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


# ---------------------------------------------------------------- statistics


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties given the mean of their ranks.

    >>> average_ranks(np.array([3.0, 1.0, 3.0, 2.0]))
    array([3.5, 1. , 3.5, 2. ])
    """
    _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return (last - (counts - 1) / 2)[inverse.ravel()].astype(np.float64)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: Pearson correlation of the average ranks (NaN if one is constant)."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt(np.dot(ra, ra) * np.dot(rb, rb)))
    return float(np.dot(ra, rb)) / denom if denom > 0 else float("nan")


def top_overlap(a: np.ndarray, b: np.ndarray, share: float = hub.HUB_SHARE) -> float:
    """Share of the top ``share`` of items by ``a`` that are also in the top by ``b``
    (:func:`qbscale.analysis.hubness.hubs`: largest first, ties to the lower index)."""
    first, second = hub.hubs(a, share), hub.hubs(b, share)
    return len(np.intersect1d(first, second)) / len(first)


def ks_statistic(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov ``D = max_t |F_x(t) - F_y(t)|`` (empirical CDFs).

    >>> ks_statistic(np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    1.0
    """
    xs, ys = np.sort(np.asarray(x, np.float64)), np.sort(np.asarray(y, np.float64))
    if xs.size == 0 or ys.size == 0:
        raise InputError(f"KS statistic needs two non-empty samples, got {xs.size} and {ys.size}")
    points = np.concatenate([xs, ys])
    fx = np.searchsorted(xs, points, side="right") / xs.size
    fy = np.searchsorted(ys, points, side="right") / ys.size
    return float(np.max(np.abs(fx - fy)))


def quantiles(x: np.ndarray) -> dict[str, float]:
    """``{"q05": ..., "q50": ..., ...}`` of :data:`QUANTILES` (numpy's linear rule)."""
    values = np.quantile(np.asarray(x, np.float64), QUANTILES)
    return {f"q{round(100 * q):02d}": float(v) for q, v in zip(QUANTILES, values, strict=True)}


# ---------------------------------------------------------------- the record


@dataclass
class Diagnosis:
    """The figures of :func:`diagnose` (see the module docstring).

    ``log_z`` and ``occurrence`` (``N_k``) are the per-item views compared;
    ``result`` is the run's :class:`~qbscale.types.RunResult` when the
    experiment has a ground truth (else None).
    """

    config: RunConfig
    depth: int
    n_bank: int  # bank rows used (a sample's size with bank_sample)
    n_bank_total: int
    n_queries: int  # test queries counted (the mask applied)
    n_gallery: int
    log_z: np.ndarray
    activation: np.ndarray
    occurrence: np.ndarray
    bank_top1: np.ndarray
    test_top1: np.ndarray
    activated_share: float
    result: RunResult | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        test_hubs = hub.hubs(self.occurrence)
        self.figures = {
            "spearman": spearman(self.log_z, self.occurrence),
            "hub_overlap": top_overlap(self.log_z, self.occurrence),
            "hubs_activated": float(self.activation[test_hubs].mean()),
            "activation_share": float(self.activation.mean()),
            "ks": ks_statistic(self.bank_top1, self.test_top1),
            "bank_top1": quantiles(self.bank_top1),
            "test_top1": quantiles(self.test_top1),
            "activated_share": self.activated_share,
        }

    @property
    def beta(self) -> float:
        return float(self.config.values[0])

    def __getitem__(self, name: str) -> Any:
        return self.figures[name]

    def result_figures(self) -> dict[str, float] | None:
        """R@1 before and after, and the normalised share (None without a ground truth)."""
        if self.result is None or self.result.before is None or self.result.after is None:
            return None
        return {"before": self.result.before["R1"],
                "after": self.result.after[self.config.values[0]]["R1"],
                "normalised_share": self.result.normalised_share}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (NaN as None), the run's before/after and the reading."""
        figs = {k: (None if isinstance(v, float) and np.isnan(v) else v)
                for k, v in self.figures.items()}
        out: dict[str, Any] = {
            "method": self.config.method, "beta": self.beta, "k": self.config.k,
            "depth": self.depth, "n_bank": self.n_bank, "n_bank_total": self.n_bank_total,
            "n_queries": self.n_queries, "n_gallery": self.n_gallery,
            "hub_share": hub.HUB_SHARE, **figs,
            "thresholds": dict(THRESHOLDS),
            "reading": reading(self.figures, self.result_figures()),
        }
        if self.result is not None and self.result.after is not None:
            out["before"] = self.result.before
            out["after"] = self.result.after[self.config.values[0]]
            out["normalised_share"] = self.result.normalised_share
        return out


# ---------------------------------------------------------------- the run


def diagnose(store: str | os.PathLike[str] | Experiment, beta: float = 20.0, k: int = 1,
             depth: int = 10, *, method: str = "dis",
             bank_sample: int | float | str | None = None,
             seed: int = 0, evaluate: bool = True, scheduler: Any = "threads",
             num_workers: int | None = None, progress: bool = False,
             storage_options: dict[str, Any] | None = None) -> Diagnosis:
    """Diagnose whether QB-Norm (inverted softmax) will help on ``store``, with its bank.

    Parameters
    ----------
    store : str, os.PathLike or Experiment
        A store path or URL, or an :class:`~qbscale.types.Experiment`.
    beta : float, default 20.0
        Inverse temperature of the normaliser diagnosed.
    k : int, default 1
        Top-k bank columns forming the activation set.
    depth : int, default 10
        The top-k depth of ``N_k``.
    method : {"dis", "is"}, default "dis"
        The normaliser diagnosed, as in :func:`qbscale.run`.
    bank_sample : int, float or str, optional
        Use only the bank rows
        ``numpy.random.default_rng(seed).permutation(n_bank)[:N]`` (``N`` a
        count, a fraction in (0, 1] or "all"), the rows of ``qbscale.run(...,
        bank_sample=, seed=)`` (:mod:`qbscale.engine.subsets`); only the bank
        blocks holding one are read.
    seed : int, default 0
        Seed of the ``bank_sample`` permutation.
    evaluate : bool, default True
        With a ground truth, also measure the run before and after in the same
        test read.
    scheduler : str or distributed.Client, default "threads"
        Where to compute, as in :func:`qbscale.run`.
    num_workers : int, optional
        Threads or processes of a local scheduler.
    progress : bool, default False
        Show a progress bar on stderr.
    storage_options : dict, optional
        The fsspec options of a remote store.

    Returns
    -------
    Diagnosis
        Hub agreement, domain gap, the share of rows DIS normalises, the
        metrics (with a ground truth) and a plain-language reading.
    """
    from qbscale.api import assemble
    from qbscale.engine import diagnostics
    from qbscale.engine.subsets import check_seed, sample_rows
    from qbscale.executors import get_executor
    from qbscale.storage.stores.store import open_experiment

    exp = store if isinstance(store, Experiment) else open_experiment(store, storage_options)
    diagnostics.check_method(method)
    config = RunConfig.make(float(beta), k, method)
    bank = exp.bank
    rows = sample_rows(bank_sample, check_seed(seed), bank.shape[0])
    if rows.size < bank.shape[0]:  # the rows of run(..., bank_sample=, seed=)
        bank = diagnostics.RowSample(bank, np.sort(rows))
    with_gt = evaluate and getattr(exp, "gt", None) is not None
    graph = diagnostics.build(exp, bank, config, depth, with_gt)
    from qbscale.storage.stores.store import read_whole

    executor = get_executor(scheduler, num_workers)
    try:
        with read_whole(exp):
            view, *parts = executor.compute(graph, progress)
    finally:
        executor.close()
    parts.sort(key=lambda p: p.start)
    mask = np.ones(exp.n_queries, bool) if exp.mask is None else np.asarray(exp.mask, bool)
    nk = np.zeros(exp.n_gallery, np.int64)
    for p in parts:
        nk[p.items] += p.counts
    top1 = np.concatenate([p.top1 for p in parts])[mask]
    top_idx = np.concatenate([p.top_idx for p in parts])[mask]
    norm = view.normaliser
    result = assemble(config, exp, norm, [p.row for p in parts]) if with_gt else None
    return Diagnosis(config, min(depth, exp.n_gallery), bank.shape[0], exp.bank.shape[0],
                     int(mask.sum()), exp.n_gallery, norm.shift[0], norm.activation, nk,
                     view.top1, top1, float(norm.activation[top_idx].mean()), result)
