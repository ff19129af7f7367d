"""Bank samples and bank-size sweeps against the dense oracle and separate runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qbscale
from qbscale.analysis.banksize import bank_size_sweep, format_sweep, paper
from qbscale.cli import cli
from qbscale.engine import kernels
from qbscale.engine.subsets import Subsets, parse_sample, sample_rows, sample_size
from qbscale.errors import ConfigError
from qbscale.storage.stores.store import in_memory
from qbscale.types import Experiment

from . import reference as ref
from .strategies import problems
from .test_engine import chunked

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
PNG = b"\x89PNG\r\n\x1a\n"


def data(seed: int = 3, n_bank: int = 120, n_gallery: int = 30):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n_gallery, 8))
    bank = (rng.standard_normal((n_bank, 8)) @ g.T).astype(np.float32)
    test = (rng.standard_normal((2 * n_gallery, 8)) @ g.T).astype(np.float32)
    test[np.arange(2 * n_gallery), np.arange(2 * n_gallery) // 2] += 2.0
    return bank, test


def oracle_ranks(test, bank, gt, method, value, k, params=None):
    scores = ref.method_scores(test, bank, method, value, params or {}, k)
    return ref.ranks(scores, gt)


# ---------------------------------------------------------------- the sample's rows


def test_sample_size_is_documented_rounding():
    assert sample_size(0.25, 10) == 3  # 2.5 rounds half up
    assert sample_size(0.24, 10) == 2
    assert sample_size(0.001, 10) == 1  # at least one row
    assert sample_size(1.0, 10) == sample_size("all", 10) == sample_size(None, 10) == 10
    assert sample_size(7, 10) == 7
    assert parse_sample("0.5") == 0.5 and parse_sample("12") == 12 and parse_sample("ALL") == "all"
    for bad in (0, -1, 1.5, 0.0, True, "x", float("nan")):
        with pytest.raises(ConfigError):
            sample_size(bad, 10)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="more than the bank's 10 rows"):
        sample_size(11, 10)
    with pytest.raises(ConfigError, match="are both 5 rows"):
        Subsets.make(10, [0.5, 5])


def test_sample_rows_are_the_documented_permutation():
    want = np.random.default_rng(9).permutation(50)[:20]
    np.testing.assert_array_equal(sample_rows(20, 9, 50), want)
    subsets = Subsets.make(50, [20, 35], repeats=2, seed=9)
    members = subsets.block(0, 50).members()
    for r in range(2):
        perm = np.random.default_rng(9 + r).permutation(50)
        for m, n in enumerate((20, 35)):
            assert set(np.flatnonzero(members[r * 2 + m])) == set(perm[:n])


@pytest.mark.parametrize(("method", "params"), [("dis", {}), ("is", {}), ("csls", {"kc": 3}),
                                                ("nnn", {"alpha": 0.5, "nnn_k": 4})])
def test_bank_sample_run_is_the_run_on_those_rows(method, params):
    bank, test = data()
    exp = Experiment(chunked(bank, 17, 30), chunked(test, 11, 30),
                     np.arange(60) // 2, None)
    for n, seed in ((30, 0), (0.25, 4), (1, 2)):
        res = qbscale.run(exp, method=method, k=2, bank_sample=n, seed=seed,
                          scheduler="synchronous", **params)
        rows = np.random.default_rng(seed).permutation(120)[:sample_size(n, 120)]
        value = res.config.values[0]
        np.testing.assert_array_equal(
            res.ranks[value], oracle_ranks(test, bank[rows], exp.gt, method, value, 2,
                                           res.config.param_dict))
        assert res.activation_size == ref.activation_set(bank[rows], 2).sum()
        plain = qbscale.run(in_memory(bank[rows], test), method=method, k=2,
                            scheduler="synchronous", **params)
        assert res.after == plain.after
        np.testing.assert_allclose(res.shift, plain.shift, rtol=1e-13, atol=1e-13)


def test_a_sample_of_every_row_is_the_plain_run():
    bank, test = data()
    exp = in_memory(bank, test, rows_per_block=25)
    plain = qbscale.run(exp, scheduler="synchronous")
    for whole in (120, 1.0, "all"):
        res = qbscale.run(exp, bank_sample=whole, seed=5, scheduler="synchronous")
        np.testing.assert_array_equal(res.shift, plain.shift)
        assert res.after == plain.after
        assert res.config.bank_sample is None  # a sample of every row is the plain run


def test_underflowing_sample_is_recomputed_from_its_own_rows():
    """Rows far below the block's maximum: the shared shift underflows, the
    columns are redone from the sample's rows alone."""
    rng = np.random.default_rng(1)
    block = rng.standard_normal((6, 5))
    block[0] += 40.0  # beta 50: exp(-2000) underflows for every other row
    members = np.array([[False, True, True, False, True, True], [True] * 6])
    out = kernels.bank_logsumexp_sets(block, np.array([50.0]), members)
    np.testing.assert_allclose(out[0, 0], ref.log_normaliser(block[members[0]], 50.0),
                               rtol=1e-13)
    np.testing.assert_array_equal(out[1], kernels.bank_logsumexp(block, np.array([50.0])))
    empty = kernels.bank_logsumexp_sets(block, np.array([1.0]), np.zeros((1, 6), bool))
    assert np.all(empty == -np.inf)


