"""ingest() / ingest_embeddings(): store contents, layout, validation, atomic output."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

import qbscale
from qbscale.errors import ConfigError, IncompleteStoreError, InputError, StoreExistsError
from qbscale.storage import layout
from qbscale.storage.stores.ingest import CODECS, chunk_shape, ingest, ingest_embeddings
from qbscale.storage.stores.store import open_experiment

from ._ingest_fixtures import MAKE_PICKLES, PYCODE, sims, write_npz, write_pickle


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(5)


@pytest.fixture()
def pair(rng):
    """A querybank (60 x 20) and a test matrix (40 x 20, 2 queries per item)."""
    return sims(rng, 60, 20), sims(rng, 40, 20)


def attrs_of(out) -> dict:
    return dict(zarr.open_group(str(out), mode="r").attrs[layout.ATTR])


def stored(out, name: str) -> np.ndarray:
    return zarr.open_group(str(out), mode="r")[name][...]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".partial-" in p.name or ".old-" in p.name)


# --- contents --------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["pickle", "legacy", "npy", "npz", "npz-deflated", "array"])
def test_store_holds_the_inputs_bit_for_bit(tmp_path, pair, fmt):
    bank, test = pair
    paths = []
    for role, arr in (("bank", bank), ("test", test)):
        if fmt in ("pickle", "legacy"):
            paths.append(write_pickle(arr, tmp_path / f"{role}.pkl", legacy=fmt == "legacy"))
        elif fmt == "npy":
            np.save(tmp_path / f"{role}.npy", arr)
            paths.append(tmp_path / f"{role}.npy")
        elif fmt.startswith("npz"):
            paths.append(write_npz(tmp_path / f"{role}.npz", fmt.endswith("deflated"), s=arr))
        else:
            paths.append(arr)
    out = ingest(tmp_path / "exp.zarr", *paths, chunk_rows=7, progress=False)
    assert out == str(tmp_path / "exp.zarr")
    assert same_bits(stored(out, "bank"), bank) and same_bits(stored(out, "test"), test)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("legacy", [False, True])
def test_pycode_pickles_bit_for_bit(tmp_path, legacy):
    bank, test = tmp_path / "sims_train_test.pkl", tmp_path / "sims_test.pkl"
    if MAKE_PICKLES.exists():  # the benchmark's own pickle writer
        cmd = [sys.executable, str(MAKE_PICKLES), str(PYCODE), str(tmp_path)]
        subprocess.run(cmd + (["--legacy"] if legacy else []), check=True)
    else:
        gallery = np.load(PYCODE / "gallery_test.npy").astype(np.float32)
        for path, name in ((bank, "querybank.npy"), (test, "queries_test.npy")):
            sims = np.load(PYCODE / name).astype(np.float32) @ gallery.T
            write_pickle(np.ascontiguousarray(sims), path, legacy=legacy)
    assert (b"numpy.core.multiarray" in bank.read_bytes()[:200]) == legacy
    out = ingest(tmp_path / "pycode.zarr", bank, test, progress=False)
    for name, path in (("bank", bank), ("test", test)):
        with open(path, "rb") as f:
            want = pickle.load(f)  # trusted file: the plain unpickler as reference
        assert same_bits(stored(out, name), want)
    info = attrs_of(out)
    assert info["queries_per_item"] == 1
    assert info["sources"]["bank"]["shape"] == [7951, 4000]
    assert info["sources"]["bank"]["sha256"] == hashlib.sha256(bank.read_bytes()).hexdigest()


@pytest.mark.parametrize("dtype", ["float16", "float64", ">f4"])
def test_dtype_kept_or_converted(tmp_path, pair, dtype):
    bank, test = (a.astype(dtype) for a in pair)
    out = ingest(tmp_path / "a.zarr", bank, test, progress=False)
    want = np.dtype(dtype).newbyteorder("=")
    assert stored(out, "bank").dtype == want
    np.testing.assert_array_equal(stored(out, "bank"), bank)
    out = ingest(tmp_path / "b.zarr", bank, test, dtype="float32", progress=False)
    assert same_bits(stored(out, "test"), test.astype(np.float32))


def test_xarray_sees_named_dims_and_attrs(tmp_path, pair):
    bank, test = pair
    mask = np.ones((20, 2), bool)
    out = ingest(tmp_path / "exp.zarr", bank, test, mask, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(out)
    assert ds["bank"].dims == ("bank_query", "gallery")
    assert ds["test"].dims == ("query", "gallery")
    assert ds["query_mask"].dims == ("query",) and ds["query_mask"].dtype == bool
    assert dict(ds.sizes) == {"bank_query": 60, "gallery": 20, "query": 40}
    info = ds.attrs[layout.ATTR]
    assert info["version"] == qbscale.__version__ and info["kind"] == "sims"
    assert info["complete"] is True and info["codec"] == "none"
    assert info["queries_per_item"] == 2
    assert info["chunking"]["bank"] == [60, 20]
    assert set(info["sources"]) == {"bank", "test", "masks"}
    assert info["sources"]["bank"] == {"file": None, "sha256": None, "dtype": "float32",
                                       "shape": [60, 20]}
    zarr_json = json.loads((tmp_path / "exp.zarr" / "zarr.json").read_text())
    assert "consolidated_metadata" in zarr_json


def test_engine_reader_opens_the_store(tmp_path, pair):
    bank, test = pair
    mask = np.arange(40) % 3 != 0
    out = ingest(tmp_path / "exp.zarr", bank, test, mask.astype(np.float32), progress=False)
    exp = open_experiment(out)
    assert exp.bank.shape == (60, 20) and exp.test.shape == (40, 20)
    np.testing.assert_array_equal(exp.gt, np.arange(40) // 2)
    np.testing.assert_array_equal(exp.mask, mask)


@pytest.mark.parametrize("codec", CODECS)
def test_codecs_round_trip(tmp_path, pair, codec):
    bank, test = pair
    out = ingest(tmp_path / "c.zarr", bank, test, codec=codec, progress=False)
    assert same_bits(stored(out, "bank"), bank)
    meta = json.loads((tmp_path / "c.zarr" / "bank" / "zarr.json").read_text())
    names = [c["name"] for c in meta["codecs"]]
    assert names == {"none": ["bytes"], "lz4": ["bytes", "blosc"],
                     "zstd": ["bytes", "zstd"]}[codec] + ["crc32c"]  # checksums come last
    assert attrs_of(out)["codec"] == codec


# --- chunking --------------------------------------------------------------------------------

def test_chunk_shape_arithmetic():
    assert chunk_shape(7951, 4000, 4) == (3976, 4000)  # 2 chunks of at most 4194 rows
    assert chunk_shape(100, 10, 4) == (100, 10)  # small: one chunk
    assert chunk_shape(100, 10, 4, chunk_bytes=400) == (10, 10)
    assert chunk_shape(101, 10, 4, chunk_bytes=400) == (10, 10)  # 11 chunks either way
    assert chunk_shape(100, 10, 4, chunk_bytes=39) == (1, 5)  # one row exceeds: cut columns
    assert chunk_shape(100, 10, 4, chunk_bytes=40 * 34) == (34, 10)  # 3 chunks of <= 34
    assert chunk_shape(10, 2**25, 4) == (1, 2**24)
    assert chunk_shape(100, 10, 4, rows=7) == (7, 10)
    assert chunk_shape(100, 10, 4, cols=4, chunk_bytes=160) == (10, 4)
    assert chunk_shape(100, 10, 4, rows=500, cols=500) == (100, 10)
    with pytest.raises(ConfigError, match="chunk rows must be at least 1, got 0"):
        chunk_shape(100, 10, 4, rows=0)


def test_chunks_in_store_follow_bytes_rows_and_cols(tmp_path, rng):
    bank, test = sims(rng, 50, 16), sims(rng, 16, 16)
    out = ingest(tmp_path / "a.zarr", bank, test, chunk_bytes=16 * 4 * 8, progress=False)
    group = zarr.open_group(out, mode="r")
    assert group["bank"].chunks == (8, 16) and group["test"].chunks == (8, 16)
    out = ingest(tmp_path / "b.zarr", bank, test, chunk_bytes=4 * 6, progress=False)
    group = zarr.open_group(out, mode="r")
    assert group["bank"].chunks == (1, 6) and group["test"].chunks == (1, 6)
    assert same_bits(group["bank"][...], bank)
    out = ingest(tmp_path / "c.zarr", bank.astype(np.float64), test, chunk_rows=9, chunk_cols=5,
                 progress=False)
    group = zarr.open_group(out, mode="r")
    assert group["bank"].chunks == (9, 5) and group["test"].chunks == (9, 5)
    assert attrs_of(out)["chunking"]["test"] == [9, 5]
    out = ingest(tmp_path / "d.zarr", bank, test, chunk_bytes=16 * 4 * 40, progress=False)
    group = zarr.open_group(out, mode="r")
    assert group["bank"].chunks == (25, 16) and group["test"].chunks == (16, 16)


# --- ground truth and masks -----------------------------------------------------------------

def test_queries_per_item_default_explicit_and_gt_index(tmp_path, rng):
    bank = sims(rng, 30, 50)
    ten = sims(rng, 10, 50)
    with pytest.raises(InputError, match=r"--queries-per-item.*--gt-index") as info:
        ingest(tmp_path / "a.zarr", bank, ten, progress=False, ground_truth=True)
    assert "10 queries" in str(info.value) and "50 gallery items" in str(info.value)
    assert not (tmp_path / "a.zarr").exists()
    out = ingest(tmp_path / "none.zarr", bank, ten, progress=False)  # by default: none
    assert attrs_of(out)["ground_truth"] is False and open_experiment(out).gt is None
    out = ingest(tmp_path / "a.zarr", bank, ten, queries_per_item=1, progress=False)
    assert attrs_of(out)["queries_per_item"] == 1
    out = ingest(tmp_path / "b.zarr", bank, sims(rng, 100, 50), progress=False)
    assert attrs_of(out)["queries_per_item"] == 2
    for bad in (3, 0, 1000):
        with pytest.raises(InputError, match=f"queries_per_item={bad} does not fit 10"):
            ingest(tmp_path / "c.zarr", bank, ten, queries_per_item=bad, progress=False)
    gt = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 49], dtype=np.int32)
    np.save(tmp_path / "gt.npy", gt)
    out = ingest(tmp_path / "d.zarr", bank, ten, gt_index=tmp_path / "gt.npy", progress=False)
    assert attrs_of(out)["queries_per_item"] is None
    assert same_bits(stored(out, "gt_index"), gt.astype(np.int64))
    np.testing.assert_array_equal(open_experiment(out).gt, gt)
    assert attrs_of(out)["sources"]["gt_index"]["file"] == "gt.npy"


@pytest.mark.parametrize(("gt", "message"), [
    (np.arange(9), r"^gt_index has shape \(9,\); expected 10 entries"),
    (np.arange(10) * 6, r"^gt_index: entry 9 is 54, outside the gallery \[0, 50\) "
                        r"\(1 of 10 entries are\)"),
    (np.arange(10) - 1, r"entry 0 is -1, outside"),
    (np.arange(10.0), "holds float64 values; expected integers"),
])
def test_bad_gt_index(tmp_path, rng, gt, message):
    with pytest.raises(InputError, match=message):
        ingest(tmp_path / "a.zarr", sims(rng, 5, 50), sims(rng, 10, 50), gt_index=gt,
               progress=False)
    with pytest.raises(ConfigError, match="not both"):
        ingest(tmp_path / "a.zarr", sims(rng, 5, 50), sims(rng, 10, 50), gt_index=gt,
               queries_per_item=1, progress=False)


@pytest.mark.parametrize("mask", [
    np.ones((20, 2), bool), np.ones(40, np.int64), np.ones((20, 2), np.float32)])
def test_mask_shapes_and_types(tmp_path, pair, mask):
    mask = mask.copy()
    mask.flat[[3, 17]] = 0
    np.save(tmp_path / "m.npy", mask)
    out = ingest(tmp_path / "a.zarr", *pair, tmp_path / "m.npy", progress=False)
    got = stored(out, "query_mask")
    assert got.dtype == bool and got.shape == (40,)
    np.testing.assert_array_equal(np.flatnonzero(~got), [3, 17])


@pytest.mark.parametrize(("mask", "message"), [
    (np.ones(39), r"^query mask has shape \(39,\); expected \(20, 2\) or \(40,\)"),
    (np.ones((2, 20)), r"has shape \(2, 20\); expected \(20, 2\)"),
    (np.full((20, 2), 0.5), r"holds 40 values other than 0/1; the first is 0\.5 at \(0, 0\)"),
    (np.array([0, 1, 2, 1] * 10), r"holds 10 values other than 0/1; the first is 2 at \(2,\)"),
    (np.array([1.0, np.nan] * 20), "holds 20 values other than 0/1; the first is nan"),
])
def test_bad_masks(tmp_path, pair, mask, message):
    with pytest.raises(InputError, match=message):
        ingest(tmp_path / "a.zarr", *pair, mask, progress=False)
    assert not (tmp_path / "a.zarr").exists() and leftovers(tmp_path) == []


def test_arrays_in_memory_get_the_same_checks(pair):
    """``in_memory`` runs the checks ingest runs, with the same messages."""
    from qbscale.storage.stores.store import in_memory

    bank, test = pair
    with pytest.raises(InputError, match=r"^query mask holds 10 values other than 0/1; "
                                         r"the first is 2 at \(2,\)"):
        in_memory(bank, test, mask=np.array([0, 1, 2, 1] * 10))
    with pytest.raises(InputError, match=r"^gt_index: entry 3 is 99, outside the gallery"):
        in_memory(bank, test, gt_index=np.array([0, 1, 2, 99] * 10))
    with pytest.raises(InputError, match=r"^gt_index holds float64 values; expected integers"):
        in_memory(bank, test, gt_index=np.zeros(40))
    with pytest.raises(ConfigError, match="not both"):
        in_memory(bank, test, queries_per_item=2, gt_index=np.zeros(40, int))


# --- bad matrices ---------------------------------------------------------------------------

@pytest.mark.parametrize(("bank", "test", "message"), [
    (np.zeros((6, 4000), "f4"), np.zeros((6, 3999), "f4"),
     r"^bank has 4000 gallery columns, test has 3999$"),
    (np.zeros(6, "f4"), np.zeros((6, 3), "f4"), r"^bank must be a 2-D matrix, got shape"),
    (np.zeros((6, 3), "f4"), np.zeros((6, 3, 1), "f4"), r"^test must be a 2-D matrix"),
    (np.zeros((0, 3), "f4"), np.zeros((6, 3), "f4"), r"^bank is empty: shape \(0, 3\)"),
    (np.zeros((6, 3), "i4"), np.zeros((6, 3), "f4"), "holds int32 values; expected floats"),
    (np.zeros((6, 3), bool), np.zeros((6, 3), "f4"), "holds bool values"),
    (np.zeros((6, 3), "c8"), np.zeros((6, 3), "f4"), "holds complex64 values"),
])
def test_bad_matrices(tmp_path, bank, test, message):
    with pytest.raises(InputError, match=message):
        ingest(tmp_path / "a.zarr", bank, test, progress=False)
    assert not (tmp_path / "a.zarr").exists() and leftovers(tmp_path) == []


def test_nan_and_inf_are_counted_and_located_while_streaming(tmp_path, rng):
    bank, test = sims(rng, 100, 10), sims(rng, 10, 10)
    bank[57, 3] = np.nan
    bank[58, 0] = np.inf
    bank[99, 9] = -np.inf
    np.save(tmp_path / "bank.npy", bank)
    with pytest.raises(InputError) as info:
        ingest(tmp_path / "a.zarr", tmp_path / "bank.npy", test, chunk_rows=10, progress=False)
    assert str(info.value) == ("bank (bank.npy) holds 3 non-finite values (1 NaN, 2 inf); "
                               "the first is at row 57, column 3")
    assert not (tmp_path / "a.zarr").exists() and leftovers(tmp_path) == []


def test_overflow_on_conversion_is_reported(tmp_path, rng):
    bank = sims(rng, 10, 10, "float64")
    bank[4, 4] = 1e6
    with pytest.raises(InputError, match=r"1 inf\) after conversion to float16; the first is at "
                                         r"row 4, column 4"):
        ingest(tmp_path / "a.zarr", bank, sims(rng, 10, 10), dtype="float16", progress=False)


def test_unknown_codec_or_dtype(tmp_path, pair):
    with pytest.raises(ConfigError, match="unknown codec 'gzip'; choose one of none, lz4, zstd"):
        ingest(tmp_path / "a.zarr", *pair, codec="gzip")
    with pytest.raises(ConfigError, match="unsupported dtype 'int8'"):
        ingest(tmp_path / "a.zarr", *pair, dtype="int8")


# --- atomic output ---------------------------------------------------------------------------

def test_existing_output_and_overwrite(tmp_path, pair, rng):
    bank, test = pair
    out = ingest(tmp_path / "exp.zarr", bank, test, progress=False)
    with pytest.raises(StoreExistsError, match=r"exp\.zarr exists: pass --overwrite"):
        ingest(out, bank, test, progress=False)
    broken = bank.copy()
    broken[5, 5] = np.nan
    with pytest.raises(InputError):  # a failed overwrite leaves the old store as it was
        ingest(out, broken, test, overwrite=True, progress=False)
    assert same_bits(stored(out, "bank"), bank) and attrs_of(out)["complete"] is True
    other = sims(rng, 60, 20)
    ingest(out, other, test, overwrite=True, progress=False)
    assert same_bits(stored(out, "bank"), other) and leftovers(tmp_path) == []
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(StoreExistsError, match="not a qbscale store"):
        ingest(tmp_path / "notes", bank, test, overwrite=True, progress=False)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_leftovers_of_dead_ingests_are_removed(tmp_path, pair):
    """This host's leftovers of dead writers go; another host's stay, since its PID
    cannot be checked here (that writer may be alive); so does a live local one."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    host = socket.gethostname()
    stale = tmp_path / f".exp.zarr.partial-{host}-{dead}"
    stale_old = tmp_path / f".exp.zarr.old-{host}-{dead}"
    elsewhere = tmp_path / f".exp.zarr.partial-other-host.example-{dead}"
    live = tmp_path / f".exp.zarr.partial-{host}-{os.getppid()}"
    for path in (stale, stale_old, elsewhere, live):
        zarr.create_group(str(path), attributes={layout.ATTR: {"complete": False}})
    with pytest.raises(IncompleteStoreError):
        open_experiment(stale)
    ingest(tmp_path / "exp.zarr", *pair, progress=False)
    assert not stale.exists() and not stale_old.exists()
    assert leftovers(tmp_path) == sorted([elsewhere.name, live.name])


