"""`diagnose` against the dense oracle (tests/reference.py), over random chunkings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qbscale
from qbscale.analysis import diagnose as dg
from qbscale.analysis import reading
from qbscale.engine.grid import split
from qbscale.engine.subsets import sample_rows
from qbscale.errors import ConfigError
from qbscale.storage.stores.sources import NumpyMatrix
from qbscale.types import Experiment

from . import reference as ref
from .strategies import chunking, problems


def chunked(a: np.ndarray, rows: int, cols: int) -> NumpyMatrix:
    return NumpyMatrix(a, split(a.shape[0], rows), split(a.shape[1], cols))


def oracle(bank: np.ndarray, test: np.ndarray, mask: np.ndarray | None, beta: float, k: int,
           depth: int = 10) -> dict:
    keep = np.ones(test.shape[0], bool) if mask is None else mask
    log_z = ref.log_normaliser(bank, beta)
    active = ref.activation_set(bank, k)
    nk = ref.occurrence(test, depth, mask)
    bank_top1 = bank.astype(np.float64).max(axis=1)
    test_top1 = test.astype(np.float64).max(axis=1)[keep]
    top_idx = np.argsort(-test.astype(np.float64), axis=1, kind="stable")[:, 0][keep]
    hubs = ref.top_share(nk)
    return {
        "log_z": log_z, "nk": nk,
        "spearman": ref.spearman(log_z, nk),
        "hub_overlap": len(ref.top_share(log_z) & hubs) / len(hubs),
        "hubs_activated": float(np.mean([active[j] for j in hubs])),
        "ks": ref.ks(bank_top1, test_top1),
        "bank_top1": np.quantile(bank_top1, dg.QUANTILES),
        "test_top1": np.quantile(test_top1, dg.QUANTILES),
        "activated_share": float(active[top_idx].mean()),
        "activation_share": float(active.mean()),
    }


def check(d: dg.Diagnosis, want: dict) -> None:
    np.testing.assert_allclose(d.log_z, want["log_z"], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(d.occurrence, want["nk"])
    for name in ("hub_overlap", "hubs_activated", "ks", "activated_share", "activation_share"):
        assert d[name] == pytest.approx(want[name], abs=1e-12), name
    if np.isnan(want["spearman"]):
        assert np.isnan(d["spearman"])
    else:
        assert d["spearman"] == pytest.approx(want["spearman"], abs=1e-9)
    np.testing.assert_allclose(list(d["bank_top1"].values()), want["bank_top1"], rtol=1e-12)
    np.testing.assert_allclose(list(d["test_top1"].values()), want["test_top1"], rtol=1e-12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=problems(), data=st.data())
def test_matches_dense_oracle(p, data):
    bank = chunked(p.bank, chunking(data.draw, p.bank.shape[0]),
                   chunking(data.draw, p.bank.shape[1]))
    test = chunked(p.test, chunking(data.draw, p.test.shape[0]),
                   chunking(data.draw, p.test.shape[1]))
    depth = data.draw(st.integers(1, 12))
    exp = Experiment(bank, test, p.gt, p.mask)
    d = dg.diagnose(exp, p.beta, p.k, depth, scheduler="synchronous")
    check(d, oracle(p.bank, p.test, p.mask, p.beta, p.k, depth))
    # the run's figures, from the same test read, are run()'s
    run = qbscale.run(Experiment(chunked(p.bank, 4, p.bank.shape[1]), chunked(p.test, 5, 10**6),
                                 p.gt, p.mask), beta=p.beta, k=p.k, scheduler="synchronous")
    assert d.result is not None
    assert d.result.before == run.before
    assert d.result.after == run.after
    np.testing.assert_array_equal(d.result.normalised, run.normalised)
    assert d["activated_share"] == pytest.approx(run.normalised_share, abs=1e-12)


def hub_problem(seed: int = 3, n_gallery: int = 300, n_bank: int = 900):
    rng = np.random.default_rng(seed)
    gallery = rng.standard_normal((n_gallery, 16))
    bank = (rng.standard_normal((n_bank, 16)) @ gallery.T / 4).astype(np.float32)
    test = (rng.standard_normal((n_gallery, 16)) @ gallery.T / 4).astype(np.float32)
    test[np.arange(n_gallery), np.arange(n_gallery)] += 1.0
    return bank, test


def test_bank_sample_reads_the_sampled_rows():
    bank, test = hub_problem()
    exp = Experiment(chunked(bank, 70, 300), chunked(test, 64, 120), np.arange(300), None)
    d = dg.diagnose(exp, 20.0, 1, bank_sample=250, seed=5, scheduler="synchronous")
    rows = np.random.default_rng(5).permutation(900)[:250]  # the documented sample
    check(d, oracle(bank[rows], test, None, 20.0, 1))
    assert (d.n_bank, d.n_bank_total) == (250, 900)
    with pytest.raises(ConfigError, match="bank_sample 901 is more than the bank's 900 rows"):
        dg.diagnose(exp, bank_sample=901)


@pytest.mark.parametrize(("sample", "seed"), [(250, 5), (0.1, 2), (1, 0), ("all", 3)])
def test_bank_sample_is_the_runs_sample(sample, seed):
    """diagnose --bank-sample N --seed S reads the bank rows run --bank-sample N --seed S
    uses: the same logZ and activation set, and both the oracle's on those rows."""
    bank, test = hub_problem()
    exp = Experiment(chunked(bank, 70, 300), chunked(test, 64, 120), np.arange(300), None)
    d = dg.diagnose(exp, 20.0, 2, bank_sample=sample, seed=seed, scheduler="synchronous")
    run = qbscale.run(exp, 20.0, 2, bank_sample=sample, seed=seed, scheduler="synchronous")
    # the same rows; summed block by block in another order, so equal to rounding
    np.testing.assert_allclose(d.log_z, run.normaliser.shift[0], rtol=1e-14, atol=0)
    np.testing.assert_array_equal(d.activation, run.normaliser.activation)
    assert d.result is not None and d.result.after == run.after
    rows = sample_rows(sample, seed, 900)
    np.testing.assert_allclose(d.log_z, ref.log_normaliser(bank[rows], 20.0), rtol=1e-12)
    np.testing.assert_array_equal(d.activation, ref.activation_set(bank[rows], 2))
    assert d.n_bank == len(rows)
    assert run.normaliser.config.bank_sample == (None if sample == "all" else len(rows))


