"""Fuzzing the input readers and ``qbscale ingest`` with malformed files.

Hypothesis writes broken ``.npy``, ``.npz`` and pickle files: truncations,
headers that lie about shape, dtype or order, flipped and random bytes, and
pickles built from random opcodes, including GLOBAL / STACK_GLOBAL / REDUCE /
INST / OBJ / NEWOBJ / BUILD payloads that would create a marker file if run.
The only allowed outcomes are a correct result (the readers' arrays equal
numpy's own reading; a store that opens and holds them) or a
:class:`~qbscale.errors.QBScaleError` (``Error: ...``, exit code 1): never
another exception, a hang (every example runs under an alarm) or an executed
payload.

About 50 examples per property by default; ``HYPOTHESIS_PROFILE=thorough``
runs three times the thorough profile's count (3000), ``QBSCALE_FUZZ_EXAMPLES=N``
any number.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import signal
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from qbscale.cli import cli
from qbscale.errors import QBScaleError
from qbscale.storage.inputs import readers
from qbscale.storage.stores.store import open_experiment

THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
#: ~50 examples a property by default; the thorough profile's count (tests/conftest.py)
#: times 3 under HYPOTHESIS_PROFILE=thorough; QBSCALE_FUZZ_EXAMPLES=N overrides both
FUZZ = settings(max_examples=int(os.environ.get("QBSCALE_FUZZ_EXAMPLES",
                                                3 * settings().max_examples if THOROUGH
                                                else 50)),
                deadline=None, derandomize=not THOROUGH,
                suppress_health_check=list(HealthCheck))
#: seconds one example may take before it counts as a hang
ALARM = 30

N_GALLERY = 6


class Hang(Exception):
    """An example ran past :data:`ALARM` seconds."""


@contextlib.contextmanager
def alarm(seconds: int = ALARM) -> Iterator[None]:
    def ring(signum: int, frame: object) -> None:
        raise Hang(f"no answer after {seconds} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------- strategies

dtypes = st.sampled_from(["<f4", "<f8", ">f4", "<f2", "<i8", "|b1", "<c8", "|u1"])
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    shape = draw(st.tuples(st.integers(1, 7), st.just(N_GALLERY)) | shapes)
    dtype = draw(dtypes)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return (rng.standard_normal(shape) * 3).astype(dtype)


def npy_bytes(arr: np.ndarray, fortran: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asfortranarray(arr) if fortran else arr)
    return buf.getvalue()


def _header_lie(draw: st.DrawFn, arr: np.ndarray) -> bytes:
    """A .npy whose header says another shape, dtype or order than its data."""
    descr = draw(st.sampled_from(["<f4", "<f8", "|O", "<U3", "V8", "[('a', '<f4')]", ">i4",
                                  "<f16", "bogus", "<m8[s]"]))
    shape = draw(shapes | st.tuples(st.integers(-3, 2**40)))
    fortran = draw(st.booleans())
    descr_text = descr if descr.startswith("[") else repr(descr)
    header = f"{{'descr': {descr_text}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}"
    if draw(st.booleans()):
        header = draw(st.text(max_size=60))  # not even a dict
    raw = header.encode("latin-1", "replace")
    raw += b" " * (-(len(raw) + 11) % 64) + b"\n"
    version = draw(st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x09\x09"]))
    size = struct.pack("<H", len(raw)) if version in (b"\x01\x00", b"\x09\x09") else \
        struct.pack("<I", len(raw))
    return b"\x93NUMPY" + version + size + raw + arr.tobytes()


def mangle(draw: st.DrawFn, data: bytes) -> bytes:
    """Truncate, flip bytes in, or append garbage to ``data``."""
    how = draw(st.sampled_from(["truncate", "flip", "append", "same"]))
    if how == "truncate" and data:
        return data[:draw(st.integers(0, len(data) - 1))]
    if how == "flip" and data:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] = draw(st.integers(0, 255))
        return bytes(out)
    if how == "append":
        return data + draw(st.binary(min_size=1, max_size=64))
    return data


@st.composite
def npy_files(draw: st.DrawFn) -> bytes:
    arr = draw(arrays())
    kind = draw(st.sampled_from(["valid", "mangled", "lie", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "lie":
        return _header_lie(draw, arr)
    data = npy_bytes(arr, draw(st.booleans()))
    return data if kind == "valid" else mangle(draw, data)


@st.composite
def npz_files(draw: st.DrawFn) -> bytes:
    members = draw(st.lists(npy_files(), min_size=0, max_size=2))
    buf = io.BytesIO()
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    with zipfile.ZipFile(buf, "w", method) as zf:
        for n, member in enumerate(members):
            zf.writestr(f"arr_{n}.npy", member)
    data = buf.getvalue()
    return data if draw(st.booleans()) else mangle(draw, data)


MARKER = "qbscale-fuzz-marker"

#: (module, name, argument) of globals that would create the marker if run
PAYLOADS = [("posix", "system", "touch {m}"), ("os", "system", "touch {m}"),
            ("builtins", "exec", "open({m!r}, 'w').close()"),
            ("builtins", "eval", "open({m!r}, 'w').close()"),
            ("subprocess", "call", "touch {m}"),
            ("_codecs", "encode", "touch {m}"),
            ("numpy", "load", "{m}"),
            ("numpy.core.multiarray", "_reconstruct", "{m}"),
            ("numpy", "dtype", "{m}"), ("io", "open", "{m}")]


def _unicode(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


@st.composite
def pickle_opcodes(draw: st.DrawFn, marker: str) -> bytes:
    """A pickle of random opcodes with dangerous payloads mixed in."""
    out = [b"\x80" + bytes([draw(st.integers(0, 5))])] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 14))):
        module, name, arg = draw(st.sampled_from(PAYLOADS))
        arg = arg.format(m=marker)
        piece = draw(st.sampled_from(["global", "stack_global", "reduce", "inst", "obj",
                                      "newobj", "build", "random_op", "array", "mark_tuple"]))
        if piece == "global":
            out.append(b"c" + module.encode() + b"\n" + name.encode() + b"\n")
        elif piece == "stack_global":
            out.append(_unicode(module) + _unicode(name) + b"\x93")
        elif piece == "reduce":
            out.append(b"c" + module.encode() + b"\n" + name.encode() + b"\n(" +
                       _unicode(arg) + b"tR")
        elif piece == "inst":
            out.append(b"(" + _unicode(arg) + b"i" + module.encode() + b"\n" +
                       name.encode() + b"\n")
        elif piece == "obj":
            out.append(b"(c" + module.encode() + b"\n" + name.encode() + b"\n" +
                       _unicode(arg) + b"o")
        elif piece == "newobj":
            out.append(b"c" + module.encode() + b"\n" + name.encode() + b"\n" +
                       _unicode(arg) + b"\x85\x81")
        elif piece == "build":
            out.append(b"}" + _unicode("__setstate__") + _unicode(arg) + b"sb")
        elif piece == "array":
            arr = draw(arrays())
            blob = pickle.dumps(arr, protocol=draw(st.integers(0, 5)))
            out.append(blob.removesuffix(b".")[2 if blob[:1] == b"\x80" else 0:])
        elif piece == "mark_tuple":
            out.append(b"(" + draw(st.binary(max_size=8)) + b"t")
        else:
            out.append(bytes([draw(st.sampled_from(list(range(33, 150))))])
                       + draw(st.binary(max_size=8)))
    if draw(st.booleans()):
        out.append(b".")
    return b"".join(out)


@st.composite
def pickle_files(draw: st.DrawFn, marker: str) -> bytes:
    kind = draw(st.sampled_from(["valid", "mangled", "opcodes", "random"]))
    if kind == "opcodes":
        return draw(pickle_opcodes(marker))
    if kind == "random":
        return draw(st.binary(max_size=300))
    arr = draw(arrays())
    data = pickle.dumps(arr, protocol=draw(st.integers(0, 5)))
    if draw(st.booleans()):  # as numpy 1.x named its module
        data = data.replace(b"numpy._core", b"numpy.core")
    return data if kind == "valid" else mangle(draw, data)


# ---------------------------------------------------------------- oracles


def oracle(path: Path, kind: str) -> np.ndarray | None:
    """numpy's own reading of a .npy/.npz (None when numpy refuses it too)."""
    try:
        with alarm():
            if kind == "npy":
                return np.load(path, allow_pickle=False)
            with np.load(path, allow_pickle=False) as archive:
                names = archive.files
                return archive[names[0]] if len(names) == 1 else None
    except Hang:
        raise
    except Exception:
        return None