# ---------------------------------------------------------------- sweeps


@SETTINGS
@given(p=problems(max_gallery=10), method=st.sampled_from(["dis", "is", "csls", "nnn"]),
       repeats=st.integers(1, 3), seed=st.integers(0, 50), data=st.data())
def test_every_sweep_cell_is_a_separate_run(p, method, repeats, seed, data):
    nb, ng = p.bank.shape
    sizes = sorted(set(data.draw(st.lists(st.integers(1, nb), min_size=1, max_size=4))))
    if data.draw(st.booleans()) and nb not in sizes:
        sizes.append(nb)
    exp = Experiment(chunked(p.bank, data.draw(st.integers(1, nb)),
                             data.draw(st.integers(1, ng))),
                     chunked(p.test, data.draw(st.integers(1, p.test.shape[0])),
                             data.draw(st.integers(1, ng))), p.gt, p.mask)
    params = {"is": {"beta": [p.beta, 1.0]}, "dis": {"beta": [p.beta]},
              "csls": {"kc": [1, 3]}, "nnn": {"alpha": [0.5], "nnn_k": 2}}[method]
    sweep = bank_size_sweep(exp, sizes, repeats, seed, k=p.k, method=method,
                            scheduler="synchronous", **params)
    for n in sizes:
        for r in range(repeats):
            cell = sweep.cell(n, r)
            run = qbscale.run(exp, k=p.k, method=method, bank_sample=n, seed=seed + r,
                              scheduler="synchronous", **params)
            assert cell.after == run.after
            assert cell.activation_size == run.activation_size
            assert cell.normalised_share == run.normalised_share
            rows = sample_rows(n, seed + r, nb)
            for value in run.config.values:
                np.testing.assert_array_equal(
                    run.ranks[value], oracle_ranks(p.test, p.bank[rows], p.gt, method,
                                                   value, p.k, run.config.param_dict))


