"""The public fitted normaliser and normalise() against the dense oracle:
numpy, dask (random chunkings) and xarray inputs, every method."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qbscale
from qbscale.engine import methods
from qbscale.errors import ConfigError, InputError
from qbscale.retrieval.normaliser import Normaliser, normalise

from . import reference as ref
from .strategies import problems
from .test_methods import gallery_bank_for

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

#: per method: values of its swept parameter, and its other parameters
CASES = {
    "dis": ([1.0, 20.0], {}),
    "is": ([0.5, 20.0], {}),
    "csls": ([1.0, 3.0], {}),
    "nnn": ([0.0, 0.75], {"nnn_k": 3.0}),
    "dual-is": ([1.0, 20.0], {"gallery_beta": 5.0}),
}


def oracle(p, method, values, params, dynamic=False, gb=None) -> np.ndarray:
    """(n_values, rows, gallery) scores of the dense oracle."""
    return np.stack([ref.method_scores(p.test, p.bank, method, v, params, p.k, dynamic, gb)
                     for v in values])


def swept(method, values) -> dict:
    return {methods.get(method).variant.name: values}


def close(got, want) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)


def refuse(*args, **kwargs):
    raise AssertionError("dask computed while building a graph")


def case(p, method, data):
    """A method's values and parameters, and a gallery bank for dual-is:
    ``(values, params, gallery_bank or None, extra keyword arguments)``."""
    values, params = CASES[method]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    gb = gallery_bank_for(p, rng) if method == "dual-is" else None
    return values, params, gb, ({"gallery_bank": gb} if gb is not None else {})


@SETTINGS
@given(p=problems(), method=st.sampled_from(sorted(CASES)), dynamic=st.booleans(),
       data=st.data())
def test_normalise_numpy_equals_oracle(p, method, dynamic, data):
    values, params, gb, extra = case(p, method, data)
    got = normalise(p.test, p.bank, k=p.k, method=method, dynamic=dynamic,
                    **swept(method, values), **params, **extra)
    want = oracle(p, method, values, params, dynamic, gb)
    assert got.shape == want.shape and got.dtype == np.float64
    close(got, want)
    for b in range(len(values)):  # the oracle's orders of the gallery, so its ranks
        np.testing.assert_array_equal(ref.ranks(got[b], p.gt), ref.ranks(want[b], p.gt))
    one = normalise(p.test, p.bank, k=p.k, method=method, dynamic=dynamic,
                    **swept(method, values[-1:]), **params, **extra)
    assert one.shape == p.test.shape  # one value: 2-D
    close(one, want[-1])


@SETTINGS
@given(p=problems(), method=st.sampled_from(sorted(CASES)), dynamic=st.booleans(),
       data=st.data())
def test_dask_transform_equals_numpy_over_chunkings(p, method, dynamic, data):
    values, params, gb, extra = case(p, method, data)
    n_q, n_g = p.test.shape
    chunks = (data.draw(st.integers(1, n_q)), data.draw(st.integers(1, n_g)))
    bank_chunks = (data.draw(st.integers(1, len(p.bank))), data.draw(st.integers(1, n_g)))
    norm = Normaliser.fit(da.from_array(p.bank, chunks=bank_chunks), k=p.k, method=method,
                          dynamic=dynamic, scheduler="synchronous", **swept(method, values),
                          **params, **extra)
    with dask.config.set(scheduler=refuse):
        lazy = norm.transform(da.from_array(p.test, chunks=chunks))
    assert isinstance(lazy, da.Array) and lazy.shape == (len(values), n_q, n_g)
    got = lazy.compute(scheduler="synchronous")
    np.testing.assert_array_equal(got, norm.transform(p.test))  # bit for bit
    close(got, oracle(p, method, values, params, dynamic, gb))
    direct = normalise(da.from_array(p.test, chunks=chunks), p.bank, k=p.k, method=method,
                       dynamic=dynamic, **swept(method, values[:1]), **params, **extra)
    assert isinstance(direct, da.Array)
    close(direct.compute(scheduler="synchronous"),
          oracle(p, method, values[:1], params, dynamic, gb)[0])


def test_xarray_in_dataarray_out():
    rng = np.random.default_rng(1)
    bank, test = rng.random((40, 6)), rng.random((5, 6))
    sims = xr.DataArray(test, dims=("query", "item"),
                        coords={"query": [f"q{i}" for i in range(5)], "item": list("abcdef")},
                        name="sims")
    one = normalise(sims, bank, beta=20, method="is")
    assert one.dims == ("query", "item") and list(one["item"].values) == list("abcdef")
    close(one.values, ref.scores(test, bank, 20.0, method="is"))
    several = normalise(sims.chunk({"query": 2, "item": 4}), bank, beta=[10, 20])
    assert several.dims == ("beta", "query", "item") and isinstance(several.data, da.Array)
    assert list(several.beta.values) == [10.0, 20.0]
    assert list(several["query"].values) == list(sims["query"].values)
    close(several.sel(beta=10).values, ref.scores(test, bank, 10.0))
    nnn = normalise(sims, bank, method="nnn", alpha=[0.5, 1.0], nnn_k=4)
    assert nnn.dims == ("alpha", "query", "item")


def test_shifts_are_labelled():
    rng = np.random.default_rng(2)
    bank = rng.random((30, 5))
    norm = Normaliser.fit(bank, beta=[10, 20])
    assert norm.shifts.dims == ("beta", "gallery")
    assert list(norm.shifts.beta.values) == [10.0, 20.0]
    close(norm.shifts.sel(beta=20).values, ref.log_normaliser(bank, 20.0))
    np.testing.assert_array_equal(norm.activation, ref.activation_set(bank, 1))
    assert norm.n_gallery == 5 and norm.fingerprint["n_gallery"] == 5
    assert norm.fingerprint["bank_checksum"].startswith("sha256:")
    csls = Normaliser.fit(bank, method="csls", kc=[1, 3])
    assert csls.shifts.dims == ("kc", "gallery")
    assert isinstance(norm, qbscale.engine.statistics.GalleryStatistics)


def test_xarray_bank_and_fit_errors():
    rng = np.random.default_rng(3)
    bank = rng.random((30, 5))
    a = Normaliser.fit(xr.DataArray(bank, dims=("bank_query", "gallery")))
    close(a.shift, Normaliser.fit(bank).shift)
    with pytest.raises(ConfigError, match="nothing to fit"):
        Normaliser.fit(bank, method="none")
    with pytest.raises(ConfigError, match="bank_emb and gallery_emb"):
        Normaliser.fit(bank, bank_emb=bank)
    with pytest.raises(ConfigError, match="give a bank"):
        Normaliser.fit()
    bad = bank.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InputError, match="row 3, column 2"):
        Normaliser.fit(bad)
    with pytest.raises(InputError, match="non-finite"):
        Normaliser.fit(da.from_array(bad, chunks=(10, 5)), scheduler="synchronous")
    with pytest.raises(InputError, match="2-D"):
        Normaliser.fit(bank[0])
    from qbscale.config import RunConfig

    with pytest.raises(ConfigError, match="nothing to save"):
        Normaliser.baseline(RunConfig.make(method="none"), 5).save("unused.zarr")


def test_wrong_gallery_size_is_refused():
    rng = np.random.default_rng(4)
    norm = Normaliser.fit(rng.random((30, 5)))
    for sims in (rng.random((3, 6)), da.zeros((3, 6)), xr.DataArray(rng.random((3, 4)))):
        with pytest.raises(InputError, match=r"has \d gallery items, the normaliser was "
                                             r"fitted on 5"):
            norm.transform(sims)
    with pytest.raises(InputError, match="2-D"):
        norm.transform(rng.random(5))


def test_building_the_transform_graph_computes_nothing():
    rng = np.random.default_rng(5)
    norm = Normaliser.fit(rng.random((30, 8)), beta=[5, 20], k=2)

    def explode(block):  # pragma: no cover - must never run
        raise AssertionError("read a block")

    sims = da.zeros((12, 8), chunks=(5, 3)).map_blocks(explode, dtype=float)
    with dask.config.set(scheduler=refuse):
        out = norm.transform(sims)
        labelled = norm.transform(xr.DataArray(sims, dims=("query", "gallery")))
    assert out.shape == (2, 12, 8) and labelled.shape == (2, 12, 8)


def test_dynamic_rows_use_the_whole_row_argmax():
    """A row whose top-1 lies in another column block than the activated item."""
    bank = np.array([[0.0, 0.0, 0.0, 1.0]] * 3)  # activation set: item 3
    test = np.array([[0.5, 0.9, 0.0, 0.95],   # top-1 item 3: normalised
                     [0.5, 0.99, 0.0, 0.95]])  # top-1 item 1: raw
    norm = Normaliser.fit(bank, beta=2.0)
    want = norm.transform(test)
    np.testing.assert_array_equal(want[1], test[1])
    assert not np.array_equal(want[0], test[0])
    got = norm.transform(da.from_array(test, chunks=(1, 2))).compute(scheduler="synchronous")
    np.testing.assert_array_equal(got, want)


def test_search_and_to_faiss_delegate_to_qbscale_search(monkeypatch):
    import sys
    import types

    calls = []
    fake = types.ModuleType("qbscale.retrieval.search")
    fake.search = lambda *args, **kw: calls.append(("search", args, kw)) or "found"
    fake.to_faiss = lambda *args: calls.append(("to_faiss", args, {})) or "index"
    monkeypatch.setitem(sys.modules, "qbscale.retrieval.search", fake)
    rng = np.random.default_rng(6)
    bank_emb, gallery_emb = rng.random((20, 4)), rng.random((6, 4))
    norm = Normaliser.fit(bank_emb=bank_emb, gallery_emb=gallery_emb)
    assert norm.gallery is gallery_emb
    queries, other = rng.random((3, 4)), rng.random((6, 4))
    assert norm.search(queries, 2, block_rows=7) == "found"
    assert norm.search(queries, 2, other) == "found"
    assert norm.to_faiss(gallery_emb, "HNSW32") == "index"
    (_, a, kw), (_, b, _), (_, c, _) = calls
    assert a[0] is norm and a[1] is queries and a[2] == 2 and a[3] is gallery_emb
    assert kw == {"block_rows": 7} and b[3] is other
    assert c == (norm, gallery_emb, "HNSW32")
