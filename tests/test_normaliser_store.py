"""Fitted normalisers from stores and embeddings, on disk, and through the CLI."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

import qbscale
import qbscale.storage.durability.integrity
from qbscale.errors import (
    ConfigError,
    DamagedStoreError,
    IncompleteStoreError,
    InputError,
    StoreExistsError,
    StoreNotFoundError,
)
from qbscale.retrieval.normaliser import Normaliser
from qbscale.storage.outputs.normaliser_store import ATTR
from qbscale.storage.stores.store import open_experiment

from . import reference as ref
from .test_read_once import ChunkFetches, chunk_keys
from .test_resume import FailingMatrix, manifests


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    bank = rng.standard_normal((90, 24)).astype(np.float32)
    test = rng.standard_normal((48, 24)).astype(np.float32)
    return bank, test


@pytest.fixture(scope="module")
def store(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("norm") / "exp.zarr"
    bank, test = data
    return qbscale.ingest(out, bank, test, chunk_rows=16, chunk_cols=10, progress=False)


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    rng = np.random.default_rng(12)
    bank_emb = rng.standard_normal((70, 8)).astype(np.float32)
    test_emb = rng.standard_normal((30, 8)).astype(np.float32)
    gallery_emb = rng.standard_normal((30, 8)).astype(np.float32)
    out = tmp_path_factory.mktemp("emb") / "emb.zarr"
    qbscale.ingest_embeddings(out, bank_emb, test_emb, gallery_emb, chunk_rows=16,
                              progress=False)
    return bank_emb, test_emb, gallery_emb, str(out)


def close(got, want, rtol=1e-12):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-9)


@pytest.mark.parametrize(("method", "options"), [
    ("dis", {"beta": [10, 20]}), ("csls", {"kc": [1, 5]}), ("nnn", {"alpha": [0.5, 1.0],
                                                                    "nnn_k": 7})])
def test_fit_from_store_equals_fit_from_array(data, store, method, options):
    bank, _ = data
    a = Normaliser.fit(bank, method=method, k=2, **options)
    s = Normaliser.fit(store, method=method, k=2, **options)
    close(s.shift, a.shift)
    np.testing.assert_array_equal(s.activation, a.activation)
    assert s.config == a.config and s.fingerprint["n_gallery"] == 24
    assert s.fingerprint["bank_checksum"] is None  # ingested from an in-memory array
    if method == "dis":
        close(a.shifts.sel(beta=20).values, ref.log_normaliser(bank, 20.0))
    opened = Normaliser.fit(open_experiment(store), method=method, k=2, **options)
    np.testing.assert_array_equal(opened.shift, s.shift)


def test_fit_from_store_reads_only_the_bank_once(store, monkeypatch):
    fetches = ChunkFetches()
    monkeypatch.setattr(zarr.storage.LocalStore, "get", fetches.wrap(zarr.storage.LocalStore.get))
    monkeypatch.setattr(qbscale.storage.durability.integrity, "read_chunk",
                        fetches.wrap_chunk(qbscale.storage.durability.integrity.read_chunk))
    Normaliser.fit(store, beta=[10, 20], scheduler="threads", num_workers=3)
    assert fetches.of("bank") == Counter(dict.fromkeys(chunk_keys(store, "bank"), 1))
    assert not fetches.of("test")


def test_fit_from_embeddings_equals_store_and_array(embeddings):
    bank_emb, _, gallery_emb, url = embeddings
    sims = bank_emb @ gallery_emb.T
    e = Normaliser.fit(bank_emb=bank_emb, gallery_emb=gallery_emb, beta=[5, 10], k=2)
    s = Normaliser.fit(url, beta=[5, 10], k=2)
    a = Normaliser.fit(sims, beta=[5, 10], k=2)
    close(e.shift, a.shift, rtol=1e-6)  # float32 products, blocked differently
    lazy = Normaliser.fit(bank_emb=da.from_array(bank_emb, chunks=(20, 8)),
                          gallery_emb=da.from_array(gallery_emb, chunks=(7, 8)), beta=[5, 10],
                          k=2, scheduler="synchronous")
    np.testing.assert_array_equal(lazy.shift, e.shift)
    assert lazy.fingerprint["gallery_sha256"] == e.fingerprint["gallery_sha256"]
    close(s.shift, e.shift, rtol=1e-6)
    np.testing.assert_array_equal(e.activation, a.activation)
    assert e.fingerprint["gallery_sha256"] == s.fingerprint["gallery_sha256"]
    assert e.gallery is gallery_emb and s.gallery == f"{url}/gallery_emb"
    e.check_gallery_emb(gallery_emb.astype(np.float64))  # same values: accepted
    other = gallery_emb.copy()
    other[0, 0] += 1
    with pytest.raises(InputError, match="another gallery"):
        e.check_gallery_emb(other)
    with pytest.raises(InputError, match="has 29 gallery items, the normaliser was fitted "
                                         "on 30"):
        e.check_gallery_emb(gallery_emb[:29])
    with pytest.raises(InputError, match="dimension 8, gallery_emb has 7"):
        Normaliser.fit(bank_emb=bank_emb, gallery_emb=gallery_emb[:, :7])


def test_fit_from_embedding_files(embeddings, tmp_path):
    bank_emb, _, gallery_emb, url = embeddings
    np.save(tmp_path / "g.npy", gallery_emb)
    f = Normaliser.fit(bank_emb=bank_emb, gallery_emb=tmp_path / "g.npy")
    z = Normaliser.fit(bank_emb=bank_emb, gallery_emb=f"{url}/gallery_emb")
    np.testing.assert_array_equal(f.shift, z.shift)
    assert f.gallery == str(tmp_path / "g.npy")
    assert f.fingerprint["gallery_sha256"] == z.fingerprint["gallery_sha256"]
    saved = Normaliser.load(f.save(tmp_path / "n.zarr"))
    assert saved.gallery == str(tmp_path / "g.npy")
    with pytest.raises(InputError, match=r"neither a \.npy file nor a Zarr array"):
        Normaliser.fit(bank_emb=bank_emb, gallery_emb=tmp_path / "missing")


@pytest.mark.parametrize(("method", "options"), [
    ("dis", {"beta": [10, 20], "k": 2}), ("is", {"beta": 20}),
    ("nnn", {"alpha": [0.5, 1.0], "nnn_k": 7, "dynamic": True})])
def test_run_with_a_fitted_normaliser_equals_run(store, tmp_path, method, options):
    fitted = Normaliser.fit(store, method=method, **options)
    loaded = Normaliser.load(fitted.save(tmp_path / "n.zarr"))
    want = qbscale.run(store, method=method, **options)
    for norm in (fitted, loaded):
        got = qbscale.run(store, method=method, normaliser=norm, **options)
        assert got.after == want.after and got.before == want.before
        for value in want.ranks:
            np.testing.assert_array_equal(got.ranks[value], want.ranks[value])
        np.testing.assert_array_equal(got.normalised, want.normalised)
    with pytest.raises(ConfigError, match="the normaliser was fitted with"):
        qbscale.run(store, method=method, normaliser=fitted, k=3,
                    **{k: v for k, v in options.items() if k != "k"})


def test_save_load_round_trip_bit_for_bit(data, tmp_path):
    bank, _ = data
    norm = Normaliser.fit(bank, beta=[10, 20.5], k=3, method="dis")
    path = norm.save(tmp_path / "n.zarr")
    back = Normaliser.load(path)
    assert back.shift.tobytes() == norm.shift.tobytes()
    np.testing.assert_array_equal(back.activation, norm.activation)
    assert back.config == norm.config and back.fingerprint == norm.fingerprint
    assert back.gallery is None
    ds = xr.open_zarr(path)
    assert ds["shift"].dims == ("beta", "gallery") and list(ds.beta.values) == [10.0, 20.5]
    assert ds["activation"].dims == ("gallery",)
    attrs = zarr.open_group(path, mode="r").attrs[ATTR]
    assert attrs["method"] == "dis" and attrs["values"] == [10.0, 20.5] and attrs["k"] == 3
    assert attrs["version"] == qbscale.__version__ and attrs["complete"] is True
    assert attrs["bank_checksum"] == norm.fingerprint["bank_checksum"]
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]
    with pytest.raises(StoreExistsError):
        norm.save(path)
    norm.save(path, overwrite=True)


def test_damaged_and_foreign_groups_are_refused(data, store, tmp_path):
    bank, _ = data
    path = Normaliser.fit(bank).save(tmp_path / "n.zarr")
    with pytest.raises(StoreNotFoundError, match="no normaliser at"):
        Normaliser.load(tmp_path / "nowhere.zarr")
    with pytest.raises(InputError, match="experiment store, not a normaliser"):
        Normaliser.load(store)
    zarr.create_group(str(tmp_path / "foreign.zarr"))
    with pytest.raises(InputError, match="not a qbscale normaliser"):
        Normaliser.load(tmp_path / "foreign.zarr")
    broken = shutil.copytree(path, tmp_path / "broken.zarr")
    shutil.rmtree(broken / "shift")
    with pytest.raises(InputError, match="damaged: its 'shift' array"):
        Normaliser.load(broken)
    truncated = shutil.copytree(path, tmp_path / "truncated.zarr")
    chunk = truncated / "shift" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:5])
    with pytest.raises(DamagedStoreError, match=f"store {truncated}: chunk shift/c/0/0 is "
                                                r"damaged \(5 bytes"):
        Normaliser.load(truncated)
    partial = shutil.copytree(path, tmp_path / "partial.zarr")
    group = zarr.open_group(partial, mode="r+")
    group.attrs[ATTR] = {**group.attrs[ATTR], "complete": False}
    with pytest.raises(IncompleteStoreError):
        Normaliser.load(partial)
    group.attrs[ATTR] = {**group.attrs[ATTR], "complete": True, "method": "bogus"}
    with pytest.raises(InputError, match="invalid settings"):
        Normaliser.load(partial)


def test_normaliser_of_another_gallery_is_refused(data, store, tmp_path, cli_invoke):
    bank, _ = data
    norm = Normaliser.fit(bank[:, :20])
    with pytest.raises(InputError, match="24 gallery items, the normaliser was fitted on 20"):
        qbscale.run(store, normaliser=norm)
    path = norm.save(tmp_path / "n20.zarr")
    res = cli_invoke("run", store, "--normaliser", path, "-q", exit_code=1)
    assert "24 gallery items, the normaliser was fitted on 20" in res.output


def test_cli_run_refuses_another_embeddings_gallery(embeddings, tmp_path, cli_invoke):
    bank_emb, _, gallery_emb, url = embeddings
    other = gallery_emb.copy()
    other[3] *= 2
    norm = Normaliser.fit(bank_emb=bank_emb, gallery_emb=other)
    path = norm.save(tmp_path / "other.zarr")
    res = cli_invoke("run", url, "--normaliser", path, "-q", exit_code=1)
    assert "another gallery" in res.output
    same = Normaliser.fit(bank_emb=bank_emb, gallery_emb=gallery_emb).save(tmp_path / "s.zarr")
    cli_invoke("run", url, "--normaliser", same, "-q")


def test_dual_is_from_a_store_with_its_gallery_bank(data, tmp_path):
    from qbscale.storage.stores.gallery_bank import add_gallery_bank

    bank, test = data
    gb = np.random.default_rng(13).standard_normal((15, 24)).astype(np.float32)
    store = qbscale.ingest(tmp_path / "gb.zarr", bank, test, chunk_rows=16, progress=False)
    add_gallery_bank(store, gb, progress=False)
    s = Normaliser.fit(store, method="dual-is", beta=[5, 20], gallery_beta=3)
    a = Normaliser.fit(bank, method="dual-is", beta=[5, 20], gallery_beta=3, gallery_bank=gb)
    close(s.shift, a.shift)
    close(a.shift[1], ref.log_normaliser(bank, 20.0) + ref.log_normaliser(gb, 3.0))
    with pytest.raises(ConfigError, match="needs a gallery bank"):
        Normaliser.fit(bank, method="dual-is")


def test_cli_fit_then_run_with_normaliser(store, tmp_path, cli_invoke):
    out, summary = tmp_path / "n.zarr", tmp_path / "fit.json"
    res = cli_invoke("fit", store, "-o", out, "--beta", "10,20", "--k", "2", "--json", summary,
                     "-q")
    assert f"Wrote {out}" in res.output and "beta=10,20 k=2" in res.output
    norm = Normaliser.load(out)
    want = Normaliser.fit(store, beta=[10, 20], k=2)
    assert norm.shift.tobytes() == want.shift.tobytes()
    info = json.loads(summary.read_text())
    assert (info["kind"], info["qbscale_version"]) == ("fit", qbscale.__version__)
    assert info["values"] == [10.0, 20.0] and info["n_gallery"] == 24
    assert info["activation_size"] == int(want.activation.sum())

    def metrics(*args):
        path = tmp_path / "m.json"
        cli_invoke("run", store, *args, "--json", path, "-q")
        return json.loads(path.read_text())

    fitted = metrics("--normaliser", str(out))
    plain = metrics("--beta", "10,20", "--k", "2")
    assert fitted["after"] == plain["after"] and fitted["before"] == plain["before"]
    assert fitted["normalised_share"] == plain["normalised_share"]
    assert metrics("--normaliser", str(out), "--k", "2")["after"] == plain["after"]
    res = cli_invoke("run", store, "--normaliser", out, "--beta", "30", "-q", exit_code=1)
    assert "the normaliser was fitted with" in res.output


def test_cli_fit_other_methods_and_errors(store, tmp_path, cli_invoke):
    out = tmp_path / "nnn.zarr"
    cli_invoke("fit", store, "-o", out, "--method", "nnn", "--alpha", "0.5,1", "--nnn-k", "7",
               "-q")
    norm = Normaliser.load(out)
    assert norm.config.method == "nnn" and norm.values == (0.5, 1.0)
    assert norm.config.param_dict == {"nnn_k": 7.0}
    res = cli_invoke("run", store, "--normaliser", out, "-q")
    assert "alpha" in res.output
    res = cli_invoke("fit", store, "-o", out, "-q", exit_code=1)
    assert "exists" in res.output
    res = cli_invoke("fit", tmp_path / "nowhere.zarr", "-o", tmp_path / "x.zarr", "-q",
                     exit_code=1)
    assert "no qbscale store" in res.output
    assert not (tmp_path / "x.zarr").exists()


def test_save_and_load_on_s3(data):
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    from .cluster_fixtures import moto_s3

    bank, _ = data
    norm = Normaliser.fit(bank, method="csls", kc=[1, 4])
    with moto_s3("qbscale-norm"):
        url = norm.save("s3://qbscale-norm/norm.zarr")
        back = Normaliser.load(url)
        assert back.shift.tobytes() == norm.shift.tobytes() and back.config == norm.config
        with pytest.raises(StoreExistsError):
            norm.save(url)
        with pytest.raises(StoreNotFoundError):
            Normaliser.load("s3://qbscale-norm/nowhere.zarr")


# ---------------------------------------------------------------- bank samples


def test_a_sampled_normaliser_keeps_its_sample_through_save_and_load(data, store, tmp_path):
    bank, _ = data
    fitted = Normaliser.fit(store, k=2, bank_sample=30, seed=4)
    loaded = Normaliser.load(fitted.save(tmp_path / "n.zarr"))
    assert (loaded.config.bank_sample, loaded.config.seed) == (30, 4)
    assert loaded.config == fitted.config
    rows = np.random.default_rng(4).permutation(90)[:30]
    close(loaded.shift[0], ref.log_normaliser(bank[rows], 20.0))
    np.testing.assert_array_equal(loaded.activation, ref.activation_set(bank[rows], 2))
    want = qbscale.run(store, k=2, bank_sample=30, seed=4)
    np.testing.assert_array_equal(want.shift, loaded.shift)
    for norm in (fitted, loaded):
        got = qbscale.run(store, k=2, bank_sample=30, seed=4, normaliser=norm)
        assert got.after == want.after and got.before == want.before
        np.testing.assert_array_equal(got.normalised, want.normalised)
    with pytest.raises(ConfigError, match=r"bank_sample=30 seed=4; this run asks for .* k=2$"):
        qbscale.run(store, k=2, normaliser=loaded)
    # from an array: the same rows, a fraction kept as its count (0.25 * 90 = 22.5 -> 23)
    arr = Normaliser.fit(bank, bank_sample=0.25, seed=4)
    assert (arr.config.bank_sample, arr.config.seed) == (23, 4)
    close(arr.shift[0], ref.log_normaliser(bank[np.random.default_rng(4).permutation(90)[:23]],
                                           20.0))
    assert Normaliser.fit(bank, bank_sample="all", seed=4).config.bank_sample is None


def test_a_fraction_and_its_count_are_one_setting(store, tmp_path):
    plan = qbscale.api.plan(store, bank_sample=0.25, seed=3)
    assert (plan.config.bank_sample, plan.config.seed) == (23, 3)
    assert qbscale.api.plan(store, bank_sample=1.0, seed=3).config.bank_sample is None
    norm = Normaliser.fit(store, bank_sample=0.25, seed=3)
    assert norm.config.bank_sample == 23
    want = qbscale.run(store, bank_sample=23, seed=3)
    for spec in (23, 0.25, 0.2556):  # 0.2556 * 90 = 23.004 -> 23
        assert qbscale.run(store, bank_sample=spec, seed=3, normaliser=norm).after == want.after
    with pytest.raises(ConfigError, match=r"bank_sample=23 seed=3; this run asks for "
                                          r"method=dis beta=\[20.0\] k=1 bank_sample=24 seed=3"):
        qbscale.run(store, bank_sample=24, seed=3, normaliser=norm)
    # --resume: an interrupted run of 0.25 is resumed by the run of 23 rows, not of 24
    copy = str(shutil.copytree(store, tmp_path / "copy.zarr"))
    experiment = open_experiment(copy)
    experiment.test = FailingMatrix(experiment.test, ok=6)
    with pytest.raises(RuntimeError, match="cannot read block"):
        qbscale.run(experiment, bank_sample=0.25, seed=3, save_ranks=True,
                    scheduler="synchronous", resume=True)
    [manifest] = manifests(copy)
    done = int(zarr.open_array(str(manifest / "done"), mode="r")[...].sum())
    with pytest.raises(ConfigError, match=r"bank_sample=23 \(now 24\)"):
        qbscale.run(copy, bank_sample=24, seed=3, save_ranks=True, resume=True)
    again = qbscale.run(copy, bank_sample=23, seed=3, save_ranks=True, resume=True)
    assert 0 < done == again.extra["resume"]["reused"] and again.after == want.after


def test_cli_fit_a_sample_then_run_with_it(data, store, tmp_path, cli_invoke):
    out, summary = tmp_path / "n.zarr", tmp_path / "fit.json"
    res = cli_invoke("fit", store, "-o", out, "--bank-sample", "0.25", "--seed", "3",
                     "--json", summary, "-q")
    assert "bank_sample=23 seed=3" in res.output
    info = json.loads(summary.read_text())
    assert (info["bank_sample"], info["seed"]) == (23, 3)
    norm = Normaliser.load(out)
    assert (norm.config.bank_sample, norm.config.seed) == (23, 3)
    want = Normaliser.fit(store, bank_sample=23, seed=3)
    assert norm.shift.tobytes() == want.shift.tobytes()

    def metrics(*args):
        path = tmp_path / "m.json"
        cli_invoke("run", store, *args, "--json", path, "-q")
        return json.loads(path.read_text())

    plain = metrics("--bank-sample", "23", "--seed", "3")
    assert (plain["bank_sample"], plain["seed"]) == (23, 3)
    for given in ((), ("--bank-sample", "23"), ("--bank-sample", "0.25", "--seed", "3")):
        got = metrics("--normaliser", str(out), *given)
        assert got["after"] == plain["after"] and got["before"] == plain["before"]
        assert (got["bank_sample"], got["seed"]) == (23, 3)
    res = cli_invoke("run", store, "--normaliser", out, "--bank-sample", "24", "-q",
                     exit_code=1)
    assert "bank_sample=23 seed=3; this run asks for" in res.output
    assert "bank_sample=24 seed=3" in res.output
    res = cli_invoke("run", store, "--normaliser", out, "--bank-sample", "all", "-q",
                     exit_code=1)
    assert "bank_sample=23 seed=3; this run asks for method=dis beta=[20.0] k=1\n" in res.output
