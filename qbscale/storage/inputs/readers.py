"""Reading input arrays row block by row block, whatever their format.

Every format opens as an :class:`InputMatrix`: it knows its ``shape`` and
``dtype``, yields row blocks without holding the whole array (except pickles,
which are whole by nature), and hashes its file.

* pickles (``.pkl``): one plain numpy array, through :class:`SafeUnpickler`,
  which refuses every global a plain array does not need;
* ``.npy``: memory-mapped with ``np.load(mmap_mode="r")``, one block at a time;
* ``.npz``: one member (``file.npz`` holding a single array, or
  ``file.npz:name``) streamed through :mod:`zipfile`, stored or deflated;
* ``.zarr``: an array of a Zarr store (embeddings).

Truncated or corrupt files raise :class:`~qbscale.errors.InputError` naming
the file.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import shutil
import struct
import tempfile
import threading
import tokenize
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qbscale.engine.checks import check_not_masked
from qbscale.errors import InputError, UnsafePickleError
from qbscale.storage import layout
from qbscale.storage.durability.paths import check_regular

__all__ = ["ArrayInput", "InputMatrix", "NpyInput", "NpzInput", "SafeUnpickler", "ZarrInput",
           "file_sha256", "load_pickle", "open_matrix", "read_array"]

#: bytes read per step while hashing or copying files
IO_BYTES = 8 * 2**20

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_PICKLE_SUFFIXES = {".pkl", ".pickle", ".pck", ".p"}
#: what a corrupt pickle can raise while loading (besides UnsafePickleError)
_PICKLE_ERRORS = (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
                  IndexError, KeyError, OverflowError, struct.error, MemoryError, RecursionError)
#: what reading a corrupt zip member can raise (NotImplementedError: unknown zip
#: version or compression; RuntimeError: encrypted)
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError,
               RuntimeError, ValueError, struct.error, OverflowError, MemoryError)
#: what numpy's .npy header parsing can raise on a corrupt header (it may tokenize it)
_NPY_HEADER_ERRORS = (ValueError, SyntaxError, EOFError, struct.error, TypeError, KeyError,
                      OverflowError, MemoryError, tokenize.TokenError)


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles use it, and nothing more.

    Pickles of protocol 0-2 have no bytes type, so an array's buffer is
    written as a latin-1 string and rebuilt by ``_codecs.encode(text,
    "latin1")``.  Only that call is admitted: str in, latin-1, bytes out.
    """
    if type(text) is not str or encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise UnsafePickleError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r}):"
                                " only latin-1 text is accepted")
    return text.encode("latin-1")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a pickled plain ndarray refers to, as numpy 1.x and 2.x name them.

    The callables come from numpy's own reduce methods, so nothing private is
    imported (and numpy 2 warns about nothing).  Protocol 0-2 pickles also
    name ``_codecs.encode`` (their array buffers are latin-1 strings), which
    is admitted only for that (:func:`_latin1`).
    """
    reconstruct = np.empty(0).__reduce__()[0]
    frombuffer = np.empty(0).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray,
                                           ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): _latin1}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds plain numpy arrays and nothing else.

    Any other global (``posix.system``, ``builtins.eval``, ...) raises
    :class:`~qbscale.errors.UnsafePickleError` when the pickle names it, before
    anything in it runs.  Pickles written by numpy 1.x (naming
    ``numpy.core.multiarray``) load under numpy 2 without warnings.

    Parameters
    ----------
    file : binary file
        The open pickle.
    name : str
        The path as given, for error messages.
    """

    _allowed = _numpy_globals()

    def __init__(self, file: Any, name: str) -> None:
        super().__init__(file)
        self.name = name

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.name}: refusing to load global {module}.{name}; "
                "only plain numpy arrays are accepted"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.name}: refusing persistent id {pid!r}")


