"""`qbscale run` and `qbscale eval` through CliRunner, opening what they wrote."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import qbscale
import qbscale.storage.store
from qbscale.cli import cli

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


def invoke(*args: str) -> str:
    res = CliRunner().invoke(cli, [*args, "--quiet"])
    assert res.exit_code == 0, res.output
    return res.output


def test_run_json_matches_oracle(problem, store, tmp_path):
    bank, test, mask = problem
    out = tmp_path / "m.json"
    invoke("run", str(store), "--beta", "5,20", "--k", "2", "--json", str(out))
    got = json.loads(out.read_text())
    gt = np.arange(80) // 2
    assert got["before"] == pytest.approx(ref.metrics(ref.ranks(test, gt), mask))
    for beta in (5.0, 20.0):
        want = ref.metrics(ref.ranks(ref.scores(test, bank, beta, 2), gt), mask)
        assert got["after"][str(beta)] == pytest.approx(want)
    assert got["n_evaluated"] == int(mask.sum())
    assert got["activation_size"] == int(ref.activation_set(bank, 2).sum())


@pytest.mark.parametrize("scheduler", ["synchronous", "processes"])
def test_save_scores_then_eval_agrees(problem, store, tmp_path, scheduler):
    bank, test, _ = problem
    out = tmp_path / "run.json"
    invoke("run", str(store), "--method", "is", "--save-scores", "--save-ranks", "--topk", "3",
           "--scheduler", scheduler, "--json", str(out))
    group = zarr.open_group(str(store), mode="r")
    want = ref.scores(test, bank, 20.0, 1, "is")
    # logZ from chunked partials may differ from np.logaddexp.reduce in the last bit
    np.testing.assert_allclose(group["scores"][0], want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(group["ranks"][0], ref.ranks(want, np.arange(80) // 2))
    np.testing.assert_array_equal(group["topk_index"][0], ref.topk(want, 3)[0])
    eval_json = tmp_path / "eval.json"
    invoke("eval", str(store), "--array", "scores", "--json", str(eval_json))
    after = json.loads(out.read_text())["after"]["20.0"]
    assert json.loads(eval_json.read_text()) == pytest.approx(after)


def test_eval_of_raw_test_matches_baseline(problem, store):
    _, test, mask = problem
    output = invoke("eval", str(store))
    want = ref.metrics(ref.ranks(test, np.arange(80) // 2), mask)
    assert f"{round(want['R1'], 1):.1f}" in output.splitlines()[1]


@pytest.mark.parametrize(("args", "message"), [
    (["--beta", "0"], "beta must be a finite number > 0"),
    (["--beta", "x"], "--beta takes numbers"),
    (["--k", "0"], "k must be an integer >= 1"),
    (["--scheduler", "nonsense"], "unknown scheduler"),
])
def test_bad_options_exit_nonzero(store, args, message):
    res = CliRunner().invoke(cli, ["run", str(store), *args, "--quiet"])
    assert res.exit_code != 0
    assert message in res.output


def test_missing_and_incomplete_stores_are_refused(store, tmp_path):
    res = CliRunner().invoke(cli, ["run", str(tmp_path / "nowhere.zarr")])
    assert res.exit_code != 0 and "no qbscale store" in res.output
    group = zarr.open_group(str(store), mode="r+")
    attrs = dict(group.attrs["qbscale"])
    attrs["complete"] = False
    group.attrs["qbscale"] = attrs
    res = CliRunner().invoke(cli, ["run", str(store)])
    assert res.exit_code != 0 and "incomplete" in res.output


def test_run_needs_a_store_or_pickles():
    res = CliRunner().invoke(cli, ["run"])
    assert res.exit_code == 2 and "give a STORE" in res.output


def test_ingest_with_gallery_bank_then_dual_is(problem, tmp_path):
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
    expected = qbscale.run(qbscale.storage.store.in_memory(bank, test), method="dual-is",
                           gallery_bank=gallery_bank).after
    assert next(iter(got.values())) == pytest.approx(next(iter(expected.values())))
