"""Hostile in-memory and API input: non-finite values, wrong kinds and shapes,
bad options, and a normaliser's gallery found from any directory."""

from __future__ import annotations

import os
import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import qbscale
from qbscale import Normaliser, normalise
from qbscale.errors import ConfigError, InputError
from qbscale.retrieval.search import search, search_matrix
from qbscale.storage.stores.sources import NumpyMatrix
from qbscale.storage.stores.store import in_memory

from . import reference as ref

BAD_VALUES = [np.nan, np.inf, -np.inf]


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    return rng.random((40, 12)), rng.random((15, 12))


def fitted(bank: np.ndarray, method: str = "dis") -> Normaliser:
    return Normaliser.fit(bank, beta=10, method=method, scheduler="synchronous")


def spoiled(test: np.ndarray, row: int, col: int, value: float) -> np.ndarray:
    bad = test.copy()
    bad[row, col] = value
    return bad


# ------------------------------------------------------------ non-finite values


@pytest.mark.parametrize("value", BAD_VALUES)
def test_transform_and_normalise_refuse_non_finite_numpy(data, value):
    bank, test = data
    bad = spoiled(test, 11, 4, value)
    want = f"non-finite value {value} at row 11, column 4 of the similarity matrix"
    with pytest.raises(InputError, match=f"^{want}$"):
        fitted(bank).transform(bad)
    with pytest.raises(InputError, match=f"^{want}$"):
        normalise(bad, bank, beta=10, scheduler="synchronous")
    with pytest.raises(InputError, match=f"^{want}$"):
        fitted(bank).transform(xr.DataArray(bad, dims=("query", "gallery")))


@pytest.mark.parametrize("method", ["dis", "is"])
def test_transform_refuses_non_finite_dask_per_block(data, method, no_compute):
    """The row and column are the array's, not the block's; building the graph
    computes nothing, and the error comes from the task reading the block."""
    bank, test = data
    bad = da.from_array(spoiled(test, 11, 9, np.nan), chunks=(4, 5))
    norm = fitted(bank, method)
    with no_compute():
        out = norm.transform(bad)
        labelled = norm.transform(xr.DataArray(bad, dims=("query", "gallery")))
    for lazy in (out, labelled.data):
        with pytest.raises(InputError, match=r"^non-finite value nan at row 11, column 9 of"):
            lazy.compute(scheduler="synchronous")
    # blocks without the NaN compute (each block checks itself, nothing is read whole)
    np.testing.assert_allclose(out[:8].compute(scheduler="synchronous"),
                               ref.scores(test, bank, 10.0, method=method)[:8])
    if method == "dis":  # the NaN would win row 11's argmax: even its other columns refuse
        with pytest.raises(InputError, match="row 11, column 9"):
            out[8:12, :5].compute(scheduler="synchronous")


def test_search_matrix_refuses_non_finite(data):
    bank, test = data
    source = NumpyMatrix.wrap(spoiled(test, 9, 2, -np.inf), 4)
    with pytest.raises(InputError, match=r"^non-finite value -inf at row 9, column 2 of the "
                                         r"similarity matrix$"):
        search_matrix(fitted(bank), source, 3, scheduler="synchronous")


def test_cli_search_sims_refuses_non_finite(data, tmp_path, cli_invoke):
    bank, test = data
    fitted(bank).save(tmp_path / "norm.zarr")
    np.save(tmp_path / "s.npy", spoiled(test, 13, 7, np.nan))
    res = cli_invoke("search", tmp_path / "norm.zarr", "--sims", tmp_path / "s.npy", "--topk", 2,
                     "--hits", tmp_path / "h.tsv", "--block-rows", 4, "-q", exit_code=1)
    assert res.output == (f"Error: non-finite value nan at row 13, column 7 of the "
                          f"similarities ({tmp_path / 's.npy'})\n")
    assert not (tmp_path / "h.tsv").exists()


