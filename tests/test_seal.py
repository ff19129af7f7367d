"""The seal and the store identity: a store, normaliser or saved run is read only
as written by qbscale, whole and its own.

* the seal is mandatory: a store or normaliser without one (older, or its seal
  deleted to pass an edit) is refused in one line;
* every chunk manifest names its store and array, and the root's seal holds the
  SHA-256 of every manifest: an array (chunks and manifest) copied from another
  store, or a chunk copied with its manifest entry, is named as such;
* a run's published metadata (metrics, swept values, array labels) is sealed;
* a chunk that is a FIFO or a device is refused at once, never read;
* ``transform`` reads a DataArray's dimension names, and takes dask arrays of
  unknown chunk sizes.

Expected values come from the dense numpy oracle in ``tests/reference.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import qbscale
from qbscale.cli import cli
from qbscale.errors import DamagedStoreError, InputError
from qbscale.retrieval.normaliser import Normaliser
from qbscale.storage.stores.check import check_store
from qbscale.storage.stores.dataset import open_dataset
from qbscale.storage.stores.results import open_result

from . import reference as ref
from .cluster_fixtures import problem

FILE = "qbscale_chunks.json"  # an array's chunk manifest
NO_SEAL = "has no seal: written by an older qbscale or edited; ingest it again"


def invoke(*args: str):
    return CliRunner().invoke(cli, [*args, "-q"])


def one_line(res, *words: str) -> str:
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for word in words:
        assert word in lines[0], res.output
    return lines[0]


def ingest(path: Path, queries_per_item: int = 2, seed: int = 0) -> str:
    bank, test = problem(n_bank=40, n_gallery=10, queries_per_item=queries_per_item,
                         seed=seed)
    return str(qbscale.ingest(path, bank, test, chunk_rows=5, progress=False))


def root_attrs(store: str, attr: str = "qbscale") -> dict:
    return json.loads((Path(store) / "zarr.json").read_text())["attributes"][attr]


def edit_root(store: str, change, attr: str = "qbscale") -> None:
    """Apply ``change(attrs)`` to the store's root attributes (and nothing else)."""
    path = Path(store) / "zarr.json"
    meta = json.loads(path.read_text())
    change(meta["attributes"][attr])
    path.write_text(json.dumps(meta))


def refused_everywhere(store: str, *words: str) -> None:
    """``run``, ``eval``, ``qbscale.run`` and ``open_dataset`` refuse in one line,
    ``check`` names it among what is bad."""
    for command in ("run", "eval"):
        one_line(invoke(command, store), *words)
    res = invoke("check", store)  # the reason, in its list of what is bad
    assert res.exit_code == 1 and words[-1] in res.output, res.output
    for read in (lambda: qbscale.run(store), lambda: open_dataset(store).test.values):
        with pytest.raises(DamagedStoreError) as info:
            read()
        assert all(word in str(info.value) for word in words), info.value


# ------------------------------------------------------------------ the seal is mandatory


def test_an_edited_setting_with_its_seal_deleted_is_refused(tmp_path):
    # queries_per_item 1 -> 2 and attrs_sha256 deleted used to print R@1 0.0, not 9.5
    store = ingest(tmp_path / "exp.zarr", queries_per_item=1)
    assert invoke("run", store).exit_code == 0

    def edit(attrs):
        attrs["queries_per_item"] = 2
        del attrs["attrs_sha256"]

    edit_root(store, edit)
    refused_everywhere(store, store, NO_SEAL)
    assert invoke("check", store).output == f"Error: {store} {NO_SEAL}\n"


def test_swapped_chunks_with_manifests_and_declarations_deleted_are_refused(tmp_path):
    store = ingest(tmp_path / "exp.zarr")
    for manifest in Path(store).rglob(FILE):
        manifest.unlink()

    def strip(attrs):
        for key in ("attrs_sha256", "manifests", "store_id"):
            attrs.pop(key)

    edit_root(store, strip)
    test = Path(store) / "test" / "c"
    a, b = (test / "0" / "0").read_bytes(), (test / "1" / "0").read_bytes()
    (test / "0" / "0").write_bytes(b)
    (test / "1" / "0").write_bytes(a)
    refused_everywhere(store, NO_SEAL)


def test_a_normaliser_without_its_seal_is_refused(tmp_path):
    bank, _ = problem(n_bank=40, n_gallery=10)
    out = Normaliser.fit(bank, beta=20.0, k=1).save(tmp_path / "n.zarr")

    def edit(attrs):
        attrs["k"] = 3  # used to load, with the activation set of k=1
        del attrs["attrs_sha256"]

    edit_root(str(out), edit, "qbscale_normaliser")
    with pytest.raises(DamagedStoreError, match=r"n\.zarr has no seal: .*; fit it again"):
        Normaliser.load(out)
    one_line(invoke("check", str(out)), "has no seal")


