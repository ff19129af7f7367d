"""Exact search against a dense top-k oracle; faiss against exact search; the CLI."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from qbscale.cli import cli
from qbscale.config import RunConfig
from qbscale.engine import topk as topk_kernels
from qbscale.engine.plan import fit
from qbscale.engine.statistics import GalleryStatistics
from qbscale.errors import InputError
from qbscale.retrieval.search import search, search_matrix
from qbscale.storage.stores.sources import NumpyMatrix
from qbscale.storage.stores.store import in_memory

from . import reference as ref
from .test_embeddings import exact_vectors

METHODS = [("none", False), ("is", False), ("dis", False), ("csls", False),
           ("csls", True), ("nnn", False), ("nnn", True)]


def fitted(bank_emb: np.ndarray, gallery: np.ndarray, method: str, dynamic: bool,
           values: list[float] | None = None, k: int = 1) -> GalleryStatistics:
    """An engine normaliser fitted on ``bank_emb @ gallery.T``."""
    bank = bank_emb @ gallery.T
    params: dict = {"nnn_k": 3} if method == "nnn" else {}
    if values is None:
        values = {"csls": [2.0, 3.0], "nnn": [0.5, 1.0]}.get(method, [4.0, 8.0])
    name = {"csls": "kc", "nnn": "alpha"}.get(method, "beta")
    params[name] = values
    config = RunConfig.make(None, k=k, method=method, dynamic=dynamic, params=params)
    experiment = in_memory(bank, bank[: gallery.shape[0]], queries_per_item=1)
    return fit(experiment, config).compute(scheduler="synchronous")


def oracle(norm: GalleryStatistics, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense top-k of the scored matrix, full stable sorts (ties to the lowest index)."""
    sims = sims.astype(np.float64)
    top1 = np.argsort(-sims, axis=1, kind="stable")[:, 0]
    rows = norm.flags(top1)
    scores, indices = [], []
    for v, scale in enumerate(norm.scales):
        scored = sims.copy()
        if norm.shift is not None:
            scored[rows] = scale * sims[rows] - norm.shift[v]
        idx, val = ref.topk(scored, k)
        scores.append(val)
        indices.append(idx)
    return np.stack(scores), np.stack(indices)


def variants(x: tuple[np.ndarray, np.ndarray], n_values: int) -> tuple[np.ndarray, np.ndarray]:
    return x if n_values > 1 else (x[0][None], x[1][None])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), method=st.sampled_from(METHODS),
       n_gallery=st.integers(3, 70), n_queries=st.integers(1, 30),
       top_k=st.integers(1, 12), block_rows=st.integers(4, 31), block_items=st.integers(6, 71),
       k=st.integers(1, 3))
def test_search_equals_dense_oracle(seed, method, n_gallery, n_queries, top_k, block_rows,
                                    block_items, k):
    rng = np.random.default_rng(seed)
    gallery = exact_vectors(rng, n_gallery)
    queries = exact_vectors(rng, n_queries)
    norm = fitted(exact_vectors(rng, 40), gallery, *method, k=k)
    top_k = min(top_k, n_gallery)
    got = variants(search(norm, queries, top_k, gallery, scheduler="synchronous",
                          block_rows=block_rows, block_items=block_items),
                   len(norm.values))
    want = oracle(norm, queries @ gallery.T, top_k)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31), method=st.sampled_from(METHODS),
       n_gallery=st.integers(1600, 4000), top_k=st.integers(1, 6),
       block_items=st.integers(1536, 2100), workers=st.integers(1, 3))
