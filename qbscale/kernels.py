"""Block functions on plain numpy arrays: no dask, no I/O.

Every function here takes one block of a similarity matrix (rows are queries,
columns a contiguous slice of the gallery starting at ``col0``) and returns a
small partial result that :mod:`qbscale.reductions` knows how to combine.

Scores are computed in float64 whatever the stored dtype: ``beta * s - logZ``
in float32 merges distinct scores into ties and changes ranks.  Work is done
in row slabs of about :data:`SLAB_ELEMENTS` elements so temporaries stay small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: elements per row slab inside a block: 512 KiB of float64 temporaries stay in cache
SLAB_ELEMENTS = 2**16


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
    n_rows, n_cols = block.shape
    top = block.max(axis=0).astype(np.float64)
    out = np.empty((len(betas), n_cols))
    buf = np.empty(SLAB_ELEMENTS)
    for b, beta in enumerate(betas):
        shift = top * beta
        total = np.zeros(n_cols)
        for rows in _slabs(n_rows, n_cols):
            y = buf[: (rows.stop - rows.start) * n_cols].reshape(-1, n_cols)
            np.multiply(block[rows], beta, out=y, dtype=np.float64)
            np.subtract(y, shift, out=y)
            np.exp(y, out=y)
            total += y.sum(axis=0)
        out[b] = shift + np.log(total)
    return out


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
    (:func:`qbscale.reductions.column_topk`).

    Examples
    --------
    >>> column_topk(np.array([[1.0, 5.0], [3.0, 4.0], [2.0, 6.0]]), 2)
    array([[3., 6.],
           [2., 5.]])
    """
    n_rows = block.shape[0]
    k = min(k, n_rows)
    if k == 1:
        return block.max(axis=0, keepdims=True)
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
    normalised scores, one row per beta (shape ``(n_betas, n_rows)``), or
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
    offsets: np.ndarray | None,
    scales: np.ndarray,
    rows_to_normalise: np.ndarray | None = None,
) -> RowCounts:
    """Count, per row, the scores above and equal to the ground truth's.

    Every normaliser of the querybank family scores a row as
    ``scale * s - offset[j]`` (inverted softmax: ``beta * s - logZ[j]``), one
    *variant* per (scale, offset vector); all variants are counted here.

    Parameters
    ----------
    block : (n_rows, n_cols) array, gallery columns ``col0 .. col0+n_cols``.
    gt_raw : (n_rows,) raw score of each row's ground-truth column (float64).
    gt_norm : (n_variants, n_rows) normalised ground-truth scores
        (:func:`normalised_gt`), or None to skip normalised counting.
    offsets : (n_variants, n_cols) per-gallery offsets of these columns.
    scales : (n_variants,) scale of each variant.
    rows_to_normalise : optional bool mask; rows outside it get zero
        normalised counts (their normalised rank is never used).

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
    top_idx = np.argmax(block, axis=1)
    top_val = block[np.arange(n_rows), top_idx].astype(np.float64)
    gt_same = gt_raw.astype(block.dtype)[:, None]  # exact: gt_raw came from block's dtype
    above = np.empty(n_rows, np.int64)
    equal = np.empty(n_rows, np.int64)
    for rows in _slabs(n_rows, n_cols):
        above[rows] = np.count_nonzero(block[rows] > gt_same[rows], axis=1)
        equal[rows] = np.count_nonzero(block[rows] == gt_same[rows], axis=1)
    norm_above = norm_equal = None
    if gt_norm is not None and offsets is not None:
        norm_above = np.zeros((len(scales), n_rows), np.int64)
        norm_equal = np.zeros((len(scales), n_rows), np.int64)
        rows_idx = (np.arange(n_rows) if rows_to_normalise is None
                    else np.nonzero(rows_to_normalise)[0])
        buf = np.empty(SLAB_ELEMENTS)
        for slab in _slabs(len(rows_idx), n_cols):
            sel = rows_idx[slab]
            x = block[slab] if rows_to_normalise is None else block[sel]
            s = buf[: len(sel) * n_cols].reshape(len(sel), n_cols)
            for b, scale in enumerate(scales):
                np.multiply(x, scale, out=s, dtype=np.float64)
                np.subtract(s, offsets[b], out=s)
                g = gt_norm[b, sel][:, None]
                norm_above[b, sel] = np.count_nonzero(s > g, axis=1)
                norm_equal[b, sel] = np.count_nonzero(s == g, axis=1)
    return RowCounts(top_val, top_idx.astype(np.int64) + col0, above, equal, norm_above, norm_equal)


def normalised_gt(gt_raw: np.ndarray, gt_cols: np.ndarray, offsets: np.ndarray,
                  scales: np.ndarray) -> np.ndarray:
    """``scale * T[i, gt(i)] - offset[gt(i)]`` per variant, shape (n_variants, n_rows).

    Uses the same float64 operations as :func:`count_block`, so the ground
    truth always compares equal to itself.
    """
    out = np.empty((len(scales), len(gt_raw)))
    for b, scale in enumerate(scales):
        out[b] = gt_raw * scale - offsets[b, gt_cols]
    return out


def score_block(block: np.ndarray, offset: np.ndarray, scale: float,
                normalise_rows: np.ndarray) -> np.ndarray:
    """The scored matrix of one block: ``scale*s - offset`` on normalised
    rows, raw ``s`` elsewhere (float64).  ``offset`` covers the block's columns."""
    out = np.asarray(block, dtype=np.float64).copy()
    rows = np.nonzero(normalise_rows)[0]
    if len(rows):
        out[rows] = out[rows] * scale - offset
    return out


def ranks_from_counts(above: np.ndarray, equal: np.ndarray) -> np.ndarray:
    """0-based rank with ties averaged: ``above + (equal - 1) / 2``.

    Examples
    --------
    >>> ranks_from_counts(np.array([0, 3]), np.array([1, 2]))
    array([0. , 3.5])
    """
    return above + (equal - 1) / 2.0
