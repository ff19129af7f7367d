"""Stores and experiments without a ground truth (new queries, right answers
unknown): ingest, runs giving top-k and normalised scores only, hubness, and
the refusals, against the dense oracle."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qbscale
from qbscale.analysis.hubness import k_occurrence
from qbscale.cli import cli
from qbscale.errors import ConfigError, InputError
from qbscale.storage.stores.results import open_result, published_path
from qbscale.storage.stores.store import in_memory, open_experiment

from . import reference as ref

N_BANK, N_TEST, N_GALLERY = 60, 23, 30  # 23 queries: not a multiple of the gallery


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(11)
    bank = rng.standard_normal((N_BANK, N_GALLERY)).astype(np.float32)
    test = rng.standard_normal((N_TEST, N_GALLERY)).astype(np.float32)
    return bank, test


@pytest.fixture()
def store(problem, tmp_path):
    bank, test = problem
    return qbscale.ingest(tmp_path / "new.zarr", bank, test, chunk_rows=5, progress=False)


def invoke(*args: str, code: int = 0):
    res = CliRunner().invoke(cli, [*args, "--quiet"])
    assert res.exit_code == code, res.output
    return res


def attrs(url) -> dict:
    return dict(zarr.open_group(str(url), mode="r").attrs["qbscale"])


# ------------------------------------------------------------------ ingest


def test_ingest_without_ground_truth_is_automatic(store):
    assert attrs(store)["ground_truth"] is False
    experiment = open_experiment(store)
    assert experiment.gt is None and not experiment.has_ground_truth
    assert "gt_index" not in set(zarr.open_group(str(store), mode="r").array_keys())


def test_ingest_with_a_ground_truth_says_so(problem, tmp_path):
    bank, test = problem
    out = qbscale.ingest(tmp_path / "gt.zarr", bank, test[:N_GALLERY - 10], queries_per_item=1,
                         progress=False)
    assert attrs(out)["ground_truth"] is True
    np.testing.assert_array_equal(open_experiment(out).gt, np.arange(N_GALLERY - 10))


def test_forced_no_ground_truth(problem, tmp_path):
    bank, test = problem
    square = test[:, :N_GALLERY][:N_GALLERY // 2].repeat(2, axis=0)  # 2 per item: has one
    out = qbscale.ingest(tmp_path / "f.zarr", bank, square, ground_truth=False, progress=False)
    assert attrs(out)["ground_truth"] is False and open_experiment(out).gt is None
    with pytest.raises(ConfigError, match="give neither queries_per_item"):
        qbscale.ingest(tmp_path / "g.zarr", bank, square, ground_truth=False,
                       queries_per_item=2, progress=False)
    with pytest.raises(InputError, match="not a positive multiple"):
        qbscale.ingest(tmp_path / "h.zarr", bank, test, ground_truth=True, progress=False)


def test_ingest_embeddings_without_ground_truth(tmp_path):
    rng = np.random.default_rng(3)
    emb = {name: rng.standard_normal((n, 8)).astype(np.float32)
           for name, n in (("bank", 40), ("test", 13), ("gallery", 20))}
    out = qbscale.ingest_embeddings(tmp_path / "e.zarr", emb["bank"], emb["test"],
                                    emb["gallery"], progress=False)
    assert attrs(out)["ground_truth"] is False and open_experiment(out).gt is None
    res = qbscale.run(out, beta=20, topk=4)
    dense = ref.scores(emb["test"] @ emb["gallery"].T, emb["bank"] @ emb["gallery"].T, 20.0)
    np.testing.assert_array_equal(res.topk_index[0], ref.topk(dense, 4)[0])
    forced = qbscale.ingest_embeddings(tmp_path / "f.zarr", emb["bank"], emb["gallery"],
                                       emb["gallery"], ground_truth=False, progress=False)
    assert open_experiment(forced).gt is None


def test_cli_ingest_notice_on_stderr(problem, tmp_path):
    bank, test = problem
    np.save(tmp_path / "b.npy", bank)
    np.save(tmp_path / "t.npy", test)
    res = invoke("ingest", "--bank", str(tmp_path / "b.npy"), "--test", str(tmp_path / "t.npy"),
                 "-o", str(tmp_path / "a.zarr"))
    assert "no ground truth" in res.stdout
    notice = res.stderr.strip().splitlines()
    assert len(notice) == 1
    assert notice[0].startswith(f"Note: {tmp_path / 'a.zarr'}: no ground truth (test has 23 "
                                "queries, not a positive multiple of its 30 gallery items)")
    np.save(tmp_path / "t2.npy", test[:15].repeat(2, axis=0))
    res = invoke("ingest", "--bank", str(tmp_path / "b.npy"), "--test", str(tmp_path / "t2.npy"),
                 "-o", str(tmp_path / "c.zarr"), "--no-ground-truth")
    assert "no ground truth (as asked)" in res.stderr
    assert open_experiment(tmp_path / "c.zarr").gt is None
    res = invoke("ingest", "--bank", str(tmp_path / "b.npy"), "--test", str(tmp_path / "t2.npy"),
                 "-o", str(tmp_path / "d.zarr"))
    # a ground truth inferred from the shapes is said, with the way out
    assert res.stderr.splitlines() == [
        f"Note: {tmp_path / 'd.zarr'}: ground truth inferred from the shapes: query i is the "
        "query of gallery item i (1 per item); if these are new queries whose right "
        "answers nobody knows, ingest again with --no-ground-truth (or set it with "
        "--queries-per-item or --gt-index)"]
    assert open_experiment(tmp_path / "d.zarr").gt is not None
    res = invoke("ingest", "--bank", str(tmp_path / "b.npy"), "--test", str(tmp_path / "t2.npy"),
                 "-o", str(tmp_path / "e.zarr"), "--queries-per-item", "1")
    assert res.stderr == "" and open_experiment(tmp_path / "e.zarr").gt is not None


# ------------------------------------------------------------------ runs


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 9), st.integers(0, 2**32 - 1), st.sampled_from(["dis", "is", "nnn"]),
       st.integers(1, 6))
def test_in_memory_run_equals_dense(rows, seed, method, topk):
    rng = np.random.default_rng(seed)
    bank = rng.standard_normal((17, 11)).astype(np.float32)
    test = rng.standard_normal((7, 11)).astype(np.float32)
    params = {"nnn_k": 4.0} if method == "nnn" else {}
    value = 0.75 if method == "nnn" else 20.0
    experiment = in_memory(bank, test, rows_per_block=rows, ground_truth=False)
    swept = {"alpha": value, "nnn_k": 4} if method == "nnn" else {"beta": value}
    res = qbscale.run(experiment, method=method, topk=topk, save_scores=True, **swept)
    assert res.before is None and res.after is None and res.base_ranks is None
    want = ref.method_scores(test, bank, method, value, params)
    assert res.scores.shape == (1, 7, 11) and res.scores.dtype == np.float64
    np.testing.assert_allclose(res.scores[0], want, rtol=1e-12, atol=1e-12)
    idx, score = ref.topk(want, topk)
    np.testing.assert_array_equal(res.topk_index[0], idx)
    np.testing.assert_allclose(res.topk_score[0], score, rtol=1e-12)
    rows_normalised = ref.normalised_rows(test, bank, "dis" if method == "dis" else "is", 1)
    np.testing.assert_array_equal(res.normalised, rows_normalised)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.integers(1, 23), st.integers(1, 30))
def test_store_chunked_both_ways_equals_dense(problem, tmp_path_factory, chunk_rows, chunk_cols):
    bank, test = problem
    out = qbscale.ingest(tmp_path_factory.mktemp("c") / "s.zarr", bank, test,
                         chunk_rows=chunk_rows, chunk_cols=chunk_cols, progress=False)
    res = qbscale.run(out, beta=[5, 20], k=2, topk=3)
    for b, beta in enumerate((5.0, 20.0)):
        want = ref.scores(test, bank, beta, 2)
        np.testing.assert_array_equal(res.topk_index[b], ref.topk(want, 3)[0])
    np.testing.assert_array_equal(res.base_topk_index, ref.topk(test.astype(np.float64), 3)[0])
    np.testing.assert_array_equal(res.normalised, ref.normalised_rows(test, bank, "dis", 2))
    np.testing.assert_array_equal(open_result(str(out), "topk_index")[...], res.topk_index)


def test_in_memory_save_scores_with_ground_truth_returns_the_matrix(problem):
    bank, test = problem
    square = test[:15].repeat(2, axis=0)
    res = qbscale.run(in_memory(bank, square, rows_per_block=4), beta=[10, 20],
                      save_scores=True)
    for b, beta in enumerate((10.0, 20.0)):
        want = ref.scores(square, bank, beta)
        np.testing.assert_allclose(res.scores[b], want, rtol=1e-12, atol=1e-12)
        gt = ref.ground_truth(30, 30)
        assert res.after[beta] == pytest.approx(ref.metrics(ref.ranks(want, gt)))
    assert qbscale.run(in_memory(bank, square), beta=20).scores is None


def test_run_without_ground_truth_needs_an_output(store):
    with pytest.raises(ConfigError, match=r"has no ground truth .* ask for the top-k"):
        qbscale.run(store, beta=20)
    with pytest.raises(ConfigError, match="no ranks to save"):
        qbscale.run(store, topk=2, save_ranks=True)


def test_cli_run_topk_and_scores(problem, store, tmp_path):
    bank, test = problem
    out = tmp_path / "r.json"
    res = invoke("run", str(store), "--beta", "10,20", "--topk", "4", "--save-scores",
                 "--json", str(out))
    got = json.loads(out.read_text())
    assert got["before"] is None and got["after"] is None and got["table"] == []
    assert got["n_queries"] == N_TEST and got["n_evaluated"] == 0
    lines = res.output.splitlines()
    assert lines[0] == (f"no ground truth, so no metrics: {N_TEST} queries x {N_GALLERY} "
                        "gallery items")
    share = 100 * ref.normalised_rows(test, bank, "dis", 1).mean()
    act = int(ref.activation_set(bank, 1).sum())
    assert lines[1] == (f"normalised rows: {share:.1f}% of {N_TEST}; activation set: {act} of "
                        f"{N_GALLERY} gallery items")
    folder = published_path(str(store), "scores")[:-len("scores")]
    assert re.fullmatch(r"runs/[0-9a-f]{32}/", folder)
    assert lines[2] == f"top-4 hits: {store}/{folder} (topk_index, topk_score)"
    assert lines[3] == (f"normalised scores: {store}/{folder}scores "
                        f"(2 x {N_TEST} x {N_GALLERY} float64)")
    assert lines[4] == "read them with qbscale.open_result(STORE, NAME) (the last run's)"
    assert lines[5] == ("metrics need a ground truth: to add one, ingest the store again "
                        "(`qbscale ingest`) with --gt-index FILE or --queries-per-item N")
    assert (qbscale.open_result(str(store), "scores")[...].shape == (2, N_TEST, N_GALLERY))
    assert "R@1" not in res.output
    group = zarr.open_group(str(store), mode="r")
    for b, beta in enumerate((10.0, 20.0)):
        want = ref.scores(test, bank, beta)
        np.testing.assert_allclose(open_result(str(store), "scores")[b], want, rtol=1e-12,
                                   atol=1e-12)
        np.testing.assert_array_equal(open_result(str(store), "topk_index")[b],
                                      ref.topk(want, 4)[0])
    assert group.attrs["qbscale"]["last_run"]["before"] is None


def test_cli_run_refusals(store):
    res = invoke("run", str(store), code=1)
    assert "has no ground truth (nobody knows the right answers): a run gives no metrics, " \
           "so ask for the top-k (topk=K, --topk K) or the scores" in res.output
    res = invoke("run", str(store), "--topk", "2", "--save-ranks", code=1)
    assert "there are no ranks to save" in res.output
    res = invoke("eval", str(store), code=1)
    assert "has no ground truth (nobody knows the right answers): there is nothing to " \
           "evaluate against" in res.output
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        qbscale.evaluate(store)


def test_hubness_without_ground_truth(problem, store, tmp_path):
    bank, test = problem
    out = tmp_path / "hub.json"
    res = invoke("hubness", str(store), "--method", "dis", "--method", "nnn", "--depth", "3",
                 "--json", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["none", "dis", "nnn"]
    assert all("R1" not in r for r in rows)
    before = k_occurrence(ref.topk(test.astype(np.float64), 3)[0], N_GALLERY)
    after = k_occurrence(ref.topk(ref.scores(test, bank, 20.0), 3)[0], N_GALLERY)
    assert rows[0]["hub_max_occurrence"] == before.max()
    assert rows[1]["hub_max_occurrence"] == after.max()
    assert rows[1]["hub_antihub_rate"] == pytest.approx(np.mean(after == 0))
    table = res.output.splitlines()
    assert table[0] == (f"N_k at depth 3 over {N_TEST} test queries and {N_GALLERY} "
                        "gallery items")
    assert table[2].split()[:3] == ["none", "-", "-"]  # setting, then R@1: none


def test_report_needs_a_ground_truth(problem, tmp_path):
    from qbscale.analysis.compare import compare
    from qbscale.analysis.report import write_report

    bank, test = problem
    result = compare(in_memory(bank, test, ground_truth=False), ["dis"], k=3)
    assert result.before is None and result.rows()[1]["hub_k"] == 3
    with pytest.raises(ConfigError, match="the report plots metrics, which need a ground truth"):
        write_report(result, tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_interrupted_run_without_ground_truth_resumes(problem, store, tmp_path):
    from .test_resume import FailingMatrix

    bank, test = problem
    kw = {"beta": [10.0, 20.0], "topk": 3, "save_scores": True}
    experiment = open_experiment(store)
    experiment.test = FailingMatrix(experiment.test, ok=2)
    with pytest.raises(RuntimeError, match="cannot read block"):
        qbscale.run(experiment, scheduler="synchronous", resume=True, **kw)
    [manifest] = Path(store).glob("runs/*/manifest")
    done = zarr.open_array(str(manifest / "done"), mode="r")[...]
    assert 0 < done.sum() < len(done)
    res = qbscale.run(store, resume=True, **kw)
    assert res.extra["resume"]["reused"] == done.sum() and res.before is None
    for b, beta in enumerate((10.0, 20.0)):
        want = ref.scores(test, bank, beta)
        np.testing.assert_allclose(open_result(str(store), "scores")[b], want, rtol=1e-12,
                                   atol=1e-12)
        np.testing.assert_array_equal(res.topk_index[b], ref.topk(want, 3)[0])
    np.testing.assert_array_equal(res.normalised, ref.normalised_rows(test, bank, "dis", 1))


def test_open_dataset_without_ground_truth(store):
    ds = qbscale.open_dataset(store)
    assert "gt" not in ds and ds.attrs["ground_truth"] is False
    assert ds.test.shape == (N_TEST, N_GALLERY)
