"""Similarities computed from embeddings equal the stored-similarity path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import qbscale
from qbscale.api import run
from qbscale.engine.grid import offsets
from qbscale.storage.stores import store as store_module
from qbscale.storage.stores.ingest import ingest_embeddings
from qbscale.storage.stores.sources import EmbeddingMatrix
from qbscale.storage.stores.store import embedding_grid, open_experiment, within_chunks

ROOT = Path(__file__).resolve().parents[1]
PYCODE = ROOT / "examples" / "data" / "pycode"


def exact_vectors(rng: np.random.Generator, n: int, dim: int = 32) -> np.ndarray:
    """Rows with 16 entries of +-1 at random places, scaled by random powers of two.

    Unit-normalised they hold +-1/4 exactly, so every cosine is an exact
    float32 number whatever the order of the sums: both paths must agree
    bit for bit, ties (plentiful here) included.
    """
    out = np.zeros((n, dim), np.float32)
    for row in out:
        row[rng.choice(dim, 16, replace=False)] = rng.choice([-1.0, 1.0], 16)
    return out * (2.0 ** rng.integers(-3, 4, (n, 1))).astype(np.float32)


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(11)
    gallery = exact_vectors(rng, 60)
    test = np.sign(gallery[np.arange(120) // 2])  # queries near their items:
    for row in test:  # the item's pattern with a few signs flipped
        row[rng.choice(np.flatnonzero(row), rng.integers(2, 7), replace=False)] *= -1
    test *= (2.0 ** rng.integers(-3, 4, (120, 1))).astype(np.float32)
    return exact_vectors(rng, 400), test, gallery


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)


@pytest.fixture(scope="module", params=["one-block", "2d"])
def stores(request, vectors, tmp_path_factory):
    bank, test, gallery = vectors
    tmp = tmp_path_factory.mktemp(request.param)
    chunk_rows = None if request.param == "one-block" else 23
    emb = ingest_embeddings(tmp / "emb.zarr", bank, test, gallery, normalise=True,
                            queries_per_item=2, chunk_rows=chunk_rows, progress=False)
    g = unit(gallery)
    sims = qbscale.ingest(tmp / "sims.zarr", (unit(bank) @ g.T).astype(np.float32),
                          (unit(test) @ g.T).astype(np.float32), queries_per_item=2,
                          chunk_rows=chunk_rows, progress=False)
    return request.param, emb, sims


@pytest.fixture()
def small_blocks(monkeypatch):
    """Blocks of 1200 float32 similarities: a 2-D grid even at this size."""
    monkeypatch.setattr(store_module, "EMBEDDING_BLOCK_BYTES", 4 * 1200)
    monkeypatch.setattr(store_module, "EMBEDDING_MIN_ITEMS", 10)


def test_embeddings_path_equals_sims_path(stores, small_blocks):
    kind, emb_url, sims_url = stores
    emb, sims = open_experiment(emb_url), open_experiment(sims_url)
    assert isinstance(emb.test, EmbeddingMatrix)
    if kind == "2d":
        assert len(emb.bank.row_chunks) > 1 and len(emb.test.col_chunks) > 1
    for method in ("dis", "is"):
        kwargs = dict(beta=[10, 20], k=2, method=method, topk=4, scheduler="threads")
        a, b = run(emb, **kwargs), run(sims, **kwargs)
        np.testing.assert_array_equal(a.base_ranks, b.base_ranks)
        for beta in (10.0, 20.0):
            np.testing.assert_array_equal(a.ranks[beta], b.ranks[beta])
        np.testing.assert_array_equal(a.normalised, b.normalised)
        assert a.activation_size == b.activation_size
        np.testing.assert_array_equal(a.topk_index, b.topk_index)
        # float64 scores: the two paths' logZ may differ in the last bits (the
        # embeddings path sums its column blocks in another grouping)
        np.testing.assert_allclose(a.topk_score, b.topk_score, rtol=1e-12, atol=1e-12)
    assert 0 < a.before["R1"] < 100


def test_gallery_blocks_stay_inside_stored_chunks(stores, small_blocks):
    import zarr

    _, emb_url, _ = stores
    exp = open_experiment(emb_url)
    chunk = zarr.open_array(emb_url, path="gallery_emb", mode="r").chunks[0]
    blocks = exp.test.col_chunks
    assert sum(blocks) == exp.n_gallery and len(blocks) > 1
    for start, size in zip(offsets(blocks), blocks, strict=True):
        assert start // chunk == (start + size - 1) // chunk  # one stored chunk each


def test_block_grid_arithmetic():
    assert embedding_grid(10000, 2048) == (10000, 2048)
    assert embedding_grid(10000, 500) == (10000, 3000)  # whole chunks
    assert embedding_grid(10**6, 1000, block_bytes=2**27) == (32768, 1000)
    q_rows, g_rows = embedding_grid(10000, 43690)
    assert q_rows * g_rows * 4 <= store_module.EMBEDDING_BLOCK_BYTES
    assert within_chunks((7, 7, 2), 3) == (3, 3, 1, 3, 3, 1, 2)
    assert embedding_grid(50, 100, rows_per_block=20, block_bytes=4 * 200) == (20, 10)


@pytest.mark.skipif(not PYCODE.exists(), reason="the pycode sample is not shipped here")
def test_pycode_embeddings_give_the_reference_figures(tmp_path):
    """The real data, from its embeddings: the figures of the paper's code."""
    url = ingest_embeddings(tmp_path / "pycode.zarr", PYCODE / "querybank.npy",
                            PYCODE / "queries_test.npy", PYCODE / "gallery_test.npy",
                            dtype="float32", progress=False)
    res = run(url, beta=20, k=1, method="dis")
    table = res.table()
    assert [table[0][m] for m in ("R1", "R5", "R10", "R50", "MedR", "MeanR")] == \
        [44.9, 71.1, 79.1, 91.1, 2.0, 34.5]
    assert [table[1][m] for m in ("R1", "R5", "R10", "R50", "MedR", "MeanR")] == \
        [44.8, 71.3, 78.5, 90.4, 2.0, 39.4]


def test_runs_on_embeddings_have_the_same_bits_on_every_scheduler(tmp_path):
    """Products of the pycode embeddings (not exact in float32): the top-k
    scores, ranks and the shift are the same bits on every scheduler."""
    url = ingest_embeddings(tmp_path / "pycode.zarr", PYCODE / "querybank.npy",
                            PYCODE / "queries_test.npy", PYCODE / "gallery_test.npy",
                            dtype="float32", progress=False)
    want = run(url, beta=20, topk=5, scheduler="synchronous")
    for scheduler, workers in (("threads", 2), ("threads", 3), ("processes", 2)):
        got = run(url, beta=20, topk=5, scheduler=scheduler, num_workers=workers)
        for name in ("topk_score", "topk_index", "shift", "ranks", "base_ranks"):
            a, b = getattr(got, name), getattr(want, name)
            if isinstance(a, dict):
                a, b = np.stack(list(a.values())), np.stack(list(b.values()))
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: {scheduler} {workers}")
