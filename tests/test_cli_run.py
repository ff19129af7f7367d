"""`qbscale run` and `qbscale eval` through CliRunner, opening what they wrote."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

import qbscale
import qbscale.storage.stores.store
from qbscale.cli.run import COLUMNS
from qbscale.storage.stores.results import open_result

from . import reference as ref


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(7)
    bank = rng.standard_normal((300, 40)).astype(np.float32)
    test = rng.standard_normal((80, 40)).astype(np.float32)  # 2 queries per item
    test[np.arange(80), np.arange(80) // 2] += 1.5
    mask = rng.random(80) < 0.9
    return bank, test, mask


@pytest.fixture()
def store(problem, tmp_path):
    bank, test, mask = problem
    return qbscale.ingest(tmp_path / "exp.zarr", bank, test, mask, chunk_rows=17, progress=False)


@pytest.fixture()
def invoke(cli_invoke):
    """The CLI, quiet, expected to succeed: its output."""
    return lambda *args: cli_invoke(*args, "--quiet").output


def test_run_json_matches_oracle(problem, store, tmp_path, invoke):
    bank, test, mask = problem
    out = tmp_path / "m.json"
    invoke("run", str(store), "--beta", "5,20", "--k", "2", "--json", str(out))
    got = json.loads(out.read_text())
    assert (got["kind"], got["qbscale_version"]) == ("run", qbscale.__version__)
    gt = np.arange(80) // 2
    assert got["before"] == pytest.approx(ref.metrics(ref.ranks(test, gt), mask))
    for beta in (5.0, 20.0):
        want = ref.metrics(ref.ranks(ref.scores(test, bank, beta, 2), gt), mask)
        assert got["after"][str(beta)] == pytest.approx(want)
    assert got["n_evaluated"] == int(mask.sum())
    assert got["activation_size"] == int(ref.activation_set(bank, 2).sum())


@pytest.mark.parametrize("scheduler", ["synchronous", "processes"])
def test_save_scores_then_eval_agrees(problem, store, tmp_path, scheduler, invoke):
    bank, test, _ = problem
    out = tmp_path / "run.json"
    invoke("run", str(store), "--method", "is", "--save-scores", "--save-ranks", "--topk", "3",
           "--scheduler", scheduler, "--json", str(out))
    want = ref.scores(test, bank, 20.0, 1, "is")
    # logZ from chunked partials may differ from np.logaddexp.reduce in the last bit
    np.testing.assert_allclose(open_result(str(store), "scores")[0], want, rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_array_equal(open_result(str(store), "ranks")[0],
                                  ref.ranks(want, np.arange(80) // 2))
    np.testing.assert_array_equal(open_result(str(store), "topk_index")[0],
                                  ref.topk(want, 3)[0])
    eval_json = tmp_path / "eval.json"
    invoke("eval", str(store), "--array", "scores", "--json", str(eval_json))
    after = json.loads(out.read_text())["after"]["20.0"]
    evaluated = json.loads(eval_json.read_text())
    assert (evaluated.pop("kind"), evaluated.pop("qbscale_version"), evaluated.pop("array")) \
        == ("eval", qbscale.__version__, "scores")
    assert evaluated == pytest.approx(after)


def test_eval_of_raw_test_matches_baseline(problem, store, invoke):
    """Every printed figure is the oracle's, rounded to one decimal."""
    _, test, mask = problem
    lines = invoke("eval", str(store)).splitlines()
    want = ref.metrics(ref.ranks(test, np.arange(80) // 2), mask)
    assert lines[0].split() == ["method", "beta", "R@1", "R@5", "R@10", "R@50", "MedR",
                                "MeanR", "geom"]
    assert lines[1].split() == ["test", "-", *(f"{want[c]:.1f}" for c in COLUMNS)]


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--beta", "0"], 1, "Error: beta must be a finite number > 0, got 0.0\n"),
    (["--beta", "x"], 1, "Error: --beta takes numbers separated by commas, got 'x' ('x' is not a "
     "number)\n"),
    (["--k", "0"], 2, "Error: Invalid value for '--k': 0 is not in the range x>=1.\n"),
    (["--topk", "-1"], 2, "Error: Invalid value for '--topk': -1 is not in the range x>=0.\n"),
    (["--workers", "0"], 2, "Error: Invalid value for '--workers': 0 is not in the range x>=1."),
    (["--scheduler", "nonsense"], 1, "Error: unknown scheduler 'nonsense': use threads, "
                                     "processes, synchronous, local:N or tcp://HOST:PORT\n"),
])
def test_bad_options_exit_with_their_code_and_message(store, args, code, message, cli_invoke):
    res = cli_invoke("run", str(store), *args, "--quiet", exit_code=code)
    assert message in res.output


def test_missing_and_incomplete_stores_are_refused(store, tmp_path, cli_invoke):
    res = cli_invoke("run", tmp_path / "nowhere.zarr", exit_code=1)
    assert res.output == f"Error: no qbscale store at {tmp_path / 'nowhere.zarr'}\n"
    group = zarr.open_group(str(store), mode="r+")
    attrs = dict(group.attrs["qbscale"])
    attrs["complete"] = False
    group.attrs["qbscale"] = attrs
    res = cli_invoke("run", store, exit_code=1)
    assert res.output == (f"Error: {store} is incomplete (its ingest was interrupted): "
                          "ingest it again (`qbscale ingest`, replacing it)\n")


def test_run_needs_a_store_or_pickles(cli_invoke):
    res = cli_invoke("run", exit_code=2)
    assert "Error: give a STORE or the published code's pickles " \
           "(--sims_train_test_path and --sims_test_path)" in res.output


def test_ingest_with_gallery_bank_then_dual_is(problem, tmp_path, invoke):
    bank, test, _ = problem
    gallery_bank = np.random.default_rng(9).standard_normal((25, 40)).astype(np.float32)
    np.save(tmp_path / "b.npy", bank)
    np.save(tmp_path / "t.npy", test)
    np.save(tmp_path / "g.npy", gallery_bank)
    store = tmp_path / "gb.zarr"
    invoke("ingest", "--bank", str(tmp_path / "b.npy"), "--test", str(tmp_path / "t.npy"),
           "--gallery-bank", str(tmp_path / "g.npy"), "-o", str(store), "--chunk-rows", "11")
    out = tmp_path / "dual.json"
    invoke("run", str(store), "--method", "dual-is", "--json", str(out))
    got = json.loads(out.read_text())["after"]
    expected = qbscale.run(qbscale.storage.stores.store.in_memory(bank, test), method="dual-is",
                           gallery_bank=gallery_bank).after
    assert next(iter(got.values())) == pytest.approx(next(iter(expected.values())))
