"""Per-row top-k of similarity blocks, raw or normalised, for search.

A search streams a query block over gallery blocks and keeps, per row, the
``k`` best raw scores and the ``k`` best normalised scores of every variant
(``scale * s - shift[j]``); partials over disjoint gallery blocks merge with
:func:`qbscale.engine.reductions.row_topk`.  Ties go to the lowest gallery
index throughout.

Finding a row's top-k without sorting or partitioning the whole row:

1. a *floor*: cut the row into at least ``k`` segments and take the ``k``-th
   largest segment maximum.  At least ``k`` entries (the maxima themselves)
   are at or above it, so every entry of the row's top-k is too;
2. the *candidates*, entries at or above the floor, are found by scanning
   only the segments whose maximum reaches it (:func:`candidates`), and
   sorted by (value descending, index ascending).

Normalised scores are compared in float64 (:func:`qbscale.engine.kernels.exact_scores`),
but the block is scored in float32 first: with ``E`` a bound on the float32
error of every entry, an entry of the exact top-k has a float32 score of at
least ``floor - 2 E`` (proof in :func:`normalised_topk`), and only those
candidates are scored in float64.

Examples
--------
>>> raw_topk(np.array([[1.0, 3.0, 3.0, 2.0]], np.float32), 2, col0=10)
(array([[3., 3.]]), array([[11, 12]]))
"""

from __future__ import annotations

import numpy as np

from qbscale.engine.kernels import exact_scores

#: entries per segment when bounding the k-th largest value (short segments:
#: few entries to scan in the segments that reach the floor)
SEGMENT_LENGTH = 16
#: fewest segments per requested item (short rows use a partition instead)
SEGMENTS_PER_K = 8
#: relative float32 error allowed for ``fl32(fl32(c * s) - o)`` (5.1 * 2**-24 suffices)
FLOAT32_ERROR = 2.0**-20
#: magnitudes above which the float32 prefilter is not used
FLOAT32_SAFE = 1e30