def test_search_over_shift_grouped_blocks(seed, method, n_gallery, top_k, block_items, workers):
    """Gallery blocks wide enough to be reordered by shift (segments of 32, at
    least 8 per item; a narrower last block is not), dealt to chains: still
    the dense top-k, ties included."""
    rng = np.random.default_rng(seed)
    gallery = exact_vectors(rng, n_gallery)
    queries = exact_vectors(rng, 37)
    norm = fitted(exact_vectors(rng, 60), gallery, *method)
    if norm.shift is not None and norm.rows != "none":
        assert topk_kernels.can_group(block_items, top_k, np.asarray(norm.scales),
                                      norm.shift[:, :block_items])
    got = variants(search(norm, queries, top_k, gallery, scheduler="threads",
                          num_workers=workers, block_rows=16, block_items=block_items),
                   len(norm.values))
    want = oracle(norm, queries @ gallery.T, top_k)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_search_has_the_same_bits_on_every_scheduler():
    """Float32 products of random (inexact) embeddings depend on BLAS's thread
    count and the block shapes; both are fixed whatever the scheduler, so the
    scores are bit for bit the same on all of them."""
    rng = np.random.default_rng(11)
    gallery = rng.standard_normal((6000, 48)).astype(np.float32)
    queries = rng.standard_normal((300, 48)).astype(np.float32)
    bank = rng.standard_normal((500, 48)).astype(np.float32)
    norm = fitted(bank, gallery, "dis", False, [20.0])
    want = search(norm, queries, 8, gallery, scheduler="synchronous")
    for scheduler, workers in (("threads", 1), ("threads", 2), ("threads", 3),
                               ("processes", 2), ("local:2", None)):
        got = search(norm, queries, 8, gallery, scheduler=scheduler, num_workers=workers)
        np.testing.assert_array_equal(got[1], want[1], err_msg=f"{scheduler} {workers}")
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"{scheduler} {workers}")


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), method=st.sampled_from(METHODS),
       rows=st.integers(3, 25), cols=st.integers(5, 60), top_k=st.integers(1, 9))
def test_search_matrix_equals_dense_oracle(seed, method, rows, cols, top_k):
    """Similarity rows in blocks of any shape, ties plentiful (values on a grid)."""
    rng = np.random.default_rng(seed)
    gallery = exact_vectors(rng, 50)
    norm = fitted(exact_vectors(rng, 30), gallery, *method)
    sims = (rng.integers(-8, 9, (37, 50)) / 8).astype(np.float32)
    source = NumpyMatrix(sims, tuple(np.diff([*range(0, 37, rows), 37])),
                         tuple(np.diff([*range(0, 50, cols), 50])))
    got = variants(search_matrix(norm, source, top_k, scheduler="synchronous"),
                   len(norm.values))
    want = oracle(norm, sims, top_k)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), n_cols=st.integers(1, 700), top_k=st.integers(1, 20),
       scale=st.sampled_from([1.0, 20.0, 1e-3, 1e35]), grid=st.booleans())
def test_topk_kernels(seed, n_cols, top_k, scale, grid):
    """Segment floors and the float32 prefilter (or its float64 fallback) are exact."""
    rng = np.random.default_rng(seed)
    block = rng.standard_normal((9, n_cols)).astype(np.float32)
    if grid:  # many ties
        block = np.round(block * 2) / 2
    shift = np.round(rng.standard_normal(n_cols) * 4) / 4
    k = min(top_k, n_cols)
    idx, val = ref.topk(block.astype(np.float64), k)
    got = topk_kernels.raw_topk(block, k, col0=5)
    np.testing.assert_array_equal(got[1], idx + 5)
    np.testing.assert_array_equal(got[0], val)
    exact = scale * block.astype(np.float64) - shift
    idx, val = ref.topk(exact, k)
    got = topk_kernels.normalised_topk(block, k, scale, shift)
    np.testing.assert_array_equal(got[1], idx)
    np.testing.assert_array_equal(got[0], val)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), n_cols=st.integers(1, 600), n_blocks=st.integers(1, 4),
       top_k=st.integers(1, 12), scale=st.sampled_from([1.0, 20.0, 1e-3, 1e35, 1e308]),
       n_variants=st.integers(0, 2), grid=st.booleans(), rising=st.booleans(),
       layout=st.sampled_from(["grouped", "random", "identity"]),
       group_length=st.sampled_from([2, 4, 32]))
