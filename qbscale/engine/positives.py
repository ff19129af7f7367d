"""Ground truths with several correct gallery items per query (numpy only).

A :class:`Positives` is a set of positives per query in compressed rows:
query ``i``'s positives are ``indices[indptr[i]:indptr[i + 1]]`` (sorted,
distinct gallery columns).  One positive per query is the classic ground
truth (``gt``); a video with its 20 captions, a COCO image with its 5, or
TREC-style qrels give several.

How a query is ranked with several positives, as the reference code's
``v2t_metrics`` ranks a video:

* its rank is the tie-averaged rank of its **best-ranked positive**.  The
  rank rule ``#(score > g) + (#(score == g) - 1) / 2`` decreases as ``g``
  grows, so that is the rank of the positive with the highest score: the
  test stage counts against the positives' maximum instead of the one
  ground truth (per variant, from the normalised scores);
* its **average precision** is over all its positives: positive ``p``
  scoring ``t_p`` has the 1-based tie-averaged rank
  ``R_p = #(score > t_p) + (#(score == t_p) + 1) / 2`` among the row's
  items and ``h_p`` likewise among the positives alone; ``AP = mean_p
  h_p / R_p`` (without ties, the usual ``precision@rank`` average).  One
  positive gives ``AP = 1 / (rank + 1)``, the reciprocal rank;
* *excluded* gallery columns (missing captions) are no competitors: the
  test stage scores them ``-inf`` before anything is counted, compared or
  ranked, as the reference sets them to a distance larger than any other.

Everything here works on one block of rows (and a slice of the gallery
columns), so it streams as the rest of the test stage does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qbscale.engine import kernels
from qbscale.errors import InputError


@dataclass(frozen=True, eq=False)
class Positives:
    """Positives per query, in compressed rows.

    Attributes
    ----------
    indptr : (n_queries + 1,) int64
        Query ``i``'s positives are ``indices[indptr[i]:indptr[i + 1]]``.
    indices : (n_pairs,) int64
        Gallery columns, sorted and distinct within each query.
    n_gallery : int
        Columns of the gallery.
    """

    indptr: np.ndarray
    indices: np.ndarray
    n_gallery: int

    @property
    def n_queries(self) -> int:
        return len(self.indptr) - 1

    @property
    def counts(self) -> np.ndarray:
        """(n_queries,) number of positives of each query."""
        return np.diff(self.indptr)

    @property
    def several(self) -> bool:
        """True when some query has more than one positive."""
        return bool(self.n_queries) and int(self.counts.max()) > 1

    def row_ids(self) -> np.ndarray:
        """(n_pairs,) the query (0-based, within these rows) of every positive."""
        return np.repeat(np.arange(self.n_queries), self.counts)

    @classmethod
    def single(cls, gt: np.ndarray, n_gallery: int) -> Positives:
        """One positive per query: ``gt[i]``.

        >>> Positives.single(np.array([2, 0]), 3).indices
        array([2, 0])
        """
        gt = np.asarray(gt, np.int64)
        return cls(np.arange(len(gt) + 1, dtype=np.int64), gt.copy(), int(n_gallery))

    @classmethod
    def from_pairs(cls, queries: np.ndarray, items: np.ndarray, n_queries: int,
                   n_gallery: int, label: str = "positives") -> Positives:
        """Positives from ``(query, item)`` pairs (any order; repeats count once).

        Raises
        ------
        InputError
            A query or item outside ``[0, n_queries)`` / ``[0, n_gallery)``,
            named with the first offending pair.

        >>> p = Positives.from_pairs(np.array([1, 0, 1]), np.array([4, 2, 0]), 3, 5)
        >>> p.indptr, p.indices
        (array([0, 1, 3, 3]), array([2, 0, 4]))
        """
        q = np.asarray(queries).ravel()
        g = np.asarray(items).ravel()
        if q.shape != g.shape:
            raise InputError(f"{label}: {q.size} queries but {g.size} items")
        for name, values, bound in (("query", q, n_queries), ("item", g, n_gallery)):
            if values.size and values.dtype.kind not in "iu":
                raise InputError(f"{label}: {name} numbers are {values.dtype}; expected "
                                 "integers")
            bad = np.flatnonzero((values < 0) | (values >= bound))
            if bad.size:
                i = int(bad[0])
                raise InputError(f"{label}: pair {i} has {name} {values[i]}, outside "
                                 f"[0, {bound}) ({bad.size} pairs are)")
        q, g = q.astype(np.int64), g.astype(np.int64)
        key = np.unique(q * np.int64(n_gallery) + g)
        q, g = np.divmod(key, np.int64(n_gallery)) if n_gallery else (key, key)
        indptr = np.zeros(n_queries + 1, np.int64)
        np.cumsum(np.bincount(q, minlength=n_queries), out=indptr[1:])
        return cls(indptr, g.astype(np.int64), int(n_gallery))

    @classmethod
    def grouped(cls, n_queries: int, per_query: int, keep: np.ndarray | None = None
                ) -> Positives:
        """Query ``v``'s positives are columns ``v * per_query ... (v + 1) * per_query - 1``
        (a video's captions), less those ``keep`` marks False (missing captions).

        >>> Positives.grouped(2, 3, np.array([1, 1, 0, 1, 0, 1], bool)).indices
        array([0, 1, 3, 5])
        """
        n_gallery = n_queries * per_query
        cols = np.arange(n_gallery, dtype=np.int64)
        counts = np.full(n_queries, per_query, np.int64)
        if keep is not None:
            keep = np.asarray(keep, bool).ravel()
            cols = cols[keep]
            counts = keep.reshape(n_queries, per_query).sum(axis=1)
        indptr = np.zeros(n_queries + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr, cols, n_gallery)

    def rows(self, start: int, stop: int) -> Positives:
        """The positives of queries ``start .. stop - 1`` (a row block)."""
        a, b = int(self.indptr[start]), int(self.indptr[stop])
        return Positives(self.indptr[start:stop + 1] - a, self.indices[a:b], self.n_gallery)

    def filled(self) -> Positives:
        """Every query without a positive given column 0 as a stand-in, so each
        row has a finite score to count against (such queries are left out of
        the metrics: :meth:`evaluated`)."""
        empty = self.counts == 0
        if not empty.any():
            return self
        counts = np.where(empty, 1, self.counts)
        indptr = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        indices = np.zeros(int(indptr[-1]), np.int64)
        full = np.repeat(~empty, counts)
        indices[full] = self.indices
        return Positives(indptr, indices, self.n_gallery)

    def evaluated(self) -> np.ndarray:
        """(n_queries,) bool: queries with at least one positive."""
        return np.asarray(self.counts > 0)


# ---------------------------------------------------------------- block functions


def gather(block: np.ndarray, col0: int, pos: Positives) -> np.ndarray:
    """(n_pairs,) float64 raw score of every positive held in this block's
    columns (``col0 ..``), NaN for positives in other columns."""
    out = np.full(len(pos.indices), np.nan)
    here = (pos.indices >= col0) & (pos.indices < col0 + block.shape[1])
    rows = pos.row_ids()[here]
    out[here] = block[rows, pos.indices[here] - col0]
    return out


def merge_gathered(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Combine two :func:`gather` partials over disjoint column slices."""
    return np.where(np.isnan(a), b, a)


def thresholds(values: np.ndarray, pos: Positives, shift: np.ndarray | None,
               scales: np.ndarray) -> np.ndarray:
    """``(1 + n_variants, n_pairs)``: every positive's raw score, then its score
    under each variant (:func:`qbscale.engine.kernels.exact_scores`, bit for
    bit the score counting gives the same entry)."""
    n_var = 0 if shift is None else len(scales)
    out = np.empty((1 + n_var, len(values)))
    out[0] = values
    for b in range(n_var):
        assert shift is not None
        kernels.exact_scores(values, float(scales[b]), shift[b, pos.indices], out=out[1 + b])
    return out


def best(scores: np.ndarray, pos: Positives) -> np.ndarray:
    """``(n, n_queries)``: each query's highest positive score, per row of
    ``scores`` (:func:`thresholds`); every query needs a positive (:meth:`Positives.filled`)."""
    return np.maximum.reduceat(scores, pos.indptr[:-1], axis=1) if scores.shape[1] else \
        np.empty((scores.shape[0], 0))


def exclude(block: np.ndarray, col0: int, excluded: np.ndarray | None) -> np.ndarray:
    """``block`` with its excluded columns (sorted global indices) at ``-inf``
    (a copy, only when the block holds one of them)."""
    if excluded is None or not len(excluded):
        return block
    lo, hi = np.searchsorted(excluded, [col0, col0 + block.shape[1]])
    if lo == hi:
        return block
    out = np.array(block, copy=True)
    out[:, excluded[lo:hi] - col0] = -np.inf
    return out


def pair_counts(block: np.ndarray, col0: int, pos: Positives, limits: np.ndarray,
                shift: np.ndarray | None, scales: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(above, equal)``, each ``(1 + n_variants, n_pairs)``: how many of this
    block's entries score above / equal to each positive's own score
    (``limits``, :func:`thresholds`), raw then per variant; scored in float64
    as :func:`qbscale.engine.kernels.exact_scores` scores them.

    Only a row's entries at or above its lowest positive score can count:
    those are gathered (one comparison per entry), sorted per row, and each
    positive's counts found by binary search.  Every row needs a positive
    (:meth:`Positives.filled`)."""
    n_sets = limits.shape[0]
    above = np.zeros((n_sets, len(pos.indices)), np.int64)
    equal = np.zeros_like(above)
    n_rows, width = pos.n_queries, block.shape[1]
    if not n_rows or not len(pos.indices):
        return above, equal
    lows = np.minimum.reduceat(limits, pos.indptr[:-1], axis=1)  # (n_sets, n_rows)
    step = max(1, kernels.SLAB_ELEMENTS // max(width, 1))
    buf = np.empty((step, width))
    for s in range(n_sets):
        for r0 in range(0, n_rows, step):
            x = buf[:min(step, n_rows - r0)]
            if s == 0:  # raw scores compare exactly in their own dtype
                x = block[r0:r0 + len(x)]
            else:
                assert shift is not None
                kernels.exact_scores(block[r0:r0 + len(x)], float(scales[s - 1]),
                                     shift[s - 1, col0:col0 + width], out=x)
            rows, cols = np.nonzero(x >= lows[s, r0:r0 + len(x), None])
            vals = x[rows, cols]
            order = np.lexsort((vals, rows))
            vals, rows = vals[order], rows[order]
            bounds = np.searchsorted(rows, np.arange(len(x) + 1))
            for j in range(len(x)):
                a, b = int(pos.indptr[r0 + j]), int(pos.indptr[r0 + j + 1])
                seg = vals[bounds[j]:bounds[j + 1]]
                t = limits[s, a:b]
                right = np.searchsorted(seg, t, side="right")
                above[s, a:b] = len(seg) - right
                equal[s, a:b] = right - np.searchsorted(seg, t, side="left")
    return above, equal


def average_precision(above: np.ndarray, equal: np.ndarray, limits: np.ndarray,
                      pos: Positives) -> np.ndarray:
    """``(n_sets, n_queries)`` average precision over every query's positives,
    from :func:`pair_counts` over the whole gallery (see the module's rule)."""
    rank = above + (equal + 1) / 2.0  # 1-based, ties averaged, among all items
    out = np.zeros((limits.shape[0], pos.n_queries))
    for r in range(pos.n_queries):
        a, b = int(pos.indptr[r]), int(pos.indptr[r + 1])
        if a == b:
            continue
        t = limits[:, a:b]
        over = (t[:, None, :] > t[:, :, None]).sum(axis=2)  # positives above each one
        same = (t[:, None, :] == t[:, :, None]).sum(axis=2)
        among = over + (same + 1) / 2.0
        out[:, r] = np.mean(among / rank[:, a:b], axis=1)
    return out
