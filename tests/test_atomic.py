"""qbscale.storage.atomic: beside-and-rename writes keep the old file on failure."""

from __future__ import annotations

import os
import stat

import pytest

from qbscale.errors import OutputError
from qbscale.storage import atomic


def test_new_file_gets_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic.write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o640


def test_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    path.chmod(0o604)
    atomic.write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o604


def test_failure_inside_the_block_keeps_the_old_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.replacing(path) as fh:
        fh.write(b"half")
        raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_write_error_is_an_output_error_naming_the_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    with pytest.raises(OutputError, match=str(path)), atomic.replacing(path):
        raise OSError(28, "No space left on device")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_check_writable_refuses_missing_directories_and_non_files(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        atomic.check_writable(tmp_path / "nope" / "f.json")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputError, match="not a regular file"):
        atomic.check_writable(tmp_path / "fifo")
    atomic.check_writable(tmp_path / "ok.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]
