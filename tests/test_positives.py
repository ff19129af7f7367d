"""Several positives per query, and the v2t direction, against dense oracles
written from the reference code's ``v2t_metrics`` (tests/reference.py)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import qbscale
from qbscale.engine.metrics import rounded
from qbscale.engine.positives import Positives
from qbscale.errors import ConfigError, InputError
from qbscale.storage.stores.positives import read_positives
from qbscale.storage.stores.store import in_memory, open_experiment
from tests import reference as ref

PARAMS = {"is": {}, "dis": {}, "csls": {}, "nnn": {"nnn_k": 3}, "none": {}}
VALUES = {"is": [5.0, 20.0], "dis": [5.0, 20.0], "csls": [2, 4], "nnn": [0.5, 1.0],
          "none": [None]}


def _problem(seed: int, n_videos: int, per_video: int, levels: int, masked: bool,
             dtype: type = np.float32) -> tuple[np.ndarray, ...]:
    """A t2v matrix on a coarse grid (frequent raw ties), its banks (continuous:
    a column's logsumexp is exact only up to rounding, so only equal columns
    tie after normalisation: two captions are made equal, test and bank) and
    a mask."""
    rng = np.random.default_rng(seed)
    test = (rng.integers(0, levels, (n_videos * per_video, n_videos)) / levels).astype(dtype)
    bank = rng.standard_normal((9, n_videos)).astype(dtype)
    v2t_bank = rng.standard_normal((7, n_videos * per_video)).astype(dtype)
    if test.shape[0] > 2:
        a, b = rng.choice(test.shape[0], 2, replace=False)
        test[b] = test[a]
        v2t_bank[:, b] = v2t_bank[:, a]
    mask = None
    if masked:
        mask = rng.random(test.shape[0]) < 0.75
        mask[::per_video] = True  # every video keeps a caption, as in MSRVTT
    return test, bank, v2t_bank, mask


def _oracle_v2t(test: np.ndarray, v2t_bank: np.ndarray, mask: np.ndarray | None,
                method: str, value: float | None, k: int, per_video: int
                ) -> tuple[np.ndarray, np.ndarray]:
    scores = ref.v2t_scores(test, v2t_bank, method, value or 0.0, PARAMS[method], k, mask)
    positives = ref.grouped_positives(test.shape[1], per_video, mask)
    return ref.positive_ranks(scores, positives), ref.average_precision(scores, positives)


def _metrics(ranks: np.ndarray, ap: np.ndarray, several: bool = True) -> dict[str, float]:
    """The oracle's metrics; MRR and mAP (percent) when some query has several positives."""
    out = ref.metrics(ranks)
    if several:
        out["MRR"] = 100 * float(np.mean(1 / (ranks + 1)))
        out["mAP"] = 100 * float(np.mean(ap))
    return out


def _several(per_video: int, mask: np.ndarray | None) -> bool:
    return per_video > 1 and (mask is None or
                              bool((mask.reshape(-1, per_video).sum(axis=1) > 1).any()))


@pytest.mark.parametrize("method", ["none", "is", "dis", "csls", "nnn"])
@given(data=st.data())
def test_v2t_equals_reference(method: str, data: st.DataObject) -> None:
    """Video -> text ranks, MRR and mAP of every method equal the oracle's,
    over random row blocks, with and without missing captions, ties frequent;
    the baseline equals the reference's v2t_metrics exactly."""
    per_video = data.draw(st.integers(1, 5))
    n_videos = data.draw(st.integers(2, 9))
    masked = data.draw(st.booleans())
    test, bank, v2t_bank, mask = _problem(data.draw(st.integers(0, 2**31)), n_videos,
                                          per_video, data.draw(st.integers(2, 5)), masked)
    k = data.draw(st.integers(1, min(3, test.shape[0])))
    rows = data.draw(st.integers(1, test.shape[0]))
    exp = in_memory(bank, test, mask=mask, rows_per_block=rows)
    values = VALUES[method]
    res = qbscale.run(exp, beta=values if method in ("is", "dis") else None, k=k,
                      method=method, direction="v2t", reverse_bank=v2t_bank,
                      **({"kc": values} if method == "csls" else
                         {"alpha": values, **PARAMS[method]} if method == "nnn" else {}))
    base = ref.v2t_ranks(test, mask)
    assert np.array_equal(res.base_ranks, base)
    assert res.before is not None and res.after is not None
    _, base_ap = _oracle_v2t(test, v2t_bank, mask, "none", None, k, per_video)
    several = _several(per_video, mask)
    assert res.before == pytest.approx(_metrics(base, base_ap, several), abs=1e-9)
    assert rounded(res.before) == rounded(_metrics(base, base_ap, several))
    for value in values if method != "none" else []:
        ranks, ap = _oracle_v2t(test, v2t_bank, mask, method, value, k, per_video)
        assert np.array_equal(res.ranks[value], ranks), (method, value)
        assert rounded(res.after[value]) == rounded(_metrics(ranks, ap, several))
        assert res.after[value] == pytest.approx(_metrics(ranks, ap, several), abs=1e-9)