def test_cli_search_sims_store_refuses_non_finite(data, tmp_path, cli_invoke):
    """A store's test matrix changed behind ingest's back is refused too."""
    import zarr

    bank, test = data
    fitted(bank).save(tmp_path / "norm.zarr")
    qbscale.ingest(tmp_path / "exp.zarr", bank, test, gt_index=np.arange(15) % 12,
                   progress=False, chunk_rows=4)
    arr = zarr.open_array(str(tmp_path / "exp.zarr" / "test"), mode="r+")
    arr[6, 3] = np.inf
    args = ("search", tmp_path / "norm.zarr", "--sims", tmp_path / "exp.zarr", "--topk", 2,
            "--hits", tmp_path / "h.tsv", "-q")
    res = cli_invoke(*args, exit_code=1)  # the chunk manifest sees the rewritten chunk
    assert res.output == (f"Error: store {tmp_path / 'exp.zarr'}: chunk test/c/1/0 is not the "
                          "chunk written there (swapped or replaced): re-ingest or restore it\n")
    # as if inf had been there when it was written: its manifest recorded again and
    # the store sealed over it (the manifest no longer names the rewritten chunk first)
    from qbscale.storage.durability import seal
    from qbscale.storage.durability.manifest import record

    group = zarr.open_group(str(tmp_path / "exp.zarr"), mode="r+")
    attrs = dict(group.attrs["qbscale"])
    digests = record(str(tmp_path / "exp.zarr"), None, ["test"], attrs["store_id"])
    group.attrs["qbscale"] = seal.sealed({**attrs, "manifests": {**attrs["manifests"],
                                                                 **digests}})
    res = cli_invoke(*args, exit_code=1)
    assert res.output == (f"Error: non-finite value inf at row 6, column 3 of the "
                          f"similarities ({tmp_path / 'exp.zarr'})\n")
    assert not (tmp_path / "h.tsv").exists()


def test_finite_input_still_equals_the_oracle(data):
    bank, test = data
    norm = fitted(bank)
    want = ref.scores(test, bank, 10.0)
    np.testing.assert_allclose(norm.transform(test), want)
    np.testing.assert_allclose(
        norm.transform(da.from_array(test, chunks=(4, 5))).compute(scheduler="synchronous"), want)
    scores, idx = search_matrix(norm, NumpyMatrix.wrap(test, 4), 3, scheduler="synchronous")
    want_idx, want_scores = ref.topk(want, 3)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(scores, want_scores)


# ------------------------------------------------------------ kinds and shapes


BAD_KINDS = [
    (lambda t: t + 1j, "complex128 of shape (15, 12)"),
    (lambda t: t.astype(object), "object of shape (15, 12)"),
    (lambda t: t.astype(str), "<U32 of shape (15, 12)"),
    (lambda t: t > 0.5, "bool of shape (15, 12)"),
    (lambda t: (t * 100).astype(int), "int64 of shape (15, 12)"),
    (lambda t: (t * 100).astype(np.uint8), "uint8 of shape (15, 12)"),
    (lambda t: t[0], "float64 of shape (12,)"),
    (lambda t: t[None], "float64 of shape (1, 15, 12)"),
    (lambda t: t[:0], "float64 of shape (0, 12)"),
    (lambda t: t[:, :0], "float64 of shape (15, 0)"),
]


@pytest.mark.parametrize(("spoil", "got"), BAD_KINDS)
def test_bad_kinds_and_shapes_are_refused(data, spoil, got):
    bank, test = data
    bad = spoil(test)
    want = f"the similarity matrix must be a non-empty 2-D array of floats; got {got}"
    with pytest.raises(InputError) as info:
        normalise(bad, bank, beta=10, scheduler="synchronous")
    assert str(info.value) == want
    with pytest.raises(InputError) as info:
        fitted(bank).transform(da.from_array(bad) if bad.dtype != object else bad)
    assert str(info.value) == want
    with pytest.raises(InputError) as info:
        search_matrix(fitted(bank), bad, 3, scheduler="synchronous")
    assert str(info.value) == want
    with pytest.raises(InputError) as info:  # the bank: the same rule, in its own name
        Normaliser.fit(bad, scheduler="synchronous")
    assert str(info.value) == want.replace("the similarity matrix", "bank")
    with pytest.raises(InputError) as info:  # an in-memory run
        qbscale.run(in_memory(bank, bad), scheduler="synchronous")
    assert str(info.value) == want.replace("the similarity matrix", "test")


def test_a_list_is_refused_by_name(data):
    bank, test = data
    with pytest.raises(InputError, match=r"^test must be a non-empty 2-D array of floats; got a "
                                         r"list$"):
        in_memory(bank, test.tolist())


@pytest.mark.parametrize(("spoil", "got"), [BAD_KINDS[0], BAD_KINDS[4], BAD_KINDS[6],
                                             BAD_KINDS[7]])
def test_cli_search_sims_refuses_bad_kinds(data, tmp_path, cli_invoke, spoil, got):
    bank, test = data
    fitted(bank).save(tmp_path / "norm.zarr")
    np.save(tmp_path / "s.npy", spoil(test))
    res = cli_invoke("search", tmp_path / "norm.zarr", "--sims", tmp_path / "s.npy", "--topk", 2,
                     "--hits", tmp_path / "h.tsv", "-q", exit_code=1)
    assert res.output == (f"Error: the similarities ({tmp_path / 's.npy'}) must be a non-empty "
                          f"2-D array of floats; got {got}\n")


