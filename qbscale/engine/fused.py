"""The bank's column logsumexp in one compiled pass per block (numba).

:func:`qbscale.engine.kernels.bank_logsumexp_sets` runs here when numba
imports.  One block is cut into column *tiles* (64 to 512 columns, so a
tile's accumulators stay in cache); per tile, a first sweep over the rows finds
each column's maximum, then one sweep computes, for every row, every beta and
every column, ``exp(beta * s - beta * max)`` (``beta * max`` exact, as the
sum of two floats) and adds it to each
activation set holding the row.  The float32 bank value is cast, scaled,
shifted, exponentiated and accumulated in registers: no temporary array.

Numerics (the contract of :doc:`how-it-computes`):

* ``exp`` is :func:`_exp`, branch-free so that LLVM vectorises it (numba's
  ``math.exp`` calls libm one lane at a time): Cody-Waite reduction by
  ``ln 2`` with fused multiply-adds, a degree-13 Taylor polynomial on
  ``|r| <= ln2 / 2`` (truncation below ``4e-18``), scaled by ``2**k`` built
  from its exponent bits in two halves (so ``k`` may reach -1080 or 1024).
  It is within about 1 ulp of the exact exponential; inf, nan and underflow
  behave as numpy's.
* Each set's sum is compensated (Kahan), strictly in row order: its error
  is about ``2 eps`` of the sum whatever the number of rows, and a column's
  bits depend only on its own values, never on the tile or block width or
  the column's place.
* No ``fastmath``: LLVM may not reorder any of this, so the vectorised and
  the scalar remainder loops give the same bits.

Compiled functions are cached on disk (``cache=True``); see
:func:`qbscale.runtime.numba_cache_dir` for where.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from qbscale import runtime

runtime.numba_cache_dir()  # before numba reads its configuration

import numba  # noqa: E402  (after the cache directory is settled)
from llvmlite import ir  # noqa: E402
from numba import types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

_intrinsic: Callable[..., Any] = intrinsic


@_intrinsic
def _fma(typingctx, a, b, c):  # type: ignore[no-untyped-def]  # pragma: no cover
    """``a * b + c`` with one rounding (``llvm.fma``: the hardware's, or exact software)."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        double = ir.DoubleType()
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(double, [double] * 3), "llvm.fma.f64")
        return builder.call(fn, args)

    return sig, codegen


@_intrinsic
def _bits(typingctx, x):  # type: ignore[no-untyped-def]  # pragma: no cover
    """The IEEE bits of a float64 as int64."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@_intrinsic
def _float(typingctx, n):  # type: ignore[no-untyped-def]  # pragma: no cover
    """The float64 whose IEEE bits are the int64 ``n``."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


#: every kernel: releases the GIL (dask's threads run it side by side), cached
#: on disk, numpy's float semantics, no fastmath (no reordering of the sums)
_jit: Callable[..., Any] = functools.partial(
    numba.njit, nogil=True, cache=True, error_model="numpy", boundscheck=False, fastmath=False)

_INV_LN2 = 1.4426950408889634
_LN2_HI = 0.6931471805599453  # ln 2 rounded to float64
_LN2_LO = 2.3190468138462996e-17  # ln 2 - _LN2_HI
_SHIFTER = 6755399441055744.0  # 1.5 * 2**52: adding it rounds to an integer
_SHIFTER_BITS = 0x4338000000000000
# 1/n! for n = 13 .. 2
_C = [1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
      1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0,
      1.0 / 24.0, 1.0 / 6.0, 0.5]
C13, C12, C11, C10, C9, C8, C7, C6, C5, C4, C3, C2 = _C


@_jit(inline="always")
def _exp(x: float) -> float:  # pragma: no cover - compiled
    """``exp(x)`` without branches (see the module's notes); nan stays nan."""
    x = -750.0 if x < -750.0 else x  # nan compares false and passes through
    x = 710.0 if x > 710.0 else x
    t = _fma(x, _INV_LN2, _SHIFTER)
    k = _bits(t) - _SHIFTER_BITS  # round(x / ln 2)
    kf = t - _SHIFTER
    r = _fma(kf, -_LN2_HI, x)
    r = _fma(kf, -_LN2_LO, r)
    p = _fma(C13, r, C12)
    p = _fma(p, r, C11)
    p = _fma(p, r, C10)
    p = _fma(p, r, C9)
    p = _fma(p, r, C8)
    p = _fma(p, r, C7)
    p = _fma(p, r, C6)
    p = _fma(p, r, C5)
    p = _fma(p, r, C4)
    p = _fma(p, r, C3)
    p = _fma(p, r, C2)
    p = _fma(p, r, 1.0)
    p = _fma(p, r, 1.0)
    half = k >> 1
    s1 = _float((half + 1023) << 52)
    s2 = _float((k - half + 1023) << 52)
    return p * s1 * s2  # type: ignore[no-any-return]