@given(data=st.data())
def test_v2t_store_in_two_d_chunks(tmp_path_factory: pytest.TempPathFactory,
                                   data: st.DataObject) -> None:
    """From a store (2-D chunks of any size, a v2t bank ingested beside it), v2t
    figures equal the oracle's and t2v's are unchanged: each test block is read
    transposed, column blocks combined in a tree."""
    per_video = data.draw(st.integers(1, 4))
    n_videos = data.draw(st.integers(2, 8))
    test, bank, v2t_bank, mask = _problem(data.draw(st.integers(0, 2**31)), n_videos,
                                          per_video, 3, data.draw(st.booleans()),
                                          data.draw(st.sampled_from([np.float32, np.float64])))
    folder = tmp_path_factory.mktemp("v2t")
    store = qbscale.ingest(folder / "s.zarr", bank, test, None if mask is None else mask,
                           reverse_bank=v2t_bank, progress=False,
                           chunk_rows=data.draw(st.integers(1, test.shape[0])),
                           chunk_cols=data.draw(st.integers(1, n_videos)))
    k = data.draw(st.integers(1, min(2, n_videos)))
    res = qbscale.run(store, beta=[10, 30], k=k, method="dis", direction="v2t")
    for value in (10.0, 30.0):
        ranks, ap = _oracle_v2t(test, v2t_bank, mask, "dis", value, k, per_video)
        assert np.array_equal(res.ranks[value], ranks)
        assert res.after is not None
        assert res.after[value] == pytest.approx(
            _metrics(ranks, ap, _several(per_video, mask)), abs=1e-9)
    assert np.array_equal(res.base_ranks, ref.v2t_ranks(test, mask))
    t2v = qbscale.run(store, beta=10, k=k, method="dis")
    gt = ref.ground_truth(*test.shape)
    assert np.array_equal(t2v.ranks[10.0], ref.ranks(ref.scores(test, bank, 10, k), gt))
    assert t2v.before is not None and "mAP" not in t2v.before  # one positive: as before


def _pairs(rng: np.random.Generator, n_queries: int, n_gallery: int) -> list[list[int]]:
    out = []
    for _ in range(n_queries):
        n = int(rng.integers(0, min(4, n_gallery) + 1))
        out.append(sorted(rng.choice(n_gallery, n, replace=False).tolist()))
    return out


