"""An update may take the place of the normaliser it updates only when asked
(--overwrite); no other output may replace or go inside an input, and merge
never writes over one of the normalisers it merges."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qbscale.cli import cli


def _invoke(*args: object) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    assert _invoke("-q", "synth", "--kind", "embeddings", "--bank", "40", "--test", "10",
                   "--gallery", "10", "--dim", "8", root / "emb.zarr").exit_code == 0
    for name in ("a.zarr", "b.zarr"):
        res = _invoke("-q", "fit", root / "emb.zarr", "-o", root / name, "--updatable")
        assert res.exit_code == 0, res.output
    np.save(root / "nb.npy", np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32))
    return root


@pytest.mark.parametrize("argv", [
    ("fit", "{r}/nb.npy", "--update", "{r}/a.zarr", "-o", "{r}/a.zarr"),
    ("items", "{r}/a.zarr", "--add", "{r}/nb.npy", "-o", "{r}/a.zarr"),
    ("merge", "{r}/a.zarr", "{r}/b.zarr", "-o", "{r}/a.zarr", "--overwrite"),
    ("merge", "{r}/a.zarr", "{r}/b.zarr", "-o", "{r}/a.zarr/shift"),
    ("items", "{r}/a.zarr", "--add", "{r}/nb.npy", "-o", "{r}/a.zarr/x", "--overwrite"),
    ("items", "{r}/a.zarr", "--add", "{r}/nb.npy", "-o", "{r}/c.zarr", "--json",
     "{r}/a.zarr/zarr.json"),
    ("fit", "{r}/nb.npy", "--update", "{r}/a.zarr", "-o", "{r}/nb.npy", "--overwrite"),
])
def test_refused_and_nothing_changed(live, argv):
    before = _digest(live)
    res = _invoke(*(a.format(r=live) for a in argv))
    assert res.exit_code != 0, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, res.output
    assert _digest(live) == before


def test_an_update_in_place_with_overwrite_replaces_it(tmp_path, live):
    import shutil

    work = tmp_path / "w"
    shutil.copytree(live, work)
    res = _invoke("-q", "items", work / "a.zarr", "--add", work / "nb.npy", "-o",
                  work / "a.zarr", "--overwrite")
    assert res.exit_code == 0, res.output
    res = _invoke("info", work / "a.zarr")
    assert res.exit_code == 0 and "4 items added" in res.output, res.output
