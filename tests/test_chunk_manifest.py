"""Nothing missing or damaged reads as data: missing chunks of anything qbscale
wrote stop every reader (CLI, Python API, lazy xarray); every chunk is bound
to its place by the array's chunk manifest (swapped files are found); edited
metadata and garbage ``zarr.json`` files are reported, one line each; NaN in
stored data is called that, not an overflow."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import qbscale
from qbscale.cli import cli
from qbscale.errors import DamagedStoreError, QBScaleError
from qbscale.retrieval.normaliser import Normaliser
from qbscale.storage.stores.results import open_result

from .cluster_fixtures import problem

FILE = "qbscale_chunks.json"  # an array's chunk manifest


def invoke(*args: str):
    return CliRunner().invoke(cli, [*args, "-q"])


def ingest(path: Path, chunk_rows: int = 50, **kw) -> str:
    bank, test = problem(n_bank=300, n_gallery=100)
    return str(qbscale.ingest(path, bank, test, chunk_rows=chunk_rows, progress=False, **kw))


@pytest.fixture
def ran(tmp_path):
    store = ingest(tmp_path / "exp.zarr", chunk_rows=20)
    res = invoke("run", store, "--beta", "10,20", "--topk", "3", "--save-scores",
                 "--save-ranks")
    assert res.exit_code == 0, res.output
    return store


def swap(a: Path, b: Path) -> None:
    data_a, data_b = a.read_bytes(), b.read_bytes()
    assert len(data_a) == len(data_b) and data_a != data_b
    a.write_bytes(data_b)
    b.write_bytes(data_a)


def resealed(store: str, name: str) -> None:
    """Record array ``name``'s chunk manifest again and seal the store's attributes
    over it, as qbscale does when it writes: the store then looks written with the
    data just put there through zarr (NaN or inf that reached the store)."""
    from qbscale.storage.durability import seal
    from qbscale.storage.durability.manifest import record

    root = Path(store) / "zarr.json"
    meta = json.loads(root.read_text())
    attrs = meta["attributes"]["qbscale"]
    digests = record(store, None, [name], attrs["store_id"])
    meta["attributes"]["qbscale"] = seal.sealed(
        {**attrs, "manifests": {**attrs["manifests"], **digests}})
    root.write_text(json.dumps(meta))


def result_dir(store: str, name: str) -> Path:
    return Path(store) / open_result(store, name).path


# ------------------------------------------------------------------ 1. missing chunks


def test_a_normaliser_with_a_missing_activation_chunk_is_refused(tmp_path):
    bank, _ = problem(n_bank=300, n_gallery=100)
    path = Normaliser.fit(bank, method="dis", beta=20.0, k=1).save(tmp_path / "n.zarr")
    (Path(path) / "activation" / "c" / "0").unlink()
    with pytest.raises(DamagedStoreError) as info:
        Normaliser.load(path)
    assert str(info.value) == (f"store {path}: chunk activation/c/0 is missing: "
                               "re-ingest or restore it")
    store = ingest(tmp_path / "exp.zarr")
    res = invoke("run", store, "--normaliser", str(path))
    assert res.exit_code == 1
    assert res.output.strip() == f"Error: {info.value}"


def test_a_missing_topk_index_chunk_is_refused_not_zeros(ran):
    key = "c/0/0/0"
    (result_dir(ran, "topk_index") / key).unlink()
    arr = open_result(ran, "topk_index")
    with pytest.raises(DamagedStoreError, match=f"chunk {arr.path}/{key} is missing"):
        arr[...]


def test_open_result_and_open_dataset_refuse_a_missing_scores_chunk(ran):
    (result_dir(ran, "scores") / "c" / "1" / "2" / "0").unlink()
    path = open_result(ran, "scores").path
    with pytest.raises(DamagedStoreError, match=f"chunk {path}/c/1/2/0 is missing"):
        open_result(ran, "scores")[...]
    ds = qbscale.open_dataset(ran)
    assert float(ds.scores[0, 0, 0]) == float(ds.scores[0, 0, 0])  # other chunks read
    with pytest.raises(DamagedStoreError, match=f"chunk {path}/c/1/2/0 is missing"):
        ds.scores.values  # noqa: B018 - the lazy read
    (Path(ran) / "test" / "c" / "3" / "0").unlink()
    with pytest.raises(DamagedStoreError, match="chunk test/c/3/0 is missing"):
        ds.test.sum().compute()


# ------------------------------------------------------------------ 2. chunk manifests


def test_every_array_published_has_a_chunk_manifest(ran, tmp_path):
    arrays = ["bank", "test", *(open_result(ran, n).path for n in
                                ("scores", "ranks", "ranks_baseline", "topk_index",
                                 "topk_score"))]
    for name in arrays:
        manifest = json.loads((Path(ran) / name / FILE).read_text())
        arr = zarr.open_array(ran, path=name, mode="r")
        assert manifest["shape"] == list(arr.shape) and manifest["format"] == 2
        # bound to this store and this array, its digest in the store's seal
        root = json.loads((Path(ran) / "zarr.json").read_text())["attributes"]["qbscale"]
        assert (manifest["store"], manifest["array"]) == (root["store_id"], name)
        assert root["manifests"][name] == hashlib.sha256(
            (Path(ran) / name / FILE).read_bytes()).hexdigest()
        chunks = sorted(p.relative_to(Path(ran) / name).as_posix()
                        for p in (Path(ran) / name / "c").rglob("*") if p.is_file())
        assert sorted(manifest["crc32c"]) == chunks, name
    bank, _ = problem(n_bank=300, n_gallery=100)
    path = Normaliser.fit(bank, beta=20.0).save(tmp_path / "n.zarr")
    assert all((Path(path) / n / FILE).is_file() for n in ("shift", "activation", "beta"))


@pytest.mark.parametrize("direct", ["1", "0"])
def test_swapped_test_chunks_are_refused(ran, direct, monkeypatch):
    monkeypatch.setenv("QBSCALE_DIRECT_READS", direct)
    swap(Path(ran) / "test" / "c" / "1" / "0", Path(ran) / "test" / "c" / "4" / "0")
    res = invoke("run", ran, "--beta", "20")
    assert res.exit_code == 1
    assert res.output.startswith(f"Error: store {ran}: chunk test/c/")
    assert "is not the chunk written there" in res.output and "R@" not in res.output


def test_swapped_result_chunks_are_refused_and_checked(ran):
    scores = result_dir(ran, "scores")
    swap(scores / "c" / "0" / "1" / "0", scores / "c" / "0" / "2" / "0")
    name = open_result(ran, "scores").path
    with pytest.raises(DamagedStoreError, match=f"chunk {name}/c/0/[12]/0 is not the chunk"):
        open_result(ran, "scores")[...]
    res = invoke("eval", ran, "--array", "scores[0]")
    assert res.exit_code == 1 and "is not the chunk written there" in res.output
    res = invoke("check", ran)
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert f"{name}/c/0/1/0: not the chunk written there (swapped or replaced)" in lines
    assert f"{name}/c/0/2/0: not the chunk written there (swapped or replaced)" in lines
    assert lines[-1] == f"{ran}: 49 chunks in 7 arrays checked, 2 bad"


def test_a_shape_edited_in_the_root_zarr_json_is_refused(ran):
    root = Path(ran) / "zarr.json"
    meta = json.loads(root.read_text())
    meta["consolidated_metadata"]["metadata"]["test"]["shape"] = [100, 100]
    root.write_text(json.dumps(meta))
    want = (f"store {ran}: array test: the root zarr.json says shape [100, 100], "
            "its own zarr.json [200, 100]")
    res = invoke("run", ran)
    assert res.exit_code == 1 and res.output.strip().startswith(f"Error: {want}")
    res = invoke("check", ran)
    assert res.exit_code == 1 and f"test: {want.split('test: ', 1)[1]}" in res.output


def test_a_shape_edited_in_both_zarr_jsons_is_refused(ran):
    for path, get in ((Path(ran) / "zarr.json",
                       lambda m: m["consolidated_metadata"]["metadata"]["bank"]),
                      (Path(ran) / "bank" / "zarr.json", lambda m: m)):
        meta = json.loads(path.read_text())
        get(meta)["shape"] = [200, 100]
        path.write_text(json.dumps(meta))
    res = invoke("run", ran)
    assert res.exit_code == 1
    assert res.output.strip() == (f"Error: store {ran}: array bank: its zarr.json says shape "
                                  "[200, 100], its chunk manifest [300, 100]: the metadata "
                                  "was edited; restore it or ingest again")


@pytest.mark.parametrize("strip", ["seal", "manifests"])
def test_a_store_without_its_seal_or_manifests_is_refused_in_one_line(ran, strip):
    """As an older qbscale wrote it (no seal; no manifests either): every reader
    refuses it, one line naming the store; deleting them must not switch checks off."""
    from qbscale.storage.stores.dataset import open_dataset

    if strip == "manifests":
        for manifest in Path(ran).rglob(FILE):
            manifest.unlink()
    root = Path(ran) / "zarr.json"
    meta = json.loads(root.read_text())
    for key in ("attrs_sha256", *(["manifests", "store_id"] if strip == "manifests" else [])):
        del meta["attributes"]["qbscale"][key]
    root.write_text(json.dumps(meta))
    want = f"Error: {ran} has no seal: written by an older qbscale or edited; ingest it again\n"
    for command in ("run", "check", "eval"):
        res = invoke(command, ran)
        assert res.exit_code == 1 and res.output == want, (command, res.output)
    for read in (lambda: open_dataset(ran), lambda: open_result(ran, "ranks"),
                 lambda: qbscale.run(ran)):
        with pytest.raises(DamagedStoreError, match="has no seal"):
            read()


# ------------------------------------------------------------------ 4. garbage metadata


@pytest.mark.parametrize("garbage", [b"{not json", b"[1, 2, 3]", b'{"zarr_format": 3, "node_ty',
                                     b'{"zarr_format": 3, "node_type": "array"}'])
def test_check_reports_a_garbage_array_zarr_json_in_one_line(ran, garbage):
    (Path(ran) / "test" / "zarr.json").write_bytes(garbage)
    res = invoke("check", ran)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    bad = [line for line in res.output.splitlines() if line.startswith("test/zarr.json:")]
    assert len(bad) == 1 and "cannot be read" in bad[0], res.output
    res = invoke("run", ran)
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "test" in res.output


# ------------------------------------------------------------------ 5. messages


def test_nan_in_stored_data_is_named_not_an_overflow(tmp_path):
    store = ingest(tmp_path / "exp.zarr", chunk_rows=20)
    arr = zarr.open_array(store, path="test", mode="r+")
    arr[17, 4] = np.nan
    resealed(store, "test")
    res = invoke("run", store, "--beta", "20")
    assert res.exit_code == 1
    assert res.output.strip() == (f"Error: store {store}: test row 17 has NaN (column 4); "
                                  "the input data are not finite: re-ingest it")
    with pytest.raises(QBScaleError, match="test row 17 has NaN"):
        qbscale.run(store, beta=20.0)


def test_a_byte_swapped_dtype_is_named(tmp_path):
    store = ingest(tmp_path / "exp.zarr", chunk_rows=20)
    for path, get in ((Path(store) / "zarr.json",
                       lambda m: m["consolidated_metadata"]["metadata"]["test"]),
                      (Path(store) / "test" / "zarr.json", lambda m: m)):
        meta = json.loads(path.read_text())
        get(meta)["codecs"][0]["configuration"]["endian"] = "big"
        path.write_text(json.dumps(meta))
    (Path(store) / "test" / FILE).unlink(missing_ok=True)
    res = invoke("run", store, "--beta", "20")
    assert res.exit_code == 1
    assert res.output.strip() == (f"Error: store {store}: array test has byte-swapped dtype "
                                  ">f4 (big-endian; qbscale writes little-endian): its "
                                  "zarr.json was edited; restore it or ingest again")
    assert "float64" not in res.output


def test_a_gallery_bank_gets_a_chunk_manifest_and_swaps_in_it_are_refused(tmp_path):
    from qbscale.storage.stores.gallery_bank import add_gallery_bank

    store = ingest(tmp_path / "exp.zarr")
    rng = np.random.default_rng(3)
    add_gallery_bank(store, rng.random((90, 100), dtype=np.float32), chunk_bytes=30 * 400,
                     progress=False)
    manifest = json.loads((Path(store) / "gallery_bank" / FILE).read_text())
    assert sorted(manifest["crc32c"]) == ["c/0/0", "c/1/0", "c/2/0"]
    swap(Path(store) / "gallery_bank" / "c" / "0" / "0",
         Path(store) / "gallery_bank" / "c" / "1" / "0")
    res = invoke("run", store, "--method", "dual-is", "--beta", "20")
    assert res.exit_code == 1 and "R@" not in res.output
    assert "chunk gallery_bank/c/" in res.output and "is not the chunk written there" \
        in res.output


def test_an_unreadable_chunk_manifest_is_one_line(ran):
    (Path(ran) / "test" / FILE).write_text("{garbage")
    res = invoke("run", ran)
    assert res.exit_code == 1 and res.output.count("\n") == 1
    assert res.output.startswith(f"Error: store {ran}: array test: its chunk manifest "
                                 f"{FILE} cannot be read")


def test_gallery_embeddings_opened_by_path_refuse_a_missing_chunk(tmp_path):
    from qbscale.storage.inputs.gallery_rows import _open_path
    from qbscale.storage.outputs.normaliser_store import open_embeddings

    rng = np.random.default_rng(5)
    emb = [rng.standard_normal((n, 8)).astype(np.float32) for n in (70, 30, 30)]
    store = str(qbscale.ingest_embeddings(tmp_path / "emb.zarr", *emb, chunk_rows=16,
                                          progress=False))
    (Path(store) / "gallery_emb" / "c" / "1" / "0").unlink()
    for node in (_open_path(store), _open_path(f"{store}/gallery_emb"),
                 open_embeddings(f"{store}/gallery_emb", "gallery")):
        with pytest.raises(DamagedStoreError, match=r"chunk (gallery_emb/)?c/1/0 is missing"):
            np.asarray(node[...])


def test_inf_in_the_stored_bank_is_named_not_an_overflow(tmp_path):
    store = ingest(tmp_path / "exp.zarr", chunk_rows=20)
    zarr.open_array(store, path="bank", mode="r+")[123, 45] = np.inf
    resealed(store, "bank")
    res = invoke("run", store, "--beta", "20")
    assert res.exit_code == 1
    assert res.output.strip() == (f"Error: store {store}: bank row 123 has inf (column 45); "
                                  "the input data are not finite: re-ingest it")
