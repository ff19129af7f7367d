"""The records every layer shares: a matrix source, an experiment, results.

A leaf module: it imports nothing else of qbscale at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from qbscale.config import RunConfig
    from qbscale.engine.positives import Positives
    from qbscale.engine.statistics import GalleryStatistics


class MatrixSource(Protocol):
    """What the engine needs of a matrix."""

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def row_chunks(self) -> tuple[int, ...]: ...

    @property
    def col_chunks(self) -> tuple[int, ...]: ...

    def read(self, i: int, c: int) -> np.ndarray: ...


@dataclass
class Experiment:
    """A ready-to-run experiment: block sources plus ground truth and mask.

    Parameters
    ----------
    bank, test : MatrixSource
        Querybank x gallery and test-query x gallery similarities.
    gt : numpy.ndarray or None
        (n_queries,) int64, the ground-truth gallery index of every test query;
        None when nobody knows the right answers (runs then give top-k and
        scores, no metrics).
    mask : numpy.ndarray or None
        (n_queries,) bool, False for queries left out of the metrics.
    url : str, optional
        The store, when the experiment lives in one (results go there).
    attrs : dict, optional
        The store's attributes.
    storage_options : dict, optional
        The fsspec options of a remote store.
    positives : Positives, optional
        Several correct gallery items per query
        (:class:`qbscale.engine.positives.Positives`), instead of ``gt``;
        queries without one are left out of the metrics.
    excluded : numpy.ndarray or None
        (n,) int64, sorted gallery columns that are no competitors (missing captions):
        scored ``-inf`` before anything is ranked.
    """

    bank: MatrixSource
    test: MatrixSource
    gt: np.ndarray | None
    mask: np.ndarray | None
    url: str | None = None
    attrs: dict[str, Any] | None = None
    storage_options: dict[str, Any] | None = None
    positives: Positives | None = None
    excluded: np.ndarray | None = None

    @property
    def n_gallery(self) -> int:
        return self.test.shape[1]

    @property
    def n_queries(self) -> int:
        return self.test.shape[0]

    @property
    def has_ground_truth(self) -> bool:
        return self.gt is not None or self.positives is not None

    @property
    def evaluated(self) -> np.ndarray | None:
        """The queries the metrics count: the mask's, less those without a positive.

        Returns
        -------
        numpy.ndarray or None
            (n_queries,) bool; None when every query counts.
        """
        keep = self.mask
        if self.positives is not None:
            has = self.positives.evaluated()
            keep = has if keep is None else keep & has
        return keep


@dataclass
class RowResult:
    """Per-query results of one test row block."""

    start: int
    base_rank: np.ndarray | None  # (r,); None without a ground truth
    rank: np.ndarray | None  # (n_values, r)
    normalised: np.ndarray  # (r,) bool
    top_idx: np.ndarray  # (r,) raw top-1 gallery index
    topk_idx: np.ndarray | None = None  # (n_values or 1, r, K)
    topk_score: np.ndarray | None = None
    base_topk_idx: np.ndarray | None = None  # (r, K) top-K of the raw scores
    scores: np.ndarray | None = None  # (n_values, r, n_gallery) kept for in-memory runs
    base_ap: np.ndarray | None = None  # (r,) average precision of the raw scores
    ap: np.ndarray | None = None  # (n_values, r) after normalisation

    @property
    def n_rows(self) -> int:
        return len(self.normalised)


@dataclass
class RunResult:
    """Everything a run measured, as :func:`qbscale.run` returns it.

    Parameters
    ----------
    config : RunConfig
        The run's settings (method, k, values of the swept parameter, ...).
    before : dict of str to float or None
        Metrics of the raw similarities (the baseline); None without a ground
        truth.
    after : dict of float to dict, or None
        ``{value: metrics}`` after normalisation, one per value of the method's
        swept parameter (beta; alpha for nnn, kc for csls); empty for
        ``method="none"``; None without a ground truth.
    base_ranks : numpy.ndarray or None
        (n_queries,) 0-based baseline ranks (ties averaged); None without a
        ground truth.
    ranks : dict of float to numpy.ndarray
        ``{value: (n_queries,) ranks}`` after normalisation (empty without a
        ground truth).
    normalised : numpy.ndarray
        (n_queries,) bool, the rows that were normalised.
    normaliser : GalleryStatistics
        The fitted :class:`~qbscale.engine.statistics.GalleryStatistics` (its
        ``shift``: (n_values, n_gallery), ``logZ`` for inverted softmax; its
        ``activation``: the activation set).
    mask : numpy.ndarray or None
        (n_queries,) bool, False for queries left out of the metrics.
    topk_index, topk_score : numpy.ndarray or None
        (n_values, n_queries, K) best items and their scores after
        normalisation (with ``topk=K``).
    base_topk_index : numpy.ndarray or None
        (n_queries, K) the best items of the raw scores.
    scores : numpy.ndarray or None
        (n_values, n_queries, n_gallery) float64 normalised matrix, for an
        in-memory experiment run with ``save_scores=True`` (a store's run
        writes it into the store instead).
    seconds : float
        Wall time of the run.
    extra : dict
        Further figures of the run (e.g. resumed blocks).

    Attributes
    ----------
    activation_size : int
        Number of gallery items in the activation set.
    shift : numpy.ndarray or None
        (n_values, n_gallery) per-gallery shifts of the variants.
    normalised_share : float
        Share of the (unmasked) test queries whose row was normalised.
    has_ground_truth : bool
        False for a run over queries whose right answers nobody knows.
    """

    config: RunConfig
    before: dict[str, float] | None
    after: dict[float, dict[str, float]] | None
    base_ranks: np.ndarray | None
    ranks: dict[float, np.ndarray]
    normalised: np.ndarray
    normaliser: GalleryStatistics
    mask: np.ndarray | None
    topk_index: np.ndarray | None = None
    topk_score: np.ndarray | None = None
    base_topk_index: np.ndarray | None = None
    scores: np.ndarray | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_gallery(self) -> int:
        return self.normaliser.n_gallery

    @property
    def activation_size(self) -> int:
        """Number of gallery items in the activation set."""
        return int(np.count_nonzero(self.normaliser.activation))

    @property
    def shift(self) -> np.ndarray | None:
        """(n_values, n_gallery) per-gallery shifts of the variants (None: baseline)."""
        return self.normaliser.shift

    @property
    def has_ground_truth(self) -> bool:
        """False for a run over queries whose right answers nobody knows."""
        return self.before is not None

    @property
    def n_queries(self) -> int:
        return int(self.normalised.size)

    @property
    def normalised_share(self) -> float:
        """Share of (unmasked) test queries whose row was normalised."""
        rows = self.normalised if self.mask is None else self.normalised[self.mask]
        return float(rows.mean()) if rows.size else 0.0

    def table(self) -> list[dict[str, Any]]:
        """Rows of rounded metrics: the baseline, then one per value.

        Returns
        -------
        list of dict
            One row per method and value (``"method"``, ``"beta"``, ``"R1"``, ...);
            empty without a ground truth.
        """
        from qbscale.engine.metrics import rounded

        if self.before is None or self.after is None:
            return []
        rows = [{"method": "none", "beta": None, **rounded(self.before)}]
        for beta, m in self.after.items():
            rows.append({"method": self.config.label, "beta": beta,
                         "param": self.config.variant_name, **rounded(m)})
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: the unrounded metrics plus the rounded table.

        Returns
        -------
        dict
            Settings, ``"before"``, ``"after"`` and ``"table"``, as written by
            ``qbscale run --json``.
        """
        return {
            "method": self.config.method,
            "k": self.config.k,
            "values": list(self.config.values),
            "variant": self.config.variant_name,
            "dynamic": self.config.is_dynamic,
            "params": self.config.param_dict,
            "before": self.before,
            "after": None if self.after is None else {str(b): m for b, m in self.after.items()},
            "table": self.table(),
            "normalised_share": self.normalised_share,
            "activation_size": self.activation_size,
            "n_gallery": self.n_gallery,
            "n_queries": self.n_queries,
            "n_evaluated": (0 if self.before is None else
                            self.n_queries if self.mask is None else int(self.mask.sum())),
            "seconds": self.seconds,
            **({"bank_sample": self.config.bank_sample, "seed": self.config.seed}
               if self.config.bank_sample is not None else {}),
        }
