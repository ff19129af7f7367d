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
import contextvars
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from qbscale.errors import OutputError, StoreExistsError

_UMASK_LOCK = threading.Lock()
#: the renames :func:`held` holds back: (partial, path) pairs, None outside it
_HELD: contextvars.ContextVar[list[tuple[str, str]] | None] = contextvars.ContextVar(
    "qbscale_held_files", default=None)


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


def publish_file(partial: str | os.PathLike[str], path: str | os.PathLike[str],
                 replace: bool = True) -> None:
    """fsync ``partial``, give it the mode a new ``path`` gets, rename it over ``path``.

    On failure ``partial`` is removed and ``path`` is untouched; the error is an
    :class:`OutputError` naming ``path``.  Inside :func:`held` the rename waits
    for the end of the block.
    """
    try:
        os.chmod(partial, new_file_mode(path))
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        pending = _HELD.get()
        if pending is not None and replace:
            pending.append((os.fspath(partial), os.fspath(path)))
            return
        if replace:
            os.replace(partial, path)
        else:  # a file that appeared meanwhile (another writer) is kept
            from qbscale.storage.durability.rename import rename_noreplace

            rename_noreplace(Path(partial), Path(path))
    except FileExistsError as exc:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise StoreExistsError(f"{os.fspath(path)} appeared while this command wrote it "
                               "(another writer?): kept as it is; pass --overwrite to "
                               "replace it") from exc
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise _failed(path, exc) from exc
    _fsync_dir(Path(path).parent)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Rename the files written inside the block into place together, at its end.

    Each file is written and fsynced beside its target as usual (so a full
    disk fails inside the block), but :func:`publish_file` only records the
    rename.  When the block ends cleanly the files are renamed, in the order
    written; when it raises, every held file is removed and every target is
    left as it was.  A command that writes several outputs, or publishes a
    store's results, does it all inside one block.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with held():
    ...     write_text(d / "a.txt", "new")
    ...     print(sorted(p.name for p in d.iterdir() if not p.name.startswith(".")))
    []
    >>> (d / "a.txt").read_text()
    'new'
    """
    pending: list[tuple[str, str]] = []
    token = _HELD.set(pending)
    try:
        yield
    except BaseException:
        _remove(partial for partial, _ in pending)
        raise
    finally:
        _HELD.reset(token)
    for i, (partial, path) in enumerate(pending):
        try:
            os.replace(partial, path)
        except OSError as exc:
            _remove(partial for partial, _ in pending[i:])
            raise OutputError(f"could not write {path}: {_reason(exc)}") from exc
        _fsync_dir(Path(path).parent)


def _remove(paths: Iterable[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.remove(path)


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
              encoding: str | None = None, replace: bool = True) -> Iterator[IO[Any]]:
    """Open a hidden sibling of ``path`` for writing; rename it over ``path`` on success.

    Parameters
    ----------
    path
        The file to write (created or replaced).
    mode
        ``"wb"`` or ``"w"``.
    encoding
        For text mode (default UTF-8).
    replace
        False: never replace a file at ``path`` (one that appeared while this
        was written is kept, and :class:`StoreExistsError` raised).

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
    publish_file(partial, path, replace)


@contextlib.contextmanager
def building(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a hidden staging folder for the files of folder ``path``; move them in at the end.

    When ``path`` does not exist the staging folder is its sibling, renamed to
    ``path`` once complete; when it does (an earlier report, perhaps beside
    other files) the staging folder is inside it and each file is renamed
    over its namesake (:func:`publish_file`), so other files are kept.  On any
    failure the staging folder is removed and ``path`` is as it was; an
    OSError becomes an :class:`OutputError` naming the file under ``path``.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with building(d / "rep") as staging:
    ...     _ = (staging / "index.html").write_text("<html>")
    >>> sorted(p.name for p in (d / "rep").iterdir()), sorted(p.name for p in d.iterdir())
    (['index.html'], ['rep'])
    """
    out = Path(path)
    existed = out.is_dir()
    staging = out / partial_path(out).name if existed else partial_path(out)
    try:
        staging.mkdir()
    except OSError as exc:
        raise OutputError(f"could not write {out}: {_reason(exc)}") from exc
    try:
        yield staging
        files = sorted(staging.iterdir())
        for file in files:
            os.chmod(file, new_file_mode(out / file.name if existed else None))
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if not existed:
            os.rename(staging, out)
            _fsync_dir(out.parent)
            return
        for file in files:
            publish_file(file, out / file.name)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        inside = exc.filename and Path(os.fsdecode(exc.filename)).parent == staging
        name = Path(os.fsdecode(exc.filename)).name if inside else ""
        raise OutputError(f"could not write {out / name if name else out}: "
                          f"{_reason(exc)}") from exc
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` beside and rename (see :func:`replacing`)."""
    with replacing(path, "wb") as fh:
        fh.write(data)


def write_now(path: str | os.PathLike[str], data: bytes) -> None:
    """:func:`write_bytes`, renamed at once even inside :func:`held`.

    For a store's own files (its root ``zarr.json``, chunk manifests): they are
    published while the store's lock is held, so their rename cannot wait for
    the end of a command's block (the lock would be gone by then).
    """
    token = _HELD.set(None)
    try:
        write_bytes(path, data)
    finally:
        _HELD.reset(token)


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
