"""Block functions on plain numpy arrays: no dask, no I/O.

Every function here takes one block of a similarity matrix (rows are queries,
columns a contiguous slice of the gallery starting at ``col0``) and returns a
small partial result that :mod:`qbscale.engine.reductions` knows how to combine.

Scores are compared in float64 whatever the stored dtype: ``beta * s - logZ``
in float32 merges distinct scores into ties and changes ranks.  (Counting
uses float32 only to rule entries out, with a proven error bound, and
rescores the rest in float64: :func:`count_block`.)  Work is done in row
slabs of about :data:`SLAB_ELEMENTS` elements so temporaries stay small.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from qbscale import runtime

#: elements per row slab inside a block: 512 KiB of float64 temporaries stay in cache
SLAB_ELEMENTS = 2**16
#: elements per row slab when counting: 1 MiB of float32 scores and 256 KiB of flags
COUNT_SLAB_ELEMENTS = 2**18


def _slabs(n_rows: int, n_cols: int) -> list[slice]:
    step = max(1, SLAB_ELEMENTS // max(n_cols, 1))
    return [slice(r, min(r + step, n_rows)) for r in range(0, n_rows, step)]


# --------------------------------------------------------------------------
# querybank statistics
# --------------------------------------------------------------------------


def bank_logsumexp(block: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """Column-wise ``logsumexp(beta * block)`` for every beta.

    Returns a float64 array of shape ``(len(betas), n_cols)``.  Never forms
    ``exp(beta * s)``: every term is shifted by its column's maximum in the
    block first, so each is at most 1 and the sum cannot overflow.

    Examples
    --------
    >>> b = np.array([[0.0, 1.0], [0.0, 3.0]])
    >>> np.round(bank_logsumexp(b, np.array([1.0])), 4)
    array([[0.6931, 3.1269]])
    """
    out: np.ndarray = bank_logsumexp_sets(block, betas, None)[0]
    return out


def bank_logsumexp_sets(block: np.ndarray, betas: np.ndarray,
                        members: np.ndarray | None) -> np.ndarray:
    """:func:`bank_logsumexp` over several sets of the block's rows at once.

    ``members`` is ``(n_sets, n_rows)`` bool (None: one set of every row);
    returns ``(n_sets, len(betas), n_cols)``, ``-inf`` for a set with no row
    here.  Each ``exp`` is computed once (and only for rows in some set),
    shifted by the column maximum of the whole block, and added to every set
    holding its row, in row order: a column's result does not depend on the
    block's width or the column's place in it, and a set's result depends
    only on its own rows and the block, so it is the same whichever other
    sets are computed with it, and the set of every row is
    :func:`bank_logsumexp` bit for bit.  Where the shifted terms of a set
    underflow (its rows all far below the block's maximum), those columns are
    recomputed from the set's rows alone.

    Computed by the fused kernel of :mod:`qbscale.engine.fused` (within 2 ulp
    of the exact result, see :doc:`how-it-computes`) for float32 and float64
    blocks when numba imports, else (or with ``QBSCALE_KERNEL=numpy``) by
    numpy passes (:func:`numpy_logsumexp_sets`).
    """
    if kernel_name() == "fused" and block.dtype in _FUSED_DTYPES and len(block):
        return _fused_logsumexp_sets(block, betas, members)
    return numpy_logsumexp_sets(block, betas, members)


#: block dtypes the fused kernel takes (others go through numpy)
_FUSED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def kernel_name() -> str:
    """The bank kernel in use: ``"fused"`` (numba) or ``"numpy"``.

    ``QBSCALE_KERNEL=numpy`` in the environment chooses numpy
    (:func:`qbscale.runtime.kernel_choice`); the fused kernel is the default
    wherever numba imports.
    """
    if runtime.kernel_choice() == "numpy":
        return "numpy"
    return "fused" if _fused() is not None else "numpy"


@functools.cache
def _fused() -> ModuleType | None:
    try:
        from qbscale.engine import fused
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    return fused


@np.errstate(over="ignore", invalid="ignore")
def _fused_logsumexp_sets(block: np.ndarray, betas: np.ndarray,
                          members: np.ndarray | None) -> np.ndarray:
    fused = _fused()
    assert fused is not None
    betas = np.asarray(betas, dtype=np.float64)
    peaks, resid, total, rest = fused.sums(block, betas, members)
    with np.errstate(divide="ignore"):
        # log(total + rest): the sum's rounding is not lost to the log
        logs = np.log(total) + np.divide(rest, total, out=np.zeros_like(rest),
                                         where=total > 0)
    out = np.swapaxes(peaks[:, None, :] + (resid[:, None, :] + logs), 0, 1)
    out = np.ascontiguousarray(out)
    if members is not None:
        for b, beta in enumerate(betas):
            _exact_underflow(block, float(beta), members, total[b], out[:, b],
                             _fused_logsumexp_sets)
    return out


# beta * s beyond float64 gives inf/nan here, refused by the Normaliser
@np.errstate(over="ignore", invalid="ignore")
def numpy_logsumexp_sets(block: np.ndarray, betas: np.ndarray,
                         members: np.ndarray | None) -> np.ndarray:
    """:func:`bank_logsumexp_sets` by numpy passes over row slabs (cast, scale,
    shift, exp, row add; :func:`_add_rows`), numpy's ``exp`` bits."""
    n_rows, n_cols = block.shape
    top = block.max(axis=0).astype(np.float64) if n_rows else np.zeros(n_cols)
    n_sets = 1 if members is None else len(members)
    peaks = [top * beta for beta in betas]
    totals = np.zeros((len(betas), n_sets, n_cols))
    step = max(1, SLAB_ELEMENTS // max(n_cols, 1))
    # row 0 of a slab is left for the running total (see _add_rows)
    buf = np.empty((step + 1) * n_cols)
    # several betas: the slab is cast once, each beta's terms go to `scaled`
    scaled = np.empty_like(buf) if len(betas) > 1 else buf
    part = None if members is None else np.empty_like(buf)
    # the whole-row slab's views, made once (a wide block has a slab per row)
    full = (buf.reshape(step + 1, n_cols)[1:], scaled.reshape(step + 1, n_cols))
    every = list(totals[:, 0])  # each beta's total of the set of every row
    for r in range(0, n_rows, step):  # one pass over the block for every beta
        x = block[r:r + step]
        sets = None if members is None else members[:, r:r + step]
        if sets is not None:  # rows in no set: no exp
            used = sets.any(axis=0)
            if not used.all():
                x, sets = x[used], sets[:, used]
        if len(x) == step:
            y, slab = full
        else:
            y = buf[: (len(x) + 1) * n_cols].reshape(len(x) + 1, n_cols)[1:]
            slab = scaled[: (len(x) + 1) * n_cols].reshape(len(x) + 1, n_cols)
        terms = slab[1:]
        # a separate cast then in-place float64 ops: ~1.3x faster than
        # one mixed-type ufunc call, whose casting goes through buffers
        np.copyto(y, x)
        for b, beta in enumerate(betas):
            np.multiply(y, beta, out=terms)
            np.subtract(terms, peaks[b], out=terms)
            np.exp(terms, out=terms)
            if sets is None and len(terms) == 1:  # one set, one row: added in place
                np.add(every[b], terms[0], out=every[b])
            else:
                _add_sets(totals[b], slab, sets, part)
    out = np.empty((n_sets, len(betas), n_cols))
    for b, beta in enumerate(betas):
        with np.errstate(divide="ignore"):
            out[:, b] = peaks[b] + np.log(totals[b])
        if members is not None:
            _exact_underflow(block, float(beta), members, totals[b], out[:, b],
                             numpy_logsumexp_sets)
    return out


def _add_sets(totals: np.ndarray, slab: np.ndarray, sets: np.ndarray | None,
              part: np.ndarray | None) -> None:
    """Add the slab's terms (``slab[1:]``) to the total of every set holding their row."""
    n_cols = slab.shape[1]
    for s in range(len(totals)):
        here = None if sets is None else sets[s]
        if here is None or here.all():
            _add_rows(totals[s], slab)
        elif here.any() and part is not None:
            rows = part[: (int(here.sum()) + 1) * n_cols].reshape(-1, n_cols)
            np.compress(here, slab[1:], axis=0, out=rows[1:])
            _add_rows(totals[s], rows)


def _add_rows(total: np.ndarray, rows: np.ndarray) -> None:
    """``total += rows[1] + rows[2] + ...``, strictly in row order (``rows[0]`` is scratch).

    Each column's sum is ``((total + r1) + r2) + ...`` whatever the slab
    boundaries or the block's width, so a column gets the same bits in any
    column chunk (two equal gallery columns stay exactly tied).  numpy's own
    ``sum(axis=0)`` adds the rows of a wide table in sequence, but sums a
    lone column pairwise, and ``total + slab.sum(axis=0)`` would group the
    terms by slab: both would make the result depend on the chunking.
    """
    if len(rows) == 2:  # wide rows: one row per slab, summed in place
        np.add(total, rows[1], out=total)
    elif rows.shape[1] == 1:  # accumulate, unlike reduce, never sums pairwise
        rows[0] = total
        total[:] = np.add.accumulate(rows[:, 0])[-1]
    else:
        rows[0] = total
        np.add.reduce(rows, axis=0, out=total)


#: a set's shifted sum below this may have lost terms to underflow: recomputed
_UNDERFLOW = 1e-280


def _exact_underflow(block: np.ndarray, beta: float, members: np.ndarray, totals: np.ndarray,
                     out: np.ndarray, func: Callable[..., np.ndarray]) -> None:
    """Recompute (by ``func``, the kernel at work), from the set's own rows,
    the columns whose shifted sum underflowed."""
    for s in np.flatnonzero(members.any(axis=1)):
        cols = np.flatnonzero(totals[s] < _UNDERFLOW)
        if len(cols):
            out[s, cols] = func(block[members[s]][:, cols], np.array([beta]), None)[0, 0]


def row_topk(block: np.ndarray, k: int, col0: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of each row, ties to the lowest column.

    Returns ``(values, indices)`` of shape ``(n_rows, min(k, n_cols))``:
    values as float64, indices as global int64 column numbers (``col0`` added),
    ordered by decreasing value then increasing index.

    Examples
    --------
    >>> row_topk(np.array([[1.0, 3.0, 3.0, 2.0]]), 2, col0=10)
    (array([[3., 3.]]), array([[11, 12]]))
    """
    n_rows, n_cols = block.shape
    k = min(k, n_cols)
    if k == 1:
        idx = np.argmax(block, axis=1)[:, None]
        vals = np.take_along_axis(block, idx, axis=1).astype(np.float64)
        return vals, idx.astype(np.int64) + col0
    # the k-th largest value of each row is the threshold; everything above
    # it is in, and the lowest-index entries equal to it fill the rest.
    kth = np.partition(block, n_cols - k, axis=1)[:, n_cols - k]
    above = block > kth[:, None]
    room = k - above.sum(axis=1)
    ties = block == kth[:, None]
    take = above | (ties & (np.cumsum(ties, axis=1) <= room[:, None]))
    cols = np.nonzero(take)[1].reshape(n_rows, k)
    vals = np.take_along_axis(block, cols, axis=1).astype(np.float64)
    order = np.lexsort((cols, -vals), axis=-1) if n_rows else np.zeros((0, k), int)
    return (
        np.take_along_axis(vals, order, axis=1),
        np.take_along_axis(cols, order, axis=1).astype(np.int64) + col0,
    )


def column_topk(block: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest values of each column, largest first.

    Returns an array of the block's dtype (the values are bank entries, kept
    exactly and at their stored size) of shape ``(min(k, n_rows), n_cols)``:
    row ``r`` holds every column's ``r+1``-th largest value.  Only values are
    kept (a mean of the top-k bank similarities does not depend on which bank
    rows they came from), so partials over disjoint bank rows merge exactly
    (:func:`qbscale.engine.reductions.column_topk`).

    Examples
    --------
    >>> column_topk(np.array([[1.0, 5.0], [3.0, 4.0], [2.0, 6.0]]), 2)
    array([[3., 6.],
           [2., 5.]])
    """
    n_rows = block.shape[0]
    k = min(k, n_rows)
    if k == 1:
        return np.asarray(block.max(axis=0, keepdims=True))
    top = block if k == n_rows else np.partition(block, n_rows - k, axis=0)[n_rows - k:]
    return np.ascontiguousarray(np.sort(top, axis=0)[::-1])


# --------------------------------------------------------------------------
# test queries
# --------------------------------------------------------------------------


@dataclass
class RowCounts:
    """Per-row partial results over one slice of the gallery.

    ``top_val``/``top_idx``: the raw row maximum and its lowest column index.
    ``above``/``equal``: counts of raw scores ``>``/``==`` the ground truth
    (shape ``(n_rows,)``); ``norm_above``/``norm_equal``: the same for the
    normalised scores, one row per beta (shape ``(n_values, n_rows)``), or
    ``None`` when no normalisation was asked for.
    """

    top_val: np.ndarray
    top_idx: np.ndarray
    above: np.ndarray
    equal: np.ndarray
    norm_above: np.ndarray | None
    norm_equal: np.ndarray | None


def count_block(
    block: np.ndarray,
    col0: int,
    gt_raw: np.ndarray,
    gt_norm: np.ndarray | None,
    shift: np.ndarray | None,
    scales: np.ndarray,
    rows_to_normalise: np.ndarray | None = None,
    top_idx: np.ndarray | None = None,
) -> RowCounts:
    """Count, per row, the scores above and equal to the ground truth's.

    Every normaliser of the querybank family scores a row as
    ``scale * s - shift[j]`` (inverted softmax: ``beta * s - logZ[j]``), one
    *variant* per (scale, shift vector); all variants are counted here.

    The counts are those of the float64 scores ``fl(fl(scale * s) - shift)``,
    exactly.  To get them without scoring every entry in float64, each row
    slab is first scored in float32 and only the *candidates*, entries whose
    float32 score is within a proven error bound of the ground truth's or
    above it (:func:`candidate_floor`), are scored again in float64 and
    counted.  A well-ranked ground truth has few candidates.  Float32 and
    float64 blocks, with the fused kernels in use (:func:`kernel_name`), are
    counted instead in one compiled pass (:func:`qbscale.engine.fused.counts`)
    that scores every entry in float64 as :func:`exact_scores` does: the
    same counts, each row read from memory once for all variants.

    Parameters
    ----------
    block : (n_rows, n_cols) array, gallery columns ``col0 .. col0+n_cols``.
    gt_raw : (n_rows,) raw score of each row's ground-truth column (float64).
    gt_norm : (n_variants, n_rows) normalised ground-truth scores
        (:func:`normalised_gt`), or None to skip normalised counting.
    shift : (n_variants, n_cols) per-gallery shifts of these columns.
    scales : (n_variants,) scale of each variant.
    rows_to_normalise : optional bool mask, ``(n_rows,)`` for every variant or
        ``(n_variants, n_rows)`` per variant; rows outside it get zero
        normalised counts (their normalised rank is never used).
    top_idx : the rows' ``argmax`` within the block, if already known.

    Examples
    --------
    Row ``[0.1, 0.5, 0.5]`` with the ground truth at column 1 (score 0.5):
    one score equals it besides itself, none is above.

    >>> c = count_block(np.array([[0.1, 0.5, 0.5]]), 0, np.array([0.5]),
    ...                 None, None, np.array([]))
    >>> int(c.above[0]), int(c.equal[0])
    (0, 2)
    """
    n_rows, n_cols = block.shape
    if top_idx is None:
        top_idx = np.argmax(block, axis=1)
    top_val = block[np.arange(n_rows), top_idx].astype(np.float64)
    top_idx = top_idx.astype(np.int64) + col0
    if _fused_counts(block):
        fused = _fused()
        assert fused is not None
        chosen_rows = None if rows_to_normalise is None else np.asarray(rows_to_normalise, bool)
        with np.errstate(over="ignore", invalid="ignore"):
            above, equal, norm_above, norm_equal = fused.counts(
                block, gt_raw, gt_norm, shift, scales, chosen_rows)
        return RowCounts(top_val, top_idx, above, equal, norm_above, norm_equal)
    gt_same = gt_raw.astype(block.dtype)[:, None]  # exact: gt_raw came from block's dtype
    above = np.empty(n_rows, np.int64)
    equal = np.empty(n_rows, np.int64)
    normalise = gt_norm is not None and shift is not None
    norm_above = norm_equal = floors = None
    if normalise:
        assert gt_norm is not None and shift is not None
        norm_above = np.zeros((len(scales), n_rows), np.int64)
        norm_equal = np.zeros((len(scales), n_rows), np.int64)
        # (n_variants, n_rows): the rows each variant rescores
        chosen = np.broadcast_to(True if rows_to_normalise is None
                                 else np.asarray(rows_to_normalise, bool), (len(scales), n_rows))
        # None: no float32 prefilter, every chosen row is scored whole
        floors = candidate_floor(gt_norm, shift, scales, top_val)
        if floors is not None:
            floors[~chosen] = np.inf  # rows left alone have no candidates
            shift32 = shift.astype(np.float32)
            scales32 = scales.astype(np.float32)
    step = max(1, COUNT_SLAB_ELEMENTS // max(n_cols, 1))
    mask = np.empty((step, n_cols), bool)
    approx = np.empty((step, n_cols), np.float32) if floors is not None else None
    for r in range(0, n_rows, step):  # one pass: each slab is read from memory once
        x = block[r:r + step]
        m = mask[: len(x)]
        above[r:r + step] = _row_counts(np.greater(x, gt_same[r:r + step], out=m))
        equal[r:r + step] = _row_counts(np.equal(x, gt_same[r:r + step], out=m))
        if not normalise:
            continue
        assert gt_norm is not None and shift is not None
        assert norm_above is not None and norm_equal is not None
        for b, scale in enumerate(scales):
            if not chosen[b, r:r + step].any():
                continue
            here = (gt_norm[b, r:r + step], norm_above[b, r:r + step],
                    norm_equal[b, r:r + step])
            if floors is None or approx is None:
                _dense_counts(x, np.nonzero(chosen[b, r:r + step])[0], shift[b], scale, *here)
                continue
            a = approx[: len(x)]
            with np.errstate(over="ignore", under="ignore"):  # bounded below, see the floor
                np.multiply(x, scales32[b], out=a, casting="same_kind")
                np.subtract(a, shift32[b], out=a)
            np.greater_equal(a, floors[b, r:r + step, None], out=m)
            # a row whose ground truth ranks low has many candidates: it is
            # scored whole; gathering candidates one by one costs more
            dense = _row_counts(m) > n_cols // _SPARSE_SHARE
            if dense.any():
                _dense_counts(x, np.nonzero(dense)[0], shift[b], scale, *here)
                m[dense] = False
            cand_r, cand_c = np.divmod(np.flatnonzero(m), n_cols)
            exact = exact_scores(x[cand_r, cand_c], scale, shift[b, cand_c])
            g = here[0][cand_r]
            sparse = ~dense
            here[1][sparse] = np.bincount(cand_r[exact > g], minlength=len(x))[sparse]
            here[2][sparse] = np.bincount(cand_r[exact == g], minlength=len(x))[sparse]
    return RowCounts(top_val, top_idx, above, equal, norm_above, norm_equal)


def _fused_counts(block: np.ndarray) -> bool:
    """Whether :func:`count_block` counts ``block`` by the fused kernel
    (:func:`qbscale.engine.fused.counts`): the fused kernels are in use and
    the block is float32 or float64 in native byte order."""
    return (kernel_name() == "fused" and block.dtype in _FUSED_DTYPES
            and block.dtype.isnative and block.ndim == 2 and block.size > 0)


def exact_scores(values: np.ndarray, scale: float, shift: np.ndarray | float,
                 out: np.ndarray | None = None) -> np.ndarray:
    """``fl64(fl64(float64(values) * scale) - shift)``: the one definition of a
    normalised score.  Counting, the ground truth's own score and stored
    scores all use it, so equal inputs always score bit for bit alike."""
    if out is None:
        out = np.empty(values.shape)
    np.copyto(out, values)
    np.multiply(out, scale, out=out)
    np.subtract(out, shift, out=out)
    return out


def _row_counts(mask: np.ndarray) -> np.ndarray:
    """Number of True per row of a 2-D bool array."""
    if mask.shape[1] >= 1024:  # 1-D count_nonzero is a fast loop; axis= is not
        return np.array([np.count_nonzero(row) for row in mask], np.int64)
    return mask.sum(axis=1, dtype=np.int64)  # type: ignore[no-any-return]


def _dense_counts(block: np.ndarray, rows: np.ndarray, shift: np.ndarray, scale: float,
                  g: np.ndarray, out_above: np.ndarray, out_equal: np.ndarray) -> None:
    """Exact counts for ``rows`` of ``block``, scoring every entry in float64."""
    n_cols = block.shape[1]
    buf = np.empty(SLAB_ELEMENTS if n_cols <= SLAB_ELEMENTS else n_cols)
    for slab in _slabs(len(rows), n_cols):
        sel = rows[slab]
        s = exact_scores(block[sel], scale, shift,
                         out=buf[: len(sel) * n_cols].reshape(len(sel), n_cols))
        gs = g[sel][:, None]
        out_above[sel] = _row_counts(s > gs)
        out_equal[sel] = _row_counts(s == gs)


#: a row with more than ``1 / _SPARSE_SHARE`` of its entries as candidates is
#: scored whole in float64 (gathering candidates costs more per entry)
_SPARSE_SHARE = 32
#: float32 scoring error, relative to the magnitudes involved (the proof in
#: :func:`candidate_floor` needs 2**-21; the rest is margin)
_FLOAT32_ERROR = 2.0**-20
#: above this magnitude the float32 prefilter is not used (no overflow risk)
_FLOAT32_SAFE = 1e30
#: scales the prefilter takes: inside float32's normal range, so that rounding
#: the scale to float32 is a relative error like the others
_FLOAT32_SCALES = (1e-30, 1e30)


def candidate_floor(gt_norm: np.ndarray, shift: np.ndarray, scales: np.ndarray,
                    top_val: np.ndarray) -> np.ndarray | None:
    """Float32 thresholds below which an entry cannot reach its row's ground truth.

    Returns ``(n_variants, n_rows)`` float32 floors, or None when the float32
    prefilter cannot be trusted (non-finite or huge values, a scale outside
    ``[1e-30, 1e30]``, where float32 would round it by more than its relative
    precision); then every entry is scored in float64.

    Let ``n = fl64(fl64(c*s) - o)`` be an entry's exact score and
    ``a = fl32(fl32(c32*s32) - o32)`` its float32 score, with ``g`` the ground
    truth's exact score.  Each of the at most five roundings in ``a`` (of
    ``c``, ``s`` (for float64 input), the product, ``o`` and the difference)
    is relative (``c`` is kept in float32's normal range for this; underflow
    elsewhere is absolute, below 1e-44, and covered by a 1e-30 term), so
    ``|a - n| <= 5.1 * 2**-24 * (|c*s| + |o|)``.  An entry
    with ``n >= g`` and ``a < g`` has ``c*s`` within that error of ``g + o``,
    hence ``|c*s| + |o| <= |g| + 2*|o|`` up to a factor ``1 + 2**-20``, and
    ``a >= g - E`` with ``E = 2**-21 * (|g| + 2*max|o|)``.  So every entry
    with ``n >= g`` has ``a >= g - E``: counting ``>`` and ``==`` over the
    entries with ``a >= g - E`` (rescored exactly) counts them over the row.
    Overflow is ruled out by requiring ``c * max(s) < 1e30`` and finite
    shift below 1e30 (a float32 ``-inf`` score is correctly below ``g``).
    """
    if shift.size == 0 or gt_norm.size == 0:
        return None
    omax = np.max(np.abs(shift), axis=1)
    top = np.max(top_val) if len(top_val) else 0.0
    if not (np.all(np.isfinite(shift)) and np.all(np.isfinite(gt_norm))
            and np.all((scales >= _FLOAT32_SCALES[0]) & (scales <= _FLOAT32_SCALES[1]))
            and np.all(omax < _FLOAT32_SAFE)
            and np.all(np.abs(gt_norm) < _FLOAT32_SAFE)
            and np.all(scales * max(top, 0.0) < _FLOAT32_SAFE)):
        return None
    error = _FLOAT32_ERROR * (np.abs(gt_norm) + 2 * omax[:, None]) + 1e-30
    floor = gt_norm - error
    floor32 = floor.astype(np.float32)
    # rounding to float32 must not raise the floor
    return np.asarray(np.where(floor32 > floor, np.nextafter(floor32, np.float32(-np.inf)),
                               floor32))


def normalised_gt(gt_raw: np.ndarray, gt_cols: np.ndarray, shift: np.ndarray,
                  scales: np.ndarray) -> np.ndarray:
    """``scale * T[i, gt(i)] - shift[gt(i)]`` per variant, shape (n_variants, n_rows).

    Scored by :func:`exact_scores`, as :func:`count_block` scores entries, so
    the ground truth always compares equal to itself.
    """
    out = np.empty((len(scales), len(gt_raw)))
    for b, scale in enumerate(scales):
        exact_scores(gt_raw, scale, shift[b, gt_cols], out=out[b])
    return out


def score_block(block: np.ndarray, shift: np.ndarray, scale: float,
                normalise_rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The scored matrix of one block: ``scale*s - shift`` on normalised
    rows, raw ``s`` elsewhere (float64, into ``out`` when given).  ``shift``
    covers the block's columns.  Scored in place, as :func:`exact_scores`
    (the same two roundings), with no gather of the normalised rows."""
    if out is None:
        out = np.empty(block.shape)
    if np.all(normalise_rows):
        return exact_scores(block, scale, shift, out=out)
    np.copyto(out, block)
    if np.any(normalise_rows):
        where = np.asarray(normalise_rows, dtype=bool)[:, None]
        np.multiply(out, scale, out=out, where=where)
        np.subtract(out, shift, out=out, where=where)
    return out


def ranks_from_counts(above: np.ndarray, equal: np.ndarray) -> np.ndarray:
    """0-based rank with ties averaged: ``above + (equal - 1) / 2``.

    Examples
    --------
    >>> ranks_from_counts(np.array([0, 3]), np.array([1, 2]))
    array([0. , 3.5])
    """
    return above + (equal - 1) / 2.0
