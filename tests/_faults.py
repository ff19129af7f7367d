"""Faults for the data-safety tests: small or read-only disks, subprocesses to
signal, snapshots of a directory tree to compare byte for byte."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

#: the venv's interpreter; the ``qbscale`` console script sits beside it
PYTHON = Path(sys.executable)
QBSCALE = PYTHON.parent / "qbscale"


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "2m", read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (root only; skips the test otherwise)."""
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs",
                                            str(path)], capture_output=True).returncode:
        pytest.skip(f"cannot mount a {size} tmpfs here (needs root and mount)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[Path]:
    """``path`` as a directory nobody can write into (a read-only tmpfs as root)."""
    if os.geteuid() != 0:
        path.mkdir()
        path.chmod(0o500)
        try:
            yield path
        finally:
            path.chmod(0o700)
        return
    with tmpfs(path, "1m", read_only=True) as ro:
        yield ro


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """``{relative path: (mode, bytes)}`` of every file under ``root`` (dirs: empty bytes)."""
    out = {}
    for path in sorted(root.rglob("*")):
        data = path.read_bytes() if path.is_file() else b""
        out[str(path.relative_to(root))] = (path.stat().st_mode, data)
    return out


def leftovers(directory: Path) -> list[str]:
    """Hidden staging or swap entries qbscale may have left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


#: runs ``qbscale ARGS`` with ``HOOK`` (a module attribute) slowed: after the
#: wrapped call returns the first time, it touches $QB_READY and sleeps $QB_SLEEP s
SLOW_SCRIPT = """
import os, sys, time, importlib
module, _, attr = os.environ["QB_HOOK"].rpartition(".")
owner_path, _, cls = module.rpartition(":") if ":" in module else (module, "", "")
owner = importlib.import_module(owner_path)
if cls:
    owner = getattr(owner, cls)
real = getattr(owner, attr)
def slow(*args, **kwargs):
    out = real(*args, **kwargs)
    open(os.environ["QB_READY"], "a").close()
    time.sleep(float(os.environ.get("QB_SLEEP", "60")))
    return out
setattr(owner, attr, slow)
from qbscale.cli import main
main(sys.argv[1:])
"""


def slowed(hook: str, ready: Path, *args: str, sleep: float = 60.0) -> subprocess.Popen[str]:
    """Start ``qbscale ARGS`` with ``hook`` (``pkg.module.func`` or
    ``pkg.module:Class.method``) pausing after its first call (see :data:`SLOW_SCRIPT`)."""
    env = {**os.environ, "QB_HOOK": hook, "QB_READY": str(ready), "QB_SLEEP": str(sleep)}
    return subprocess.Popen([str(PYTHON), "-c", SLOW_SCRIPT, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120.0) -> None:
    """Wait until ``path`` exists (failing if ``proc`` ends first or time runs out)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended ({proc.returncode}) before {path}:\n{out}{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


def signalled(proc: subprocess.Popen[str], signum: int = signal.SIGTERM,
              timeout: float = 120.0) -> tuple[int, str, str]:
    """Send ``signum`` to ``proc``; its ``(returncode, stdout, stderr)``."""
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"no exit {timeout} s after signal {signum}:\n{out}{err}")
    return proc.returncode, out, err


def qbscale(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """Run the ``qbscale`` console script to the end."""
    return subprocess.run([str(QBSCALE), *args], capture_output=True, text=True,
                          timeout=timeout)
