"""Ranks -> retrieval metrics, exactly as the QB-Norm reference code computes
them.

Ranks are 0-based with ties averaged (a ground truth tied with two other
items at the top has rank 1.0).  R@1 counts ranks equal to 0, R@K (K > 1)
ranks below K, as the reference does; MedR and MeanR are the median and mean
rank plus one; the geometric mean is over R@1, R@5 and R@10.  Every figure is
rounded to one decimal only for display (:func:`rounded`).
"""

from __future__ import annotations

import numpy as np

NAMES = ("R1", "R5", "R10", "R50", "MedR", "MeanR", "geometric_mean_R1-R5-R10")
#: added with several positives per query
POSITIVE_NAMES = ("MRR", "mAP")


def retrieval_metrics(ranks: np.ndarray, mask: np.ndarray | None = None,
                      ap: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of one ranking.

    Parameters
    ----------
    ranks : (n_queries,) 0-based ranks of each query's best-ranked positive
    mask : optional (n_queries,) bool; False drops the query
    ap : optional (n_queries,) average precision over each query's positives
        (:mod:`qbscale.engine.positives`); given, the metrics add ``MRR``
        (mean of ``1 / (rank + 1)``) and ``mAP``, both in percent like R@K

    Examples
    --------
    >>> m = retrieval_metrics(np.array([0.0, 1.0, 0.5, 20.0]))
    >>> m["R1"], m["R5"], m["MedR"], m["MeanR"]
    (25.0, 75.0, 1.75, 6.375)
    """
    cols = np.asarray(ranks, dtype=np.float64).ravel()
    if mask is not None:
        cols = cols[np.asarray(mask, dtype=bool).ravel()]
        if ap is not None:
            ap = np.asarray(ap, dtype=np.float64).ravel()[np.asarray(mask, dtype=bool).ravel()]
    n = cols.size
    if n == 0:
        raise ValueError("no queries left to evaluate (the mask drops them all)")
    out = {
        "R1": 100 * float(np.sum(cols == 0)) / n,
        "R5": 100 * float(np.sum(cols < 5)) / n,
        "R10": 100 * float(np.sum(cols < 10)) / n,
        "R50": 100 * float(np.sum(cols < 50)) / n,
        "MedR": float(np.median(cols)) + 1,
        "MeanR": float(np.mean(cols)) + 1,
    }
    recalls = np.array([out["R1"], out["R5"], out["R10"]])
    out["geometric_mean_R1-R5-R10"] = (
        float(np.exp(np.mean(np.log(recalls)))) if (recalls > 0).all() else 0.0
    )
    if ap is not None:
        out["MRR"] = 100 * float(np.mean(1.0 / (cols + 1)))
        out["mAP"] = 100 * float(np.mean(ap))
    return out


def rounded(metrics: dict[str, float]) -> dict[str, float]:
    """Every figure rounded to one decimal, as the reference prints them."""
    return {name: round(value, 1) for name, value in metrics.items()}