def read_all(path: Path) -> np.ndarray | None:
    """The readers' array of ``path`` (blocks of 2 rows), or None for a QBScaleError."""
    try:
        with alarm():
            src = readers.open_matrix(path)
            parts = [np.array(block) for _, block in src.blocks(2)]
            whole = np.concatenate(parts) if parts else np.empty(src.shape, src.dtype)
    except QBScaleError as exc:
        assert "\n" not in str(exc), str(exc)
        return None
    # (np.concatenate gives native byte order)
    assert whole.shape == src.shape and whole.dtype.newbyteorder("=") == \
        src.dtype.newbyteorder("=")
    return whole


def check_reader(path: Path, kind: str) -> None:
    got = read_all(path)
    if got is None or kind == "pickle":
        return
    want = oracle(path, kind)
    assert want is not None, "qbscale read a file numpy refuses"
    assert got.shape == want.shape
    assert np.ascontiguousarray(got, dtype=want.dtype).tobytes() == \
        np.ascontiguousarray(want).tobytes()


def check_ingest(tmp: Path, fuzzed: Path, role: str) -> None:
    """``qbscale ingest`` with ``fuzzed`` as ``role``: a correct store, or ``Error: ...``
    and exit code 1 with nothing left behind."""
    rng = np.random.default_rng(0)
    files = {}
    for name, rows in (("bank", 9), ("test", N_GALLERY)):
        files[name] = tmp / f"{name}.npy"
        np.save(files[name], rng.standard_normal((rows, N_GALLERY)).astype(np.float32))
    files[role] = fuzzed
    out = tmp / "out.zarr"
    args = ["ingest", "--bank", str(files["bank"]), "--test", str(files["test"]),
            "-o", str(out), "--quiet"]
    if role in ("masks", "gt-index"):
        args += [f"--{role}", str(fuzzed)]
    with alarm():
        res = CliRunner().invoke(cli, args)
    if res.exit_code != 0:
        assert res.exit_code == 1 and isinstance(res.exception, SystemExit), \
            repr(res.exception)
        errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "Traceback" not in res.output, res.output
        assert not out.exists() and not [p for p in tmp.iterdir() if ".partial-" in p.name]
        return
    experiment = open_experiment(out)
    want = readers.open_matrix(fuzzed).read()
    if role == "masks":
        np.testing.assert_array_equal(experiment.mask, want.ravel().astype(bool))
    elif role == "gt-index":
        np.testing.assert_array_equal(experiment.gt, want.ravel())
    else:
        source = experiment.bank if role == "bank" else experiment.test
        stored = np.concatenate([source.read(i, 0) for i in range(len(source.row_chunks))])
        assert stored.shape == want.shape
        np.testing.assert_array_equal(stored, want.astype(stored.dtype))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _fresh(workdir: Path, name: str) -> Path:
    case = workdir / name
    case.mkdir(exist_ok=True)
    for entry in case.iterdir():
        if entry.is_dir():
            import shutil

            shutil.rmtree(entry)
        else:
            entry.unlink()
    return case