def test_other_gallery_size_is_refused(data):
    bank, test = data
    with pytest.raises(InputError, match=r"^the similarity matrix has 11 gallery items, the "
                                         r"normaliser was fitted on 12$"):
        normalise(test[:, :11], bank, scheduler="synchronous")
    with pytest.raises(InputError, match="has 11 gallery items"):
        search_matrix(fitted(bank), test[:, :11], 3, scheduler="synchronous")


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_narrow_float_input_is_scored_in_float64(data, dtype):
    bank, test = data
    given = test.astype(dtype)
    want = ref.scores(given.astype(np.float64), bank, 10.0)
    got = normalise(given, bank, beta=10, scheduler="synchronous")
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want)
    _, idx = search_matrix(fitted(bank), given, 3, scheduler="synchronous")
    np.testing.assert_array_equal(idx, ref.topk(want, 3)[0])


def test_search_matrix_takes_arrays(data):
    bank, test = data
    norm = fitted(bank)
    want = search_matrix(norm, NumpyMatrix.wrap(test, 4), 3, scheduler="synchronous")
    for given in (test, da.from_array(test, chunks=(4, 5)),
                  xr.DataArray(test, dims=("query", "gallery"))):
        got = search_matrix(norm, given, 3, scheduler="synchronous")
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0])
    bad = da.from_array(spoiled(test, 14, 11, np.nan), chunks=(4, 5))
    with pytest.raises(InputError, match="row 14, column 11"):
        search_matrix(norm, bad, 3, scheduler="synchronous")


# ------------------------------------------------------------ options


@pytest.mark.parametrize("k", [13, 100])
def test_k_beyond_the_gallery_is_refused(data, k):
    bank, test = data
    want = f"^k={k} exceeds the gallery's 12 items"
    with pytest.raises(ConfigError, match=want):
        Normaliser.fit(bank, k=k, scheduler="synchronous")
    with pytest.raises(ConfigError, match=want):
        normalise(test, bank, k=k, scheduler="synchronous")
    with pytest.raises(ConfigError, match=want):
        qbscale.run(in_memory(bank, test, gt_index=np.arange(15) % 12),
                    k=k, scheduler="synchronous")
    Normaliser.fit(bank, k=12, scheduler="synchronous")  # every item: allowed


@pytest.mark.parametrize("k", [1.5, "2", None])
def test_k_that_is_not_an_integer_is_refused(data, k):
    bank, _ = data
    with pytest.raises(ConfigError, match=f"^k must be an integer >= 1, got {k!r}"):
        Normaliser.fit(bank, k=k, scheduler="synchronous")


@pytest.mark.parametrize("beta", [0, -1, np.nan, np.inf])
def test_bad_beta_is_refused(data, beta):
    bank, test = data
    with pytest.raises(ConfigError, match=f"^beta must be a finite number > 0, got {beta}"):
        normalise(test, bank, beta=beta)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_fit_from_embeddings_refuses_non_finite(data, value):
    rng = np.random.default_rng(3)
    bank_emb, gallery_emb = rng.random((20, 4)), rng.random((12, 4))
    bad = spoiled(gallery_emb, 10, 1, value)
    with pytest.raises(InputError, match=r"gallery_emb .*row 10, column 1"):
        Normaliser.fit(bank_emb=bank_emb, gallery_emb=bad, scheduler="synchronous")
    bad = da.from_array(spoiled(bank_emb, 17, 2, value), chunks=(5, 4))
    with pytest.raises(InputError, match=f"^non-finite value {value} at row 17, column 2 of "
                                         "bank_emb$"):
        Normaliser.fit(bank_emb=bad, gallery_emb=gallery_emb, scheduler="synchronous")


# ------------------------------------------------------------ the recorded gallery


@pytest.fixture
def embeddings():
    rng = np.random.default_rng(11)
    gallery = rng.standard_normal((30, 6)).astype(np.float32)
    return (rng.standard_normal((60, 6)).astype(np.float32), gallery,
            rng.standard_normal((8, 6)).astype(np.float32))


def fit_in(directory, bank_emb, monkeypatch) -> Normaliser:
    """Fit from ``g.npy`` named relative to ``directory``, save ``norm.zarr`` there."""
    monkeypatch.chdir(directory)
    norm = Normaliser.fit(bank_emb=bank_emb, gallery_emb="g.npy", beta=10)
    norm.save("norm.zarr")
    return norm