def test_staging_directory_names_host_and_pid(tmp_path, pair, monkeypatch):
    from qbscale.storage.durability import stage

    seen = []
    create = stage.LocalStage.create_group

    def spy(self, attrs):
        seen.append(self.target.name)
        return create(self, attrs)

    monkeypatch.setattr(stage.LocalStage, "create_group", spy)
    ingest(tmp_path / "exp.zarr", *pair, progress=False)
    assert seen == [f".exp.zarr.partial-{socket.gethostname()}-{os.getpid()}"]


def test_remote_url_is_written_in_place(pair):
    bank, test = pair
    url = "memory://qbscale-tests/exp.zarr"
    try:
        assert ingest(url, bank, test, progress=False) == url
        group = zarr.open_group(url, mode="r")
        assert group.attrs[layout.ATTR]["complete"] is True
        assert same_bits(group["bank"][...], bank)
        with pytest.raises(StoreExistsError):
            ingest(url, bank, test, progress=False)
        broken = test.copy()
        broken[0, 0] = np.inf
        with pytest.raises(InputError):
            ingest(url, bank, broken, overwrite=True, progress=False)
        import fsspec

        assert not fsspec.filesystem("memory").exists("/qbscale-tests/exp.zarr")
    finally:
        import fsspec

        if fsspec.filesystem("memory").exists("/qbscale-tests"):
            fsspec.filesystem("memory").rm("/qbscale-tests", recursive=True)