# ---------------------------------------------------------------- properties


def npy_with_header(header: str, data: bytes) -> bytes:
    """A version 1.0 ``.npy`` of any header text, padded as numpy pads it."""
    raw = header.encode("latin-1")
    raw += b" " * (-(len(raw) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw + data


#: found by the thorough profile: a negative dimension passed the size check
NEGATIVE_SHAPE = npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 6), }",
                                 bytes(24))


#: found by the thorough profile: numpy tokenizes this header and raises TokenError
NUL_IN_HEADER = npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': \x001, 6), }",
                                bytes(24))


@FUZZ
@given(data=npy_files())
@example(data=NEGATIVE_SHAPE)
@example(data=NUL_IN_HEADER)
def test_npy_reader(workdir, data):
    path = _fresh(workdir, "npy") / "x.npy"
    path.write_bytes(data)
    check_reader(path, "npy")


def _npz_example(compressed: bool) -> bytearray:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(
        buf, a=np.arange(12, dtype=np.float32).reshape(2, N_GALLERY))
    return bytearray(buf.getvalue())


def _zip_version_64() -> bytes:
    """Found by the thorough profile: zipfile raises NotImplementedError."""
    data = _npz_example(False)
    data[data.index(b"PK\x01\x02") + 6] = 64  # version needed to extract: 6.4
    return bytes(data)


