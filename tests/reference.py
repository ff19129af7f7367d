"""A dense numpy oracle of QB-Norm, written from the formulas (not from the
engine): whole matrices in memory, full sorts, no chunking."""

from __future__ import annotations

import numpy as np


def log_normaliser(bank: np.ndarray, beta: float) -> np.ndarray:
    """logZ[j] = logsumexp_q(beta * B[q, j]), in float64."""
    return np.logaddexp.reduce(beta * bank.astype(np.float64), axis=0)


def activation_set(bank: np.ndarray, k: int) -> np.ndarray:
    """Union of each bank row's top-k columns (stable sort: ties -> low index)."""
    order = np.argsort(-bank.astype(np.float64), axis=1, kind="stable")[:, :k]
    mask = np.zeros(bank.shape[1], bool)
    mask[order.ravel()] = True
    return mask


def normalised_rows(test: np.ndarray, bank: np.ndarray, method: str, k: int) -> np.ndarray:
    if method == "is":
        return np.ones(test.shape[0], bool)
    if method == "none":
        return np.zeros(test.shape[0], bool)
    top1 = np.argsort(-test.astype(np.float64), axis=1, kind="stable")[:, 0]
    return activation_set(bank, k)[top1]


def scores(test: np.ndarray, bank: np.ndarray, beta: float, k: int = 1,
           method: str = "dis") -> np.ndarray:
    """The scored matrix: beta*T - logZ on normalised rows, T elsewhere."""
    out = test.astype(np.float64).copy()
    rows = normalised_rows(test, bank, method, k)
    out[rows] = beta * out[rows] - log_normaliser(bank, beta)
    return out


def ground_truth(n_queries: int, n_gallery: int) -> np.ndarray:
    return np.arange(n_queries) // (n_queries // n_gallery)