def test_grouped_topk_chain(seed, n_cols, n_blocks, top_k, scale, n_variants, grid, rising,
                            layout, group_length):
    """Shift-grouped blocks chained over the gallery equal the dense top-k.

    Any column order is exact (grouping only makes the bounds tight); rows
    that rise along the gallery make every block beat the running
    threshold, so the per-row block floor is exercised too.
    """
    from unittest import mock

    rng = np.random.default_rng(seed)
    full = rng.standard_normal((9, n_cols)).astype(np.float32)
    if grid:  # many ties
        full = np.round(full * 2) / 2
    if rising:
        full = np.sort(full, axis=1)
    shifts = np.round(rng.standard_normal((n_variants, n_cols)) * rng.choice([0.25, 4.0])) / 4
    scales = [scale] * n_variants
    cuts = np.unique(np.r_[0, np.sort(rng.integers(0, n_cols + 1, n_blocks - 1)), n_cols])
    with mock.patch.object(topk_kernels, "GROUP_LENGTH", group_length), \
            mock.patch.object(topk_kernels, "SEGMENTS_PER_K", 1):
        k = min(top_k, int(np.diff(cuts).min()) // group_length)
        if k < 1 or not topk_kernels.can_group(n_cols, k, np.array(scales), shifts):
            return
        state = None
        for c0, c1 in itertools.pairwise(cuts):
            width = c1 - c0
            order = {"grouped": topk_kernels.grouped_order(shifts[0, c0:c1]) if n_variants
                     else np.arange(width),
                     "random": rng.permutation(width),
                     "identity": np.arange(width)}[layout]
            variants = [topk_kernels.GroupedShift(sc, sh[c0:c1], order)
                        for sc, sh in zip(scales, shifts, strict=True)]
            block = np.ascontiguousarray(full[:, c0:c1][:, order])
            state = topk_kernels.grouped_topk(block, k, variants, order, int(c0), True, state)
    idx, val = ref.topk(full.astype(np.float64), k)
    np.testing.assert_array_equal(state[0][1], idx)
    np.testing.assert_array_equal(state[0][0], val)
    for b in range(n_variants):
        idx, val = ref.topk(scale * full.astype(np.float64) - shifts[b], k)
        np.testing.assert_array_equal(state[1][b][1], idx)
        np.testing.assert_array_equal(state[1][b][0], val)


@pytest.fixture(scope="module")
def pycode_small():
    rng = np.random.default_rng(3)
    gallery = rng.standard_normal((900, 24)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = gallery[rng.integers(0, 900, 300)] + 0.3 * rng.standard_normal((300, 24))
    bank = gallery[rng.integers(0, 900, 600)] + 0.3 * rng.standard_normal((600, 24))
    return bank.astype(np.float32), gallery, queries.astype(np.float32)


def test_gallery_inputs_and_errors(pycode_small, tmp_path):
    bank, gallery, queries = pycode_small
    norm = fitted(bank, gallery, "dis", False, [20.0])
    want = search(norm, queries, 5, gallery)
    np.save(tmp_path / "g.npy", gallery)
    zarr.create_array(tmp_path / "g.zarr", data=gallery, chunks=(128, 24))
    import dask.array as da

    for other in (tmp_path / "g.npy", str(tmp_path / "g.zarr"),
                  da.from_array(gallery, chunks=(200, 24))):
        got = search(norm, da.from_array(queries, chunks=(70, 24)), 5, other, block_rows=64)
        np.testing.assert_array_equal(got[1], want[1])
        # float32 BLAS products may differ by an ulp with the block shape
        np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    with pytest.raises(InputError, match="899 gallery items, the normaliser was fitted on 900"):
        search(norm, queries, 5, gallery[:899])
    with pytest.raises(InputError, match="dimension 23"):
        search(norm, queries[:, :23], 5, gallery)
    every = search(norm, queries, 901, gallery)  # more than the gallery: every item, ranked
    assert every[1].shape == (len(queries), 900)
    np.testing.assert_array_equal(every[1][:, :5], want[1])
    np.testing.assert_array_equal(np.sort(every[1], axis=1),
                                  np.broadcast_to(np.arange(900), (len(queries), 900)))
    with pytest.raises(InputError, match="top_k must be an integer >= 1, got 0"):
        search(norm, queries, 0, gallery)
    bad = queries.copy()
    bad[17, 3] = np.nan
    with pytest.raises(InputError, match=r"^non-finite value nan at row 17, column 3 of"):
        search(norm, bad, 5, gallery)
    with pytest.raises(InputError, match=r"the similarity matrix must be a non-empty .* got "
                                         r"float32 of shape \(0, 900\)$"):
        search_matrix(norm, NumpyMatrix(np.zeros((0, 900), np.float32), (), (900,)), 5)
    with pytest.raises(InputError, match="no gallery"):
        search(norm, queries, 5)


faiss = pytest.importorskip("faiss", reason="faiss-cpu is not installed")


@pytest.mark.parametrize("method", METHODS)
def test_faiss_flat_equals_search(pycode_small, method, tmp_path):
    """Flat faiss equals exact search but where two scores are within float32
    precision of each other (counted; each such swap is checked to be one)."""
    from qbscale.retrieval.faiss_index import FaissSearch

    bank, gallery, queries = pycode_small
    norm = fitted(bank, gallery, *method, values=None)
    exact = variants(search(norm, queries, 10, gallery), len(norm.values))
    index = FaissSearch.build(norm, gallery, "Flat")
    index = FaissSearch.load(index.save(tmp_path / "i.faiss"), norm)
    approx = variants(index.search(queries, 10), len(norm.values))
    differ = approx[1] != exact[1]
    # float32 scores carry ~1e-7 relative error: a swap needs a near-tie
    scale = np.abs(exact[0]).max() * 2.0**-20
    swapped = np.abs(approx[0] - exact[0]) > scale
    assert differ.mean() <= 0.01, f"{differ.sum()} of {differ.size} hits differ"
    assert not swapped.any()
    np.testing.assert_allclose(approx[0], exact[0], atol=scale)


def save_normaliser(norm: GalleryStatistics, path, gallery=None) -> None:
    from qbscale.retrieval.normaliser import Normaliser as Public

    Public(norm.config, norm.shift, norm.activation, dict(norm.fingerprint),
           gallery=gallery).save(path)


def read_back(path) -> dict[str, np.ndarray]:
    from qbscale.storage.outputs.hits import read_hits

    return read_hits(path)


def hits_arrays(hits: dict[str, np.ndarray], n_queries: int, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    return (hits["score"].reshape(n_queries, -1, k).transpose(1, 0, 2),
            hits["item"].reshape(n_queries, -1, k).transpose(1, 0, 2))


def invoke(*args: str) -> str:
    res = CliRunner().invoke(cli, [*args, "--quiet"] if args[0] == "search" else list(args))
    assert res.exit_code == 0, res.output
    return res.output


def test_cli_search_and_index(pycode_small, tmp_path):
    bank, gallery, queries = pycode_small
    norm = fitted(bank, gallery, "dis", False, [10.0, 20.0])
    save_normaliser(norm, str(tmp_path / "norm.zarr"))
    np.save(tmp_path / "q.npy", queries)
    np.save(tmp_path / "g.npy", gallery)
    np.save(tmp_path / "s.npy", queries @ gallery.T)
    want = search(norm, queries, 7, gallery)
    out = invoke("search", str(tmp_path / "norm.zarr"), "--queries", str(tmp_path / "q.npy"),
                 "--gallery-emb", str(tmp_path / "g.npy"), "--topk", "7",
                 "--hits", str(tmp_path / "hits.npz"), "--block-rows", "45")
    assert "for 300 queries" in out
    hits = read_back(tmp_path / "hits.npz")
    np.testing.assert_array_equal(hits["query"].reshape(300, -1)[:, 0], np.arange(300))
    got = hits_arrays(hits, 300, 7)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)  # BLAS: an ulp per block shape
    invoke("search", str(tmp_path / "norm.zarr"), "--sims", str(tmp_path / "s.npy"),
           "--topk", "7", "--hits", str(tmp_path / "sims.tsv"))
    hits = read_back(tmp_path / "sims.tsv")
    got = hits_arrays(hits, 300, 7)
    np.testing.assert_array_equal(got[1], want[1])
    assert set(hits["variant"]) == {"dis:beta=10", "dis:beta=20"}
    out = invoke("index", str(tmp_path / "norm.zarr"), "--gallery-emb", str(tmp_path / "g.npy"),
                 "-o", str(tmp_path / "i.faiss"))
    assert "faiss Flat over 900 items" in out
    invoke("search", str(tmp_path / "norm.zarr"), "--queries", str(tmp_path / "q.npy"),
           "--index", str(tmp_path / "i.faiss"), "--topk", "7",
           "--hits", str(tmp_path / "faiss.parquet"))
    got = hits_arrays(read_back(tmp_path / "faiss.parquet"), 300, 7)
    assert (got[1] == want[1]).mean() > 0.99
    res = CliRunner().invoke(cli, ["search", str(tmp_path / "norm.zarr"), "--queries",
                                   str(tmp_path / "q.npy"), "--gallery-emb",
                                   str(tmp_path / "q.npy"), "--topk", "3", "--hits",
                                   str(tmp_path / "bad.npz"), "-q"])
    assert res.exit_code == 1
    assert "300 gallery items, the normaliser was fitted on 900" in res.output
    assert not (tmp_path / "bad.npz").exists()
    bad = queries.copy()
    bad[211, 3] = np.nan  # in the fifth block of 45 rows: named by its row in the file
    np.save(tmp_path / "nan.npy", bad)
    res = CliRunner().invoke(cli, ["search", str(tmp_path / "norm.zarr"), "--queries",
                                   str(tmp_path / "nan.npy"), "--gallery-emb",
                                   str(tmp_path / "g.npy"), "--topk", "3", "--block-rows", "45",
                                   "--hits", str(tmp_path / "nan.tsv"), "-q"])
    assert res.exit_code == 1
    assert res.output == (f"Error: non-finite value nan at row 211, column 3 of the queries "
                          f"({tmp_path / 'nan.npy'})\n")
    assert not (tmp_path / "nan.tsv").exists()


def test_search_demo_runs_at_full_size(tmp_path, capsys):
    """examples/search_demo.py on the shipped pycode embeddings: the hits' R@1
    equals qbscale run's (the script returns 1 otherwise)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "search_demo.py"
    spec = importlib.util.spec_from_file_location("search_demo", path)
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "R@1 with DIS beta=20: hits 44.825, run 44.825" in out
    assert (tmp_path / "hits.npz").exists()


def test_search_on_worker_processes(pycode_small, tmp_path):
    """Tasks travel to other processes (a LocalCluster, as with tcp://): sources
    given by path are reopened there; the hits equal the threaded search's."""
    bank, gallery, queries = pycode_small
    norm = fitted(bank, gallery, "dis", False, [20.0])
    np.save(tmp_path / "g.npy", gallery)
    want = search(norm, queries, 5, gallery, block_rows=100)
    got = search(norm, queries, 5, str(tmp_path / "g.npy"), scheduler="local:1",
                 block_rows=100, block_items=300)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)


def test_public_normaliser_gallery_and_checksum(pycode_small, tmp_path):
    """A qbscale.Normaliser fitted from embeddings searches its own gallery and
    refuses other embeddings of the same size (checksum); --sims from a store."""
    import qbscale

    bank, gallery, queries = pycode_small
    np.save(tmp_path / "g.npy", gallery)
    norm = qbscale.Normaliser.fit(bank_emb=bank, gallery_emb=str(tmp_path / "g.npy"), beta=20)
    want = search(norm, queries, 5, gallery)
    got = search(norm, queries, 5)  # its own gallery, by path
    np.testing.assert_array_equal(got[1], want[1])
    other = gallery.copy()
    other[5] *= -1
    with pytest.raises(InputError):
        search(norm, queries, 5, other)
    norm.save(tmp_path / "norm.zarr")
    sims = queries @ gallery.T
    qbscale.ingest(tmp_path / "exp.zarr", bank @ gallery.T, sims, gt_index=np.arange(300) % 900,
                   progress=False)
    invoke("search", str(tmp_path / "norm.zarr"), "--sims", str(tmp_path / "exp.zarr"),
           "--topk", "5", "--hits", str(tmp_path / "store.npz"))
    got = hits_arrays(read_back(tmp_path / "store.npz"), 300, 5)
    np.testing.assert_array_equal(got[1][0], search_matrix(norm, NumpyMatrix.wrap(sims, 64),
                                                           5)[1])
