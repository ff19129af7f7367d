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

TopK = tuple[np.ndarray, np.ndarray]


def _round_down(floor: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``floor`` in ``dtype``, never above the float64 value."""
    out = floor.astype(dtype)
    return np.where(out > floor, np.nextafter(out, dtype.type(-np.inf)), out)


def _layout(n_cols: int, segment_length: int) -> tuple[int, int]:
    """``(segments, length)`` of a row of ``n_cols`` cut into interleaved
    segments of about ``segment_length`` (the tail: ``n_cols - segments * length``)."""
    n_seg = n_cols // segment_length
    return n_seg, n_cols // max(n_seg, 1)


def _segments(block: np.ndarray, n_seg: int, length: int) -> np.ndarray:
    """A read-only ``(rows, length, n_seg)`` view: ``[r, t, s]`` is column
    ``s + n_seg * t`` of row ``r``, so a maximum over the middle axis runs
    along contiguous memory."""
    n_rows, n_cols = block.shape
    itemsize = block.itemsize
    return np.lib.stride_tricks.as_strided(
        block, (n_rows, length, n_seg), (n_cols * itemsize, n_seg * itemsize, itemsize),
        writeable=False)


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
    n_cols = block.shape[1]
    k = min(k, n_cols)
    n_seg, length = _layout(n_cols, SEGMENT_LENGTH)
    if n_seg < k * SEGMENTS_PER_K or not block.flags.c_contiguous:
        kth = np.partition(block, n_cols - k, axis=1)[:, n_cols - k]
        floor = _round_down(kth.astype(np.float64) - margin, block.dtype)
        rows, cols = np.nonzero(block >= floor[:, None])
        return rows, cols
    main = n_seg * length
    strided = _segments(block, n_seg, length)
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


# ------------------------------------------------- blocks grouped by shift
#
# A search computes its similarity block with the gallery's columns in an
# order of its choosing (it reorders the gallery embeddings before the
# product).  Placing columns of neighbouring shifts in one segment makes the
# segment maxima of the *raw* block bound the normalised scores too:
# with ``c > 0`` and rounding monotone, every entry ``j`` of a segment with
# raw maximum ``m`` and shifts in ``[lo, hi]`` has
#
#     fl(fl(c m) - hi)  <=  exact(argmax entry)    and    exact(j)  <=  fl(fl(c m) - lo)
#
# (``exact`` as :func:`qbscale.engine.kernels.exact_scores`).  The ``k``-th
# largest lower bound is a floor with ``k`` entries at or above it, and only
# segments whose upper bound reaches the floor can hold the top-k: one pass
# over the block (the maxima) serves the raw list and every variant's.


#: entries per segment of a grouped block (its bounds prune whole segments,
#: so longer segments than :data:`SEGMENT_LENGTH` mean fewer bounds to compare)
GROUP_LENGTH = 32


def can_group(n_cols: int, k: int, scales: np.ndarray, shift: np.ndarray) -> bool:
    """Whether :func:`grouped_topk` applies: enough segments for ``k``, positive
    finite scales and finite shifts (the bounds need monotone rounding)."""
    scales = np.asarray(scales, np.float64)
    return (_layout(n_cols, GROUP_LENGTH)[0] >= min(k, n_cols) * SEGMENTS_PER_K
            and bool(np.all(np.isfinite(scales) & (scales > 0)))
            and bool(np.isfinite(shift).all()))


def grouped_order(key: np.ndarray) -> np.ndarray:
    """A column order whose segments each hold neighbouring values of ``key``.

    Position ``p`` of the reordered row holds column ``order[p]``; segment
    ``s`` (positions ``s, s + S, s + 2 S, ...``) holds the ``s``-th run of
    ``length`` columns by increasing key, and the tail the largest keys.

    Two segments of 32: the 32 smallest keys in segment 0 (even positions),
    the rest in segment 1 (odd positions):

    >>> grouped_order(np.arange(64.0)[::-1])[:4]
    array([63, 31, 62, 30])
    """
    n = len(key)
    n_seg, length = _layout(n, GROUP_LENGTH)
    ranked = np.argsort(key, kind="stable")
    if n_seg == 0:
        return ranked
    main = n_seg * length
    i = np.arange(main)
    order = np.empty(n, np.int64)
    order[i // length + n_seg * (i % length)] = ranked[:main]
    order[main:] = ranked[main:]
    return order


class GroupedShift:
    """One variant's shift in a block's column order, with per-segment bounds."""

    def __init__(self, scale: float, shift: np.ndarray, order: np.ndarray) -> None:
        n_seg, length = _layout(len(order), GROUP_LENGTH)
        self.scale = float(scale)
        self.shift = np.ascontiguousarray(shift[order], dtype=np.float64)
        main = self.shift[: n_seg * length].reshape(length, n_seg)
        self.low = main.min(axis=0)
        self.high = main.max(axis=0)


#: candidate segments per requested item a row may have before its own
#: block floor (a partition of its bounds) tightens the running threshold
SEGMENT_BUDGET = 4

Lists = tuple[TopK | None, list[TopK]]


def _floors(lower: np.ndarray, upper: np.ndarray, tail: np.ndarray, k: int,
            threshold: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row floors and the segments whose upper bound reaches them.

    ``lower``/``upper`` bound each segment's best score (some entry of the
    segment scores at least ``lower``, none more than ``upper``); ``tail``
    holds exact scores of the columns outside the segments.  Without a
    ``threshold`` a row's floor is its ``k``-th largest lower bound (``k``
    entries reach it).  With one (the running ``k``-th best score of earlier
    blocks) no partition is needed, except in rows where more than
    :data:`SEGMENT_BUDGET` segments per item reach it.
    """
    width = lower.shape[1] + tail.shape[1]
    k = min(k, width)

    def block_floor(rows: np.ndarray | slice) -> np.ndarray:
        every = np.concatenate([lower[rows], tail[rows]], axis=1) if tail.shape[1] else lower[rows]
        return np.partition(every, width - k, axis=1)[:, width - k]

    floor = block_floor(slice(None)) if threshold is None else threshold.copy()
    seg_r, seg_s = np.nonzero(upper >= floor[:, None])
    if threshold is not None and len(seg_r) > SEGMENT_BUDGET * k:
        heavy = np.flatnonzero(np.bincount(seg_r, minlength=len(floor)) > SEGMENT_BUDGET * k)
        if len(heavy):
            floor[heavy] = np.maximum(floor[heavy], block_floor(heavy))
            keep = upper[seg_r, seg_s] >= floor[seg_r]
            seg_r, seg_s = seg_r[keep], seg_s[keep]
    return floor, seg_r, seg_s


def _threshold(state: TopK | None, k: int) -> np.ndarray | None:
    """Each row's ``k``-th best score so far (None until every row has ``k``)."""
    if state is None or state[0].shape[1] < k:
        return None
    return np.ascontiguousarray(state[0][:, k - 1])


def _merge_into(state: TopK | None, rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
                n_rows: int, k: int) -> TopK:
    """The best ``k`` of ``state`` and the new candidates (global columns).

    Once ``state`` holds ``k`` per row, rows without a new candidate keep
    their lists as they are, and only the others are merged.
    """
    if state is not None and state[0].shape[1] == k:
        touched = np.unique(rows)
        if len(touched) < n_rows:
            values_out, indices_out = state[0].copy(), state[1].copy()
            if len(touched):
                merged = _merge_into((state[0][touched], state[1][touched]),
                                     np.searchsorted(touched, rows), cols, values,
                                     len(touched), k)
                values_out[touched], indices_out[touched] = merged
            return values_out, indices_out
    if state is not None:
        held = state[0].shape[1]
        rows = np.concatenate([np.repeat(np.arange(n_rows), held), rows])
        cols = np.concatenate([state[1].ravel(), cols])
        values = np.concatenate([state[0].ravel(), values])
    return from_candidates(rows, cols, values, n_rows, k)


def grouped_topk(block: np.ndarray, k: int, variants: list[GroupedShift], order: np.ndarray,
                 col0: int = 0, want_raw: bool = True, state: Lists | None = None) -> Lists:
    """Raw and normalised top-k of a block whose columns are in ``order``.

    ``block[:, p]`` holds gallery column ``col0 + order[p]`` (C-contiguous,
    float32 or float64); ``variants`` come from :class:`GroupedShift` for the
    same ``order`` and satisfy :func:`can_group`.  Returns the raw
    ``(values, indices)`` (None unless ``want_raw``) and one pair per variant,
    exactly as :func:`raw_topk` and :func:`normalised_topk` on the block in
    gallery order: float64 values, ties to the lowest gallery index.

    ``state``, lists of the same rows over other gallery columns (an earlier
    call's result), is merged in; its ``k``-th best scores are running
    thresholds below which nothing of this block is looked at.
    """
    n_rows, n_cols = block.shape
    n_seg, length = _layout(n_cols, GROUP_LENGTH)
    main = n_seg * length
    strided = _segments(block, n_seg, length)
    top = exact_scores(strided.max(axis=1), 1.0, 0.0)  # segment maxima in float64
    tail = block[:, main:]
    held = 0 if state is None else (state[1][0] if state[0] is None else state[0])[0].shape[1]
    k_out = min(k, held + n_cols)

    def collect(lower: np.ndarray, upper: np.ndarray, tail_scores: np.ndarray,
                shift: np.ndarray | None, scale: float, prev: TopK | None) -> TopK:
        floor, seg_r, seg_s = _floors(lower, upper, tail_scores, k, _threshold(prev, k))
        values = strided[seg_r, :, seg_s]
        cols = seg_s[:, None] + n_seg * np.arange(length)
        if shift is not None:
            values = exact_scores(values, scale, shift[cols])
        hit = values >= floor[seg_r, None]
        tail_r, tail_c = np.nonzero(tail_scores >= floor[:, None])
        rows = np.concatenate([np.broadcast_to(seg_r[:, None], cols.shape)[hit], tail_r])
        found = np.concatenate([cols[hit], tail_c + main])
        scores = np.concatenate([values[hit], tail_scores[tail_r, tail_c]])
        return _merge_into(prev, rows, order[found] + col0, scores, n_rows, k_out)

    raw = None
    if want_raw:
        raw = collect(top, top, tail, None, 1.0, None if state is None else state[0])
    normed = []
    for b, v in enumerate(variants):
        with np.errstate(over="ignore"):  # huge scales: inf, as exact_scores gives
            scaled = np.multiply(top, v.scale)
        normed.append(collect(scaled - v.high, scaled - v.low,
                              exact_scores(tail, v.scale, v.shift[main:]), v.shift, v.scale,
                              None if state is None else state[1][b]))
    return raw, normed