# ------------------------------------------------------------------ store identity


def twins(tmp_path: Path) -> tuple[str, str]:
    """Two stores of the same shapes and chunks, other data (seeds 0 and 1)."""
    return ingest(tmp_path / "a.zarr", seed=0), ingest(tmp_path / "b.zarr", seed=1)


@pytest.mark.parametrize("array", ["test", "bank"])
def test_an_array_copied_whole_from_another_store_is_refused(tmp_path, array):
    a, b = twins(tmp_path)
    shutil.rmtree(Path(a) / array)
    shutil.copytree(Path(b) / array, Path(a) / array)  # chunks and manifest
    refused_everywhere(a, a, f"array {array}", "another store")
    report = check_store(a)
    assert "another store" in report.bad[array]


def test_an_array_copied_with_the_manifest_rebound_is_refused(tmp_path):
    """The copied manifest edited to name this store: its digest is not the sealed one."""
    a, b = twins(tmp_path)
    shutil.rmtree(Path(a) / "test")
    shutil.copytree(Path(b) / "test", Path(a) / "test")
    manifest = json.loads((Path(a) / "test" / FILE).read_text())
    manifest["store"] = root_attrs(a)["store_id"]
    (Path(a) / "test" / FILE).write_text(json.dumps(manifest))
    refused_everywhere(a, "array test", "not the one the store sealed")


def test_one_chunk_copied_with_its_manifest_entry_is_refused(tmp_path):
    a, b = twins(tmp_path)
    key = "c/1/0"
    shutil.copyfile(Path(b) / "test" / key, Path(a) / "test" / key)
    manifest = json.loads((Path(a) / "test" / FILE).read_text())
    manifest["crc32c"][key] = json.loads((Path(b) / "test" / FILE).read_text())["crc32c"][key]
    (Path(a) / "test" / FILE).write_text(json.dumps(manifest))
    refused_everywhere(a, "array test", "not the one the store sealed")
    assert not check_store(a).ok


def test_a_saved_run_copied_from_another_store_is_refused(tmp_path):
    a, b = twins(tmp_path)
    for store in (a, b):
        assert invoke("run", store, "--save-ranks").exit_code == 0
    ranks_a, ranks_b = open_result(a, "ranks").path, open_result(b, "ranks").path
    shutil.rmtree(Path(a) / ranks_a)
    shutil.copytree(Path(b) / ranks_b, Path(a) / ranks_a)
    with pytest.raises(DamagedStoreError, match="another store"):
        open_result(a, "ranks")
    with pytest.raises(DamagedStoreError, match="another store"):
        open_dataset(a)
    assert "another store" in check_store(a).bad[ranks_a]


@pytest.mark.parametrize("array", ["shift", "activation"])
def test_an_array_copied_from_another_normaliser_is_refused(tmp_path, array):
    bank_a, _ = problem(n_bank=40, n_gallery=10, seed=0)
    bank_b, _ = problem(n_bank=40, n_gallery=10, seed=1)
    a = Normaliser.fit(bank_a, beta=20.0).save(tmp_path / "a.zarr")
    b = Normaliser.fit(bank_b, beta=20.0).save(tmp_path / "b.zarr")
    assert not np.array_equal(Normaliser.load(a).shift, Normaliser.load(b).shift)
    shutil.rmtree(Path(a) / array)
    shutil.copytree(Path(b) / array, Path(a) / array)
    with pytest.raises(DamagedStoreError, match=f"array {array}: .*another store"):
        Normaliser.load(a)
    assert not check_store(a).ok


# ------------------------------------------------------------------ a run's metadata


def test_edited_metrics_of_the_published_run_are_refused(tmp_path):
    store = ingest(tmp_path / "exp.zarr")
    assert invoke("run", store, "--save-ranks", "--beta", "10,20").exit_code == 0

    def edit(attrs):
        for row in attrs["last_run"]["after"].values() if isinstance(
                attrs["last_run"].get("after"), dict) else []:
            if isinstance(row, dict):
                for metric in row:
                    row[metric] = 99.9
        attrs["last_run"]["values"] = [30.0, 40.0]  # the labels of the results' axis

    before = json.dumps(root_attrs(store)["last_run"])
    edit_root(store, edit)
    assert json.dumps(root_attrs(store)["last_run"]) != before
    with pytest.raises(DamagedStoreError, match="edited"):
        open_result(store, "ranks")
    with pytest.raises(DamagedStoreError, match="edited"):
        open_dataset(store)
    one_line(invoke("eval", store, "--array", "test"), "edited")
    assert "zarr.json" in check_store(store).bad