@_jit
def exp(x: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """``out[:] = exp(x)`` elementwise, by :func:`_exp` (1-d float64)."""
    for j in range(x.shape[0]):
        out[j] = _exp(x[j])


@_jit
def _column_max(block, j0, j1, top):  # type: ignore[no-untyped-def]  # pragma: no cover
    w = j1 - j0
    for j in range(w):
        top[j] = -np.inf
    for i in range(block.shape[0]):
        row = block[i, j0:j1]
        for j in range(w):
            v = np.float64(row[j])
            m = top[j]
            top[j] = v if v > m else m


@_jit
def _split_peaks(top, beta, pk, rm):  # type: ignore[no-untyped-def]  # pragma: no cover
    """``pk[j] + rm[j] == beta * top[j]`` exactly: the shift of column ``j`` and its
    rounding residue (so the largest term of the sum is exactly 1)."""
    for j in range(top.shape[0]):
        pk[j] = top[j] * beta
        rm[j] = _fma(top[j], beta, -pk[j])


@_jit
def _whole(block, betas, tile, top_out, peaks, resid, hi, lo):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Every row in one set: ``hi/lo[b, j]`` the compensated sum of column ``j``."""
    n_rows, n_cols = block.shape
    for j0 in range(0, n_cols, tile):
        j1 = min(j0 + tile, n_cols)
        w = j1 - j0
        top = top_out[j0:j1]
        _column_max(block, j0, j1, top)
        for b in range(betas.shape[0]):
            beta = betas[b]
            pk = peaks[b, j0:j1]
            rm = resid[b, j0:j1]
            _split_peaks(top, beta, pk, rm)
            for j in range(w):
                hi[b, j0 + j] = 0.0
                lo[b, j0 + j] = 0.0
        for i in range(n_rows):
            row = block[i, j0:j1]
            for b in range(betas.shape[0]):
                beta = betas[b]
                pk = peaks[b, j0:j1]
                rm = resid[b, j0:j1]
                h = hi[b, j0:j1]
                c = lo[b, j0:j1]
                for j in range(w):
                    e = _exp(_fma(np.float64(row[j]), beta, -pk[j]) - rm[j])
                    y = e - c[j]
                    t = h[j] + y
                    c[j] = (t - h[j]) - y
                    h[j] = t


@_jit
def _sets(block, betas, rowsets, tile, top_out, peaks, resid, hi, lo, terms):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Rows in several sets (``rowsets[i, s]``): ``hi/lo[b, s, j]`` per set."""
    n_rows, n_cols = block.shape
    n_sets = rowsets.shape[1]
    for j0 in range(0, n_cols, tile):
        j1 = min(j0 + tile, n_cols)
        w = j1 - j0
        top = top_out[j0:j1]
        _column_max(block, j0, j1, top)
        for b in range(betas.shape[0]):
            beta = betas[b]
            pk = peaks[b, j0:j1]
            rm = resid[b, j0:j1]
            _split_peaks(top, beta, pk, rm)
            for s in range(n_sets):
                for j in range(w):
                    hi[b, s, j0 + j] = 0.0
                    lo[b, s, j0 + j] = 0.0
        for i in range(n_rows):
            used = False
            for s in range(n_sets):
                used = used or rowsets[i, s]
            if not used:  # a row in no set: no exp
                continue
            row = block[i, j0:j1]
            for b in range(betas.shape[0]):
                beta = betas[b]
                pk = peaks[b, j0:j1]
                rm = resid[b, j0:j1]
                e = terms[:w]
                for j in range(w):
                    e[j] = _exp(_fma(np.float64(row[j]), beta, -pk[j]) - rm[j])
                for s in range(n_sets):
                    if not rowsets[i, s]:
                        continue
                    h = hi[b, s, j0:j1]
                    c = lo[b, s, j0:j1]
                    for j in range(w):
                        y = e[j] - c[j]
                        t = h[j] + y
                        c[j] = (t - h[j]) - y
                        h[j] = t


#: float64 accumulators (sum and compensation, per beta and set) per tile: 128 KiB
TILE_ACCUMULATORS = 2**14
#: columns per tile: at most (beyond it, no gain) and at least (below it, the
#: loops' overhead and partial cache lines cost more than accumulators in L2)
TILE_MAX, TILE_MIN = 512, 64


def tile_width(n_betas: int, n_sets: int) -> int:
    """Columns per tile: the tile's accumulators stay in cache.  Never changes bits."""
    per_column = 2 * max(n_betas, 1) * max(n_sets, 1)
    return int(max(TILE_MIN, min(TILE_MAX, TILE_ACCUMULATORS // per_column // 8 * 8)))


def sums(block: np.ndarray, betas: np.ndarray, members: np.ndarray | None
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(peaks, resid, hi, lo)``: ``peaks[b] + resid[b]`` is ``beta_b`` times
    the column maximum exactly (``peaks`` the rounded product, ``resid`` its
    rounding error), ``hi + lo`` (``(n_betas, n_sets, n_cols)``, ``hi`` the
    rounded sum) each set's sum of ``exp(beta * s - peaks - resid)`` over its
    rows.  Shifting by the exact ``beta * max`` makes the largest term exactly
    1 however large ``beta * max`` is (a rounded shift would leave its
    rounding error, up to half an ulp of the product, in the exponent).

    ``block`` is float32 or float64 with at least one row; ``members`` is
    ``(n_sets, n_rows)`` bool, or None for one set of every row.
    """
    n_cols = block.shape[1]
    betas = np.ascontiguousarray(betas, dtype=np.float64)
    n_sets = 1 if members is None else len(members)
    top = np.empty(n_cols)
    peaks = np.empty((len(betas), n_cols))
    resid = np.empty_like(peaks)
    hi = np.empty((len(betas), n_sets, n_cols))
    lo = np.empty_like(hi)
    tile = tile_width(len(betas), n_sets)
    if members is None:
        _whole(block, betas, tile, top, peaks, resid, hi[:, 0], lo[:, 0])
    else:
        rowsets = np.ascontiguousarray(np.asarray(members, dtype=np.bool_).T)
        _sets(block, betas, rowsets, tile, top, peaks, resid, hi, lo, np.empty(tile))
    total = hi - lo  # Kahan's compensation is the negated lost part
    rest = (hi - total) - lo
    return peaks, resid, total, rest


# --------------------------------------------------------------------------
# the test stage: counts against the ground truth
# --------------------------------------------------------------------------


@_jit
def _counts(block, gt_same, gt_norm, shift, scales, chosen,  # type: ignore[no-untyped-def]  # pragma: no cover
            above, equal, norm_above, norm_equal):
    """Per row, the raw scores ``>`` / ``==`` its ground truth's (compared in
    the block's dtype, exact), then for each variant ``v`` on a chosen row the
    float64 scores ``(float64(s) * scales[v]) - shift[v]`` (two roundings, no
    fma: no fastmath) ``>`` / ``==`` ``gt_norm[v, row]``.  The row is read
    from memory once and stays in cache for its variants."""
    n_rows, n_cols = block.shape
    for i in range(n_rows):
        row = block[i]
        g = gt_same[i]
        a = 0
        e = 0
        for j in range(n_cols):
            v = row[j]
            if v > g:
                a += 1
            if v == g:
                e += 1
        above[i] = a
        equal[i] = e
        for b in range(scales.shape[0]):
            if not chosen[b, i]:
                continue
            gn = gt_norm[b, i]
            sc = scales[b]
            sh = shift[b]
            a = 0
            e = 0
            for j in range(n_cols):
                s = np.float64(row[j]) * sc - sh[j]
                if s > gn:
                    a += 1
                if s == gn:
                    e += 1
            norm_above[b, i] = a
            norm_equal[b, i] = e


#: block dtypes :func:`counts` takes
COUNT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def counts(block: np.ndarray, gt_raw: np.ndarray, gt_norm: np.ndarray | None,
           shift: np.ndarray | None, scales: np.ndarray, chosen: np.ndarray | None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(above, equal, norm_above, norm_equal)`` of
    :func:`qbscale.engine.kernels.count_block` in one pass over the block.

    ``block`` is float32 or float64 in native byte order; ``gt_raw`` the
    rows' ground-truth scores (values of the block's dtype, as float64);
    ``gt_norm`` ``(n_variants, n_rows)`` and ``shift`` ``(n_variants,
    n_cols)`` float64, or None for raw counts only; ``chosen`` the
    ``(n_variants, n_rows)`` rows each variant counts (others get 0).
    Every entry's normalised score is computed in float64 as
    :func:`qbscale.engine.kernels.exact_scores` computes it, so the counts
    are those of the definition, with no float32 prefilter.
    """
    n_rows, n_cols = block.shape
    above = np.empty(n_rows, np.int64)
    equal = np.empty(n_rows, np.int64)
    if gt_norm is None or shift is None:
        n_var = 0
        gt_norm = np.zeros((0, n_rows))
        shift = np.zeros((0, n_cols))
        scales = np.zeros(0)
        chosen = np.zeros((0, n_rows), np.bool_)
    else:
        n_var = len(scales)
    gt_norm = np.ascontiguousarray(gt_norm, dtype=np.float64)
    shift = np.ascontiguousarray(shift, dtype=np.float64)
    scales = np.ascontiguousarray(scales, dtype=np.float64)
    chosen = np.ascontiguousarray(np.broadcast_to(
        np.ones(n_rows, np.bool_) if chosen is None else np.asarray(chosen, np.bool_),
        (n_var, n_rows)))
    norm_above = np.zeros((n_var, n_rows), np.int64)
    norm_equal = np.zeros((n_var, n_rows), np.int64)
    gt_same = np.ascontiguousarray(gt_raw).astype(block.dtype)  # exact: values of the dtype
    _counts(block, gt_same, gt_norm, shift, scales, chosen, above, equal,
            norm_above, norm_equal)
    if n_var == 0:
        return above, equal, None, None
    return above, equal, norm_above, norm_equal
