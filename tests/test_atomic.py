"""qbscale.storage.durability.atomic: beside-and-rename writes keep the old file on failure."""

from __future__ import annotations

import os
import stat

import pytest

from qbscale.errors import OutputError
from qbscale.storage.durability import atomic


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


def test_held_renames_together_at_the_end(tmp_path):
    (tmp_path / "a").write_bytes(b"old a")
    with atomic.held():
        atomic.write_bytes(tmp_path / "a", b"new a")
        atomic.write_bytes(tmp_path / "b", b"new b")
        assert (tmp_path / "a").read_bytes() == b"old a"
        assert not (tmp_path / "b").exists()
    assert (tmp_path / "a").read_bytes() == b"new a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_held_drops_every_file_when_the_block_fails(tmp_path):
    (tmp_path / "a").write_bytes(b"old a")
    with pytest.raises(RuntimeError), atomic.held():
        atomic.write_bytes(tmp_path / "a", b"new a")
        atomic.write_bytes(tmp_path / "b", b"new b")
        raise RuntimeError("the store's publication failed")
    assert (tmp_path / "a").read_bytes() == b"old a"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_building_a_new_folder_renames_it_into_place(tmp_path):
    with atomic.building(tmp_path / "rep") as staging:
        (staging / "index.html").write_text("page")
        assert not (tmp_path / "rep").exists()
    assert (tmp_path / "rep" / "index.html").read_text() == "page"
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]


def test_building_into_a_folder_keeps_other_files_and_the_old_ones_on_failure(tmp_path):
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "index.html").write_text("old page")
    (rep / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=str(rep / "a.png")), atomic.building(rep) as staging:
        (staging / "index.html").write_text("new page")
        raise OSError(28, "No space left on device", str(staging / "a.png"))
    assert {p.name: p.read_text() for p in rep.iterdir()} == {"index.html": "old page",
                                                              "notes.txt": "mine"}
    with atomic.building(rep) as staging:
        (staging / "index.html").write_text("new page")
    assert {p.name: p.read_text() for p in rep.iterdir()} == {"index.html": "new page",
                                                              "notes.txt": "mine"}


def test_write_now_is_renamed_at_once_inside_held(tmp_path):
    """A store's own files (root zarr.json, manifests) are published under its lock:
    never deferred to the end of a command's block."""
    with atomic.held():
        atomic.write_now(tmp_path / "zarr.json", b"{}")
        atomic.write_bytes(tmp_path / "hits.tsv", b"x")
        assert (tmp_path / "zarr.json").read_bytes() == b"{}"
        assert not (tmp_path / "hits.tsv").exists()
    assert (tmp_path / "hits.tsv").read_bytes() == b"x"


def test_replace_false_keeps_a_file_that_appeared_meanwhile(tmp_path):
    from qbscale.errors import StoreExistsError

    path = tmp_path / "idx.faiss"
    with pytest.raises(StoreExistsError, match="appeared while"), \
            atomic.replacing(path, replace=False) as fh:
        fh.write(b"mine")
        path.write_bytes(b"theirs")  # another writer finished first
    assert path.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["idx.faiss"]
    with atomic.replacing(tmp_path / "new", replace=False) as fh:
        fh.write(b"x")
    assert (tmp_path / "new").read_bytes() == b"x"