@pytest.mark.parametrize("method", ["none", "is", "dis"])
@given(data=st.data())
def test_several_positives_t2v(tmp_path_factory: pytest.TempPathFactory, method: str,
                               data: st.DataObject) -> None:
    """Queries with 0..4 positives each (a .tsv of pairs, ingested): the rank
    of the best-ranked positive, MRR and mAP equal the oracle's, queries
    without a positive (and masked ones) left out, in any 2-D chunking."""
    seed = data.draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    n_gallery, n_queries = data.draw(st.integers(2, 9)), data.draw(st.integers(2, 20))
    test = (rng.integers(0, 4, (n_queries, n_gallery)) / 4).astype(np.float32)
    bank = rng.standard_normal((6, n_gallery)).astype(np.float32)
    positives = _pairs(rng, n_queries, n_gallery)
    positives[0] = positives[0] or [0]
    folder = tmp_path_factory.mktemp("pos")
    with open(folder / "pairs.tsv", "w") as fp:
        fp.write("query\titem\n")
        for q in rng.permutation(n_queries):
            for g in positives[q]:
                fp.write(f"{q}\t{g}\n")
    mask = rng.random(n_queries) < 0.8
    mask[0] = True
    store = qbscale.ingest(folder / "s.zarr", bank, test, mask, positives=folder / "pairs.tsv",
                           progress=False, chunk_rows=data.draw(st.integers(1, n_queries)),
                           chunk_cols=data.draw(st.integers(1, n_gallery)))
    k = data.draw(st.integers(1, 2))
    res = qbscale.run(store, beta=[20] if method != "none" else None, k=k, method=method)
    keep = mask & np.array([len(p) > 0 for p in positives])
    kept = [p for p, m in zip(positives, keep, strict=True) if m]
    for value, ranks, metrics in [(None, res.base_ranks, res.before),
                                  *[(v, res.ranks[v], res.after[v]) for v in res.ranks]]:
        scores = test.astype(np.float64) if value is None else \
            ref.method_scores(test, bank, method, value, {}, k)
        want = ref.positive_ranks(scores[keep], kept)
        assert np.array_equal(ranks[keep], want)
        ap = ref.average_precision(scores[keep], kept)
        # one positive each: the classic metrics, no MRR/mAP columns
        expected = _metrics(want, ap, any(len(p) > 1 for p in positives))
        assert metrics == pytest.approx(expected, abs=1e-9)


def test_positives_files(tmp_path: pytest.TempPathFactory) -> None:
    """Every pairs format gives the same positives; bad files are named errors."""
    want = Positives.from_pairs(np.array([0, 0, 2, 1]), np.array([1, 3, 0, 1]), 3, 4)
    (tmp_path / "p.qrels").write_text("0 0 1 1\n0 0 3 2\n0 0 2 0\n2 0 0 1\n1 Q0 1 1\n")
    (tmp_path / "p.tsv").write_text("q\tg\n0\t1\n0\t3\n2\t0\n1\t1\n0\t1\n")
    np.save(tmp_path / "p.npy", np.array([[0, 1], [0, 3], [2, 0], [1, 1]]))
    np.savez(tmp_path / "p.npz", format=np.array(b"csr"), shape=np.array([3, 4]),
             indptr=np.array([0, 2, 3, 4]), indices=np.array([1, 3, 1, 0]),
             data=np.array([1.0, 1.0, 1.0, 1.0]))
    files = ["p.qrels", "p.tsv", "p.npy", "p.npz"]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"query": [0, 0, 2, 1], "item": [1, 3, 0, 1]}),
                       tmp_path / "p.parquet")
        files.append("p.parquet")
    except ImportError:
        pass
    for name in files:
        got = read_positives(tmp_path / name, 3, 4)
        assert np.array_equal(got.indptr, want.indptr), name
        assert np.array_equal(got.indices, want.indices), name
    (tmp_path / "bad.tsv").write_text("0\t1\n0\tx\n")
    with pytest.raises(InputError, match=r"bad.tsv, line 2"):
        read_positives(tmp_path / "bad.tsv", 3, 4)
    with pytest.raises(InputError, match=r"item 9, outside \[0, 4\)"):
        read_positives(tmp_path / "p.tsv", 3, 4) and Positives.from_pairs(
            np.array([0]), np.array([9]), 3, 4)


def test_v2t_without_bank_runs_the_baseline_only() -> None:
    test, bank, _, mask = _problem(3, 5, 4, 3, True)
    exp = in_memory(bank, test, mask=mask)
    assert np.array_equal(qbscale.run(exp, method="none", direction="v2t").base_ranks,
                          ref.v2t_ranks(test, mask))
    with pytest.raises(ConfigError, match="no querybank for direction v2t"):
        qbscale.run(exp, beta=20, direction="v2t")
    with pytest.raises(ConfigError, match="metrics only: topk"):
        qbscale.run(exp, method="none", direction="v2t", topk=3)


