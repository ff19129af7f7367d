"""Query and gallery ids in stores, and the ground truth as TREC qrels.

Ids given at ingest (or added with ``qbscale ids``) must label hits files,
qrels and ``open_dataset``, be covered by chunk manifests and the seal, and
pass ``qbscale check``.  The qrels of a store plus the hits of a run must give,
through ir-measures (an independent implementation of the IR measures),
qbscale's own R@K (``Success@K``) and mean reciprocal rank (``RR``), the
latter computed here from the run's ranks (1 / (rank + 1), masked queries
left out).
"""

from __future__ import annotations

import json
import re

import ir_measures  # in the test extra: missing is a failure, not a skip
import numpy as np
import pytest
import zarr
from hypothesis import given
from hypothesis import strategies as st

import qbscale
from qbscale.errors import InputError, StoreExistsError
from qbscale.storage.inputs.ids import read_ids
from qbscale.storage.outputs.hits import read_hits, write_run_hits
from qbscale.storage.outputs.qrels import write_qrels
from qbscale.storage.stores.check import check_store
from qbscale.storage.stores.ids import add_ids, experiment_ids
from qbscale.storage.stores.store import open_experiment

N_GALLERY, QPI, N_BANK = 12, 3, 40
N_QUERIES = N_GALLERY * QPI


def _write_ids(tmp_path, name, ids):
    path = tmp_path / name
    path.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return path


def _sims(seed=0, n_queries=N_QUERIES, n_gallery=N_GALLERY):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N_BANK, n_gallery)).astype(np.float32),
            rng.standard_normal((n_queries, n_gallery)).astype(np.float32))


QUERY_IDS = [f"cap-{i:03d}" for i in range(N_QUERIES)]
GALLERY_IDS = [f"vid{j}" for j in range(N_GALLERY)]


@pytest.fixture
def store(tmp_path):
    bank, test = _sims()
    out = tmp_path / "exp.zarr"
    qbscale.ingest(out, bank, test, query_ids=np.array(QUERY_IDS),
                   gallery_ids=_write_ids(tmp_path, "gallery.txt", GALLERY_IDS),
                   progress=False, chunk_bytes=64)
    return out


# ------------------------------------------------------------------ reading ids


def test_read_ids_formats(tmp_path):
    text = _write_ids(tmp_path, "q.txt", ["a", "b:1", "c"])
    assert read_ids(text, "query", 3).tolist() == ["a", "b:1", "c"]
    (tmp_path / "crlf.txt").write_bytes(b"a\r\nb\r\nc")  # no final newline, CRLF
    assert read_ids(tmp_path / "crlf.txt", "query", 3).tolist() == ["a", "b", "c"]
    np.save(tmp_path / "s.npy", np.array(["x", "y"]))
    assert read_ids(tmp_path / "s.npy", "gallery", 2).tolist() == ["x", "y"]
    np.save(tmp_path / "i.npy", np.array([7, 3], dtype=np.uint32))
    got = read_ids(tmp_path / "i.npy", "gallery", 2)
    assert got.dtype == np.int64 and got.tolist() == [7, 3]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"vid": ["v0", "v1"], "n": [1, 2]}), tmp_path / "t.parquet")
    assert read_ids(f"{tmp_path / 't.parquet'}:vid", "gallery", 2).tolist() == ["v0", "v1"]
    assert read_ids(f"{tmp_path / 't.parquet'}:n", "gallery", 2).tolist() == [1, 2]
    with pytest.raises(InputError, match=r"has 2 columns .*name one as FILE\.parquet:COLUMN"):
        read_ids(tmp_path / "t.parquet", "gallery", 2)


@pytest.mark.parametrize(("values", "message"), [
    (["a", "b"], r"has shape \(2,\); expected \(3,\): one id per test query \(3 test"),
    (["a", "b", "a"], "id 'a' appears 2 times .*ids must be unique"),
    (["a", "", "c"], "id 1 is empty"),
    (["a", "b c", "d"], "id 1 .* holds white space"),
    (np.array([0.5, 1.5, 2.5]), "holds float64 values; expected integers or strings"),
    (np.array([True, False, True]), "holds bool values"),
])
def test_bad_ids_are_refused(values, message):
    with pytest.raises(InputError, match=message):
        read_ids(values, "query", 3)