def test_an_edited_label_of_a_saved_array_is_refused(tmp_path):
    store = ingest(tmp_path / "exp.zarr")
    assert invoke("run", store, "--save-ranks", "--beta", "10,20").exit_code == 0
    path = Path(store) / open_result(store, "ranks").path / "zarr.json"
    meta = json.loads(path.read_text())
    meta["attributes"]["values"] = [30.0, 40.0]
    path.write_text(json.dumps(meta))
    with pytest.raises(DamagedStoreError, match="attributes"):
        open_result(store, "ranks")
    with pytest.raises(DamagedStoreError, match="attributes"):
        open_dataset(store)


def test_open_result_of_a_garbage_last_run_is_one_error(tmp_path):
    store = ingest(tmp_path / "exp.zarr")
    assert invoke("run", store, "--save-ranks").exit_code == 0
    edit_root(store, lambda attrs: attrs.update(last_run="garbage"))
    with pytest.raises(DamagedStoreError, match="edited"):
        open_result(store, "ranks")  # used to raise AttributeError
    one_line(invoke("eval", store, "--array", "ranks"), "edited")


def test_runs_and_a_gallery_bank_keep_every_manifest_sealed(tmp_path):
    from qbscale.storage.durability import seal
    from qbscale.storage.stores.gallery_bank import add_gallery_bank

    store = ingest(tmp_path / "exp.zarr")
    for _ in range(2):
        assert invoke("run", store, "--save-scores", "--topk", "2").exit_code == 0
    add_gallery_bank(store, np.random.default_rng(0).random((12, 10), dtype=np.float32),
                     progress=False)
    attrs = root_attrs(store)
    assert seal.problem(attrs) is None
    prefix = attrs["last_run"]["prefix"]
    assert sorted(attrs["manifests"]) == sorted(
        ["bank", "test", "gallery_bank", f"{prefix}/scores", f"{prefix}/topk_index",
         f"{prefix}/topk_score"])
    assert check_store(store).ok


# ------------------------------------------------------------------ FIFOs and devices

#: a bounded child: a read of /dev/zero runs out of address space, not the machine's RAM
LIMITED = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
           "sys.argv = ['qbscale'] + sys.argv[1:]; from qbscale.cli import cli; cli()")
READ = {
    "run": None, "check": None,
    "open_dataset": "from qbscale.storage.stores.dataset import open_dataset as f; "
                    "f(S).test.values",
    "open_result": "from qbscale.storage.stores.results import open_result as f; "
                   "f(S, 'ranks')[...]",
}


def special(path: Path, kind: str) -> None:
    """Replace the file ``path`` by a symlink to /dev/zero, or by a FIFO."""
    path.unlink()
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        os.mkfifo(path)