def test_cli_bank_sample_is_the_runs_sample(tmp_path, cli_invoke):
    bank, test = hub_problem()
    store = qbscale.ingest(tmp_path / "s.zarr", bank, test, chunk_rows=128, progress=False)
    out = tmp_path / "d.json"
    cli_invoke("diagnose", store, "--bank-sample", "0.2", "--seed", "7", "--json", out, "-q")
    got = json.loads(out.read_text())
    run = qbscale.run(store, beta=20, bank_sample=180, seed=7)
    assert got["n_bank"] == 180 and got["after"] == run.after[20.0]
    assert got["activation_share"] == pytest.approx(float(run.normaliser.activation.mean()))
    res = cli_invoke("diagnose", store, "--bank-sample", "901", "-q", exit_code=1)
    assert "bank_sample 901 is more than the bank's 900 rows" in res.output


def test_without_ground_truth():
    bank, test = hub_problem()
    want = oracle(bank, test, None, 20.0, 2)
    exp = Experiment(chunked(bank, 100, 300), chunked(test, 50, 300), np.arange(300), None)
    d = dg.diagnose(exp, 20.0, 2, evaluate=False, scheduler="synchronous")
    check(d, want)
    assert d.result is None and "before" not in d.to_dict()
    assert "Measured" not in d.to_dict()["reading"]
    # an experiment that carries no ground truth at all
    exp = Experiment(chunked(bank, 100, 300), chunked(test, 50, 300), None, None)  # type: ignore[arg-type]
    d = dg.diagnose(exp, 20.0, 2, scheduler="synchronous")
    check(d, want)
    assert d.result is None


def test_other_methods_are_refused():
    bank, test = hub_problem()
    exp = Experiment(chunked(bank, 100, 300), chunked(test, 50, 300), np.arange(300), None)
    with pytest.raises(ConfigError, match="method must be is or dis, got csls"):
        dg.diagnose(exp, method="csls")