def test_bad_ids_refuse_the_ingest_before_anything_is_written(tmp_path):
    bank, test = _sims()
    ids = _write_ids(tmp_path, "g.txt", GALLERY_IDS[:-1])
    with pytest.raises(InputError, match=re.escape(f"ids file {ids} has shape")):
        qbscale.ingest(tmp_path / "x.zarr", bank, test, gallery_ids=ids, progress=False)
    assert not (tmp_path / "x.zarr").exists()


# ------------------------------------------------------------------ ids in a store


def test_ids_given_at_ingest_label_hits_qrels_and_the_dataset(store, tmp_path, cli_invoke):
    experiment = open_experiment(store)
    queries, gallery = experiment_ids(experiment)
    assert queries.tolist() == QUERY_IDS and gallery.tolist() == GALLERY_IDS
    ds = qbscale.open_dataset(store)
    assert ds["query"].values.tolist() == QUERY_IDS
    assert ds["gallery"].values.tolist() == GALLERY_IDS
    _, test = _sims()
    assert float(ds.test.sel(query="cap-007", gallery="vid4")) == test[7, 4]
    assert ds["gt"].sel(query="cap-007").item() == 7 // QPI
    for suffix in (".trec", ".tsv", ".parquet"):
        hits = tmp_path / f"hits{suffix}"
        cli_invoke("run", store, "--topk", 4, "--hits", hits, "--beta", 20, "-q")
        got = read_hits(hits)
        scores = np.asarray(qbscale.open_result(str(store), "topk_score")[0])
        index = np.asarray(qbscale.open_result(str(store), "topk_index")[0])
        assert got["query"].tolist() == [q for q in QUERY_IDS for _ in range(4)]
        assert got["item"].tolist() == [GALLERY_IDS[j] for j in index.ravel()]
        np.testing.assert_array_equal(got["score"], scores.ravel())
    cli_invoke("qrels", store, "-o", tmp_path / "truth.qrels")
    lines = (tmp_path / "truth.qrels").read_text().splitlines()
    assert lines == [f"{QUERY_IDS[i]} 0 {GALLERY_IDS[i // QPI]} 1" for i in range(N_QUERIES)]


def test_a_store_with_ids_passes_check_and_has_manifests(store, cli_invoke):
    res = cli_invoke("check", store, "-q")
    assert res.output.endswith(" 0 bad\n")
    for name in ("query", "gallery"):
        assert (store / name / "qbscale_chunks.json").is_file()
    report = check_store(store)
    assert report.ok and not report.unchecked
    attrs = zarr.open_group(str(store), mode="r").attrs["qbscale"]
    assert attrs["ids"]["arrays"] == ["query", "gallery"]