def load_pickle(path: str | os.PathLike[str]) -> np.ndarray:
    """Load a pickle holding exactly one plain, non-object numpy array.

    Raises
    ------
    UnsafePickleError
        The pickle names a global other than numpy's array constructors.
    InputError
        The file is truncated or corrupt, or holds something other than an
        ndarray, or an object-dtype array.
    """
    name = os.fspath(path)
    check_regular(path)  # a FIFO would block forever
    try:
        with open(path, "rb") as f:
            obj = SafeUnpickler(f, name).load()
    except UnsafePickleError as exc:
        if str(exc).startswith(name):
            raise
        raise UnsafePickleError(f"{name}: {exc}") from None
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc}") from exc
    except _PICKLE_ERRORS as exc:
        raise InputError(f"{name} is truncated or not a valid pickle: {exc}") from exc
    if type(obj) is not np.ndarray:
        raise InputError(f"{name} holds a {type(obj).__name__}, expected one numpy array")
    _check_plain(obj.dtype, name)
    return obj


def _check_plain(dtype: np.dtype, name: str) -> None:
    if dtype.hasobject or dtype.fields is not None:
        raise InputError(f"{name} holds an array of dtype {dtype}: object and structured "
                         "arrays are not accepted")


def file_sha256(path: str | os.PathLike[str], cancel: threading.Event | None = None) -> str | None:
    """SHA-256 (hex) of a file, or of every file under a directory in path order.

    Returns None when ``cancel`` is set before the end.
    """
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    digest = hashlib.sha256()
    buf = bytearray(IO_BYTES)
    view = memoryview(buf)
    for file in files:
        if root.is_dir():
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            while n := f.readinto(buf):
                if cancel is not None and cancel.is_set():
                    return None
                digest.update(view[:n])
    return digest.hexdigest()


class InputMatrix:
    """An input array read row block by row block.

    Attributes
    ----------
    name : str
        File name (with ``:member`` for npz) used in messages.
    path : str or None
        The file or directory to hash, None for in-memory arrays.
    shape : tuple of int
    dtype : numpy.dtype
    """

    name: str
    path: str | None
    shape: tuple[int, ...]
    dtype: np.dtype
    in_memory = False

    def _init(self, name: str, path: str | None, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.name, self.path, self.shape, self.dtype = name, path, tuple(shape), np.dtype(dtype)
        _check_plain(self.dtype, name)
        if not self.shape:
            raise InputError(f"{name} holds a scalar, expected an array")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def label(self, role: str) -> str:
        """How messages name this input: ``"bank (sims.pkl)"``, or ``"bank"`` for arrays."""
        return role if self.in_memory else f"{role} ({self.name})"

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, block)`` for consecutive blocks of ``rows`` rows.

        A block may be a read-only view; it is valid until the next one.
        """
        raise NotImplementedError

    def read(self) -> np.ndarray:
        """The whole array (for small inputs: masks, ground truth, embeddings)."""
        for _, block in self.blocks(max(1, self.shape[0])):
            return np.array(block)
        return np.empty(self.shape, self.dtype)

    def sha256(self, cancel: threading.Event | None = None) -> str | None:
        """SHA-256 of the file (None for in-memory arrays and remote stores)."""
        return file_sha256(self.path, cancel) if self.path else None


class ArrayInput(InputMatrix):
    """An in-memory array (a loaded pickle, or an array passed directly)."""

    def __init__(self, array: np.ndarray, name: str, path: str | None = None) -> None:
        self.array = array
        self.in_memory = path is None
        self._init(name, path, array.shape, array.dtype)

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        for r0 in range(0, self.shape[0], rows):
            yield r0, self.array[r0:r0 + rows]

    def read(self) -> np.ndarray:
        return self.array


def _read_npy_header(fp: Any, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from an open .npy stream, positioned after the header."""
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    except _NPY_HEADER_ERRORS as exc:
        raise InputError(f"{name} is truncated or has a corrupt .npy header: {exc}") from exc
    if any(int(s) < 0 for s in shape):
        raise InputError(f"{name} has a corrupt .npy header: negative shape {tuple(shape)}")
    return tuple(int(s) for s in shape), bool(fortran), np.dtype(dtype)


