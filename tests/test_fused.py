"""The fused bank kernel: its numerical contract against an exact reference,
bits independent of chunking and schedulers, the numpy fallback, the cache."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from qbscale import runtime
from qbscale.api import run
from qbscale.engine import fused, kernels
from qbscale.engine.grid import split
from qbscale.errors import ConfigError
from qbscale.storage.stores.sources import NumpyMatrix
from qbscale.types import Experiment

from . import reference as ref

KERNELS = ["fused", "numpy"]


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    """Each test runs on both kernels (``QBSCALE_KERNEL``)."""
    monkeypatch.setenv("QBSCALE_KERNEL", request.param)
    assert kernels.kernel_name() == request.param
    return request.param


def exact_logsumexp(block: np.ndarray, beta: float) -> np.ndarray:
    """``log(sum(exp(beta * s)))`` per column in long double (a 64-bit
    mantissa on x86: 2**11 times finer than float64), shifted by the column
    maximum; ``beta * s`` of a float32 ``s`` is exact to 2**-64 of itself."""
    x = block.astype(np.longdouble) * np.longdouble(beta)
    m = x.max(axis=0)
    return np.asarray(m + np.log(np.exp(x - m).sum(axis=0)))


def ulps(got: np.ndarray, exact: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``|got - exact|`` in float64 ulps of ``scale`` (see the contract)."""
    return np.asarray(np.abs(got.astype(np.longdouble) - exact)
                      / np.spacing(np.abs(scale).astype(np.float64)))


def columns(kind: str, rng: np.random.Generator, n_rows: int, n_cols: int) -> np.ndarray:
    if kind == "random":
        return (rng.standard_normal((n_rows, n_cols)) * 0.2).astype(np.float32)
    if kind == "uniform":
        return rng.uniform(-1, 1, (n_rows, n_cols)).astype(np.float32)
    if kind == "tied":  # every row of a column equal, or a few values repeated
        block = np.repeat(rng.uniform(-1, 1, (1, n_cols)), n_rows, axis=0)
        block[:, ::2] = rng.integers(-2, 3, (n_rows, (n_cols + 1) // 2)) / 4
        return block.astype(np.float32)
    if kind == "near -1":
        block = -1 + rng.uniform(0, 1e-3, (n_rows, n_cols))
        block[:, ::3] = -1
        return block.astype(np.float32)
    raise AssertionError(kind)


CASES = [(kind, n_rows, beta)
         for kind in ("random", "uniform", "tied", "near -1")
         for n_rows in (1, 7, 335, 2000)
         for beta in (1.0, 20.0, 50.0)] + \
        [("random", n_rows, beta) for n_rows in (7, 335)
         for beta in (1e3, 1e5, 3e7, 1e20, 1e300)] + \
        [("uniform", 335, 1e6)]


@pytest.mark.parametrize(("kind", "n_rows", "beta"), CASES)
def test_fused_logsumexp_is_within_2_ulp_of_the_exact_result(kind, n_rows, beta):
    """The contract: logZ within 2 ulp of the exact value, ulps taken at the
    larger of ``|logZ|`` and ``|beta * max|`` (where the two nearly cancel, the
    ulp of a result near 0 is finer than float64 can resolve the shift at)."""
    rng = np.random.default_rng(n_rows * 7 + int(beta))
    block = columns(kind, rng, n_rows, 64)
    exact = exact_logsumexp(block, beta)
    peak = block.max(axis=0).astype(np.float64) * beta
    scale = np.maximum(np.abs(exact.astype(np.float64)), np.abs(peak))
    got = kernels._fused_logsumexp_sets(block, np.array([beta]), None)[0, 0]
    assert ulps(got, exact, scale).max() <= 2.0
    sets = kernels._fused_logsumexp_sets(block, np.array([2.0, beta]), np.ones((2, n_rows), bool))
    assert sets[:, 1].tobytes() == np.stack([got, got]).tobytes()
    # the numpy passes: numpy's exp bits, a plain float64 sum
    got = kernels.numpy_logsumexp_sets(block, np.array([beta]), None)[0, 0]
    assert ulps(got, exact, scale).max() <= 2.0 + 4e-16 * n_rows / np.spacing(1.0)


def test_fused_exp_is_within_1_ulp_and_keeps_numpys_specials():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-760, 720, 100_001), rng.uniform(-50, 0.5, 100_000),
                        [np.nan, np.inf, -np.inf, 0.0, -0.0, 709.78, 709.79, -745.1, -745.2,
                         -1e300, 1e300, 5e-324]])
    got = np.empty_like(x)
    fused.exp(x, got)
    exact = np.exp(x.astype(np.longdouble))
    normal = (exact > np.finfo(np.float64).tiny) & (exact < np.finfo(np.float64).max)
    assert ulps(got[normal], exact[normal], exact[normal].astype(np.float64)).max() <= 1.0
    with np.errstate(over="ignore"):
        want = np.exp(x)
    sub = ~normal & ~np.isnan(x)  # overflow, underflow: as numpy (subnormals to 1 ulp)
    np.testing.assert_allclose(got[sub], want[sub], rtol=0, atol=5e-324)
    assert np.isnan(got[np.isnan(x)]).all()