def test_progress_bar_on_stderr(tmp_path, pair, capfd):
    ingest(tmp_path / "a.zarr", *pair, progress=True)
    assert "100/100" in capfd.readouterr().err
    ingest(tmp_path / "b.zarr", *pair, progress=False)
    assert capfd.readouterr().err == ""


def test_package_level_ingest_is_callable_twice(tmp_path, pair):
    qbscale.ingest(tmp_path / "a.zarr", *pair, progress=False)
    qbscale.ingest(tmp_path / "b.zarr", *pair, progress=False)
    assert attrs_of(tmp_path / "b.zarr")["complete"] is True


# --- embeddings ------------------------------------------------------------------------------

@pytest.fixture()
def embeddings(rng):
    return (sims(rng, 30, 8, "float16"), sims(rng, 12, 8, "float16"),
            sims(rng, 12, 8, "float16"))


def test_embeddings_stored_as_given(tmp_path, embeddings):
    bank, test, gallery = embeddings
    np.save(tmp_path / "g.npy", gallery)
    z = zarr.create_array(str(tmp_path / "q.zarr"), shape=test.shape, dtype=test.dtype,
                          chunks=(5, 8))
    z[...] = test
    mask = np.arange(12) != 5
    out = ingest_embeddings(tmp_path / "e.zarr", bank, tmp_path / "q.zarr", tmp_path / "g.npy",
                            masks=mask, progress=False)
    assert same_bits(stored(out, "query_mask"), mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(out)
    assert ds["bank_emb"].dims == ("bank_query", "dim")
    assert ds["test_emb"].dims == ("query", "dim") and ds["gallery_emb"].dims == ("gallery", "dim")
    info = ds.attrs[layout.ATTR]
    assert info["kind"] == "embeddings" and info["similarity"] == "dot"
    assert info["queries_per_item"] == 1 and info["complete"] is True
    assert info["chunking"]["chunk_bytes"] == 4 * 2**20  # embeddings default: small chunks
    for name, arr in (("bank_emb", bank), ("test_emb", test), ("gallery_emb", gallery)):
        assert same_bits(stored(out, name), arr)
    exp = open_experiment(out)
    np.testing.assert_allclose(exp.test.read(0, 0), test.astype(np.float32)
                               @ gallery.astype(np.float32).T, rtol=1e-6)


def test_embeddings_normalised(tmp_path, embeddings):
    bank, test, gallery = (a.astype(np.float32) * 3 for a in embeddings)
    out = ingest_embeddings(tmp_path / "e.zarr", bank, test, gallery, normalise=True,
                            progress=False)
    assert attrs_of(out)["similarity"] == "cosine"
    got = stored(out, "gallery_emb")
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(got, gallery / np.linalg.norm(gallery, axis=1, keepdims=True),
                               rtol=1e-6)


def test_bad_embeddings(tmp_path, embeddings):
    bank, test, gallery = embeddings
    zero = gallery.copy()
    zero[[4, 9]] = 0
    with pytest.raises(InputError, match=r"^gallery_emb has a zero vector at row "
                                         r"4 \(2 in rows 0-11\)"):
        ingest_embeddings(tmp_path / "e.zarr", bank, test, zero, normalise=True, progress=False)
    assert not (tmp_path / "e.zarr").exists() and leftovers(tmp_path) == []
    with pytest.raises(InputError, match=r"^bank_emb has dimension 7, gallery_emb has 8$"):
        ingest_embeddings(tmp_path / "e.zarr", bank[:, :7], test, gallery, progress=False)
    nan = test.copy()
    nan[2, 1] = np.nan
    with pytest.raises(InputError, match="row 2, column 1"):
        ingest_embeddings(tmp_path / "e.zarr", bank, nan, gallery, progress=False)
