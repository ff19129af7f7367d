"""``count_block`` against dense float64 counting, on rows wide enough for the
float32 candidate prefilter to be used (the engine tests' galleries are too
narrow to reach it)."""

from __future__ import annotations

import os
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qbscale.engine import fused, kernels

from . import reference as ref


def dense_counts(block, gt_raw, gt_norm, shift, scales, chosen):
    """Counts written from the definition: every entry scored in float64."""
    x = block.astype(np.float64)
    above = (x > gt_raw[:, None]).sum(axis=1)
    equal = (x == gt_raw[:, None]).sum(axis=1)
    n_above = np.zeros((len(scales), len(x)), np.int64)
    n_equal = np.zeros((len(scales), len(x)), np.int64)
    for b, scale in enumerate(scales):
        s = x * scale - shift[b]
        g = gt_norm[b][:, None]
        n_above[b] = np.where(chosen, (s > g).sum(axis=1), 0)
        n_equal[b] = np.where(chosen, (s == g).sum(axis=1), 0)
    return above, equal, n_above, n_equal


@st.composite
def blocks(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_rows = draw(st.integers(1, 40))
    n_cols = draw(st.sampled_from([17, 64, 333, 1500, 5000]))
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    magnitude = draw(st.sampled_from([1.0, 50.0, 1e4]))
    if draw(st.booleans()):  # coarse grid: many exact ties
        block = rng.integers(-4, 5, (n_rows, n_cols)) / 4 * magnitude
    else:
        block = rng.standard_normal((n_rows, n_cols)) * magnitude / 3
    block = block.astype(dtype)
    if n_cols > 2 and draw(st.booleans()):  # duplicated columns tie after normalising
        block[:, 1] = block[:, 0]
    scales = np.array(draw(st.lists(st.sampled_from([0.5, 1.0, 2.0, 20.0, 50.0]),
                                    min_size=1, max_size=3)))
    bank = (rng.standard_normal((draw(st.integers(1, 50)), n_cols)) * magnitude / 3)
    shift = np.stack([ref.log_normaliser(bank.astype(np.float32), s) for s in scales])
    if draw(st.booleans()):
        shift[:, 1] = shift[:, 0]
    # the ground truth: in the block near the top, anywhere in it, or elsewhere
    where = draw(st.sampled_from(["top", "anywhere", "outside"]))
    x64 = block.astype(np.float64)
    if where == "outside":
        gt_raw = rng.choice(x64.ravel(), n_rows) + rng.integers(0, 2, n_rows) * 0.25
        gt_raw = gt_raw.astype(dtype).astype(np.float64)
        gt_norm = np.stack([gt_raw * s - rng.choice(shift[b], n_rows)
                            for b, s in enumerate(scales)])
    else:
        order = np.argsort(-(x64 * scales[0] - shift[0]), axis=1, kind="stable")
        rank = (rng.integers(0, 3, n_rows) if where == "top"
                else rng.integers(0, n_cols, n_rows))
        gt = order[np.arange(n_rows), rank]
        gt_raw = x64[np.arange(n_rows), gt]
        gt_norm = kernels.normalised_gt(gt_raw, gt, shift, scales)
    chosen = rng.random(n_rows) < draw(st.sampled_from([0.0, 0.7, 1.0]))
    return block, gt_raw, gt_norm, shift, scales, chosen


@settings(max_examples=int(2.5 * settings.default.max_examples))  # conftest profile
@given(blocks())
def test_count_block_equals_dense_float64(case):
    block, gt_raw, gt_norm, shift, scales, chosen = case
    got = kernels.count_block(block, 5, gt_raw, gt_norm, shift, scales, chosen)
    above, equal, n_above, n_equal = dense_counts(block, gt_raw, gt_norm, shift, scales,
                                                  chosen)
    np.testing.assert_array_equal(got.above, above)
    np.testing.assert_array_equal(got.equal, equal)
    np.testing.assert_array_equal(got.norm_above, n_above)
    np.testing.assert_array_equal(got.norm_equal, n_equal)
    np.testing.assert_array_equal(got.top_idx, np.argmax(block, axis=1) + 5)


def test_prefilter_is_used_and_skipped_where_it_must_be():
    """Finite, moderate values get float32 floors; huge or non-finite ones do not."""
    gt = np.array([[1.0, 2.0]])
    shift = np.array([[3.0, 4.0, 5.0]])
    floors = kernels.candidate_floor(gt, shift, np.array([20.0]), np.array([0.5, 0.7]))
    assert floors is not None and floors.dtype == np.float32
    assert (floors < gt).all() and (floors > gt - 1e-4).all()
    for bad in (np.array([[3.0, np.inf, 5.0]]), np.array([[3.0, 4e30, 5.0]])):
        assert kernels.candidate_floor(gt, bad, np.array([20.0]), np.array([0.5])) is None
    assert kernels.candidate_floor(gt, shift, np.array([-1.0]), np.array([0.5])) is None
    assert kernels.candidate_floor(gt, shift, np.array([1.0]), np.array([1e31])) is None


def test_near_ties_within_float32_error_are_counted_exactly():
    """Scores that differ from the ground truth's only in float64's last bits:
    float32 cannot tell them apart, the exact rescoring must."""
    n_cols = 4096
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, n_cols)).astype(np.float64) * 0.1
    shift = np.zeros((1, n_cols))
    g = x[0, 10]
    x[0, 20:30] = np.nextafter(g, np.inf)  # just above the ground truth
    x[0, 30:35] = g  # equal
    x[0, 35:40] = np.nextafter(g, -np.inf)  # just below
    gt_norm = np.array([[g]])
    got = kernels.count_block(x, 0, np.array([g]), gt_norm, shift, np.array([1.0]))
    assert got.norm_above[0, 0] == (x[0] > g).sum()
    assert got.norm_equal[0, 0] == (x[0] == g).sum() == 6


