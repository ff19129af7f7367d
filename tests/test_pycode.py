"""The real pycode benchmark: qbscale must print the reference code's figures."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "examples" / "data" / "pycode"
SHARED = ROOT.parent / "shared" / "data"

BEFORE = "none         -    44.9    71.1    79.1    91.1     2.0    34.5    63.2"
AFTER = "dis         20    44.8    71.3    78.5    90.4     2.0    39.4    63.1"
#: the reference code's figures as the benchmark's README gives them (its table
#: rows "no normalisation" and "DIS, beta=20"), with these as the fallback
#: when the benchmark folder is not beside the repository
FIGURES = ("R@1", "R@5", "R@10", "R@50", "MedR", "MeanR", "geom")
SHIPPED_FIGURES = {"none": [44.9, 71.1, 79.1, 91.1, 2.0, 34.5, 63.2],
                   "dis": [44.8, 71.3, 78.5, 90.4, 2.0, 39.4, 63.1]}


def reference_figures() -> dict[str, list[float]]:
    """``{"none": [...], "dis": [...]}`` in the order of :data:`FIGURES`."""
    readme = SHARED / "README.md"
    if not readme.exists():
        return SHIPPED_FIGURES
    rows = {}
    for line in readme.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("no normalisation", "DIS, beta=20"):
            rows["none" if cells[0] == "no normalisation" else "dis"] = \
                [float(c) for c in cells[1:]]
    assert set(rows) == {"none", "dis"}, f"no reference table in {readme}"
    return rows


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
def test_seed_invocation_prints_reference_figures(pickles, kind, scheduler, cli_invoke):
    bank, test = pickles[kind]
    res = cli_invoke("run", "--sims_train_test_path", bank, "--sims_test_path", test,
                     "--beta", "20", "--k", "1", "--scheduler", scheduler, "--quiet")
    lines = res.output.splitlines()
    assert BEFORE in lines and AFTER in lines, res.output
    assert "activation set: 2447 of 4000" in res.output


def test_store_run_prints_reference_figures(pickles, tmp_path, cli_invoke):
    bank, test = pickles["legacy"]
    store = tmp_path / "pycode.zarr"
    cli_invoke("ingest", "--bank", bank, "--test", test, "-o", store, "--chunk-rows", "700",
               "--quiet")
    json_path = tmp_path / "metrics.json"
    res = cli_invoke("run", store, "--beta", "10,20", "--json", json_path, "--save-ranks",
                     "--quiet")
    assert BEFORE in res.output.splitlines() and AFTER in res.output.splitlines()
    import json

    summary = json.loads(json_path.read_text())
    assert summary["after"]["20.0"]["MeanR"] == pytest.approx(39.4025)
    assert summary["activation_size"] == 2447
    from qbscale.storage.stores.results import open_result

    assert open_result(str(store), "ranks").shape == (2, 4000)
    assert open_result(str(store), "ranks_baseline")[...].mean() + 1 == pytest.approx(34.5487,
                                                                                       abs=1e-4)


def test_reference_figures_agree_with_the_cli_constants():
    figures = reference_figures()
    assert BEFORE.split()[2:] == [f"{v:.1f}" for v in figures["none"]]
    assert AFTER.split()[2:] == [f"{v:.1f}" for v in figures["dis"]]


def test_demo_example_prints_the_reference_figures(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import pycode_demo
    finally:
        sys.path.pop(0)
    assert pycode_demo.main(["--out", str(tmp_path), "--show", "1"]) == 0
    assert (tmp_path / "pycode.zarr").is_dir()
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.rstrip().endswith("reference code"))
    shown = header.split()[:-2]  # the demo prints R1 ... MeanR (not geom)
    assert shown == ["R1", "R5", "R10", "R50", "MedR", "MeanR"]
    want = reference_figures()
    for name in ("none", "dis"):
        row = next(line.split() for line in lines if line.split()[:1] == [name])
        printed = [float(v) for v in row[1:1 + len(shown)]]
        assert printed == want[name][:len(shown)], (name, row)
    assert any(line.startswith("identical to the reference code: yes; activation set 2447 "
                               "items") for line in lines), lines


def test_seed_pickles_with_nan_are_refused(tmp_path, cli_invoke):
    bank = np.zeros((6, 3), np.float32)
    bank[4, 1] = np.nan
    paths = []
    for name, arr in (("bank", bank), ("test", np.zeros((3, 3), np.float32))):
        paths.append(tmp_path / f"{name}.pkl")
        paths[-1].write_bytes(pickle.dumps(arr))
    res = cli_invoke("run", "--sims_train_test_path", paths[0], "--sims_test_path", paths[1],
                     "--quiet", exit_code=1)
    assert "bank.pkl holds 1 non-finite values (1 NaN, 0 inf)" in res.output
    assert "row 4, column 1" in res.output