class NpyInput(InputMatrix):
    """A ``.npy`` file, memory-mapped afresh for every block.

    Each block comes from its own ``np.load(mmap_mode="r")`` mapping, which is
    released when the next block is read, so resident memory stays at about
    one block however large the file.
    """

    def __init__(self, path: str, name: str | None = None) -> None:
        name = name or os.path.basename(path)
        self.file = path
        try:
            with open(path, "rb") as f:
                shape, self.fortran, dtype = _read_npy_header(f, name)
                data_start = f.tell()
        except OSError as exc:
            raise InputError(f"cannot read {name}: {exc}") from exc
        self._init(name, path, shape, dtype)
        expected = data_start + math.prod(shape) * self.dtype.itemsize  # no int64 wrap
        size = os.path.getsize(path)
        if size < expected:
            raise InputError(f"{name} is truncated: {size} bytes, its header {shape} "
                             f"{self.dtype} needs {expected}")

    def memmap(self) -> np.ndarray:
        """The whole array memory-mapped (read-only), its header already checked."""
        return self._map()

    def _map(self) -> np.ndarray:
        try:
            return np.load(self.file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"cannot map {self.name}: {exc}") from exc

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        for r0 in range(0, self.shape[0], rows):
            mapped = self._map()
            yield r0, mapped[r0:r0 + rows]
            del mapped

    def read(self) -> np.ndarray:
        try:
            return np.load(self.file, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"cannot read {self.name}: {exc}") from exc


def _split_member(path: str) -> tuple[str, str | None]:
    """``"a.npz:sims"`` -> ``("a.npz", "sims")`` when ``a.npz`` exists and the whole does not."""
    if os.path.exists(path) or ":" not in path:
        return path, None
    head, member = path.rsplit(":", 1)
    return (head, member) if os.path.isfile(head) else (path, None)


class NpzInput(InputMatrix):
    """One member of a ``.npz`` archive, streamed row block by row block.

    Works for stored and deflated members alike; the member's CRC is checked
    at the end.  A member saved in Fortran order cannot be cut into rows while
    streaming: it is first extracted to a temporary ``.npy`` (in ``TMPDIR``)
    and memory-mapped from there.
    """

    def __init__(self, path: str, member: str | None = None) -> None:
        base = os.path.basename(path)
        self.file = path
        try:
            with zipfile.ZipFile(path) as zf:
                self.member = self._pick(zf, member, base)
                label = self.member.removesuffix(".npy")
                with zf.open(self.member) as fp:
                    shape, self.fortran, dtype = _read_npy_header(fp, f"{base}:{label}")
        except InputError:
            raise
        except _ZIP_ERRORS as exc:
            raise InputError(f"{base} is not a readable .npz archive: {exc}") from exc
        self._init(f"{base}:{label}", path, shape, dtype)

    @staticmethod
    def _pick(zf: zipfile.ZipFile, member: str | None, base: str) -> str:
        names = [n for n in zf.namelist() if n.endswith(".npy")]
        if member is None:
            if len(names) != 1:
                listed = ", ".join(n.removesuffix(".npy") for n in names) or "none"
                raise InputError(f"{base} holds {len(names)} arrays ({listed}): "
                                 f"name one as {base}:NAME")
            return names[0]
        for candidate in (member, f"{member}.npy"):
            if candidate in names:
                return candidate
        listed = ", ".join(n.removesuffix(".npy") for n in names) or "none"
        raise InputError(f"{base} has no array {member!r} (it holds: {listed})")

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        if self.fortran:
            with tempfile.TemporaryDirectory(prefix="qbscale-npz-") as tmp:
                yield from NpyInput(self._extract(tmp), self.name).blocks(rows)
            return
        row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize
        try:
            with zipfile.ZipFile(self.file) as zf, zf.open(self.member) as fp:
                _read_npy_header(fp, self.name)
                for r0 in range(0, self.shape[0], rows):
                    n = min(rows, self.shape[0] - r0)
                    data = fp.read(n * row_bytes)
                    if len(data) != n * row_bytes:
                        raise InputError(f"{self.name} is truncated: its data ends in row {r0}"
                                         f" of {self.shape[0]}")
                    yield r0, np.frombuffer(data, self.dtype).reshape(n, *self.shape[1:])
                fp.read(1)  # reaching the end verifies the member's CRC
        except InputError:
            raise
        except _ZIP_ERRORS as exc:
            raise InputError(f"{self.name} is corrupt: {exc}") from exc

    def _extract(self, directory: str) -> str:
        target = os.path.join(directory, "member.npy")
        try:
            with zipfile.ZipFile(self.file) as zf, zf.open(self.member) as src, \
                    open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, IO_BYTES)
        except _ZIP_ERRORS as exc:
            raise InputError(f"{self.name} is corrupt: {exc}") from exc
        return target