def _table(text: str, title: str) -> list[list[float]]:
    """The figure rows under ``title`` in the CLI's output."""
    block = text.split(title, 1)[1].strip().splitlines()[2:]  # the title, the header
    rows = []
    for line in block:
        if not re.match(r"^(none|dis|is)\s", line):
            break
        rows.append([float(v) for v in line.split()[2:]])
    return rows


def test_cli_both_directions(tmp_path: pytest.TempPathFactory, cli_invoke) -> None:  # type: ignore[no-untyped-def]
    """`run --direction both` prints each direction's figures (the oracle's,
    rounded as the reference rounds), side by side with --format markdown,
    mean(std) over several stores."""
    test, bank, v2t_bank, mask = _problem(5, 12, 20, 4, True)
    for name, data in (("test", test), ("bank", bank), ("vbank", v2t_bank)):
        np.save(tmp_path / f"{name}.npy", data)
    np.save(tmp_path / "mask.npy", mask.reshape(12, 20).astype(np.int64))
    cli_invoke("ingest", "--bank", tmp_path / "bank.npy", "--test", tmp_path / "test.npy",
               "--masks", tmp_path / "mask.npy", "--v2t-bank", tmp_path / "vbank.npy",
               "-o", tmp_path / "s.zarr", "--chunk-rows", "50", "-q")
    out = cli_invoke("run", tmp_path / "s.zarr", "--beta", "20", "--k", "2", "--direction",
                     "both", "-q").output
    t2v, v2t = _table(out, "t2v:"), _table(out, "v2t:")
    cols = ("R1", "R5", "R10", "R50", "MedR", "MeanR", "geometric_mean_R1-R5-R10")
    gt = ref.ground_truth(*test.shape)
    assert t2v[1] == [rounded(ref.metrics(ref.ranks(ref.scores(test, bank, 20, 2), gt),
                                          mask))[c] for c in cols]
    ranks, ap = _oracle_v2t(test, v2t_bank, mask, "dis", 20, 2, 20)
    assert v2t[1] == list(rounded(_metrics(ranks, ap)).values())
    base = ref.v2t_ranks(test, mask)
    assert v2t[0][:7] == [rounded(ref.metrics(base))[c] for c in cols]
    md = cli_invoke("run", tmp_path / "s.zarr", tmp_path / "s.zarr", "--beta", "20", "--k",
                    "2", "--direction", "both", "--format", "markdown", "-q").output
    assert "| model | t2v R@1 | R@5 | R@10 | MdR | Geom | v2t R@1 |" in md
    assert f"| {rounded(ref.metrics(base))['R1']:.1f}(0.0) |" in md
    cli_invoke("run", tmp_path / "s.zarr", "--direction", "v2t", "--topk", "3", exit_code=2)


def test_reverse_keeps_masked_captions_out() -> None:
    """A masked caption is no positive and no competitor: its score, however
    high, changes no video's rank."""
    test, bank, _, mask = _problem(8, 6, 3, 4, True)
    exp = in_memory(bank, test, mask=mask)
    hot = test.copy()
    hot[~mask] = 10.0  # missing captions scoring above everything
    hot_exp = dataclasses.replace(exp, test=in_memory(bank, hot, mask=mask).test)
    a = qbscale.run(exp, method="none", direction="v2t").base_ranks
    b = qbscale.run(hot_exp, method="none", direction="v2t").base_ranks
    assert np.array_equal(a, b)
    assert np.array_equal(b, ref.v2t_ranks(hot, mask))


