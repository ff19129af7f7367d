"""Files written beside and renamed into place.

Every single file qbscale writes (``--json``, hits, plots, reports, a faiss
index, a store's root ``zarr.json``) goes through :func:`replacing`: the bytes
go to a hidden sibling (``.NAME.partial-<pid>-<random>``), are flushed and
fsynced, get the mode a newly created file gets under the process's umask (or,
when a file is replaced, that file's mode), and are renamed over ``NAME`` in one
step.  A failure at any point (full disk, EIO, SIGTERM, an exception in the
caller's block) removes the sibling and leaves ``NAME`` as it was.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> write_text(d / "a.txt", "hello")
>>> (d / "a.txt").read_text()
'hello'
>>> sorted(p.name for p in d.iterdir())
['a.txt']
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from qbscale.errors import OutputError

_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode(replaced: str | os.PathLike[str] | None = None) -> int:
    """The mode a file written now should get: the replaced file's, else 0666 & ~umask."""
    if replaced is not None:
        with contextlib.suppress(OSError):
            return stat.S_IMODE(os.stat(replaced).st_mode)
    return 0o666 & ~umask()


def partial_path(path: str | os.PathLike[str]) -> Path:
    """A hidden sibling of ``path`` no other writer uses: ``.NAME.partial-<pid>-<hex>``."""
    p = Path(path)
    return p.with_name(f".{p.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")


def publish_file(partial: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """fsync ``partial``, give it the mode a new ``path`` gets, rename it over ``path``.

    On failure ``partial`` is removed and ``path`` is untouched; the error is an
    :class:`OutputError` naming ``path``.
    """
    try:
        os.chmod(partial, new_file_mode(path))
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise _failed(path, exc) from exc
    _fsync_dir(Path(path).parent)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _failed(path: str | os.PathLike[str], exc: OSError) -> OutputError:
    """``could not write PATH: reason``, keeping the errno (ENOSPC stays recognisable)."""
    error = OutputError(f"could not write {os.fspath(path)}: {_reason(exc)}")
    error.errno = exc.errno
    return error


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], mode: str = "wb",
              encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a hidden sibling of ``path`` for writing; rename it over ``path`` on success.

    Parameters
    ----------
    path
        The file to write (created or replaced).
    mode
        ``"wb"`` or ``"w"``.
    encoding
        For text mode (default UTF-8).

    Raises
    ------
    OutputError
        The file could not be written (full disk, read-only directory, ...);
        the message names ``path``.  Nothing is left beside it.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode {mode!r}: 'w' or 'wb'")
    partial = partial_path(path)
    try:
        fh = open(partial, mode, encoding=(encoding or "utf-8") if mode == "w" else None)  # noqa: SIM115
    except OSError as exc:
        raise _failed(path, exc) from exc
    try:
        with fh:
            yield fh
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise _failed(path, exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
    publish_file(partial, path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` beside and rename (see :func:`replacing`)."""
    with replacing(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` beside and rename (see :func:`replacing`)."""
    with replacing(path, "w") as fh:
        fh.write(text)


def check_writable(path: str | os.PathLike[str]) -> None:
    """Refuse, before any work, an output file that could not be written.

    The directory must exist and accept a new file (tried by creating and
    removing a hidden sibling, so ACLs, read-only mounts and root's view are all
    honoured); ``path`` itself must not be a directory or another non-regular file.

    Raises
    ------
    OutputError
        Naming ``path`` and why.
    """
    p = Path(path)
    if p.exists() and not p.is_file():
        raise OutputError(f"output {p} exists and is not a regular file")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {p}: directory {parent} does not exist")
    probe = partial_path(p)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise OutputError(f"cannot write {p}: {_reason(exc)}") from exc
    os.close(fd)
    with contextlib.suppress(OSError):
        os.remove(probe)