class ZarrInput(InputMatrix):
    """An array in a Zarr store (a path to the array, or a URL)."""

    def __init__(self, path: str, storage_options: dict[str, Any] | None = None) -> None:
        import zarr

        from qbscale.storage.durability.integrity import verified_store

        name = os.path.basename(path.rstrip("/"))
        try:  # every file read a regular file: a FIFO or /dev/zero is refused, never read
            self.array = zarr.open_array(verified_store(path, storage_options, places=False),
                                         mode="r")
        except (FileNotFoundError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"{name} is not a readable Zarr array (for a group, name the "
                             f"array inside, e.g. {name}/embeddings): {exc}") from exc
        local = None if layout.is_url(path) else path
        self._init(name, local, self.array.shape, self.array.dtype)

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        for r0 in range(0, self.shape[0], rows):
            yield r0, np.asarray(self.array[r0:r0 + rows])


def _sniff(path: str) -> str:
    """Format of a file from its first bytes, else from its suffix."""
    if os.path.isdir(path):
        return "zarr"
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head[:4] in _ZIP_MAGICS:
        return "npz"
    if head[:1] == b"\x80" or head.startswith(b"cnumpy"):  # protocol 2-5, or 0-1
        return "pickle"
    suffix = Path(path).suffix.lower()
    known = {".npy": "npy", ".npz": "npz", ".zarr": "zarr", **dict.fromkeys(_PICKLE_SUFFIXES,
                                                                             "pickle")}
    if suffix in known:
        return known[suffix]
    raise InputError(f"{os.path.basename(path)}: unrecognised format "
                     "(expected a .pkl, .npy, .npz or .zarr)")


def open_matrix(source: str | os.PathLike[str] | np.ndarray, name: str | None = None,
                storage_options: dict[str, Any] | None = None) -> InputMatrix:
    """Open an input array of any supported format.

    Parameters
    ----------
    source : path, URL or numpy.ndarray
        ``x.pkl``, ``x.npy``, ``x.npz`` or ``x.npz:member``, ``x.zarr`` (an
        array), a fsspec URL of a Zarr array, or an array already in memory.
    name : str, optional
        Name used in messages for an in-memory array.
    storage_options : dict, optional
        The fsspec options for a Zarr URL.

    Returns
    -------
    InputMatrix

    Raises
    ------
    InputError
        Missing, unrecognised, truncated or corrupt input.
    UnsafePickleError
        A pickle that asks for more than a plain numpy array.
    """
    if isinstance(source, list | tuple):  # a ground truth or mask written out in Python
        source = np.asarray(source)
    if isinstance(source, np.ndarray):
        check_not_masked(source, name or "array")
        return ArrayInput(source, name or "array")
    if not isinstance(source, str | os.PathLike):
        raise InputError(f"{name or 'input'}: expected a file path or a numpy array, got "
                         f"{type(source).__name__}")
    path = os.fspath(source)
    if layout.is_url(path):
        return ZarrInput(path, storage_options)
    path, member = _split_member(layout.local_path(path))
    if not os.path.exists(path):
        raise InputError(f"no such file: {path}")
    check_regular(path, dir_ok=member is None)  # a directory is a Zarr array
    fmt = "npz" if member is not None else _sniff(path)
    if fmt == "npy":
        return NpyInput(path)
    if fmt == "npz":
        return NpzInput(path, member)
    if fmt == "zarr":
        return ZarrInput(path, storage_options)
    return ArrayInput(load_pickle(path), os.path.basename(path), path)


def read_array(source: str | os.PathLike[str] | np.ndarray, name: str | None = None) -> np.ndarray:
    """Open ``source`` with :func:`open_matrix` and read it whole (small arrays only)."""
    return open_matrix(source, name).read()
