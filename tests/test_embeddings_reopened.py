"""Embedding files are opened anew when another file is met at the same (relative)
path: a process that searched with one file never serves its rows for another."""

from __future__ import annotations

import os

import numpy as np

from qbscale.storage.inputs.gallery_rows import query_source


def test_a_relative_path_in_another_directory_is_another_file(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    np.save(first / "q.npy", np.ones((3, 6), np.float32))
    np.save(second / "q.npy", np.full((4, 16), 2.0, np.float32))
    here = os.getcwd()
    try:
        os.chdir(first)
        assert query_source("q.npy", 10).shape == (3, 6)
        os.chdir(second)
        got = query_source("q.npy", 10)
        assert got.shape == (4, 16)
        np.testing.assert_array_equal(got.read(0), np.full((4, 16), 2.0, np.float32))
    finally:
        os.chdir(here)


def test_a_file_replaced_at_the_same_path_is_read_again(tmp_path):
    path = tmp_path / "q.npy"
    np.save(path, np.ones((3, 5), np.float32))
    assert query_source(str(path), 10).shape == (3, 5)
    os.replace(np.save(tmp_path / "new.npy", np.zeros((2, 7), np.float32)) or
               tmp_path / "new.npy", path)
    got = query_source(str(path), 10)
    assert got.shape == (2, 7)
    np.testing.assert_array_equal(got.read(0), np.zeros((2, 7), np.float32))