@pytest.mark.parametrize(("block", "scale"), [
    (np.zeros((1, 1)), 1e39),  # scale above float32's range: would be inf
    (np.full((1, 32), -1e-20), 1e39),
    (np.array([[1e300]]), 1e-290),  # below it: would round to 0
    (np.r_[np.float32(1e30), np.nextafter(np.float32(1e30), np.float32(np.inf)),
           np.full(30, 1e30, np.float32)][None], 1.3e-40),  # would be subnormal
])
def test_scales_float32_cannot_hold_are_counted_exactly(block, scale):
    scales, shift = np.array([scale]), np.zeros((1, block.shape[1]))
    gt_raw = block[:, 0].astype(np.float64)
    gt_norm = kernels.normalised_gt(gt_raw, np.zeros(len(block), int), shift, scales)
    got = kernels.count_block(block, 0, gt_raw, gt_norm, shift, scales)
    _, _, n_above, n_equal = dense_counts(block, gt_raw, gt_norm, shift, scales,
                                          np.ones(len(block), bool))
    np.testing.assert_array_equal(got.norm_above, n_above)
    np.testing.assert_array_equal(got.norm_equal, n_equal)


def test_rows_left_alone_get_no_counts_even_with_extreme_scores():
    block = np.array([[1e-10] + [-1.0] * 31] * 2)
    scales, shift = np.array([1e39]), np.zeros((1, 32))
    gt_raw = block[:, 0].copy()
    gt_norm = kernels.normalised_gt(gt_raw, np.zeros(2, int), shift, scales)
    got = kernels.count_block(block, 0, gt_raw, gt_norm, shift, scales,
                              rows_to_normalise=np.array([True, False]))
    np.testing.assert_array_equal(got.norm_equal, [[1, 0]])


def _laid_out(block: np.ndarray, layout: str) -> np.ndarray:
    """``block``'s values in a C-contiguous, column-sliced or read-only array."""
    if layout == "cols":  # rows with a stride: a column slice of a wider array
        return np.pad(block, ((0, 0), (0, 3)))[:, :block.shape[1]]
    out = block.copy()
    if layout == "readonly":
        out.setflags(write=False)
    return out


@pytest.mark.parametrize("kernel", ["fused", "numpy"])
@settings(max_examples=settings.default.max_examples)
@given(case=blocks(), layout=st.sampled_from(["c", "cols", "readonly"]),
       special=st.sampled_from([None, np.nan, np.inf, -np.inf]))
def test_both_count_kernels_equal_dense_float64(kernel, case, layout, special):
    """The fused counting kernel and the numpy passes (float32 prefilter) give
    the counts of the definition, in any memory layout and with non-finite
    entries."""
    block, gt_raw, gt_norm, shift, scales, chosen = case
    if special is not None:
        block = block.copy()
        block[:, -1] = special  # never the ground truth's own score: it is finite
    block = _laid_out(block, layout)
    with mock.patch.dict(os.environ, {"QBSCALE_KERNEL": kernel}), \
            np.errstate(invalid="ignore", over="ignore"):
        got = kernels.count_block(block, 5, gt_raw, gt_norm, shift, scales, chosen)
        raw = kernels.count_block(block, 5, gt_raw, None, None, scales)
        above, equal, n_above, n_equal = dense_counts(block, gt_raw, gt_norm, shift, scales,
                                                      chosen)
    for counts in (got, raw):
        np.testing.assert_array_equal(counts.above, above)
        np.testing.assert_array_equal(counts.equal, equal)
        np.testing.assert_array_equal(counts.top_idx, np.argmax(block, axis=1) + 5)
    np.testing.assert_array_equal(got.norm_above, n_above)
    np.testing.assert_array_equal(got.norm_equal, n_equal)
    assert raw.norm_above is None and raw.norm_equal is None


def test_float_blocks_are_counted_by_the_fused_kernel(monkeypatch):
    """float32/float64 blocks in native order go through one fused pass;
    float16, byte-swapped blocks and ``QBSCALE_KERNEL=numpy`` through numpy."""
    monkeypatch.delenv("QBSCALE_KERNEL", raising=False)
    seen = []
    real = fused.counts

    def spy(block, *args):
        seen.append(block.dtype.str)
        return real(block, *args)

    monkeypatch.setattr(fused, "counts", spy)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 50))
    scales, shift = np.array([20.0, 40.0]), rng.standard_normal((2, 50))
    for dtype in ("<f4", "<f8", "<f2", ">f4"):
        block = x.astype(dtype)
        gt_raw = block[:, 3].astype(np.float64)
        gt_norm = kernels.normalised_gt(gt_raw, np.full(6, 3), shift, scales)
        got = kernels.count_block(block, 0, gt_raw, gt_norm, shift, scales)
        _, _, n_above, _ = dense_counts(block, gt_raw, gt_norm, shift, scales,
                                        np.ones(6, bool))
        np.testing.assert_array_equal(got.norm_above, n_above)
    assert seen == ["<f4", "<f8"]
    monkeypatch.setenv("QBSCALE_KERNEL", "numpy")
    kernels.count_block(x, 0, x[:, 3].copy(), None, None, scales)
    assert seen == ["<f4", "<f8"]