def _bad_deflate() -> bytes:
    """Found by the thorough profile: zlib.error while reading the member's header."""
    data = _npz_example(True)
    name_len, extra_len = struct.unpack("<HH", data[26:30])
    start = 30 + name_len + extra_len
    data[start:start + 4] = b"\xff" * 4  # an invalid deflate block type
    return bytes(data)


ZIP_VERSION_64 = _zip_version_64()
BAD_DEFLATE = _bad_deflate()


@FUZZ
@given(data=npz_files())
@example(data=ZIP_VERSION_64)
@example(data=BAD_DEFLATE)
def test_npz_reader(workdir, data):
    path = _fresh(workdir, "npz") / "x.npz"
    path.write_bytes(data)
    check_reader(path, "npz")


@FUZZ
@given(data=st.data())
def test_pickle_reader_runs_nothing(workdir, data):
    case = _fresh(workdir, "pkl")
    marker = case / MARKER
    path = case / "x.pkl"
    path.write_bytes(data.draw(pickle_files(str(marker))))
    cwd = os.getcwd()
    os.chdir(case)  # relative markers land here too
    try:
        check_reader(path, "pickle")
    finally:
        os.chdir(cwd)
    assert not marker.exists(), "a pickle payload ran"


@FUZZ
@given(data=st.data(), kind=st.sampled_from(["npy", "npz", "pkl"]),
       role=st.sampled_from(["bank", "bank", "test", "masks", "gt-index"]))
def test_ingest_of_malformed_files(workdir, data, kind, role):
    case = _fresh(workdir, "ingest")
    marker = case / MARKER
    strategy = {"npy": npy_files(), "npz": npz_files(), "pkl": pickle_files(str(marker))}[kind]
    fuzzed = case / f"fuzzed.{kind}"
    found = {"npy": [NEGATIVE_SHAPE, NUL_IN_HEADER], "npz": [ZIP_VERSION_64, BAD_DEFLATE],
             "pkl": [b""]}[kind]  # regressions found by the thorough profile
    pick = data.draw(st.integers(0, 3 * len(found)))
    blob = found[pick] if pick < len(found) else data.draw(strategy)
    assume(blob)
    fuzzed.write_bytes(blob)
    check_ingest(case, fuzzed, role)
    assert not marker.exists(), "a pickle payload ran"


def test_payload_strategy_would_create_the_marker(tmp_path):
    """The payloads are live: unrestricted pickle runs them (so the tests above mean something)."""
    marker = tmp_path / MARKER
    # builtins.exec rather than posix.system: no child process in the test run
    blob = b"cbuiltins\nexec\n(" + _unicode(f"open({str(marker)!r}, 'w').close()") + b"tR."
    pickle.loads(blob)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(QBScaleError):
        path = tmp_path / "x.pkl"
        path.write_bytes(blob)
        readers.load_pickle(path)
    assert not marker.exists()