def test_sweep_shifts_are_the_separate_runs_bit_for_bit():
    bank, test = data()
    exp = Experiment(chunked(bank, 23, 30), chunked(test, 60, 30), np.arange(60) // 2, None)
    from qbscale.engine.plan import fit_cells
    from qbscale.engine.stack import Stack

    config = qbscale.config.RunConfig.make([5.0, 20.0], 2, "dis")
    subsets = Subsets.make(120, [7, 40, 90, "all"], repeats=2, seed=3)
    norms = fit_cells(exp, config, subsets).compute(scheduler="synchronous")
    assert Stack.of(norms).shift.shape == (len(subsets.cells) * 2, 30)
    for cell, norm in zip(subsets.cells, norms, strict=True):
        sample = None if cell.repeat is None else cell.size
        alone = qbscale.run(exp, beta=[5.0, 20.0], k=2, bank_sample=sample,
                            seed=cell.seed or 0, scheduler="synchronous")
        np.testing.assert_array_equal(norm.shift, alone.shift)
        np.testing.assert_array_equal(norm.activation, alone.normaliser.activation)


def test_all_is_the_plain_run_with_std_zero():
    bank, test = data()
    exp = in_memory(bank, test, rows_per_block=31)
    sweep = bank_size_sweep(exp, [10, "all"], 3, 0, beta=[10, 20], scheduler="synchronous")
    plain = qbscale.run(exp, beta=[10, 20], scheduler="synchronous")
    last = [row for row in sweep.summary() if row["label"] == "all"]
    assert [row["mean"]["R1"] for row in last] == [plain.after[10.0]["R1"],
                                                   plain.after[20.0]["R1"]]
    assert all(v == 0 for row in last for v in row["std"].values())
    assert sweep.before == plain.before
    assert sweep.cell(120, 2).activation_size == plain.activation_size
    text = format_sweep(sweep.to_dict())
    assert paper(plain.after[20.0]["R1"], 0.0) in text
    assert paper(14.44, 0.08) == "14.4(0.1)"


def test_sweep_refuses_the_baseline_and_a_bank_sample():
    bank, test = data()
    with pytest.raises(ConfigError, match="not 'none'"):
        bank_size_sweep(in_memory(bank, test), [10], method="none")
    with pytest.raises(ConfigError, match="more than the bank's 120 rows"):
        bank_size_sweep(in_memory(bank, test), [500])


# ---------------------------------------------------------------- command line


def invoke(*args: str) -> str:
    res = CliRunner().invoke(cli, [*args, "--quiet"])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    bank, test = data()
    return str(qbscale.ingest(tmp_path_factory.mktemp("sweep") / "exp.zarr", bank, test,
                              chunk_rows=19, progress=False))


def test_cli_sweep_json_and_plot(store, tmp_path):
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    text = invoke("sweep", store, "--bank-sizes", "10,0.25,all", "--repeats", "2",
                  "--seed", "4", "--beta", "10,20", "--json", str(out), "--plot", str(png))
    saved = json.loads(out.read_text())
    assert saved["kind"] == "bank_size_sweep" and saved["seeds"] == [4, 5]
    assert [s["size"] for s in saved["sizes"]] == [10, 30, 120]
    assert len(saved["cells"]) == 2 * 2 + 1 and len(saved["summary"]) == 3 * 2
    assert png.read_bytes().startswith(PNG)
    assert "mean(std)" in text and "all" in text
    for cell in saved["cells"]:
        if cell["repeat"] is None:
            continue
        run_json = tmp_path / "run.json"
        invoke("run", store, "--beta", "10,20", "--bank-sample", str(cell["size"]),
               "--seed", str(cell["seed"]), "--json", str(run_json))
        alone = json.loads(run_json.read_text())
        assert alone["after"] == cell["after"]
        assert alone["activation_size"] == cell["activation_size"]
        assert alone["bank_sample"] == cell["size"] and alone["seed"] == cell["seed"]


def test_cli_sweep_bad_sizes_and_missing_matplotlib(store, monkeypatch, tmp_path):
    res = CliRunner().invoke(cli, ["sweep", store, "--bank-sizes", "10,x", "-q"])
    assert res.exit_code != 0 and "--bank-sizes" in res.output
    res = CliRunner().invoke(cli, ["sweep", store, "--bank-sizes", "1000", "-q"])
    assert res.exit_code != 0 and "120 rows" in res.output
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    res = CliRunner().invoke(cli, ["sweep", store, "--bank-sizes", "10", "-q",
                                   "--plot", str(tmp_path / "p.png")])
    assert res.exit_code != 0 and "pip install matplotlib" in res.output
    assert not (tmp_path / "p.png").exists()


def test_cli_hubness_with_a_bank_sample(store, tmp_path):
    out = tmp_path / "hub.json"
    invoke("hubness", store, "--method", "dis", "--bank-sample", "40", "--seed", "2",
           "--k", "2", "--depth", "3", "--json", str(out))
    rows = json.loads(out.read_text())["rows"]
    res = qbscale.run(store, method="dis", k=2, bank_sample=40, seed=2, topk=3)
    plain = qbscale.run(store, method="dis", k=2)
    assert rows[1]["R1"] == res.after[20.0]["R1"]
    assert res.after != plain.after  # the sample is what the command used


def test_report_with_a_bank_size_sweep(store, tmp_path):
    sweep = tmp_path / "sweep.json"
    invoke("sweep", store, "--bank-sizes", "10,all", "--repeats", "2", "--json", str(sweep))
    invoke("report", store, "-o", str(tmp_path / "rep"), "--method", "dis", "--k", "3",
           "--sweep", str(sweep))
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "R@1 against querybank size" in page
    assert (tmp_path / "rep" / "bank_sizes.png").read_bytes().startswith(PNG)
    (tmp_path / "bad.json").write_text("{}")
    res = CliRunner().invoke(cli, ["report", store, "-o", str(tmp_path / "r2"), "-q",
                                   "--sweep", str(tmp_path / "bad.json")])
    assert res.exit_code != 0 and "not a bank-size sweep" in res.output


def test_lazy_and_a_fitted_normaliser_keep_the_sample():
    bank, test = data()
    exp = in_memory(bank, test, rows_per_block=40)
    res = qbscale.run(exp, bank_sample=50, seed=1, scheduler="synchronous")
    parts = qbscale.api.lazy(exp, bank_sample=50, seed=1)
    np.testing.assert_array_equal(parts["shift"].compute(scheduler="synchronous"), res.shift)
    again = qbscale.run(exp, bank_sample=50, seed=1, normaliser=res.normaliser)
    assert again.after == res.after
    with pytest.raises(ConfigError, match="bank_sample=50 seed=1; this run asks for"):
        qbscale.run(exp, normaliser=res.normaliser)
    from qbscale.engine.plan import fit

    norm = fit(exp, qbscale.config.RunConfig.make(20.0), bank_sample=50, seed=1).compute(
        scheduler="synchronous")
    np.testing.assert_array_equal(norm.shift, res.shift)
    assert (norm.config.bank_sample, norm.config.seed) == (50, 1)