@pytest.mark.parametrize("n_betas,n_sets", [(1, 0), (3, 0), (2, 3), (8, 12)])
def test_fused_bits_do_not_depend_on_the_tile_or_block_width(n_betas, n_sets):
    """A column gets the same bits alone, at every place in a wide block (tile
    edges included), whatever the tile width and the other sets computed."""
    rng = np.random.default_rng(n_betas * 10 + n_sets)
    n_rows = 90
    col = (rng.standard_normal((n_rows, 1)) * 2).astype(np.float32)
    betas = np.array([0.5, 20.0, 3.0, 7.0, 11.0, 13.0, 17.0, 40.0][:n_betas])
    members = rng.random((n_sets, n_rows)) < 0.6 if n_sets else None
    alone = kernels.bank_logsumexp_sets(col, betas, members)
    tile = fused.tile_width(n_betas, max(n_sets, 1))
    width = 2 * tile + 5
    block = (rng.standard_normal((n_rows, width)) * 2).astype(np.float32)
    for at in (0, tile - 1, tile, 2 * tile + 4):
        wide = block.copy()
        wide[:, at] = col[:, 0]
        got = kernels.bank_logsumexp_sets(wide, betas, members)[..., [at]]
        assert got.tobytes() == alone.tobytes()
        if members is not None:  # one set computed alone: the same bits
            one = kernels.bank_logsumexp_sets(wide, betas, members[1:2])[..., [at]]
            assert one.tobytes() == got[1:2].tobytes()


def test_fused_sets_match_the_oracle_and_skip_rows_in_no_set(kernel):
    rng = np.random.default_rng(3)
    block = rng.standard_normal((40, 30))  # float64 blocks too
    members = rng.random((4, 40)) < 0.4
    members[:, :5] = False  # rows in no set
    members[3] = False  # a set with no row here
    members[2, 10] = True
    out = kernels.bank_logsumexp_sets(block, np.array([1.0, 20.0]), members)
    for s in range(3):
        for b, beta in enumerate((1.0, 20.0)):
            np.testing.assert_allclose(out[s, b], ref.log_normaliser(block[members[s]], beta),
                                       rtol=1e-14)
    assert np.all(out[3] == -np.inf)
    whole = kernels.bank_logsumexp_sets(block, np.array([1.0, 20.0]), np.ones((1, 40), bool))
    assert whole.tobytes() == kernels.bank_logsumexp_sets(block, np.array([1.0, 20.0]),
                                                          None).tobytes()


def test_fused_non_finite_input_gives_non_finite_logz_as_numpy(monkeypatch):
    block = np.array([[0.0, np.inf, np.nan, -np.inf, 1.0],
                      [1.0, 0.0, 0.0, -np.inf, 1e30]], np.float32)
    betas = np.array([20.0, 1e300])
    got = kernels._fused_logsumexp_sets(block, betas, None)
    want = kernels.numpy_logsumexp_sets(block, betas, None)
    assert (np.isfinite(got) == np.isfinite(want)).all()
    np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-15)


def test_the_fused_kernel_is_the_default_and_numpy_is_the_fallback(monkeypatch):
    monkeypatch.delenv("QBSCALE_KERNEL", raising=False)
    assert kernels.kernel_name() == "fused"
    block = np.arange(12, dtype=np.int16).reshape(3, 4)  # not float: numpy's passes
    np.testing.assert_allclose(kernels.bank_logsumexp(block, np.array([1.0]))[0],
                               ref.log_normaliser(block.astype(float), 1.0), rtol=1e-14)
    monkeypatch.setattr(kernels, "_fused", lambda: None)  # numba missing
    assert kernels.kernel_name() == "numpy"