def test_gallery_is_recorded_absolute_and_found_from_elsewhere(embeddings, tmp_path,
                                                              monkeypatch, cli_invoke):
    bank_emb, gallery, queries = embeddings
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "a" / "g.npy", gallery)
    np.save(tmp_path / "q.npy", queries)
    norm = fit_in(tmp_path / "a", bank_emb, monkeypatch)
    assert norm.gallery == str(tmp_path / "a" / "g.npy")
    want = norm.search(queries, 4, gallery, scheduler="synchronous")
    monkeypatch.chdir(tmp_path / "b")
    loaded = Normaliser.load(tmp_path / "a" / "norm.zarr")
    assert loaded.gallery == str(tmp_path / "a" / "g.npy")
    got = loaded.search(queries, 4, scheduler="synchronous")
    np.testing.assert_array_equal(got[1], want[1])
    cli_invoke("search", tmp_path / "a" / "norm.zarr", "--queries", tmp_path / "q.npy",
               "--topk", 4, "--hits", "h.npz", exit_code=0)
    assert (tmp_path / "b" / "h.npz").exists()


def test_relative_gallery_of_an_old_normaliser(embeddings, tmp_path, monkeypatch):
    """An older normaliser recorded "g.npy" as typed: looked for beside the
    normaliser first, then in the working directory."""
    import zarr

    bank_emb, gallery, queries = embeddings
    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "g.npy", gallery)
    norm = fit_in(tmp_path / "a", bank_emb, monkeypatch)
    group = zarr.open_group(str(tmp_path / "a" / "norm.zarr"), mode="r+")
    from qbscale.storage.durability import seal

    # a normaliser recording its gallery relative to where it was fitted (as older
    # ones did), sealed as written so
    group.attrs["qbscale_normaliser"] = seal.sealed({**group.attrs["qbscale_normaliser"],
                                                     "gallery": "g.npy"})
    want = norm.search(queries, 4, gallery, scheduler="synchronous")
    code = ("import numpy as np, qbscale; n = qbscale.Normaliser.load('a/norm.zarr'); "
            "print(n.gallery); print(n.search(np.load('q.npy'), 4)[1].tolist())")
    np.save(tmp_path / "q.npy", queries)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out == [str(tmp_path / "a" / "g.npy"), str(want[1].tolist())]
    (tmp_path / "elsewhere").mkdir()  # not beside the normaliser: the working directory
    np.save(tmp_path / "elsewhere" / "g.npy", gallery)
    os.remove(tmp_path / "a" / "g.npy")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert Normaliser.load(tmp_path / "a" / "norm.zarr").gallery == \
        str(tmp_path / "elsewhere" / "g.npy")


def test_missing_recorded_gallery_says_where_it_came_from(embeddings, tmp_path, monkeypatch,
                                                          cli_invoke):
    bank_emb, gallery, queries = embeddings
    np.save(tmp_path / "g.npy", gallery)
    np.save(tmp_path / "q.npy", queries)
    fit_in(tmp_path, bank_emb, monkeypatch)
    os.rename(tmp_path / "g.npy", tmp_path / "moved.npy")
    for command in (["search", "norm.zarr", "--queries", "q.npy", "--topk", 2, "--hits",
                     "h.npz"], ["index", "norm.zarr", "-o", "i.faiss"]):
        res = cli_invoke(*command, exit_code=1)
        assert res.output == (f"Error: gallery embeddings {tmp_path / 'g.npy'} recorded by "
                              "normaliser norm.zarr not found; pass --gallery-emb PATH\n")
    cli_invoke("search", "norm.zarr", "--queries", "q.npy", "--gallery-emb", "moved.npy",
               "--topk", 2, "--hits", "h.npz", exit_code=0)
    with pytest.raises(InputError, match=f"^gallery embeddings {tmp_path / 'g.npy'} recorded "
                                         "by normaliser norm.zarr not found; pass gallery="):
        Normaliser.load("norm.zarr").search(queries, 2)
    with pytest.raises(InputError, match=r"recorded by normaliser norm\.zarr not found"):
        search(Normaliser.load("norm.zarr"), queries, 2)


def test_store_gallery_is_recorded_absolute(embeddings, tmp_path, monkeypatch):
    bank_emb, gallery, queries = embeddings
    monkeypatch.chdir(tmp_path)
    qbscale.ingest_embeddings("exp.zarr", bank_emb, queries, gallery, progress=False,
                              ground_truth=False)
    norm = Normaliser.fit("exp.zarr", beta=10)
    assert norm.gallery == str(tmp_path / "exp.zarr" / "gallery_emb")