def bounded(args: list[str], code: str | None, store: str) -> subprocess.CompletedProcess:
    if code is None:
        cmd = [sys.executable, "-c", LIMITED, *args, store, "-q"]
    else:
        cmd = [sys.executable, "-c", "import resource; resource.setrlimit(resource.RLIMIT_AS, "
               f"(2 << 30, 2 << 30)); S = {store!r}; {code}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
@pytest.mark.parametrize("reader", sorted(READ))
def test_a_chunk_that_is_a_device_or_a_fifo_is_refused_at_once(tmp_path, kind, reader):
    store = ingest(tmp_path / "exp.zarr")
    assert invoke("run", store, "--save-ranks").exit_code == 0
    ranks = Path(store) / open_result(store, "ranks").path / "c"
    target = Path(store) / "test/c/1/0" if reader != "open_result" else \
        next(p for p in sorted(ranks.rglob("*")) if p.is_file())
    special(target, kind)
    what = "a character device" if kind == "dev-zero" else "a FIFO"
    try:
        done = bounded([reader], READ[reader], store)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{reader} blocked on {kind}")
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert f"not a regular file ({what})" in out, out
    assert "MemoryError" not in out


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_a_normaliser_chunk_that_is_a_device_or_a_fifo_is_refused(tmp_path, kind):
    bank, _ = problem(n_bank=40, n_gallery=10)
    out = Normaliser.fit(bank, beta=20.0).save(tmp_path / "n.zarr")
    special(Path(out) / "shift" / "c" / "0" / "0", kind)
    code = "from qbscale.retrieval.normaliser import Normaliser; Normaliser.load(S)"
    done = bounded([], code, str(out))
    assert done.returncode != 0 and "not a regular file" in done.stderr, done.stderr


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_a_manifest_that_is_a_device_or_a_fifo_is_refused(tmp_path, kind):
    store = ingest(tmp_path / "exp.zarr")
    special(Path(store) / "test" / FILE, kind)
    done = bounded(["run"], None, store)
    assert done.returncode == 1 and "not a regular file" in done.stderr, done.stderr


# ------------------------------------------------------------------ transform


@settings(max_examples=15, deadline=None)
@given(rows=st.integers(2, 12), gallery=st.integers(2, 9), seed=st.integers(0, 99),
       chunk=st.integers(1, 5), several=st.booleans())
def test_transform_reads_the_dimension_names(rows, gallery, seed, chunk, several):
    import xarray as xr

    rng = np.random.default_rng(seed)
    bank, test = rng.random((30, gallery)), rng.random((rows, gallery))
    betas = [10.0, 20.0] if several else [20.0]
    norm = Normaliser.fit(bank, beta=betas, method="is")
    want = np.stack([ref.scores(test, bank, b, method="is") for b in betas])
    for data in (test.T, xr.DataArray(test.T).chunk({"dim_0": chunk}).data):
        out = norm.transform(xr.DataArray(data, dims=("gallery", "query")))
        assert out.dims[-2:] == ("gallery", "query")
        got = np.asarray(out.values).reshape(len(betas), gallery, rows)
        np.testing.assert_allclose(got.transpose(0, 2, 1), want, rtol=1e-12, atol=1e-12)


def test_transform_refuses_dimension_names_it_cannot_read():
    import xarray as xr

    norm = Normaliser.fit(np.random.default_rng(0).random((30, 6)), beta=20.0)
    with pytest.raises(InputError, match=r"dims \('a', 'b'\): name its gallery axis"):
        norm.transform(xr.DataArray(np.zeros((6, 6)), dims=("a", "b")))


def test_fit_and_search_read_the_dimension_names():
    import xarray as xr

    from qbscale.retrieval.search import search_matrix

    rng = np.random.default_rng(3)
    bank, test = rng.random((30, 6)), rng.random((6, 6))
    norm = Normaliser.fit(bank, beta=20.0)
    got = Normaliser.fit(xr.DataArray(bank.T, dims=("gallery", "bank_query")), beta=20.0)
    np.testing.assert_allclose(got.shift[0], ref.log_normaliser(bank, 20.0))
    np.testing.assert_allclose(got.shift.ravel(), norm.shift.ravel())
    want = ref.topk(ref.scores(test, bank, 20.0), 2)
    hits = search_matrix(norm, xr.DataArray(test.T, dims=("gallery", "query")), 2,
                         scheduler="synchronous")
    np.testing.assert_allclose(hits[0], want[1])  # (scores, items)
    np.testing.assert_array_equal(hits[1], want[0])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 99), chunk=st.integers(1, 7), method=st.sampled_from(["is", "dis"]))
def test_transform_of_a_dask_array_of_unknown_chunk_sizes(seed, chunk, method):
    import dask.array as da

    rng = np.random.default_rng(seed)
    bank, test = rng.random((30, 8)), rng.random((20, 8))
    keep = rng.random(20) < 0.6
    keep[0] = True
    lazy = da.from_array(test, chunks=(chunk, 3))[da.from_array(keep, chunks=chunk)]
    assert np.isnan(lazy.shape[0])
    norm = Normaliser.fit(bank, beta=20.0, method=method, k=1)
    got = norm.transform(lazy).compute(scheduler="synchronous")
    np.testing.assert_allclose(got, ref.scores(test[keep], bank, 20.0, method=method),
                               rtol=1e-12, atol=1e-12)
    columns = da.from_array(test, chunks=(chunk, 3))[:, da.from_array(np.ones(8, bool),
                                                                       chunks=3)]
    with pytest.raises(InputError, match=r"unknown number of gallery columns.*compute_chunk"):
        norm.transform(columns)
    # a top-k search and a fit cut it into row blocks, which need the sizes: one line
    from qbscale.retrieval.search import search_matrix

    with pytest.raises(InputError, match=r"unknown chunk sizes.*compute_chunk_sizes"):
        search_matrix(norm, lazy, 2, scheduler="synchronous")
    with pytest.raises(InputError, match=r"unknown chunk sizes.*compute_chunk_sizes"):
        Normaliser.fit(lazy, beta=20.0)


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_a_compressed_chunk_that_is_a_device_or_a_fifo_is_refused(tmp_path, kind):
    """Compressed chunks are read through zarr (the verified store), not directly."""
    bank, test = problem(n_bank=40, n_gallery=10)
    store = str(qbscale.ingest(tmp_path / "lz.zarr", bank, test, chunk_rows=5, codec="lz4",
                               progress=False))
    special(Path(store) / "test" / "c" / "1" / "0", kind)
    what = "a character device" if kind == "dev-zero" else "a FIFO"
    for command in ("run", "check"):
        done = bounded([command], None, store)
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"test/c/1/0{':' if command == 'check' else ' is'} not a regular file " \
               f"({what})" in done.stdout + done.stderr
