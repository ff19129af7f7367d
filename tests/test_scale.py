"""Out-of-core behaviour: stored top-k against a full-argsort oracle, bounded memory."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import qbscale
from qbscale.storage.stores.results import open_result
from qbscale.synth import SynthSpec, synth

from . import reference as ref

LAYOUTS = {"rows": {"chunk_rows": 9}, "2d": {"chunk_rows": 9, "chunk_cols": 7}}


@pytest.fixture(scope="module")
def problem():
    """Scores rounded to 1/8: ties everywhere, which top-k must break by index."""
    rng = np.random.default_rng(21)
    bank = (np.round(rng.random((90, 30)) * 8) / 8).astype(np.float32)
    test = (np.round(rng.random((60, 30)) * 8) / 8).astype(np.float32)
    test[np.arange(60), np.arange(60) // 2] += 0.5
    return bank, test


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize(("method", "k"), [("dis", 1), ("is", 1), ("dis", 3), ("none", 1)])
def test_stored_topk_equals_argsort_oracle(problem, tmp_path, layout, method, k, cli_invoke):
    bank, test = problem
    url = qbscale.ingest(tmp_path / "exp.zarr", bank, test, progress=False, **LAYOUTS[layout])
    cli_invoke("run", url, "--beta", "5,20", "--k", k, "--method", method, "--topk", "6",
               "--quiet")
    index = open_result(str(url), "topk_index")[...]
    score = open_result(str(url), "topk_score")[...]
    assert index.shape == score.shape == ((1 if method == "none" else 2), 60, 6)
    for b, beta in enumerate([5.0, 20.0][:index.shape[0]]):
        want = test.astype(np.float64) if method == "none" else \
            ref.scores(test, bank, beta, k, method)
        want_idx, want_val = ref.topk(want, 6)
        np.testing.assert_array_equal(index[b], want_idx)
        assert score.dtype == np.float64  # (logZ may differ from the oracle in its last bit)
        np.testing.assert_allclose(score[b], want_val, rtol=1e-13, atol=1e-13)


def test_topk_larger_than_the_gallery_keeps_every_item(problem, tmp_path):
    bank, test = problem
    url = qbscale.ingest(tmp_path / "exp.zarr", bank, test, progress=False, chunk_cols=7)
    res = qbscale.run(str(url), beta=20, topk=50)
    assert res.topk_index.shape == (1, 60, 30)
    np.testing.assert_array_equal(np.sort(res.topk_index[0], axis=1),
                                  np.broadcast_to(np.arange(30), (60, 30)))


def _peak_rss(url: object) -> int:
    """Peak RSS in bytes of ``qbscale run URL`` in a fresh process."""
    # a fresh parent whose only child is the run: its children's peak is the run's
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
               "capture_output=True); print(resource.getrusage(resource.RUSAGE_CHILDREN)"
               ".ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "qbscale.cli",
                          "run", str(url), "--beta", "10,20", "--topk", "5", "--quiet"],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1]) * 1024


def test_peak_memory_is_a_fraction_of_the_store(tmp_path):
    """A 0.5 GiB store runs in a process whose memory beyond what the same run of a
    tiny store takes (the interpreter, dask, zarr, numba's compiled kernels) is a
    small fraction of the store, and whose whole peak stays under 0.5 GiB."""
    small = synth(tmp_path / "small.zarr", SynthSpec(n_bank=40, n_test=10, n_gallery=250,
                                                     dim=32), progress=False)
    spec = SynthSpec(n_bank=4000, n_test=1000, n_gallery=25000, dim=32)
    url = synth(tmp_path / "big.zarr", spec, chunk_bytes=4 * 2**20, progress=False)
    size = 5000 * 25000 * 4
    base, peak = _peak_rss(small), _peak_rss(url)
    assert peak - base < size / 4, \
        f"peak RSS {peak / 2**20:.0f} MiB ({base / 2**20:.0f} MiB on a tiny store) for a " \
        f"{size / 2**20:.0f} MiB store"
    assert peak < 2**29, f"peak RSS {peak / 2**20:.0f} MiB"
