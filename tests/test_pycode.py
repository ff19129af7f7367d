"""The real pycode benchmark: qbscale must print the reference code's figures."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qbscale.cli import cli

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "examples" / "data" / "pycode"
SHARED = ROOT.parent / "shared" / "data"

BEFORE = "none         -    44.9    71.1    79.1    91.1     2.0    34.5    63.2"
AFTER = "dis         20    44.8    71.3    78.5    90.4     2.0    39.4    63.1"


def _sims(data: Path) -> tuple[np.ndarray, np.ndarray]:
    gallery = np.load(data / "gallery_test.npy").astype(np.float32)
    bank = np.load(data / "querybank.npy").astype(np.float32) @ gallery.T
    test = np.load(data / "queries_test.npy").astype(np.float32) @ gallery.T
    return np.ascontiguousarray(bank), np.ascontiguousarray(test)


@pytest.fixture(scope="module")
def pickles(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Seed-format pickles of both kinds (numpy 2 and numpy 1.x naming)."""
    out = tmp_path_factory.mktemp("pycode")
    maker = SHARED / "make_pickles.py"
    kinds = {}
    for kind, flag in (("numpy2", []), ("legacy", ["--legacy"])):
        folder = out / kind
        if maker.exists():  # the benchmark's own pickle writer
            subprocess.run([sys.executable, str(maker), str(SHIPPED), str(folder), *flag],
                           check=True)
        else:
            folder.mkdir()
            for name, arr in zip(("sims_train_test", "sims_test"), _sims(SHIPPED), strict=True):
                blob = pickle.dumps(arr, protocol=3 if flag else 4)
                if flag:
                    blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
                (folder / f"{name}.pkl").write_bytes(blob)
        kinds[kind] = (folder / "sims_train_test.pkl", folder / "sims_test.pkl")
    return kinds


def test_shipped_sample_is_the_benchmark():
    if not SHARED.exists():
        pytest.skip("the benchmark's original folder is not beside the repository")
    for name in ("queries_test.npy", "gallery_test.npy", "querybank.npy"):
        assert (SHIPPED / name).read_bytes() == (SHARED / "pycode" / name).read_bytes()


@pytest.mark.parametrize(("kind", "scheduler"), [
    ("numpy2", "threads"), ("legacy", "threads"), ("legacy", "processes")])
def test_seed_invocation_prints_reference_figures(pickles, kind, scheduler):
    bank, test = pickles[kind]
    res = CliRunner().invoke(cli, ["run", "--sims_train_test_path", str(bank),
                                   "--sims_test_path", str(test), "--beta", "20", "--k", "1",
                                   "--scheduler", scheduler, "--quiet"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert BEFORE in lines and AFTER in lines, res.output
    assert "activation set: 2447 of 4000" in res.output


def test_store_run_prints_reference_figures(pickles, tmp_path):
    bank, test = pickles["legacy"]
    store = tmp_path / "pycode.zarr"
    runner = CliRunner()
    res = runner.invoke(cli, ["ingest", "--bank", str(bank), "--test", str(test), "-o", str(store),
                              "--chunk-rows", "700", "--quiet"])
    assert res.exit_code == 0, res.output
    json_path = tmp_path / "metrics.json"
    res = runner.invoke(cli, ["run", str(store), "--beta", "10,20", "--json", str(json_path),
                              "--save-ranks", "--quiet"])
    assert res.exit_code == 0, res.output
    assert BEFORE in res.output.splitlines() and AFTER in res.output.splitlines()
    import json

    summary = json.loads(json_path.read_text())
    assert summary["after"]["20.0"]["MeanR"] == pytest.approx(39.4025)
    assert summary["activation_size"] == 2447
    import zarr

    group = zarr.open_group(str(store), mode="r")
    assert group["ranks"].shape == (2, 4000)
    assert group["ranks_baseline"][...].mean() + 1 == pytest.approx(34.5487, abs=1e-4)


def test_demo_example_runs(tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import pycode_demo
    finally:
        sys.path.pop(0)
    assert pycode_demo.main(["--out", str(tmp_path), "--show", "1"]) == 0
    assert (tmp_path / "pycode.zarr").is_dir()


def test_seed_pickles_with_nan_are_refused(tmp_path):
    bank = np.zeros((6, 3), np.float32)
    bank[4, 1] = np.nan
    paths = []
    for name, arr in (("bank", bank), ("test", np.zeros((3, 3), np.float32))):
        paths.append(tmp_path / f"{name}.pkl")
        paths[-1].write_bytes(pickle.dumps(arr))
    res = CliRunner().invoke(cli, ["run", "--sims_train_test_path", str(paths[0]),
                                   "--sims_test_path", str(paths[1]), "--quiet"])
    assert res.exit_code == 1
    assert "bank.pkl holds 1 non-finite values (1 NaN, 0 inf)" in res.output
    assert "row 4, column 1" in res.output