def ranks(sims: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """0-based rank of the ground truth by a full sort, ties averaged."""
    out = np.empty(sims.shape[0])
    for i, row in enumerate(sims):
        order = np.sort(row)[::-1]
        positions = np.nonzero(order == row[gt[i]])[0]
        out[i] = positions.mean()
    return out


def metrics(r: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """The reference code's cols2metrics on 0-based ranks."""
    if mask is not None:
        r = r[mask.astype(bool)]
    n = r.size
    out = {
        "R1": 100 * np.sum(r == 0) / n,
        "R5": 100 * np.sum(r < 5) / n,
        "R10": 100 * np.sum(r < 10) / n,
        "R50": 100 * np.sum(r < 50) / n,
        "MedR": np.median(r) + 1,
        "MeanR": np.mean(r) + 1,
    }
    r1, r5, r10 = out["R1"], out["R5"], out["R10"]
    out["geometric_mean_R1-R5-R10"] = (r1 * r5 * r10) ** (1 / 3)
    return {key: float(v) for key, v in out.items()}


def topk(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k columns per row by a full stable argsort (ties -> low index)."""
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sims, idx, axis=1)


# --------------------------------------------------------------------------
# the querybank normaliser family (qbscale.engine.methods), from the formulas
# --------------------------------------------------------------------------


def top_mean(bank: np.ndarray, k: int) -> np.ndarray:
    """Mean of each column's k largest values (all of them when fewer rows),
    summed in float64 from the largest down."""
    desc = np.sort(bank, axis=0)[::-1][:k]
    total = np.zeros(bank.shape[1])
    for row in desc:
        total += row
    return total / len(desc)


def variant(method: str, value: float, bank: np.ndarray, params: dict[str, float],
            gallery_bank: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """``(scale, shift)`` of one variant: rows score ``scale * s - shift``.

    is/dis: beta, logZ; csls: 2, mean top-kc bank similarity; nnn: 1,
    alpha * mean top-k bank similarity; dual-is: beta + beta_g,
    logZ(beta) + logsumexp_g(beta_g * G).
    """
    if method in ("is", "dis"):
        return value, log_normaliser(bank, value)
    if method == "csls":
        return 2.0, top_mean(bank, int(value))
    if method == "nnn":
        return 1.0, value * top_mean(bank, int(params["nnn_k"]))
    if method == "dual-is":
        g = params["gallery_beta"]
        return value + g, log_normaliser(bank, value) + log_normaliser(gallery_bank, g)
    raise ValueError(method)


def method_scores(test: np.ndarray, bank: np.ndarray, method: str, value: float,
                  params: dict[str, float], k: int = 1, dynamic: bool = False,
                  gallery_bank: np.ndarray | None = None) -> np.ndarray:
    """The scored matrix of any method: ``scale*T - shift`` on rescored rows."""
    rows = normalised_rows(test, bank, "dis" if dynamic or method == "dis" else "is", k)
    scale, shift = variant(method, value, bank, params, gallery_bank)
    out = test.astype(np.float64).copy()
    out[rows] = out[rows] * scale - shift
    return out


# --------------------------------------------------------------------------
# diagnostics (qbscale.analysis.diagnose), from the definitions
# --------------------------------------------------------------------------


def tie_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, each tie group given the mean of the positions it spans."""
    x = np.asarray(x, dtype=np.float64)
    order = np.sort(x)
    out = np.empty(x.size)
    for i, v in enumerate(x):
        positions = np.nonzero(order == v)[0] + 1
        out[i] = positions.mean()
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the tie-averaged ranks (NaN when one is constant)."""
    ra, rb = tie_ranks(a), tie_ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def ks(x: np.ndarray, y: np.ndarray) -> float:
    """sup_t |F_x(t) - F_y(t)| over every sample point t (the sup is reached there)."""
    points = np.concatenate([x, y])
    return float(max(abs(np.mean(x <= t) - np.mean(y <= t)) for t in points))


def top_share(values: np.ndarray, share: float = 0.01) -> set[int]:
    """The ceil(share * n) items with the largest values (ties to the lower index)."""
    n = max(1, int(np.ceil(share * len(values))))
    return set(np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")[:n].tolist())


def occurrence(test: np.ndarray, depth: int, mask: np.ndarray | None = None) -> np.ndarray:
    """N_k: how many (unmasked) rows have each item in their raw top-depth."""
    idx, _ = topk(test.astype(np.float64), min(depth, test.shape[1]))
    if mask is not None:
        idx = idx[mask.astype(bool)]
    return np.bincount(idx.ravel(), minlength=test.shape[1])


# --------------------------------------------------------------------------
# several positives per query; the other direction (the reference's v2t_metrics)
# --------------------------------------------------------------------------

#: the reference's distance for a missing caption (v2t_metrics' MISSING_VAL)
MISSING_VAL = 1e8


def v2t_ranks(sims: np.ndarray, query_mask: np.ndarray | None = None) -> np.ndarray:
    """The reference code's ``v2t_metrics`` ranks of a text -> video matrix.

    ``sims`` is (n_captions, n_videos); it is transposed, and each video's
    rank is the smallest tie-averaged rank of its ``n_captions // n_videos``
    captions in its row of distances, missing captions (``query_mask``
    False) set to a distance of 1e8 and skipped.  A row's ranks are found
    by comparing the sorted distances with the caption's, as the reference
    does.
    """
    dists = -np.asarray(sims, dtype=np.float64).T
    n_videos, n_caps = dists.shape
    per_video = n_caps // n_videos
    out = np.empty(n_videos)
    for ii in range(n_videos):
        row = dists[ii].copy()
        if query_mask is not None:
            row[np.logical_not(np.asarray(query_mask).reshape(-1))] = MISSING_VAL
        ordered = np.sort(row)
        best = np.inf
        for jj in range(ii * per_video, (ii + 1) * per_video):
            if row[jj] == MISSING_VAL:
                continue
            best = min(best, np.where((ordered - row[jj]) == 0)[0].mean())
        out[ii] = best
    return out


def v2t_scores(sims: np.ndarray, bank: np.ndarray | None, method: str, value: float,
               params: dict[str, float], k: int, query_mask: np.ndarray | None,
               dynamic: bool = False) -> np.ndarray:
    """The video -> text matrix (videos x captions) scored by ``method``, its
    missing captions at ``-inf`` first (no video's top-1, no competitor)."""
    rows = np.asarray(sims, dtype=np.float64).T.copy()
    if query_mask is not None:
        rows[:, ~np.asarray(query_mask, bool).reshape(-1)] = -np.inf
    if method == "none":
        return rows
    assert bank is not None
    with np.errstate(invalid="ignore"):
        return method_scores(rows, bank, method, value, params, k, dynamic)


def positive_ranks(scores: np.ndarray, positives: list[list[int]]) -> np.ndarray:
    """0-based tie-averaged rank of each row's best-ranked positive, by a full sort."""
    out = np.empty(scores.shape[0])
    for i, row in enumerate(scores):
        order = np.sort(row)[::-1]
        out[i] = min(np.nonzero(order == row[p])[0].mean() for p in positives[i])
    return out


def average_precision(scores: np.ndarray, positives: list[list[int]]) -> np.ndarray:
    """Mean over each row's positives of (tie-averaged position among the
    positives) / (tie-averaged position among all entries), both 1-based
    from sorted lists: the usual AP when nothing is tied."""
    out = np.empty(scores.shape[0])
    for i, row in enumerate(scores):
        order = np.sort(row)[::-1]
        mine = np.sort(row[positives[i]])[::-1]
        out[i] = np.mean([(np.nonzero(mine == row[p])[0].mean() + 1)
                          / (np.nonzero(order == row[p])[0].mean() + 1)
                          for p in positives[i]])
    return out


def grouped_positives(n_videos: int, per_video: int,
                      query_mask: np.ndarray | None = None) -> list[list[int]]:
    """Each video's captions (``v * per_video ...``), less the missing ones."""
    keep = np.ones(n_videos * per_video, bool) if query_mask is None else \
        np.asarray(query_mask, bool).reshape(-1)
    return [[j for j in range(v * per_video, (v + 1) * per_video) if keep[j]]
            for v in range(n_videos)]
