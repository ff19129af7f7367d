"""``qbscale ingest``: options, summary, errors without tracebacks, killed runs."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from qbscale.errors import IncompleteStoreError, StoreNotFoundError
from qbscale.storage import layout
from qbscale.storage.stores.store import open_experiment

from ._ingest_fixtures import ROOT, sims, write_npz, write_pickle


@pytest.fixture()
def files(tmp_path):
    """bank.pkl (legacy pickle), test.npy, masks.npy (20 items x 2), on disk."""
    rng = np.random.default_rng(3)
    bank, test = sims(rng, 60, 20), sims(rng, 40, 20)
    mask = np.ones((20, 2), np.float32)
    mask[3, 1] = 0
    write_pickle(bank, tmp_path / "bank.pkl", legacy=True)
    np.save(tmp_path / "test.npy", test)
    np.save(tmp_path / "masks.npy", mask)
    return {"bank": bank, "test": test, "mask": mask, "dir": tmp_path}


@pytest.fixture()
def run(cli_invoke):
    """``qbscale ingest ARGS``: ``(exit code, output)``; an escaped exception fails."""

    def invoke(*args: str) -> tuple[int, str]:
        res = cli_invoke("ingest", *args, exit_code=None)
        return res.exit_code, res.output

    return invoke


def open_store(path) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_zarr(str(path))


def test_ingest_writes_a_store_and_summarises_it(files, run):
    d = files["dir"]
    code, output = run("--bank", str(d / "bank.pkl"), "--test", str(d / "test.npy"),
                       "--masks", str(d / "masks.npy"), "-o", str(d / "exp.zarr"), "--quiet",
                       "--chunk-rows", "16", "--codec", "lz4")
    assert code == 0, output
    assert output.startswith(f"Wrote {d / 'exp.zarr'} (sims) in ")
    for part in ("bank 60 x 20 float32 in chunks of 16 x 20", "test 40 x 20 float32",
                 "query_mask (40 bool)", "codec lz4", "MiB on disk", "2 queries per gallery item"):
        assert part in output
    ds = open_store(d / "exp.zarr")
    assert ds["bank"].dims == ("bank_query", "gallery") and ds["test"].dims == ("query", "gallery")
    assert ds["bank"].values.tobytes() == files["bank"].tobytes()
    assert ds["test"].values.tobytes() == files["test"].tobytes()
    np.testing.assert_array_equal(ds["query_mask"].values, files["mask"].ravel() == 1)
    info = ds.attrs[layout.ATTR]
    assert info["sources"]["bank"]["file"] == "bank.pkl" and info["complete"] is True
    assert info["codec"] == "lz4" and info["chunking"]["bank"] == [16, 20]


def test_chunk_and_dtype_options(files, run):
    d = files["dir"]
    write_npz(d / "both.npz", True, bank=files["bank"], test=files["test"])
    code, output = run("--bank", f"{d / 'both.npz'}:bank", "--test", f"{d / 'both.npz'}:test",
                       "-o", str(d / "exp.zarr"), "--quiet", "--chunk-mb", "0.0005",
                       "--chunk-cols", "8", "--dtype", "float16")
    assert code == 0, output
    group = zarr.open_group(str(d / "exp.zarr"), mode="r")
    # 0.0005 MiB = 524 bytes: 8 float16 columns (16 bytes) a row -> at most 32 rows a
    # chunk, so 60 rows go in two chunks of 30
    assert group["bank"].chunks == (30, 8) and group["bank"].dtype == np.float16
    np.testing.assert_array_equal(group["test"][...], files["test"].astype(np.float16))


def test_gt_index_and_queries_per_item_options(files, run):
    d = files["dir"]
    np.save(d / "gt.npy", np.arange(40) % 20)
    code, output = run("--bank", str(d / "bank.pkl"), "--test", str(d / "test.npy"),
                       "--gt-index", str(d / "gt.npy"), "-o", str(d / "a.zarr"), "--quiet")
    assert code == 0 and "ground truth from gt_index" in output
    np.testing.assert_array_equal(open_experiment(str(d / "a.zarr")).gt, np.arange(40) % 20)
    code, output = run("--bank", str(d / "bank.pkl"), "--test", str(d / "test.npy"),
                       "--queries-per-item", "4", "-o", str(d / "b.zarr"), "--quiet")
    assert code == 0 and "4 queries per gallery item" in output


def test_embeddings_mode(files, run):
    d = files["dir"]
    rng = np.random.default_rng(1)
    for name, rows in (("qb", 30), ("q", 10), ("g", 10)):
        np.save(d / f"{name}.npy", sims(rng, rows, 6, "float16"))
    code, output = run("--bank-emb", str(d / "qb.npy"), "--test-emb", str(d / "q.npy"),
                       "--gallery-emb", str(d / "g.npy"), "--normalise-embeddings",
                       "-o", str(d / "e.zarr"), "--quiet")
    assert code == 0, output
    assert "(embeddings)" in output and "gallery_emb 10 x 6 float16" in output
    ds = open_store(d / "e.zarr")
    assert ds["gallery_emb"].dims == ("gallery", "dim")
    assert ds.attrs[layout.ATTR]["similarity"] == "cosine"
    np.testing.assert_allclose(np.linalg.norm(ds["test_emb"].values.astype(np.float32), axis=1),
                               1, atol=2e-3)


@pytest.mark.parametrize(("args", "message"), [
    (["--bank", "{d}/bank.pkl", "--bank-emb", "{d}/test.npy"], "mutually exclusive"),
    (["--bank", "{d}/bank.pkl", "--normalise-embeddings"], "mutually exclusive"),
    (["--bank", "{d}/bank.pkl"], "give both --bank and --test"),
    ([], "give --bank and --test (similarities), or --bank-emb"),
    (["--bank-emb", "{d}/test.npy", "--test-emb", "{d}/test.npy"], "--gallery-emb"),
    (["--bank-emb", "{d}/a.npy", "--test-emb", "{d}/a.npy", "--gallery-emb", "{d}/a.npy",
      "--chunk-cols", "3"], "--chunk-cols applies to similarities only"),
    (["--bank", "{d}/bank.pkl", "--test", "{d}/test.npy", "--codec", "gzip"], "gzip"),
    (["--bank", "{d}/bank.pkl", "--test", "{d}/test.npy", "--chunk-mb", "0"], "0"),
])
def test_usage_errors(files, args, message, run):
    d = files["dir"]
    code, output = run(*[a.format(d=d) for a in args], "-o", str(d / "x.zarr"))
    assert code == 2
    assert message in " ".join(output.split())
    assert not (d / "x.zarr").exists()


def _bad_inputs(d) -> dict[str, tuple[list[str], str]]:
    rng = np.random.default_rng(2)
    np.save(d / "narrow.npy", sims(rng, 40, 19))
    nan = sims(rng, 40, 20)
    nan[7, 2] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "bad_mask.npy", np.full(40, 2.0))
    np.save(d / "short_mask.npy", np.ones(39))
    np.save(d / "flat.npy", np.ones(20, np.float32))
    np.save(d / "empty.npy", np.ones((0, 20), np.float32))
    np.save(d / "odd.npy", sims(rng, 41, 20))
    (d / "cut.pkl").write_bytes((d / "bank.pkl").read_bytes()[:500])
    (d / "evil.pkl").write_bytes(pickle.dumps(_Evil(d / "pwned"), protocol=4))
    sims_args = ["--bank", str(d / "bank.pkl"), "--test"]
    return {
        "gallery": ([*sims_args, str(d / "narrow.npy")],
                    "bank (bank.pkl) has 20 gallery columns, test (narrow.npy) has 19"),
        "nan": ([*sims_args, str(d / "nan.npy")],
                "test (nan.npy) holds 1 non-finite values (1 NaN, 0 inf); the first is at row 7, "
                "column 2"),
        "mask values": ([*sims_args, str(d / "test.npy"), "--masks", str(d / "bad_mask.npy")],
                        "query mask (bad_mask.npy) holds 40 values other than 0/1; the first "
                        "is 2.0"),
        "mask size": ([*sims_args, str(d / "test.npy"), "--masks", str(d / "short_mask.npy")],
                      "query mask (short_mask.npy) has shape (39,)"),
        "1-D": ([*sims_args, str(d / "flat.npy")], "test (flat.npy) must be a 2-D matrix"),
        "empty": ([*sims_args, str(d / "empty.npy")], "test (empty.npy) is empty: shape (0, 20)"),
        "multiple": ([*sims_args, str(d / "odd.npy"), "--queries-per-item", "2"],
                     "queries_per_item=2 does not fit 41 test queries and 20 gallery items"),
        "no truth and a truth": ([*sims_args, str(d / "test.npy"), "--no-ground-truth",
                                  "--queries-per-item", "2"],
                                 "no ground truth was asked for: give neither queries_per_item"),
        "truncated": (["--bank", str(d / "cut.pkl"), "--test", str(d / "test.npy")],
                      "cut.pkl is truncated or not a valid pickle"),
        "evil": (["--bank", str(d / "evil.pkl"), "--test", str(d / "test.npy")],
                 "evil.pkl: refusing to load global posix.system"),
        "missing": ([*sims_args, str(d / "nope.npy")], "no such file"),
    }


class _Evil:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_bad_inputs_exit_1_with_a_message_and_no_store(files, run):
    d = files["dir"]
    for case, (args, message) in _bad_inputs(d).items():
        code, output = run(*args, "-o", str(d / "x.zarr"), "--quiet")
        assert code == 1, (case, output)
        assert output.startswith("Error: "), (case, output)
        assert message in output, (case, output)
        assert "Traceback" not in output
        assert not (d / "x.zarr").exists(), case
        assert [p for p in os.listdir(d) if "partial" in p] == [], case
    assert not (d / "pwned").exists()


def test_existing_output_needs_overwrite(files, run):
    d = files["dir"]
    args = ["--bank", str(d / "bank.pkl"), "--test", str(d / "test.npy"), "-o", str(d / "e.zarr"),
            "--quiet"]
    assert run(*args)[0] == 0
    code, output = run(*args)
    assert code == 1 and "e.zarr exists: pass --overwrite" in output
    assert run(*args, "--overwrite")[0] == 0


def test_killed_ingest_leaves_nothing_that_looks_complete(tmp_path, run):
    """SIGKILL mid-write: no store at the output path, the partial one is refused by
    the reader, and a fresh ingest succeeds (clearing the leftovers)."""
    rows, cols = 1024, 65536  # 256 MiB, written twice (bank and test)
    big = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype="f4",
                                    shape=(rows, cols))
    rng = np.random.default_rng(0)
    for r0 in range(0, rows, 128):
        big[r0:r0 + 128] = rng.random((128, cols), dtype=np.float32)
    big.flush()
    del big
    out = tmp_path / "big.zarr"
    cmd = [sys.executable, "-m", "qbscale.cli", "ingest", "--bank", str(tmp_path / "big.npy"),
           "--test", str(tmp_path / "big.npy"), "--queries-per-item", "1", "-o", str(out),
           "--codec", "zstd", "--chunk-mb", "1", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial = tmp_path / f".big.zarr.partial-{socket.gethostname()}-{proc.pid}"
    deadline = time.monotonic() + 60
    while not (partial / "bank" / "c").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "the partial store never appeared"
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.skip(f"ingest finished before it could be killed: {proc.communicate()}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not out.exists()
    assert partial.exists()
    with pytest.raises(IncompleteStoreError):
        open_experiment(str(partial))
    with pytest.raises(StoreNotFoundError):
        open_experiment(str(out))
    code, output = run("--bank", str(tmp_path / "big.npy"), "--test", str(tmp_path / "big.npy"),
                       "--queries-per-item", "1", "-o", str(out), "--quiet", "--chunk-mb", "16")
    assert code == 0, output
    assert not partial.exists()
    assert zarr.open_group(str(out), mode="r").attrs[layout.ATTR]["complete"] is True
