"""storage.layout.is_url: the one "is this remote" test; file:// is local everywhere."""

from __future__ import annotations

import numpy as np
import pytest

from qbscale.storage import layout


@pytest.mark.parametrize(("path", "remote"), [
    ("s3://bucket/exp.zarr", True), ("gs://b/x", True), ("memory://x/exp.zarr", True),
    ("file:///tmp/exp.zarr", False), ("exp.zarr", False), ("/abs/exp.zarr", False),
    ("relative/dir/exp.zarr", False),
])
def test_is_url(path, remote):
    assert layout.is_url(path) is remote


def test_no_other_url_test_in_the_code():
    """Every "://" test of a storage path goes through layout.is_url (scheduler
    addresses such as tcp://HOST:PORT are another matter)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    hits = []
    for path in [*root.joinpath("qbscale").rglob("*.py"), *root.joinpath("cli").rglob("*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if '"://" in' in code or "'://' in" in code:
                hits.append(f"{path.relative_to(root)}:{n}")
    # sources._raw_chunk keeps its own test, equivalent since ZarrMatrix.open turns
    # file:// URLs into local paths (test_file_url_store_is_local_throughout)
    assert {h.split(":")[0] for h in hits} <= {"qbscale/storage/layout.py",
                                               "qbscale/storage/stores/sources.py"}, hits
    assert len(hits) == 2, hits


def test_file_url_store_is_local_throughout(tmp_path, cli_invoke):
    """ingest to file://, open it, run on it: staged and renamed like a path, its chunks
    read straight from their files, and the CLI's disk usage counted."""
    from qbscale.api import run
    from qbscale.storage.inputs.readers import open_matrix
    from qbscale.storage.stores.ingest import ingest
    from qbscale.storage.stores.store import open_experiment

    rng = np.random.default_rng(0)
    bank, test = rng.random((20, 5)).astype("f4"), rng.random((10, 5)).astype("f4")
    url = f"file://{tmp_path}/exp.zarr"
    assert ingest(url, bank, test, progress=False) == f"{tmp_path}/exp.zarr"
    assert not list(tmp_path.glob(".exp.zarr.*"))
    experiment = open_experiment(url)
    assert experiment.url == f"{tmp_path}/exp.zarr"
    assert experiment.bank.url == f"{tmp_path}/exp.zarr"  # so direct chunk reads apply
    np.testing.assert_array_equal(experiment.test.read(0, 0), test)
    assert run(url, beta=20).after[20.0] == run(tmp_path / "exp.zarr", beta=20).after[20.0]
    np.save(tmp_path / "b.npy", bank)
    np.testing.assert_array_equal(open_matrix(f"file://{tmp_path}/b.npy").read(), bank)
    res = cli_invoke("ingest", "--bank", f"file://{tmp_path}/b.npy", "--test", tmp_path / "b.npy",
                     "--queries-per-item", "4", "-o", f"file://{tmp_path}/cli.zarr", "--quiet")
    assert "MiB on disk" in res.output
    assert open_experiment(tmp_path / "cli.zarr").test.shape == (20, 5)