def _experiment(seed: int, rows: int, cols: int) -> Experiment:
    rng = np.random.default_rng(seed)
    bank = (rng.standard_normal((300, 70)) * 0.3).astype(np.float32)
    test = (rng.standard_normal((50, 70)) * 0.3).astype(np.float32)
    return Experiment(NumpyMatrix(bank, split(300, rows), split(70, cols)),
                      NumpyMatrix(test, split(50, 20), split(70, cols)), np.arange(50), None)


def test_run_bits_do_not_depend_on_column_chunks_or_workers(kernel):
    """Same shift, ranks and top-k bits for every column chunk width and
    scheduler (the bank's row chunks fixed: they set the combine tree)."""
    want = run(_experiment(0, 100, 70), beta=[10, 20], topk=3, scheduler="synchronous")
    for cols, scheduler, workers in ((7, "threads", 2), (33, "threads", 1),
                                     (70, "threads", 2), (16, "processes", 2)):
        got = run(_experiment(0, 100, cols), beta=[10, 20], topk=3, scheduler=scheduler,
                  num_workers=workers)
        assert got.shift.tobytes() == want.shift.tobytes(), (cols, scheduler)
        for name in ("topk_score", "topk_index", "base_ranks"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        for beta in (10.0, 20.0):
            np.testing.assert_array_equal(got.ranks[beta], want.ranks[beta])


def test_numba_cache_dir_falls_back_when_the_package_is_read_only(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    package = tmp_path / "engine"
    package.mkdir()
    assert runtime.numba_cache_dir(package) is None  # writable: numba's own __pycache__
    # read-only (as on a read-only file system: root writes any other directory)
    writable = os.access
    monkeypatch.setattr(runtime.os, "access", lambda p, mode: (
        False if str(p).startswith(str(package)) else writable(p, mode)))
    monkeypatch.setattr(runtime.tempfile, "gettempdir", lambda: str(tmp_path))
    path = runtime.numba_cache_dir(package)
    assert path is not None and path.startswith(str(tmp_path))
    assert os.environ["NUMBA_CACHE_DIR"] == path and os.path.isdir(path)
    assert runtime.numba_cache_dir(package) is None  # set: left alone


def test_an_unknown_kernel_name_is_refused(monkeypatch):
    monkeypatch.setenv("QBSCALE_KERNEL", "fortran")
    with pytest.raises(ConfigError, match="QBSCALE_KERNEL='fortran'"):
        kernels.bank_logsumexp(np.zeros((2, 2)), np.array([1.0]))


_CHILD = textwrap.dedent("""
    import numpy as np, qbscale
    from qbscale.engine.grid import split
    from qbscale.storage.stores.sources import NumpyMatrix
    from qbscale.types import Experiment
    rng = np.random.default_rng(0)
    bank = (rng.standard_normal((300, 70)) * 0.3).astype(np.float32)
    test = (rng.standard_normal((50, 70)) * 0.3).astype(np.float32)
    exp = Experiment(NumpyMatrix(bank, split(300, 40), split(70, 70)),
                     NumpyMatrix(test, split(50, 25), split(70, 70)), np.arange(50), None)
    res = qbscale.run(exp, beta=20, scheduler=SCHEDULER, num_workers=2, progress=False)
    print(res.shift.tobytes().hex()[:64], float(res.shift.sum()))
""")


@pytest.mark.parametrize("scheduler", ["processes", "local:2"])
def test_a_cold_cache_under_several_processes(tmp_path, scheduler):
    """numba's on-disk cache, written by several worker processes at once
    (an empty cache dir), then read: no crash, the same bits as in-process."""
    code = _CHILD.replace("SCHEDULER", repr(scheduler))
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("QBSCALE_KERNEL", None)
    outs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=300) for _ in range(2)]
    for out in outs:
        assert out.returncode == 0, out.stderr[-2000:]
    assert outs[0].stdout == outs[1].stdout
    assert any(f.endswith(".nbi") for _, _, files in os.walk(tmp_path / "cache") for f in files)
    rng = np.random.default_rng(0)
    bank = (rng.standard_normal((300, 70)) * 0.3).astype(np.float32)
    here = run(Experiment(NumpyMatrix(bank, split(300, 40), split(70, 70)),
                          NumpyMatrix((rng.standard_normal((50, 70)) * 0.3).astype(np.float32),
                                      split(50, 25), split(70, 70)), np.arange(50), None),
               beta=20, scheduler="synchronous")
    assert outs[0].stdout.split()[0] == here.shift.tobytes().hex()[:64]
