"""A faiss index follows an updatable normaliser: added items appended, removed
ones deleted (IndexIDMap2), built again when the bank changed or the index
type cannot delete; its searches equal the exact search of the new normaliser."""

from __future__ import annotations

import numpy as np
import pytest

from qbscale.errors import ConfigError, InputError
from qbscale.retrieval.faiss_follow import follow, follow_file
from qbscale.retrieval.faiss_index import FaissSearch
from qbscale.retrieval.normaliser import Normaliser

pytest.importorskip("faiss")


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(5)
    data = {"b": rng.standard_normal((80, 16)), "g": rng.standard_normal((60, 16)),
            "nb": rng.standard_normal((20, 16)), "ni": rng.standard_normal((15, 16)),
            "q": rng.standard_normal((40, 16))}
    for name, value in data.items():
        np.save(tmp_path / f"{name}.npy", value.astype(np.float32))
    return tmp_path


def fitted(files, **kw):
    return Normaliser.fit(bank_emb=files / "b.npy", gallery_emb=files / "g.npy", beta=[5, 20],
                          k=2, updatable=True, **kw)


def assert_serves(index: FaissSearch, norm: Normaliser, queries: np.ndarray) -> None:
    """The index's top-5 is the exact search's (faiss scores in float32)."""
    got, want = index.search(queries, 5), norm.search(queries, 5)
    np.testing.assert_allclose(got[0], want[0], atol=1e-4)
    assert (got[1] == want[1]).mean() >= 0.99


def test_an_index_follows_added_and_removed_items(files):
    queries = np.load(files / "q.npy")
    norm = fitted(files)
    built = norm.to_faiss(norm.fitted_gallery())
    built.save(files / "a.faiss")
    assert_serves(FaissSearch.load(files / "a.faiss", norm), norm, queries)
    new = norm.remove_items([0, 7, 33]).add_items(str(files / "ni.npy"))
    with pytest.raises(InputError, match="indexes 60 items"):
        FaissSearch.load(files / "a.faiss", new)
    index, how = follow_file(str(files / "a.faiss"), new)
    assert how == "followed" and index.index.ntotal == new.n_gallery == 72
    np.testing.assert_array_equal(np.sort(index.ids), new.record.item_ids)
    assert_serves(index, new, queries)
    index.save(files / "b.faiss")
    assert_serves(FaissSearch.load(files / "b.faiss", new), new, queries)
    other = norm.remove_items([1, 2, 3, 4]).add_items(np.load(files / "ni.npy")[:4])
    with pytest.raises(InputError, match="other gallery items"):  # 60 items, other ids
        FaissSearch.load(files / "a.faiss", other)


def test_a_grown_bank_or_hnsw_removal_builds_again(files):
    queries = np.load(files / "q.npy")
    norm = fitted(files)
    grown = norm.partial_fit(bank_emb=str(files / "nb.npy"))
    index, how = follow(norm.to_faiss(norm.fitted_gallery()), grown)
    assert how == "rebuilt"
    assert_serves(index, grown, queries)
    hnsw = FaissSearch.build(norm, norm.fitted_gallery(), "HNSW16")
    index, how = follow(hnsw, norm.remove_items([3]))
    assert how == "rebuilt" and index.index.ntotal == 59
    plain = Normaliser.fit(bank_emb=files / "b.npy", gallery_emb=files / "g.npy")
    with pytest.raises(ConfigError, match="built for an updatable normaliser"):
        follow(plain.to_faiss(plain.fitted_gallery()), norm)


def test_cli_index_follow(files, cli_invoke):
    fitted(files).save(files / "n.zarr")
    cli_invoke("index", files / "n.zarr", "-o", files / "a.faiss", "-q")
    cli_invoke("items", files / "n.zarr", "--add", files / "ni.npy", "--remove", "4,5", "-o",
               files / "n2.zarr", "-q")
    before = (files / "a.faiss").read_bytes()
    res = cli_invoke("index", files / "n2.zarr", "--follow", files / "a.faiss", "-o",
                     files / "b.faiss", "-q")
    assert "followed" in res.output and "73 items" in res.output
    assert (files / "a.faiss").read_bytes() == before
    norm = Normaliser.load(files / "n2.zarr")
    assert_serves(FaissSearch.load(files / "b.faiss", norm), norm, np.load(files / "q.npy"))
    res = cli_invoke("search", files / "n2.zarr", "--queries", files / "q.npy", "--topk", "3",
                     "--index", files / "b.faiss", "--hits", files / "h.npz", "-q")
    assert "faiss index" in res.output