def test_store_reopens_positives(tmp_path: pytest.TempPathFactory) -> None:
    rng = np.random.default_rng(0)
    test = rng.random((6, 4)).astype(np.float32)
    np.save(tmp_path / "pairs.npy", np.array([[0, 1], [0, 2], [5, 3]]))
    store = qbscale.ingest(tmp_path / "s.zarr", test, test, positives=tmp_path / "pairs.npy",
                           progress=False)
    exp = open_experiment(store)
    assert exp.gt is None and exp.positives is not None
    assert exp.positives.indices.tolist() == [1, 2, 3]
    assert exp.evaluated is not None and exp.evaluated.tolist() == [1, 0, 0, 0, 0, 1]
    with pytest.raises(ConfigError, match="one ground truth"):
        qbscale.ingest(tmp_path / "t.zarr", test, test, positives=tmp_path / "pairs.npy",
                       queries_per_item=1, progress=False)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("method", ["none", "is", "dis"])
def test_twenty_captions_per_video_both_directions(tmp_path: pytest.TempPathFactory,
                                                   method: str, masked: bool) -> None:
    """A 20-captions-per-video store (ties frequent, 2-D chunks): t2v figures
    equal the reference's t2v_metrics and v2t figures its v2t_metrics, to the
    last digit, at several betas and k."""
    test, bank, v2t_bank, mask = _problem(20, 15, 20, 5, masked)
    store = qbscale.ingest(tmp_path / "s.zarr", bank, test, mask, reverse_bank=v2t_bank,
                           progress=False, chunk_rows=70, chunk_cols=6)
    betas = [5.0, 20.0, 50.0] if method != "none" else None
    gt = ref.ground_truth(*test.shape)
    for k in (1, 3):
        t2v = qbscale.run(store, beta=betas, k=k, method=method)
        v2t = qbscale.run(store, beta=betas, k=k, method=method, direction="v2t")
        assert t2v.before is not None and v2t.before is not None
        assert np.array_equal(t2v.base_ranks, ref.ranks(test.astype(np.float64), gt))
        assert np.array_equal(v2t.base_ranks, ref.v2t_ranks(test, mask))
        base_ap = _oracle_v2t(test, v2t_bank, mask, "none", None, k, 20)[1]
        assert rounded(v2t.before) == rounded(_metrics(v2t.base_ranks, base_ap))
        for beta in betas or []:
            want = ref.ranks(ref.method_scores(test, bank, method, beta, {}, k), gt)
            assert np.array_equal(t2v.ranks[beta], want)
            assert rounded(t2v.after[beta]) == rounded(ref.metrics(want, mask))
            ranks, ap = _oracle_v2t(test, v2t_bank, mask, method, beta, k, 20)
            assert np.array_equal(v2t.ranks[beta], ranks)
            # the reference's v2t_metrics on the normalised matrix, transposed back
            assert np.array_equal(ranks, ref.v2t_ranks(
                ref.v2t_scores(test, v2t_bank, method, beta, {}, k, mask).T, mask))
            assert rounded(v2t.after[beta]) == rounded(_metrics(ranks, ap))


def test_resumed_run_keeps_average_precision(tmp_path: pytest.TempPathFactory) -> None:
    """A run over several positives interrupted after some row blocks and
    resumed gives the uninterrupted run's ranks, MRR and mAP."""
    from tests.test_resume import FailingMatrix

    rng = np.random.default_rng(4)
    test = (rng.integers(0, 5, (60, 8)) / 5).astype(np.float32)
    bank = rng.standard_normal((10, 8)).astype(np.float32)
    np.save(tmp_path / "pairs.npy", np.array([[q, g] for q in range(60)
                                              for g in {q % 8, (3 * q) % 8}]))
    store = qbscale.ingest(tmp_path / "s.zarr", bank, test, positives=tmp_path / "pairs.npy",
                           chunk_rows=10, progress=False)
    kw = {"beta": [10.0, 20.0], "save_ranks": True}
    want = qbscale.run(store, **kw)
    experiment = open_experiment(store)
    experiment.test = FailingMatrix(experiment.test, ok=3)
    with pytest.raises(RuntimeError, match="cannot read block"):
        qbscale.run(experiment, scheduler="synchronous", resume=True, **kw)
    got = qbscale.run(store, resume=True, **kw)
    assert got.extra["resume"]["reused"] > 0
    assert got.before == want.before and got.after == want.after
    assert "mAP" in got.before