def test_a_damaged_id_chunk_is_refused(store, cli_invoke):
    chunk = next(p for p in sorted((store / "gallery" / "c").rglob("*")) if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[0] ^= 0xFF
    chunk.write_bytes(bytes(data))
    assert any(key.startswith("gallery/c/") for key in check_store(store).bad)
    with pytest.raises(qbscale.errors.DamagedStoreError, match="gallery/c/"):
        experiment_ids(open_experiment(store))
    res = cli_invoke("check", store, "--repair-hint", "-q", exit_code=1)
    assert res.output.splitlines()[-1] == ("hint: gallery: the store's gallery ids: add them "
                                           "again with `qbscale ids STORE --gallery FILE "
                                           "--overwrite`")


def test_swapped_id_chunks_are_refused(store):
    chunks = store / "query" / "c"
    a, b = chunks / "0", chunks / "1"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    assert data_a != data_b
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    with pytest.raises(qbscale.errors.DamagedStoreError,
                       match=r"chunk query/c/[01] is not the chunk written there"):
        experiment_ids(open_experiment(store))
    assert set(check_store(store).bad) == {"query/c/0", "query/c/1"}


def test_ids_added_later_go_through_the_command(tmp_path, cli_invoke):
    bank, test = _sims()
    out = tmp_path / "exp.zarr"
    qbscale.ingest(out, bank, test, progress=False)
    assert experiment_ids(open_experiment(out)) == (None, None)
    before = qbscale.open_dataset(out)
    assert before["query"].values.tolist() == list(range(N_QUERIES))
    queries = _write_ids(tmp_path, "q.txt", QUERY_IDS)
    res = cli_invoke("ids", out, "--queries", queries)
    assert res.output == f"{out}: {N_QUERIES} query ids\n"
    np.save(tmp_path / "g.npy", np.arange(100, 100 + N_GALLERY))
    cli_invoke("ids", out, "--gallery", tmp_path / "g.npy")
    assert cli_invoke("check", out, "-q").output.endswith(" 0 bad\n")
    q, g = experiment_ids(open_experiment(out))  # the seal still holds: it opens
    assert q.tolist() == QUERY_IDS and g.tolist() == list(range(100, 100 + N_GALLERY))
    ds = qbscale.open_dataset(out)
    assert ds["gallery"].values.tolist() == list(range(100, 100 + N_GALLERY))
    # a second time: refused without --overwrite, replaced with it
    res = cli_invoke("ids", out, "--gallery", tmp_path / "g.npy", exit_code=1)
    assert res.output == (f"Error: {out} already has gallery ids: pass --overwrite "
                          "(overwrite=True) to replace them (--gallery)\n")
    gallery = _write_ids(tmp_path, "g.txt", GALLERY_IDS)
    cli_invoke("ids", out, "--gallery", gallery, "--overwrite")
    assert experiment_ids(open_experiment(out))[1].tolist() == GALLERY_IDS
    assert experiment_ids(open_experiment(out))[0].tolist() == QUERY_IDS  # kept
    assert check_store(out).ok
    cli_invoke("qrels", out, "-o", tmp_path / "t.qrels")
    assert (tmp_path / "t.qrels").read_text().splitlines()[4] == "cap-004 0 vid1 1"


def test_ids_of_the_wrong_length_are_refused_by_the_command(store, tmp_path, cli_invoke):
    short = _write_ids(tmp_path, "q.txt", QUERY_IDS[:5])
    before = (store / "zarr.json").read_bytes()
    res = cli_invoke("ids", store, "--queries", short, "--overwrite", exit_code=1)
    assert res.output == (f"Error: ids file {short} has shape (5,); expected "
                          f"({N_QUERIES},): one id per test query ({N_QUERIES} test "
                          "queries)\n")
    assert (store / "zarr.json").read_bytes() == before


def _snapshot(root):
    return {p.relative_to(root.parent).as_posix(): p.read_bytes()
            for p in sorted(root.parent.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["write", "manifest", "swap", "publish"])
def test_an_interrupted_add_leaves_the_store_as_it_was(tmp_path, monkeypatch, where):
    """A failure anywhere up to the publishing write (here a full disk) leaves the
    store, and the folder holding it, byte for byte as they were; the ids it had
    are still read, and the next add succeeds."""
    bank, test = _sims()
    out = tmp_path / "exp.zarr"
    qbscale.ingest(out, bank, test, query_ids=QUERY_IDS, gallery_ids=GALLERY_IDS,
                   progress=False)
    before = _snapshot(out)
    from qbscale.storage.durability import atomic, manifest, rename
    from qbscale.storage.stores import writer

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    calls = {"n": 0}
    real_exchange = rename.exchange

    def second_swap_fails(a, b):  # the first array swapped, the second not
        calls["n"] += 1
        if calls["n"] == 2:
            full()
        real_exchange(a, b)

    target = {"write": (writer, "write_vector", full), "manifest": (manifest, "record", full),
              "swap": (rename, "exchange", second_swap_fails),
              "publish": (atomic, "publish_file", full)}[where]
    monkeypatch.setattr(*target)
    new_queries = [f"n{i}" for i in range(N_QUERIES)]
    with pytest.raises(OSError, match="No space left"):
        add_ids(out, query_ids=new_queries, gallery_ids=GALLERY_IDS[::-1], overwrite=True)
    monkeypatch.undo()
    assert _snapshot(out) == before
    q, g = experiment_ids(open_experiment(out))
    assert q.tolist() == QUERY_IDS and g.tolist() == GALLERY_IDS
    add_ids(out, query_ids=new_queries, gallery_ids=GALLERY_IDS[::-1], overwrite=True)
    q, g = experiment_ids(open_experiment(out))
    assert q.tolist() == new_queries and g.tolist() == GALLERY_IDS[::-1]
    assert check_store(out).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.zarr"]


def test_a_hand_added_id_array_is_ignored(tmp_path):
    """An id array written around qbscale is no part of the store: neither read
    nor refused (add ids with `qbscale ids`)."""
    bank, test = _sims()
    out = tmp_path / "exp.zarr"
    qbscale.ingest(out, bank, test, progress=False)
    group = zarr.open_group(str(out), mode="r+")
    group.create_array("gallery", shape=(N_GALLERY,), dtype="int64")[...] = np.arange(N_GALLERY)
    assert experiment_ids(open_experiment(out)) == (None, None)
    assert check_store(out).ok


def test_ids_in_an_embeddings_store(tmp_path):
    rng = np.random.default_rng(3)
    emb = {k: rng.standard_normal((n, 8)).astype(np.float32)
           for k, n in (("bank", N_BANK), ("test", N_QUERIES), ("gallery", N_GALLERY))}
    out = tmp_path / "emb.zarr"
    qbscale.ingest_embeddings(out, emb["bank"], emb["test"], emb["gallery"],
                              query_ids=np.arange(N_QUERIES) * 10,
                              gallery_ids=GALLERY_IDS, progress=False)
    ds = qbscale.open_dataset(out)
    assert ds["query"].values.tolist() == list(range(0, 10 * N_QUERIES, 10))
    assert ds["gallery"].values.tolist() == GALLERY_IDS
    assert check_store(out).ok


# ------------------------------------------------------------------ qrels + ir-measures


def _mrr(ranks, mask):
    """Mean reciprocal rank from 0-based ranks (no ties here), masked queries left out."""
    r = np.asarray(ranks, dtype=np.float64)
    if mask is not None:
        r = r[mask]
    return float(np.mean(1.0 / (r + 1)))


def _ir_measures(qrels, run, ks=(1, 5, 10)):
    measures = [ir_measures.Success @ k for k in ks] + [ir_measures.RR]
    got = ir_measures.calc_aggregate(measures, ir_measures.read_trec_qrels(str(qrels)),
                                     ir_measures.read_trec_run(str(run)))
    return {f"R{k}": 100 * got[ir_measures.Success @ k] for k in ks}, got[ir_measures.RR]


@given(seed=st.integers(0, 2**16), qpi=st.sampled_from([1, 2, 3]),
       n_gallery=st.integers(11, 30), masked=st.booleans(), named=st.booleans(),
       method=st.sampled_from(["dis", "is", "none"]))
def test_qrels_and_hits_give_qbscales_figures_through_ir_measures(
        tmp_path_factory, seed, qpi, n_gallery, masked, named, method):
    tmp = tmp_path_factory.mktemp("irm")
    rng = np.random.default_rng(seed)
    bank = rng.standard_normal((N_BANK, n_gallery))
    test = rng.standard_normal((n_gallery * qpi, n_gallery))
    mask = rng.random(n_gallery * qpi) < 0.7 if masked else None
    if mask is not None:
        mask[0] = True
    ids = {}
    if named:
        ids = {"query_ids": [f"q{i}" for i in rng.permutation(n_gallery * qpi)],
               "gallery_ids": rng.permutation(n_gallery) + 1000}
    out = tmp / "exp.zarr"
    qbscale.ingest(out, bank, test, mask, progress=False, **ids)
    result = qbscale.run(str(out), method=method, beta=None if method == "none" else 15,
                         topk=n_gallery, progress=False)
    experiment = open_experiment(out)
    write_run_hits(tmp / "run.trec", result, experiment)
    write_qrels(tmp / "truth.qrels", experiment)
    recall, rr = _ir_measures(tmp / "truth.qrels", tmp / "run.trec")
    after = result.after if result.config.normalises else result.before
    after = next(iter(after.values())) if result.config.normalises else after
    for k in ("R1", "R5", "R10"):
        assert recall[k] == pytest.approx(after[k], abs=1e-9)
    ranks = next(iter(result.ranks.values())) if result.config.normalises else result.base_ranks
    assert rr == pytest.approx(_mrr(ranks, mask), abs=1e-12)
    # and against the dense oracle: query i's item is i // qpi
    lines = (tmp / "truth.qrels").read_text().splitlines()
    kept = np.flatnonzero(mask) if mask is not None else np.arange(n_gallery * qpi)
    qid = ids.get("query_ids", list(range(n_gallery * qpi)))
    gid = ids.get("gallery_ids", np.arange(n_gallery))
    assert lines == [f"{qid[i]} 0 {gid[i // qpi]} 1" for i in kept]


def test_qrels_round_trip_on_the_command_line(store, tmp_path, cli_invoke):
    """`qbscale run --hits` and `qbscale qrels`, then ir-measures: R@1/5/10 and the
    MRR of the run's own saved ranks."""
    run, qrels = tmp_path / "run.trec", tmp_path / "truth.qrels"
    cli_invoke("run", store, "--beta", 20, "--topk", N_GALLERY, "--hits", run, "--save-ranks",
               "--json", tmp_path / "m.json", "-q")
    res = cli_invoke("qrels", store, "-o", qrels)
    assert res.output == f"Wrote {qrels}: the relevant items of {N_QUERIES} queries\n"
    recall, rr = _ir_measures(qrels, run)
    metrics = json.loads((tmp_path / "m.json").read_text())["after"]["20.0"]
    for k in ("R1", "R5", "R10"):
        assert recall[k] == pytest.approx(metrics[k], abs=1e-9)
    ranks = np.asarray(qbscale.open_result(str(store), "ranks")[0])
    assert rr == pytest.approx(_mrr(ranks, None), abs=1e-12)


def test_qrels_of_a_store_without_ground_truth_are_refused(tmp_path, cli_invoke):
    bank, test = _sims(n_queries=7)
    out = tmp_path / "new.zarr"
    qbscale.ingest(out, bank, test, progress=False)
    res = cli_invoke("qrels", out, "-o", tmp_path / "t.qrels", exit_code=1)
    assert res.output.startswith(f"Error: {out} has no ground truth, so no relevant items "
                                 "to write; to add one, ingest the store again "
                                 "(`qbscale ingest`) with --gt-index FILE")
    assert not (tmp_path / "t.qrels").exists()


def test_add_ids_refuses_existing_ids_without_overwrite(store):
    with pytest.raises(StoreExistsError, match="already has query ids"):
        add_ids(store, query_ids=QUERY_IDS)


def test_search_names_hits_by_the_store_ids_or_the_files_given(tmp_path, cli_invoke):
    """`qbscale search --sims STORE` uses the store's ids; --query-ids/--gallery-ids
    name the queries and items of any input.  Items against a dense oracle."""
    from qbscale.retrieval.search import search

    rng = np.random.default_rng(9)
    bank_emb, gallery, queries = (rng.standard_normal((n, 6)) for n in (N_BANK, N_GALLERY, 10))
    norm = qbscale.Normaliser.fit(bank_emb=bank_emb, gallery_emb=gallery, beta=20)
    norm.save(tmp_path / "norm.zarr")
    sims = queries @ gallery.T
    qids = [f"new{i}" for i in range(10)]
    qbscale.ingest(tmp_path / "exp.zarr", bank_emb @ gallery.T, sims, ground_truth=False,
                   query_ids=qids, gallery_ids=GALLERY_IDS, progress=False)
    _, want = search(norm, queries, 3, gallery)
    cli_invoke("search", tmp_path / "norm.zarr", "--sims", tmp_path / "exp.zarr", "--topk", 3,
               "--hits", tmp_path / "a.tsv", "-q")
    got = read_hits(tmp_path / "a.tsv")
    assert got["query"].tolist() == [q for q in qids for _ in range(3)]
    assert got["item"].tolist() == [GALLERY_IDS[j] for j in want.ravel()]
    np.save(tmp_path / "q.npy", queries)
    np.save(tmp_path / "g.npy", gallery)
    gids = np.arange(N_GALLERY) * 7 + 1
    np.save(tmp_path / "gids.npy", gids)
    cli_invoke("search", tmp_path / "norm.zarr", "--queries", tmp_path / "q.npy",
               "--gallery-emb", tmp_path / "g.npy", "--topk", 3, "--block-rows", 4,
               "--query-ids", _write_ids(tmp_path, "q.txt", qids),
               "--gallery-ids", tmp_path / "gids.npy", "--hits", tmp_path / "b.trec", "-q")
    got = read_hits(tmp_path / "b.trec")
    assert got["query"].tolist() == [q for q in qids for _ in range(3)]
    assert got["item"].tolist() == gids[want.ravel()].tolist()
    res = cli_invoke("search", tmp_path / "norm.zarr", "--queries", tmp_path / "q.npy",
                     "--gallery-emb", tmp_path / "g.npy", "--topk", 3, "--query-ids",
                     tmp_path / "gids.npy", "--hits", tmp_path / "c.trec", "-q", exit_code=1)
    assert res.output == (f"Error: ids file {tmp_path / 'gids.npy'} has shape ({N_GALLERY},); "
                          "expected (10,): one id per test query (10 test queries)\n")
    assert not (tmp_path / "c.trec").exists()
