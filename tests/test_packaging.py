"""The wheel installs `qbscale` and `qbscale.cli` (from the cli/ folder), no
top-level `cli` package, and the `qbscale` console script."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                           str(out), str(ROOT)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{proc.stderr[-2000:]}")
    return next(out.glob("qbscale-*.whl"))


def test_wheel_maps_cli_into_the_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "qbscale/cli/__init__.py" in names and "qbscale/cli/run.py" in names
    assert "qbscale/py.typed" in names
    assert not [n for n in names if n.startswith("cli/")]
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "qbscale = qbscale.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_installed_wheel_runs_the_cli(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True)
    code = ("import qbscale, qbscale.cli, sys; "
            "assert qbscale.__file__.startswith(sys.argv[1]), qbscale.__file__; "
            "qbscale.cli.cli(['--help'])")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True,
                          text=True, cwd=tmp_path, env={"PYTHONPATH": str(target),
                                                        "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    for command in ("ingest", "run", "eval", "hubness", "report", "synth", "fit"):
        assert command in proc.stdout


def test_help_and_dir_show_the_api_and_import_stays_light():
    """``dir(qbscale)`` and ``help(qbscale)`` list the lazily loaded public API, and
    ``import qbscale`` still loads none of the heavy libraries."""
    code = ("import sys, pydoc, qbscale; "
            "print(sorted(set(dir(qbscale)) & set(qbscale.__all__)) == sorted(qbscale.__all__)); "
            "print(sorted(m for m in ('dask', 'zarr', 'xarray', 'numpy') if m in sys.modules)); "
            "text = pydoc.render_doc(qbscale, renderer=pydoc.plaintext); "
            "print(all(n in text for n in qbscale.__all__ if n != '__version__'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[:3] == ["True", "[]", "True"], out
