"""The streaming engine against the dense oracle, over random chunkings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qbscale.api import run
from qbscale.config import RunConfig
from qbscale.engine import kernels
from qbscale.engine.grid import split
from qbscale.engine.plan import build
from qbscale.storage.stores.sources import NumpyMatrix
from qbscale.types import Experiment

from . import reference as ref
from .strategies import problems

SETTINGS = settings()  # the profile of tests/conftest.py


def chunked(array: np.ndarray, rows: int, cols: int) -> NumpyMatrix:
    return NumpyMatrix(array, split(array.shape[0], rows), split(array.shape[1], cols))


def experiment(p, data) -> Experiment:
    nb, ng = p.bank.shape
    nq = p.test.shape[0]
    bank = chunked(p.bank, data.draw(st.integers(1, nb)), data.draw(st.integers(1, ng)))
    test = chunked(p.test, data.draw(st.integers(1, nq)), data.draw(st.integers(1, ng)))
    return Experiment(bank, test, p.gt, p.mask)


@SETTINGS
@given(p=problems(), method=st.sampled_from(["dis", "is", "none"]), data=st.data())
def test_ranks_equal_oracle(p, method, data):
    exp = experiment(p, data)
    betas = sorted({p.beta, 1.0})
    res = run(exp, beta=betas, k=p.k, method=method, scheduler="synchronous")
    np.testing.assert_array_equal(res.base_ranks, ref.ranks(p.test.astype(np.float64), p.gt))
    assert res.before == pytest.approx(ref.metrics(res.base_ranks, p.mask))
    if method == "none":
        assert res.after == {}
        return
    for beta in betas:
        expected = ref.ranks(ref.scores(p.test, p.bank, beta, p.k, method), p.gt)
        np.testing.assert_array_equal(res.ranks[beta], expected)
        assert res.after[beta] == pytest.approx(ref.metrics(expected, p.mask))
    np.testing.assert_array_equal(res.normalised, ref.normalised_rows(p.test, p.bank, method, p.k))
    assert res.activation_size == ref.activation_set(p.bank, p.k).sum()


@SETTINGS
@given(p=problems(), method=st.sampled_from(["dis", "is", "none"]),
       topk=st.integers(1, 5), data=st.data())
def test_topk_equals_argsort_oracle(p, method, topk, data):
    exp = experiment(p, data)
    res = run(exp, beta=p.beta, k=p.k, method=method, topk=topk, scheduler="synchronous")
    want = ref.scores(p.test, p.bank, p.beta, p.k, method)
    idx, val = ref.topk(want, min(topk, p.test.shape[1]))
    np.testing.assert_array_equal(res.topk_index[0], idx)
    # float64 scores; logZ's summation order may differ from the oracle's in the last bit
    assert res.topk_score.dtype == np.float64
    np.testing.assert_allclose(res.topk_score[0], val, rtol=1e-13, atol=1e-13)


@SETTINGS
@given(st.data())
def test_logsumexp_and_topk_kernels(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    shape = (data.draw(st.integers(1, 30)), data.draw(st.integers(1, 30)))
    block = rng.integers(0, 4, shape).astype(np.float32) * data.draw(st.sampled_from([1, 40]))
    beta = data.draw(st.sampled_from([1.0, 20.0]))
    np.testing.assert_allclose(kernels.bank_logsumexp(block, np.array([beta]))[0],
                               ref.log_normaliser(block, beta), rtol=1e-12)
    k = data.draw(st.integers(1, shape[1]))
    vals, idx = kernels.row_topk(block, k, col0=7)
    want_idx, want_val = ref.topk(block, k)
    np.testing.assert_array_equal(idx, want_idx + 7)
    np.testing.assert_array_equal(vals, want_val)


@pytest.mark.parametrize("n_rows", [9, 200, 70_000])
def test_equal_columns_get_the_same_bits_in_any_chunk_width(n_rows):
    """A column's logZ does not depend on its block's width or its place in it:
    numpy sums a lone column pairwise and a wide block row by row, and slab
    heights follow the width, so equal gallery columns in column chunks of
    different widths lost their exact tie to the last bit."""
    rng = np.random.default_rng(n_rows)
    col = (rng.standard_normal((n_rows, 1)) * 3).astype(np.float32)
    betas = np.array([0.5, 20.0])
    alone = kernels.bank_logsumexp(col, betas)
    members = rng.random((3, n_rows)) < 0.5
    sets = kernels.bank_logsumexp_sets(col, betas, members)
    for width in (2, 3, 17, 300):
        block = (rng.standard_normal((n_rows, width)) * 3).astype(np.float32)
        for at in (0, width - 1):
            block[:, at] = col[:, 0]
            assert kernels.bank_logsumexp(block, betas)[:, [at]].tobytes() == alone.tobytes()
            got = kernels.bank_logsumexp_sets(block, betas, members)[..., [at]]
            assert got.tobytes() == sets.tobytes()


def test_large_beta_times_similarity_stays_finite():
    """Un-normalised dot products of ~50 with beta 20: exp would overflow."""
    rng = np.random.default_rng(1)
    bank = (rng.standard_normal((200, 30)) * 50).astype(np.float32)
    test = (rng.standard_normal((30, 30)) * 50).astype(np.float32)
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.exp(20 * bank).sum(axis=0)).all()  # the reference overflows
    res = run(Experiment(chunked(bank, 64, 7), chunked(test, 8, 30), np.arange(30), None),
              beta=20, method="is")
    expected = ref.ranks(ref.scores(test, bank, 20.0, 1, "is"), np.arange(30))
    np.testing.assert_array_equal(res.ranks[20.0], expected)
    assert np.isfinite(res.shift).all()


class Exploding(NumpyMatrix):
    def read(self, i, c):  # pragma: no cover - must never run
        raise AssertionError("graph building read data")


def test_building_the_graph_computes_nothing(no_compute):
    rng = np.random.default_rng(0)
    bank = Exploding(rng.random((20, 6)), (10, 10), (3, 3))
    test = Exploding(rng.random((12, 6)), (6, 6), (6,))
    with no_compute():
        plan = build(Experiment(bank, test, np.arange(12) // 2, None), RunConfig.make([5, 20], 2))
    assert len(plan.rows) == 2


def test_no_compute_guard_catches_a_computation(no_compute):
    import dask.array as da

    with pytest.raises(AssertionError, match="computed"), no_compute():
        da.ones(4, chunks=2).sum().compute()


def test_lazy_building_blocks_match_run(no_compute):
    from qbscale.api import lazy
    from qbscale.storage.stores.store import in_memory

    rng = np.random.default_rng(3)
    exp = in_memory(rng.random((40, 8)), rng.random((16, 8)), rows_per_block=5)
    with no_compute():
        arrays = lazy(exp, beta=[10, 20])
    assert arrays["ranks"].shape == (2, 16)
    res = run(exp, beta=[10, 20])
    np.testing.assert_array_equal(arrays["ranks"].compute(scheduler="threads")[1], res.ranks[20.0])
    np.testing.assert_array_equal(arrays["base_ranks"].compute(scheduler="threads"),
                                  res.base_ranks)
    assert arrays["activation"].compute(scheduler="threads").sum() == res.activation_size