def _round_down(floor: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``floor`` in ``dtype``, never above the float64 value."""
    out = floor.astype(dtype)
    return np.where(out > floor, np.nextafter(out, dtype.type(-np.inf)), out)


def candidates(block: np.ndarray, k: int, margin: float = 0.0
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` of every entry ``>= f - margin``, ``f`` a per-row floor
    with at least ``k`` entries of the row at or above it.

    The row is cut into ``>= k`` interleaved segments (segment ``s`` holds
    columns ``s, s + S, s + 2 S, ...``); ``f`` is the ``k``-th largest segment
    maximum.  Only segments whose maximum reaches the floor are scanned, so
    the block is read once (the maxima) and a few segments per row again.

    >>> candidates(np.array([[1.0, 5.0, 3.0, 4.0]]), 2)
    (array([0, 0]), array([1, 3]))
    """
    n_rows, n_cols = block.shape
    k = min(k, n_cols)
    n_seg = n_cols // SEGMENT_LENGTH
    length = n_cols // max(n_seg, 1)
    if n_seg < k * SEGMENTS_PER_K or not block.flags.c_contiguous:
        kth = np.partition(block, n_cols - k, axis=1)[:, n_cols - k]
        floor = _round_down(kth.astype(np.float64) - margin, block.dtype)
        rows, cols = np.nonzero(block >= floor[:, None])
        return rows, cols
    main = n_seg * length
    itemsize = block.itemsize
    # the maximum over the middle axis runs along contiguous memory
    strided = np.lib.stride_tricks.as_strided(
        block, (n_rows, length, n_seg), (n_cols * itemsize, n_seg * itemsize, itemsize),
        writeable=False)
    maxima = strided.max(axis=1)
    tail = block[:, main:]
    every = np.concatenate([maxima, tail.max(axis=1, keepdims=True)], axis=1) \
        if main < n_cols else maxima
    kth = np.partition(every, every.shape[1] - k, axis=1)[:, every.shape[1] - k]
    floor = _round_down(kth.astype(np.float64) - margin, block.dtype)
    seg_r, seg_s = np.nonzero(maxima >= floor[:, None])
    values = strided[seg_r, :, seg_s]  # (segments, length): the scanned entries
    hit, pos = np.divmod(np.flatnonzero(values >= floor[seg_r, None]), length)
    rows, cols = seg_r[hit], seg_s[hit] + n_seg * pos
    if main < n_cols:
        tail_r, tail_c = np.nonzero(tail >= floor[:, None])
        rows = np.concatenate([rows, tail_r])
        cols = np.concatenate([cols, tail_c + main])
    return rows, cols


def from_candidates(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_rows: int,
                    k: int, col0: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of each row's candidates, ties to the lowest column.

    Every row has at least ``k`` candidates.
    Returns float64 values and int64 global indices (``col0`` added), shape
    ``(n_rows, k)``.
    """
    order = np.lexsort((cols, -values, rows))
    starts = np.searchsorted(rows[order], np.arange(n_rows))
    take = order[starts[:, None] + np.arange(k)]
    return values[take].astype(np.float64), cols[take].astype(np.int64) + col0


def raw_topk(block: np.ndarray, k: int, col0: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``min(k, n_cols)`` largest entries of each row (ties to the lowest column).

    Returns ``(values, indices)``: float64 values, int64 global column indices,
    by decreasing value then increasing index.
    """
    n_rows, n_cols = block.shape
    k = min(k, n_cols)
    rows, cols = candidates(block, k)
    return from_candidates(rows, cols, block[rows, cols], n_rows, k, col0)


def _error_bound(block: np.ndarray, scale: float, shift: np.ndarray,
                 smax: float | None = None) -> float | None:
    """A bound on ``|fl32 score - exact score|`` over the block, or None when
    float32 cannot be trusted (non-finite or huge values, an extreme scale).
    ``smax`` bounds ``|s|`` over the block (measured when not given)."""
    if block.size == 0:
        return None
    if smax is None:
        smax = max(abs(float(block.max())), abs(float(block.min())))
    omax = float(np.max(np.abs(shift))) if shift.size else 0.0
    if not (np.isfinite(smax) and np.isfinite(omax) and 1e-30 <= scale <= 1e30
            and scale * smax < FLOAT32_SAFE and omax < FLOAT32_SAFE):
        return None
    return FLOAT32_ERROR * (scale * smax + omax) + 1e-30


def normalised_topk(block: np.ndarray, k: int, scale: float, shift: np.ndarray, col0: int = 0,
                    scratch: np.ndarray | None = None, smax: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of ``scale * s - shift`` per row, scored as :func:`exact_scores` (float64).

    ``shift`` covers the block's columns.  ``scratch`` is an optional float32
    buffer of at least ``block.size`` elements; ``smax``
    an optional bound on ``|s|`` over the block (e.g. from embedding norms).

    Let ``n`` be an entry's exact score and ``a = fl32(fl32(c32 * s32) - o32)``
    its float32 score; at most five relative roundings separate them, so
    ``|a - n| <= 5.1 * 2**-24 * (|c s| + |o|) <= E``, with ``E`` from the
    block's largest ``|s|`` and ``|o|`` (plus 1e-30 for underflow).  At least
    ``k`` entries have ``a >= f`` (``f`` the floor of :func:`candidates` on ``a``), so
    their exact scores are ``>= f - E`` and so is the row's ``k``-th best
    exact score ``t``.  An entry with ``n >= t`` then has ``a >= n - E >=
    f - 2 E``: the candidates ``a >= f - 2 E`` hold the exact top-k, ties at
    ``t`` included.

    Examples
    --------
    >>> b = np.array([[0.5, 0.1, 0.3]], np.float32)
    >>> normalised_topk(b, 2, 2.0, np.array([0.0, -1.0, 0.0]))[1]
    array([[1, 0]])
    """
    n_rows, n_cols = block.shape
    k = min(k, n_cols)
    error = _error_bound(block, scale, shift, smax)
    if error is None:  # every entry in float64
        exact = exact_scores(block, scale, shift)
        return raw_topk(exact, k, col0)
    if scratch is None or scratch.size < block.size:
        scratch = np.empty(block.size, np.float32)
    approx = scratch[: block.size].reshape(block.shape)
    with np.errstate(over="ignore", under="ignore"):
        np.multiply(block, np.float32(scale), out=approx, casting="same_kind")
        np.subtract(approx, shift.astype(np.float32), out=approx)
    rows, cols = candidates(approx, k, 2 * error)
    values = exact_scores(block[rows, cols], scale, shift[cols])
    return from_candidates(rows, cols, values, n_rows, k, col0)
