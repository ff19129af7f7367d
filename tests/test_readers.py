"""Input readers: the restricted unpickler, .npy by memmap, .npz streaming, errors."""

from __future__ import annotations

import hashlib
import os
import pickle
import tracemalloc
import warnings
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import zarr

from qbscale.errors import InputError, UnsafePickleError
from qbscale.storage.inputs import readers

from ._ingest_fixtures import npz_member_compression, sims, write_npz, write_pickle


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


def blocks_of(src: readers.InputMatrix, rows: int) -> list[tuple[int, np.ndarray]]:
    return [(r0, np.array(block)) for r0, block in src.blocks(rows)]


def assert_same_bits(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


# --- pickles -------------------------------------------------------------------------------

@pytest.mark.parametrize(("legacy", "protocol"), [(False, 4), (False, 5), (True, 3)])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int64", "bool"])
def test_pickles_load_bit_for_bit_without_warnings(tmp_path, rng, legacy, protocol, dtype):
    arr = sims(rng, 13, 7).astype(dtype)
    path = write_pickle(arr, tmp_path / "a.pkl", legacy=legacy, protocol=protocol)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = readers.load_pickle(path)
    assert type(got) is np.ndarray
    assert_same_bits(got, arr)


def test_fortran_and_big_endian_pickles_load_as_pickle_does(tmp_path, rng):
    for arr in (np.asfortranarray(sims(rng, 5, 4)), sims(rng, 5, 4).astype(">f8")):
        for protocol in (4, 5):
            path = write_pickle(arr, tmp_path / "a.pkl", protocol=protocol)
            got = readers.load_pickle(path)
            want = pickle.loads(path.read_bytes())
            np.testing.assert_array_equal(got, arr)
            assert got.dtype == want.dtype and got.flags.f_contiguous == want.flags.f_contiguous


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Open:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("payload", ["system", "open", "nested"])
def test_malicious_pickle_is_refused_before_running(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = {"system": _System(marker), "open": _Open(marker),
            "nested": [np.zeros(3), _System(marker)]}[payload]
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(evil, protocol=4))
    with pytest.raises(UnsafePickleError) as info:
        readers.load_pickle(path)
    message = str(info.value)
    assert "evil.pkl" in message
    assert ("posix.system" if payload != "open" else "io.open") in message
    assert not marker.exists()
    with pytest.raises(UnsafePickleError):  # open_matrix goes through the same door
        readers.open_matrix(path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.asmatrix
def test_pickle_of_something_else_is_refused(tmp_path):
    cases = {
        "list.pkl": pickle.dumps([np.zeros(2)], protocol=4),
        "objects.pkl": pickle.dumps(np.array([1, "a"], dtype=object), protocol=4),
        "struct.pkl": pickle.dumps(np.zeros(3, dtype=[("a", "f4")]), protocol=4),
        "matrix.pkl": pickle.dumps(np.asmatrix(np.eye(2)), protocol=4),
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises((InputError, UnsafePickleError)) as info:
            readers.load_pickle(tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(InputError, match="holds a list"):
        readers.load_pickle(tmp_path / "list.pkl")
    with pytest.raises(InputError, match="object"):
        readers.load_pickle(tmp_path / "objects.pkl")


@pytest.mark.parametrize("cut", [0, 1, 40, -1, -200])
def test_truncated_pickle_is_an_input_error(tmp_path, rng, cut):
    blob = pickle.dumps(sims(rng, 20, 20), protocol=4)
    path = tmp_path / "cut.pkl"
    path.write_bytes(blob[:cut])
    with pytest.raises(InputError, match=r"cut\.pkl"):
        readers.open_matrix(path)


def test_corrupt_pickle_is_an_input_error(tmp_path, rng):
    blob = bytearray(pickle.dumps(sims(rng, 20, 20), protocol=4))
    blob[30:60] = b"\xff" * 30
    (tmp_path / "bad.pkl").write_bytes(bytes(blob))
    with pytest.raises((InputError, UnsafePickleError), match=r"bad\.pkl"):
        readers.load_pickle(tmp_path / "bad.pkl")


# --- .npy ------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", ["float32", ">f8", "float16"])
def test_npy_is_read_by_memmap_in_blocks(tmp_path, rng, order, dtype):
    arr = np.asarray(sims(rng, 50, 9).astype(dtype), order=order)
    np.save(tmp_path / "a.npy", arr)
    src = readers.open_matrix(tmp_path / "a.npy")
    assert isinstance(src, readers.NpyInput)
    assert (src.shape, src.dtype, src.name) == ((50, 9), arr.dtype, "a.npy")
    with mock.patch.object(readers.np, "load", wraps=np.load) as load:
        got = []
        for r0, block in src.blocks(16):
            assert isinstance(block, np.memmap) and block.dtype == arr.dtype
            got.append((r0, np.array(block)))
    assert {c.kwargs.get("mmap_mode") for c in load.call_args_list} == {"r"}
    assert [r0 for r0, _ in got] == [0, 16, 32, 48]
    whole = np.concatenate([b for _, b in got])  # (in native byte order)
    assert_same_bits(whole, np.ascontiguousarray(arr).astype(whole.dtype))


def test_npy_blocks_do_not_hold_the_whole_file(tmp_path, rng):
    arr = sims(rng, 512, 1024)  # 2 MiB
    np.save(tmp_path / "a.npy", arr)
    src = readers.open_matrix(tmp_path / "a.npy")
    tracemalloc.start()
    for _, block in src.blocks(32):
        np.array(block)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < arr.nbytes / 4


def test_truncated_or_corrupt_npy(tmp_path, rng):
    np.save(tmp_path / "a.npy", sims(rng, 30, 30))
    blob = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(blob[:-100])
    with pytest.raises(InputError, match=r"short\.npy is truncated"):
        readers.open_matrix(tmp_path / "short.npy")
    (tmp_path / "header.npy").write_bytes(blob[:40])
    with pytest.raises(InputError, match=r"header\.npy"):
        readers.open_matrix(tmp_path / "header.npy")
    (tmp_path / "garbled.npy").write_bytes(blob[:10] + b"{'descr': nonsense" + blob[28:])
    with pytest.raises(InputError, match=r"garbled\.npy"):
        readers.open_matrix(tmp_path / "garbled.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.npy"):
        readers.open_matrix(tmp_path / "empty.npy")


def test_object_npy_is_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([1, "x"], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"o\.npy.*object"):
        readers.open_matrix(tmp_path / "o.npy")


# --- .npz ------------------------------------------------------------------------------------

@pytest.mark.parametrize("compressed", [False, True])
def test_npz_member_streams_in_blocks(tmp_path, rng, compressed):
    arr = sims(rng, 70, 11)
    path = write_npz(tmp_path / "a.npz", compressed, sims=arr)
    assert npz_member_compression(path) == {zipfile.ZIP_DEFLATED if compressed
                                            else zipfile.ZIP_STORED}
    for spec in (path, f"{path}:sims", f"{path}:sims.npy"):
        src = readers.open_matrix(spec)
        assert isinstance(src, readers.NpzInput)
        assert (src.shape, src.dtype, src.name) == ((70, 11), arr.dtype, "a.npz:sims")
        got = blocks_of(src, 32)
        assert [r0 for r0, _ in got] == [0, 32, 64]
        assert_same_bits(np.concatenate([b for _, b in got]), arr)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_blocks_do_not_hold_the_whole_member(tmp_path, rng, compressed):
    arr = sims(rng, 1024, 2048)  # 8 MiB, read 256 KiB at a time
    path = write_npz(tmp_path / "a.npz", compressed, a=arr)
    src = readers.open_matrix(path)
    with mock.patch.object(readers.np, "load", side_effect=AssertionError("np.load used")):
        tracemalloc.start()
        for _, block in src.blocks(32):
            assert block.shape[0] <= 32
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < arr.nbytes / 4


def test_npz_fortran_member_is_extracted_then_mapped(tmp_path, rng):
    arr = np.asfortranarray(sims(rng, 40, 6))
    path = write_npz(tmp_path / "f.npz", True, a=arr)
    got = blocks_of(readers.open_matrix(path), 16)
    np.testing.assert_array_equal(np.concatenate([b for _, b in got]), arr)


def test_npz_member_choice_errors(tmp_path, rng):
    path = write_npz(tmp_path / "two.npz", False, a=sims(rng, 2, 2), b=sims(rng, 2, 2))
    with pytest.raises(InputError, match=r"two\.npz holds 2 arrays \(a, b\).*two\.npz:NAME"):
        readers.open_matrix(path)
    with pytest.raises(InputError, match=r"no array 'c' \(it holds: a, b\)"):
        readers.open_matrix(f"{path}:c")
    assert readers.open_matrix(f"{path}:b").shape == (2, 2)


@pytest.mark.parametrize("compressed", [False, True])
def test_truncated_or_corrupt_npz(tmp_path, rng, compressed):
    arr = sims(rng, 200, 50)
    blob = write_npz(tmp_path / "a.npz", compressed, a=arr).read_bytes()
    (tmp_path / "cut.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputError, match=r"cut\.npz"):
        src = readers.open_matrix(tmp_path / "cut.npz")
        blocks_of(src, 64)
    bad = bytearray(blob)
    middle = len(blob) // 2
    bad[middle:middle + 64] = bytes(64)  # corrupt data: CRC (or inflate) fails
    (tmp_path / "bad.npz").write_bytes(bytes(bad))
    with pytest.raises(InputError, match=r"bad\.npz"):
        blocks_of(readers.open_matrix(tmp_path / "bad.npz"), 64)


# --- zarr, dispatch, hashing ---------------------------------------------------------------

def test_zarr_array_input(tmp_path, rng):
    arr = sims(rng, 30, 8, "float16")
    z = zarr.create_array(str(tmp_path / "e.zarr"), shape=arr.shape, dtype=arr.dtype,
                          chunks=(7, 8))
    z[...] = arr
    src = readers.open_matrix(tmp_path / "e.zarr")
    assert isinstance(src, readers.ZarrInput) and src.shape == (30, 8)
    assert_same_bits(np.concatenate([b for _, b in blocks_of(src, 7)]), arr)
    assert src.sha256() == readers.open_matrix(tmp_path / "e.zarr").sha256()
    zarr.create_group(str(tmp_path / "g.zarr"))
    with pytest.raises(InputError, match=r"g\.zarr is not a readable Zarr array"):
        readers.open_matrix(tmp_path / "g.zarr")


def test_format_is_sniffed_from_content(tmp_path, rng):
    arr = sims(rng, 4, 3)
    np.save(tmp_path / "x.npy", arr)
    os.rename(tmp_path / "x.npy", tmp_path / "x.bin")
    assert isinstance(readers.open_matrix(tmp_path / "x.bin"), readers.NpyInput)
    write_pickle(arr, tmp_path / "x.dat")
    np.testing.assert_array_equal(readers.read_array(tmp_path / "x.dat"), arr)
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(InputError, match=r"x\.txt: unrecognised format"):
        readers.open_matrix(tmp_path / "x.txt")
    with pytest.raises(InputError, match="no such file"):
        readers.open_matrix(tmp_path / "missing.npy")


def test_sha256_is_of_the_file(tmp_path, rng):
    path = write_pickle(sims(rng, 9, 9), tmp_path / "a.pkl")
    assert readers.open_matrix(path).sha256() == hashlib.sha256(path.read_bytes()).hexdigest()
    np.save(tmp_path / "a.npy", sims(rng, 9, 9))
    want = hashlib.sha256((tmp_path / "a.npy").read_bytes()).hexdigest()
    assert readers.open_matrix(tmp_path / "a.npy").sha256() == want
    assert readers.open_matrix(np.zeros((2, 2))).sha256() is None


def test_read_array_reads_small_arrays_whole(tmp_path):
    gt = np.arange(10, dtype=np.int32)
    np.save(tmp_path / "gt.npy", gt)
    write_pickle(gt, tmp_path / "gt.pkl", legacy=True)
    write_npz(tmp_path / "gt.npz", True, gt=gt)
    for name in ("gt.npy", "gt.pkl", "gt.npz"):
        got = readers.read_array(tmp_path / name)
        assert_same_bits(got, gt)
    with pytest.raises(InputError, match="scalar"):
        readers.open_matrix(np.array(1.0))
