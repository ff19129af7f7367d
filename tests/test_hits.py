"""Hits files (qbscale.storage.outputs.hits): every format written, read back and
checked; `qbscale run --topk K --hits FILE` against the dense oracle."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import qbscale
from qbscale.cli import cli
from qbscale.errors import ConfigError, InputError
from qbscale.storage.outputs.hits import HitsWriter, read_hits, write_hits
from qbscale.storage.stores.ids import add_ids

from . import reference as ref

FORMATS = (".parquet", ".tsv", ".trec", ".npz")


def long_form(scores, indices, query_ids, item_ids, variants):
    """The expected rows, built loop by loop: query, then variant, then rank."""
    rows = []
    for q in range(scores.shape[1]):
        for v in range(scores.shape[0]):
            for r in range(scores.shape[2]):
                rows.append((query_ids[q], r + 1, item_ids[indices[v, q, r]],
                             float(scores[v, q, r]), variants[v]))
    return rows


def as_rows(cols):
    return list(zip(*(cols[c].tolist() for c in ("query", "rank", "item", "score", "variant")),
                    strict=True))


@pytest.fixture()
def hits():
    rng = np.random.default_rng(5)
    scores = -np.sort(-rng.standard_normal((2, 7, 3)), axis=2)
    indices = rng.integers(0, 10, (2, 7, 3))
    return scores, indices


@pytest.mark.parametrize("suffix", [".parquet", ".tsv", ".npz"])
def test_round_trip_every_variant(hits, tmp_path, suffix):
    scores, indices = hits
    path = tmp_path / f"h{suffix}"
    write_hits(path, scores, indices, variant=["dis:beta=10", "dis:beta=20"])
    want = long_form(scores, indices, range(7), range(10), ["dis:beta=10", "dis:beta=20"])
    assert as_rows(read_hits(path)) == want
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip_with_ids(hits, tmp_path, suffix):
    scores, indices = hits[0][:1], hits[1][:1]
    qids = np.array([f"q{i}" for i in range(7)])
    items = np.array([f"doc-{j}" for j in range(10)])
    path = tmp_path / f"ids{suffix}"
    write_hits(path, scores[0], indices[0], query_ids=qids, item_ids=items, variant="is")
    variant = "qbscale" if suffix == ".trec" else "is"
    assert as_rows(read_hits(path)) == long_form(scores, indices, qids, items, [variant])


def test_trec_lines_exactly(tmp_path):
    path = tmp_path / "run.trec"
    write_hits(path, np.array([[0.75, 0.5], [2.0, -1.25]]), np.array([[4, 0], [1, 2]]),
               item_ids=np.array([10, 11, 12, 13, 14]))
    assert path.read_text() == ("0 Q0 14 1 0.75 qbscale\n"
                                "0 Q0 10 2 0.5 qbscale\n"
                                "1 Q0 11 1 2.0 qbscale\n"
                                "1 Q0 12 2 -1.25 qbscale\n")


@pytest.mark.parametrize("suffix", FORMATS)
def test_streamed_blocks_equal_one_write(hits, tmp_path, suffix):
    scores, indices = hits
    if suffix == ".trec":
        scores, indices = scores[:1], indices[:1]
    whole, parts = tmp_path / f"w{suffix}", tmp_path / f"p{suffix}"
    write_hits(whole, scores, indices)
    with HitsWriter(parts) as writer:
        for r0 in (0, 3, 4):
            r1 = {0: 3, 3: 4, 4: 7}[r0]
            writer.append(scores[:, r0:r1], indices[:, r0:r1])
    assert writer.n_queries == 7
    assert as_rows(read_hits(parts)) == as_rows(read_hits(whole))


def test_npz_blocks_of_different_id_widths(tmp_path, hits):
    """Blocks are spooled to disk and joined at close: string ids of any width."""
    scores, indices = hits
    qids = np.array(["a", "bb", "ccc", "dddddddd", "e", "ffff", "g"])
    items = np.array([f"item-{'x' * j}" for j in range(10)])
    path = tmp_path / "h.npz"
    with HitsWriter(path, item_ids=items, variant=["b10", "b20"]) as writer:
        for r0, r1 in ((0, 1), (1, 4), (4, 4), (4, 7)):
            writer.append(scores[:, r0:r1], indices[:, r0:r1], qids[r0:r1])
        assert len(list(tmp_path.glob(".*spool"))) == 1
    assert as_rows(read_hits(path)) == long_form(scores, indices, qids, items, ["b10", "b20"])
    assert [p.name for p in tmp_path.iterdir()] == ["h.npz"]


def test_npz_refuses_ids_that_would_lose_digits(tmp_path, hits):
    """uint64 and int64 query ids would meet in float64: refused at close, and
    the half-written file is gone."""
    scores, indices = hits
    path = tmp_path / "h.npz"
    writer = HitsWriter(path)
    writer.append(scores[:, :2], indices[:, :2], np.array([2**63 + 1, 5], np.uint64))
    writer.append(scores[:, 2:4], indices[:, 2:4], np.array([-1, 7], np.int64))
    with pytest.raises(InputError, match=r"the query ids of the blocks mix types "
                                         r"\(int64, uint64\)"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_bad_paths_refused_before_writing(tmp_path, hits):
    with pytest.raises(ConfigError, match=r"unknown suffix '\.csv'; use one of \.parquet"):
        write_hits(tmp_path / "h.csv", *hits)
    with pytest.raises(ConfigError, match="no such directory"):
        write_hits(tmp_path / "nowhere" / "h.tsv", *hits)
    with pytest.raises(ConfigError, match="a TREC run holds one variant, this one has 2"):
        write_hits(tmp_path / "h.trec", *hits)
    with pytest.raises(InputError, match=r"scores \(2, 7, 3\) and indices \(7, 3\)"):
        write_hits(tmp_path / "h.tsv", hits[0], hits[1][0])
    assert list(tmp_path.iterdir()) == []


def test_missing_pyarrow_names_the_extra(tmp_path, monkeypatch, hits):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ConfigError, match=r"needs pyarrow: pip install pyarrow \(or, in a "
                       r"qbscale clone, pip install '\.\[parquet\]'\)"):
        write_hits(tmp_path / "h.parquet", *hits)


@pytest.mark.parametrize("suffix", FORMATS)
def test_interrupted_writer_leaves_nothing(tmp_path, hits, suffix):
    with pytest.raises(RuntimeError), HitsWriter(tmp_path / f"h{suffix}") as writer:
        writer.append(hits[0][:1, :2], hits[1][:1, :2])
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- qbscale run --hits


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(2)
    bank = rng.standard_normal((40, 24)).astype(np.float32)
    test = rng.standard_normal((48, 24)).astype(np.float32)
    return bank, test


def invoke(*args: str, code: int = 0):
    res = CliRunner().invoke(cli, [*args, "--quiet"])
    assert res.exit_code == code, res.output
    return res


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("truth", [True, False])
def test_cli_run_hits(problem, tmp_path, suffix, truth):
    bank, test = problem
    store = qbscale.ingest(tmp_path / "s.zarr", bank, test, chunk_rows=10, progress=False,
                           ground_truth=None if truth else False)
    betas = (20.0,) if suffix == ".trec" else (10.0, 20.0)
    out = tmp_path / f"hits{suffix}"
    res = invoke("run", str(store), "--beta", ",".join(map(str, betas)), "--topk", "5",
                 "--hits", str(out))
    assert ("R@1" in res.output) == truth
    if not truth:
        assert re.search(rf"top-5 hits: {re.escape(str(out))}, {re.escape(str(store))}/runs/"
                         r"[0-9a-f]{32}/ \(topk_index, topk_score\)", res.output)
    got = as_rows(read_hits(out))
    scores = np.stack([ref.scores(test, bank, b) for b in betas])
    idx = np.stack([ref.topk(s, 5)[0] for s in scores])
    top = np.take_along_axis(scores, idx, axis=2).astype(np.float32)
    labels = ["qbscale"] if suffix == ".trec" else [f"dis:beta={b:g}" for b in betas]
    want = long_form(top, idx, range(48), range(24), labels)
    assert [(*w[:3], w[4]) for w in want] == [(*g[:3], g[4]) for g in got]
    np.testing.assert_allclose([g[3] for g in got], [w[3] for w in want], rtol=1e-6)


@pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")  # str ids
def test_cli_hits_uses_store_coordinates(problem, tmp_path):
    bank, test = problem
    store = qbscale.ingest(tmp_path / "s.zarr", bank, test, progress=False)
    names = np.array([f"item{j}" for j in range(24)])
    add_ids(store, gallery_ids=names)  # as `qbscale ids STORE --gallery FILE`
    out = tmp_path / "h.tsv"
    invoke("run", str(store), "--topk", "2", "--hits", str(out))
    got = read_hits(out)
    want = ref.topk(ref.scores(test, bank, 20.0), 2)[0]
    np.testing.assert_array_equal(got["item"], names[want.ravel()])
    np.testing.assert_array_equal(got["query"], np.repeat(np.arange(48), 2))


@pytest.mark.parametrize(("args", "message"), [
    (["--hits", "x.tsv"], "--hits needs --topk K"),
    (["--topk", "2", "--hits", "nowhere/x.tsv"], "no such directory nowhere"),
    (["--topk", "2", "--hits", "x.csv"], "unknown suffix '.csv'"),
    (["--topk", "2", "--beta", "10,20", "--hits", "x.trec"],
     "a TREC run holds one variant, this run has 2 values"),
])
def test_cli_hits_refused_before_work(problem, tmp_path, monkeypatch, args, message):
    bank, test = problem
    store = qbscale.ingest(tmp_path / "s.zarr", bank, test, progress=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("qbscale.api.plan", lambda *a, **k: pytest.fail("work started"))
    res = CliRunner().invoke(cli, ["run", str(store), *args, "--quiet"])
    assert res.exit_code != 0 and message in res.output
    assert "last_run" not in zarr.open_group(str(store), mode="r").attrs["qbscale"]


@pytest.mark.parametrize("suffix", FORMATS)
def test_no_query_gives_an_empty_file(tmp_path, suffix):
    path = tmp_path / f"e{suffix}"
    HitsWriter(path).close()
    got = read_hits(path)
    assert all(got[c].size == 0 for c in ("query", "rank", "item", "score", "variant"))


def test_not_a_hits_file(tmp_path):
    (tmp_path / "x.trec").write_text("1 2 3\n")
    with pytest.raises(InputError, match="not a TREC run"):
        read_hits(tmp_path / "x.trec")
    (tmp_path / "x.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(InputError, match="expected the header query rank item score variant"):
        read_hits(tmp_path / "x.tsv")


def test_cli_hits_of_several_stores_refused(problem, tmp_path):
    bank, test = problem
    a = qbscale.ingest(tmp_path / "a.zarr", bank, test, progress=False)
    b = qbscale.ingest(tmp_path / "b.zarr", bank, test, progress=False, ground_truth=False)
    res = CliRunner().invoke(cli, ["run", str(a), str(b), "--topk", "2", "--hits",
                                   str(tmp_path / "h.tsv"), "--quiet"])
    assert res.exit_code == 2 and "--hits writes the hits of one STORE" in res.output
    res = CliRunner().invoke(cli, ["run", str(a), str(b), "--topk", "2", "--quiet"])
    assert res.exit_code == 1
    assert f"{b} has no ground truth: tables over several stores need metrics" in res.output