def test_statistics_on_known_values():
    assert dg.spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1)
    assert dg.spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1)
    assert np.isnan(dg.spearman(np.array([1, 2, 3]), np.array([5, 5, 5])))
    assert dg.ks_statistic(np.array([0.0, 1.0]), np.array([0.0, 1.0])) == 0.0
    assert dg.ks_statistic(np.array([1.0, 2.0, 3.0]), np.array([2.5])) == pytest.approx(2 / 3)
    np.testing.assert_array_equal(dg.average_ranks(np.array([5, 1, 5, 5])), [3, 1, 3, 3])


def test_reading_states_its_thresholds():
    figs = {"spearman": 0.7, "ks": 0.05, "hub_overlap": 0.5, "hubs_activated": 1.0,
            "activated_share": 0.95, "bank_top1": {"q50": 0.5}, "test_top1": {"q50": 0.52}}
    text = reading.reading(figs, {"before": 30.0, "after": 35.5})
    assert "likely to help" in text and "strong >= 0.5" in text and "small <= 0.1" in text
    assert "above 90%" in text and "R@1 30.0 -> 35.5 (+5.5)" in text
    assert reading.verdict(0.1, 0.05) == "unlikely to help, and may hurt"
    assert reading.verdict(0.9, 0.35) == "unlikely to help, and may hurt"
    assert reading.verdict(0.3, 0.2) == "likely to have a small effect either way"
    assert reading.verdict(0.3, 0.05) == "likely to help"
    assert reading.verdict(0.6, 0.2) == "likely to help"


def test_cli_diagnose_writes_json(tmp_path, cli_invoke):
    bank, test = hub_problem()
    store = qbscale.ingest(tmp_path / "exp.zarr", bank, test, progress=False,
                           chunk_rows=128)
    out = tmp_path / "diag.json"
    res = cli_invoke("diagnose", store, "--json", out, "-q", "--k", "2", "--depth", "5")
    got = json.loads(out.read_text())
    assert (got["kind"], got["qbscale_version"]) == ("diagnose", qbscale.__version__)
    want = oracle(bank, test, None, 20.0, 2, depth=5)
    assert got["spearman"] == pytest.approx(want["spearman"], abs=1e-9)
    assert got["ks"] == pytest.approx(want["ks"], abs=1e-12)
    assert got["activated_share"] == pytest.approx(want["activated_share"])
    assert (got["k"], got["depth"], got["n_bank"]) == (2, 5, 900)
    run = qbscale.run(store, beta=20, k=2)
    assert got["before"] == run.before and got["after"] == run.after[20.0]
    assert got["thresholds"]["agree_strong"] == reading.AGREE_STRONG
    assert "Spearman rho of logZ and N_k" in res.output and got["reading"][:40] in \
        " ".join(res.output.split())
    bad = cli_invoke("diagnose", store, "--bank-sample", "5000", "-q", exit_code=1)
    assert "bank_sample 5000 is more than the bank's 900 rows" in bad.output


class Counting(NumpyMatrix):
    """Counts the reads of each block."""

    def __init__(self, array, rows, cols):
        super().__init__(array, split(array.shape[0], rows), split(array.shape[1], cols))
        self.reads: dict[tuple[int, int], int] = {}

    def read(self, i, c):
        self.reads[i, c] = self.reads.get((i, c), 0) + 1
        return super().read(i, c)


@pytest.mark.parametrize("cols", [300, 70])
def test_every_block_read_once(cols):
    bank, test = hub_problem()
    b, t = Counting(bank, 100, cols), Counting(test, 64, cols)
    dg.diagnose(Experiment(b, t, np.arange(300), None), scheduler="threads")
    for src in (b, t):
        blocks = {(i, c) for i in range(len(src.row_chunks)) for c in range(len(src.col_chunks))}
        assert src.reads == dict.fromkeys(blocks, 1)
    # a bank sample reads only the blocks holding a sampled row, once each
    b = Counting(bank, 100, cols)
    dg.diagnose(Experiment(b, t, np.arange(300), None), bank_sample=3, seed=1)
    rows = sample_rows(3, 1, 900)
    assert {i for i, _ in b.reads} == set((rows // 100).tolist())
    assert set(b.reads.values()) == {1}
