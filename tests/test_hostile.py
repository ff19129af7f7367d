"""Hostile users: stores and inputs damaged or misused on purpose end in one
clear line and a non-zero exit, never in figures that look right."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import qbscale
from qbscale.cli import cli
from qbscale.errors import ConfigError, DamagedStoreError
from qbscale.retrieval.normaliser import Normaliser

from .cluster_fixtures import problem

FILE = "qbscale_chunks.json"  # an array's chunk manifest


def invoke(*args: str):
    return CliRunner().invoke(cli, [*args, "-q"])


def one_line_error(res, *words: str) -> None:
    assert res.exit_code != 0, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for word in words:
        assert word in lines[0], res.output


@pytest.fixture
def store(tmp_path) -> str:
    bank, test = problem(n_bank=40, n_gallery=10)
    return str(qbscale.ingest(tmp_path / "exp.zarr", bank, test, chunk_rows=5,
                              progress=False))


def swap(a: Path, b: Path) -> None:
    data_a, data_b = a.read_bytes(), b.read_bytes()
    assert data_a != data_b
    a.write_bytes(data_b)
    b.write_bytes(data_a)


# ------------------------------------------------------------------ chunk manifests


def test_a_deleted_chunk_manifest_does_not_switch_the_position_checks_off(store):
    # deleting the manifest, then swapping two chunks, used to give other figures
    (Path(store) / "test" / FILE).unlink()
    swap(Path(store) / "test" / "c" / "0" / "0", Path(store) / "test" / "c" / "1" / "0")
    res = invoke("run", store)
    one_line_error(res, store, "test", FILE, "missing")
    with pytest.raises(DamagedStoreError, match="chunk manifest"):
        qbscale.run(store)
    res = invoke("check", store)
    assert res.exit_code == 1
    assert f"test: its chunk manifest {FILE} is missing" in res.output
    assert "notice" not in res.output


def test_a_chunk_manifest_replaced_by_a_directory_is_missing(store):
    manifest = Path(store) / "bank" / FILE
    manifest.unlink()
    manifest.mkdir()
    one_line_error(invoke("run", store), "bank", FILE, "missing")
    assert invoke("check", store).exit_code == 1


def test_a_normaliser_without_its_chunk_manifest_is_refused(tmp_path):
    bank, _ = problem(n_bank=40, n_gallery=10)
    out = Normaliser.fit(bank, beta=20).save(tmp_path / "norm.zarr")
    (Path(out) / "shift" / FILE).unlink()
    with pytest.raises(DamagedStoreError, match="chunk manifest"):
        Normaliser.load(out)


# ------------------------------------------------------------------ qbscale check


@pytest.mark.parametrize("kind", ["missing", "file", "empty dir", "plain group"])
def test_check_refuses_what_is_not_a_store_in_one_line(tmp_path, kind):
    import zarr

    path = tmp_path / "x.zarr"
    if kind == "file":
        path.write_text("hello")
    elif kind == "empty dir":
        path.mkdir()
    elif kind == "plain group":
        zarr.open_group(str(path), mode="w").create_array("test", shape=(4, 4), dtype="f4")
    one_line_error(invoke("check", str(path)), str(path))


@pytest.mark.parametrize("damage, key", [
    ("deleted", "zarr.json: missing"),
    ("garbage", "zarr.json: cannot be read"),
    ("a list", "zarr.json: not the metadata of a Zarr group"),
    ("incomplete", "zarr.json: incomplete"),
])
def test_check_reports_a_damaged_root_zarr_json(store, damage, key):
    root = Path(store) / "zarr.json"
    if damage == "deleted":
        root.unlink()
    elif damage == "garbage":
        root.write_text("{garbage")
    elif damage == "a list":
        root.write_text("[1, 2]")
    else:
        meta = json.loads(root.read_text())
        meta["attributes"]["qbscale"]["complete"] = False
        root.write_text(json.dumps(meta))
    res = invoke("check", store)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert any(line.startswith(key) for line in res.output.splitlines()), res.output


@pytest.mark.parametrize("what", ["zarr.json", "the array"])
def test_check_reports_a_deleted_input_array(store, what):
    if what == "zarr.json":
        (Path(store) / "test" / "zarr.json").unlink()
    else:
        shutil.rmtree(Path(store) / "test")
    res = invoke("check", store)
    assert res.exit_code == 1, res.output
    assert "test/zarr.json: missing" in res.output
    one_line_error(invoke("run", store), "test")


def test_check_passes_an_intact_store_and_normaliser(store, tmp_path):
    res = invoke("check", store)
    assert res.exit_code == 0 and res.output.strip().endswith("0 bad"), res.output
    bank, _ = problem(n_bank=40, n_gallery=10)
    out = Normaliser.fit(bank, beta=20).save(tmp_path / "norm.zarr")
    res = invoke("check", str(out))
    assert res.exit_code == 0 and res.output.strip().endswith("0 bad"), res.output



# ------------------------------------------------------------------ the command line


@pytest.mark.parametrize("args, words", [
    (["run", "STORE", "--tset"], ["--tset"]),
    (["run", "STORE", "--k", "0"], ["--k", "0"]),
    (["run", "STORE", "--method", "dsi"], ["dsi"]),
    (["run", "STORE", "--workers", "0"], ["--workers", "0"]),
    (["run", "STORE", "--kc", "3"], ["--kc"]),
    (["ingest", "--bank", "b.npy", "--test", "t.npy", "-o", "x.zarr", "--dtype", "float31"],
     ["float31"]),
    (["runn"], ["runn"]),
])
def test_a_usage_error_is_one_line(store, args, words):
    res = invoke(*[store if a == "STORE" else a for a in args])
    assert res.exit_code == 2
    one_line_error(res, *words)


def test_a_bare_qbscale_still_prints_its_help():
    res = CliRunner().invoke(cli, [])
    assert "Commands:" in res.output


# ------------------------------------------------------------------ the Python API


@pytest.mark.parametrize("method", [None, ["dis"], 3])
def test_a_method_that_is_no_string_is_a_config_error(method):
    bank, test = problem(n_bank=6, n_gallery=4)
    with pytest.raises(ConfigError, match="method must be one of"):
        qbscale.normalise(test, bank, method=method)


# ------------------------------------------------------------------ --json never replaces an input


@pytest.mark.parametrize("which", ["bank", "test", "gt_index", "npz member"])
def test_ingest_json_onto_an_input_is_refused_and_the_input_kept(tmp_path, which):
    bank, test = problem(n_bank=6, n_gallery=4)
    paths = {"bank": tmp_path / "bank.npy", "test": tmp_path / "test.npy",
             "gt_index": tmp_path / "gt.npy", "npz member": tmp_path / "b.npz"}
    np.save(paths["bank"], bank)
    np.save(paths["test"], test)
    np.save(paths["gt_index"], np.arange(test.shape[0]) // 2)
    np.savez(paths["npz member"], sims=bank)
    before = {k: p.read_bytes() for k, p in paths.items()}
    bank_arg = f"{paths['npz member']}:sims" if which == "npz member" else str(paths["bank"])
    out = tmp_path / "exp.zarr"
    res = invoke("ingest", "--bank", bank_arg, "--test", str(paths["test"]), "--gt-index",
                 str(paths["gt_index"]), "-o", str(out), "--json", str(paths[which]))
    one_line_error(res, str(paths[which]))
    assert {k: p.read_bytes() for k, p in paths.items()} == before
    assert not out.exists()


def test_fit_and_eval_json_inside_the_store_are_refused(store, tmp_path):
    root = Path(store) / "zarr.json"
    before = root.read_bytes()
    res = invoke("fit", store, "-o", str(tmp_path / "norm.zarr"), "--json", str(root))
    one_line_error(res, str(root))
    assert not (tmp_path / "norm.zarr").exists()
    one_line_error(invoke("eval", store, "--json", str(root)), str(root))
    assert root.read_bytes() == before
    assert invoke("check", store).exit_code == 0


def test_synth_json_inside_the_store_it_replaces_is_refused(store):
    root = Path(store) / "zarr.json"
    before = root.read_bytes()
    res = invoke("synth", "--bank", "4", "--test", "4", "--gallery", "4", store, "--overwrite",
                 "--json", str(root))
    one_line_error(res, str(root))
    assert root.read_bytes() == before


def test_a_uint64_ground_truth_beyond_int64_is_named_with_its_own_value():
    from qbscale.errors import InputError
    from qbscale.storage.stores.store import check_gt_index

    values = np.array([2**63 + 5, 0], dtype=np.uint64)
    with pytest.raises(InputError, match=f"entry 0 is {2**63 + 5}, outside the gallery"):
        check_gt_index(values, 2, 3)
    assert check_gt_index(np.array([2, 0], np.uint8), 2, 3).dtype == np.int64


@pytest.mark.parametrize("text", ["20,,30", "20,", "1_0", "0x10", "2 0"])
def test_a_mistyped_value_list_is_refused_not_read_as_another(store, text):
    # "20,,30" used to run 20 and 30, "1_0" to run beta 10
    res = invoke("run", store, "--beta", text)
    one_line_error(res, "--beta", repr(text))


def test_a_value_list_with_spaces_and_exponents_still_runs(store):
    from qbscale.config import parse_values

    assert parse_values(" 10, 2e1,.5 ") == (10.0, 20.0, 0.5)
    assert invoke("run", store, "--beta", "10, 20").exit_code == 0


# ------------------------------------------------------------------ open_result


def test_open_result_refuses_a_saved_run_whose_manifest_was_deleted(store):
    from qbscale.storage.stores.results import open_result

    assert invoke("run", store, "--save-scores").exit_code == 0
    folder = Path(store) / open_result(store, "scores").path
    (folder / FILE).unlink()
    swap(folder / "c" / "0" / "0" / "0", folder / "c" / "0" / "1" / "0")
    with pytest.raises(DamagedStoreError, match="chunk manifest"):
        open_result(store, "scores")[...]


@pytest.mark.parametrize("where", ["missing", "npy file", "empty dir"])
def test_open_result_of_what_is_no_store_is_store_not_found(tmp_path, where):
    from qbscale.errors import StoreNotFoundError
    from qbscale.storage.stores.results import open_result

    path = tmp_path / "x"
    if where == "npy file":
        np.save(tmp_path / "x.npy", np.zeros((2, 2)))
        path = tmp_path / "x.npy"
    elif where == "empty dir":
        path.mkdir()
    with pytest.raises(StoreNotFoundError, match=f"no qbscale store at {path}"):
        open_result(str(path), "scores")


def test_open_result_of_a_path_outside_the_store_is_an_input_error(store):
    from qbscale.errors import InputError
    from qbscale.storage.stores.results import open_result

    with pytest.raises(InputError, match=r"has no saved '\.\./bank'"):
        open_result(store, "../bank")


# ------------------------------------------------------------------ masked arrays and other types


def masked(array: np.ndarray) -> np.ma.MaskedArray:
    return np.ma.masked_array(array, array > np.median(array))


def test_masked_arrays_are_refused_everywhere(tmp_path):
    # their masked entries used to be read as the values under the mask
    from qbscale.errors import InputError

    bank, test = problem(n_bank=6, n_gallery=4)
    norm = Normaliser.fit(bank, beta=20)
    calls = {
        "ingest bank": lambda: qbscale.ingest(tmp_path / "a.zarr", masked(bank), test,
                                              progress=False),
        "ingest test": lambda: qbscale.ingest(tmp_path / "b.zarr", bank, masked(test),
                                              progress=False),
        "fit": lambda: Normaliser.fit(masked(bank)),
        "normalise": lambda: qbscale.normalise(masked(test), bank),
        "transform": lambda: norm.transform(masked(test)),
    }
    for what, call in calls.items():
        with pytest.raises(InputError, match="is a masked array"):
            call()
        assert not list(tmp_path.iterdir()), what


def test_ingest_takes_lists_and_names_what_is_neither_path_nor_array(tmp_path):
    from qbscale.errors import InputError

    bank, test = problem(n_bank=6, n_gallery=4)
    gt = [int(i) for i in np.arange(test.shape[0]) // 2]
    out = qbscale.ingest(tmp_path / "a.zarr", bank.tolist(), test, gt_index=gt,
                         masks=[True] * test.shape[0], progress=False)
    ds = qbscale.open_dataset(out)
    np.testing.assert_array_equal(np.asarray(ds["bank"]), bank)
    with pytest.raises(InputError, match="test: expected a file path or a numpy array, got "
                                         "NoneType"):
        qbscale.ingest(tmp_path / "b.zarr", bank, None, progress=False)


# ------------------------------------------------------------------ .npy headers that lie


def lying_npy(path: Path, shape: tuple[int, ...]) -> Path:
    """A .npy of 6 x 4 float32 values whose header claims ``shape``."""
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": shape})
    path.write_bytes(header.getvalue() + np.zeros((6, 4), np.float32).tobytes())
    return path


@pytest.mark.parametrize("shape", [(2**62, 4), (99999999999, 99999999), (9, 4)])
def test_a_npy_header_claiming_more_than_the_file_holds_is_truncated(tmp_path, shape):
    # (2**62, 4) float32 is 2**66 bytes: int64 arithmetic wrapped it to 0 and the
    # file passed for complete, to fail later in numpy's mmap with warnings
    from qbscale.errors import InputError
    from qbscale.storage.inputs.readers import open_matrix

    path = lying_npy(tmp_path / "bank.npy", shape)
    with pytest.raises(InputError, match=re.escape(f"its header {shape} float32 needs")):
        open_matrix(str(path))
    np.save(tmp_path / "test.npy", np.zeros((6, 4), np.float32))
    res = invoke("ingest", "--bank", str(path), "--test", str(tmp_path / "test.npy"),
                 "--no-ground-truth", "-o", str(tmp_path / "exp.zarr"))
    one_line_error(res, "bank.npy is truncated")
    assert not (tmp_path / "exp.zarr").exists()


@pytest.mark.parametrize("content", ["empty", "lying", "object"])
def test_search_sims_file_is_opened_as_ingest_opens_it(tmp_path, content):
    # search memory-mapped --sims .npy files itself: an empty one printed
    # "Aborted!", a lying header a traceback
    bank, _ = problem(n_bank=6, n_gallery=4)
    norm = Normaliser.fit(bank, beta=20).save(tmp_path / "norm.zarr")
    sims = tmp_path / "q.npy"
    if content == "empty":
        sims.write_bytes(b"")
    elif content == "lying":
        lying_npy(sims, (9, 4))
    else:
        np.save(sims, np.array([[1.0, "a"]], dtype=object), allow_pickle=True)
    hits = tmp_path / "h.tsv"
    res = invoke("search", str(norm), "--sims", str(sims), "--topk", "2", "--hits", str(hits))
    one_line_error(res, "q.npy")
    assert not hits.exists()


@pytest.mark.parametrize("option", ["--queries", "--gallery-emb"])
@pytest.mark.parametrize("content", ["empty", "huge header"])
def test_search_embedding_files_are_opened_as_ingest_opens_them(tmp_path, option, content):
    # an empty .npy printed "Aborted!"; a 2**62-row header numpy's overflow warnings
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((8, 4)).astype(np.float32)
    bank = rng.standard_normal((12, 4)).astype(np.float32)
    np.save(tmp_path / "gallery.npy", gallery)
    np.save(tmp_path / "queries.npy", rng.standard_normal((3, 4)).astype(np.float32))
    store = qbscale.ingest_embeddings(tmp_path / "e.zarr", bank, bank[:8], gallery,
                                      progress=False)
    norm = Normaliser.fit(store, beta=20).save(tmp_path / "norm.zarr")
    bad = tmp_path / "bad.npy"
    if content == "empty":
        bad.write_bytes(b"")
    else:
        lying_npy(bad, (2**62, 4))
    args = {"--queries": str(tmp_path / "queries.npy"), option: str(bad)}
    hits = tmp_path / "h.tsv"
    res = invoke("search", str(norm), *[x for kv in args.items() for x in kv], "--topk", "2",
                 "--hits", str(hits))
    one_line_error(res, "bad.npy")
    assert not hits.exists()


# ------------------------------------------------------------------ edited settings


def edit_attrs(store: str, attr: str, key: str, value) -> None:
    root = Path(store) / "zarr.json"
    meta = json.loads(root.read_text())
    meta["attributes"][attr][key] = value
    root.write_text(json.dumps(meta))


@pytest.mark.parametrize("key, value", [("queries_per_item", 4), ("ground_truth", False),
                                        ("kind", "embeddings")])
def test_a_store_whose_settings_were_edited_is_refused(store, key, value):
    # queries_per_item 2 -> 4 used to give other, plausible figures
    edit_attrs(store, "qbscale", key, value)
    one_line_error(invoke("run", store), store, "edited")
    with pytest.raises(DamagedStoreError, match="edited"):
        qbscale.run(store)
    res = invoke("check", store)
    assert res.exit_code == 1 and "zarr.json: has attributes edited" in res.output


def test_a_normaliser_whose_settings_were_edited_is_refused(tmp_path):
    # k 1 -> 3 used to load, the activation set still that of k=1
    bank, _ = problem(n_bank=40, n_gallery=10)
    out = Normaliser.fit(bank, beta=20).save(tmp_path / "norm.zarr")
    edit_attrs(str(out), "qbscale_normaliser", "k", 3)
    with pytest.raises(DamagedStoreError, match="edited"):
        Normaliser.load(out)
    assert invoke("check", str(out)).exit_code == 1


def test_runs_and_a_gallery_bank_do_not_break_the_seal(store):
    from qbscale.storage.stores.gallery_bank import add_gallery_bank

    assert invoke("run", store, "--save-scores", "--topk", "2").exit_code == 0
    add_gallery_bank(store, np.random.default_rng(0).random((12, 10), dtype=np.float32),
                     progress=False)
    assert invoke("run", store, "--method", "dual-is").exit_code == 0
    res = invoke("check", store)
    assert res.exit_code == 0, res.output


def test_a_failed_command_is_one_line_even_with_asyncio_tasks_pending(tmp_path):
    # zarr I/O cut short by an error or SIGTERM leaves tasks pending: their
    # "Task was destroyed but it is pending!" followed the Error line at exit
    import subprocess
    import sys

    code = ("import asyncio\n"
            "from qbscale.cli import main\n"
            "loop = asyncio.new_event_loop()\n"
            "async def wait():\n"
            "    await asyncio.sleep(100)\n"
            "task = loop.create_task(wait())\n"
            "loop.run_until_complete(asyncio.sleep(0))\n"
            "del task\n"
            f"main(['-q', 'run', {str(tmp_path / 'none.zarr')!r}])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1
    assert res.stderr.strip() == f"Error: no qbscale store at {tmp_path / 'none.zarr'}"


@pytest.mark.parametrize("workers", [0, -1, 2.0, "2", True])
def test_num_workers_that_is_not_a_positive_integer_is_a_config_error(store, workers):
    # 0 used to run with the default silently, as --workers 0 is refused
    with pytest.raises(ConfigError, match="num_workers must be an integer >= 1"):
        qbscale.run(store, num_workers=workers)


@pytest.mark.parametrize("qpi", [2.5, 2.0, "2", True])
def test_queries_per_item_that_is_not_an_integer_is_a_config_error(tmp_path, qpi):
    # 2.5 used to be read as 2, "2" as 2
    bank, test = problem(n_bank=6, n_gallery=4)
    with pytest.raises(ConfigError, match="queries_per_item must be an integer"):
        qbscale.ingest(tmp_path / "a.zarr", bank, test, queries_per_item=qpi, progress=False)
    assert not (tmp_path / "a.zarr").exists()


@pytest.mark.parametrize("params", [{"beta": True}, {"beta": [20, False]}])
def test_a_bool_beta_is_a_config_error(params):
    # beta=True used to run as beta 1
    bank, test = problem(n_bank=6, n_gallery=4)
    with pytest.raises(ConfigError, match="beta must be a finite number > 0, got"):
        qbscale.normalise(test, bank, **params)
