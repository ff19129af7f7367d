"""Moving a finished directory into place: never over something that appeared meanwhile.

:func:`rename_noreplace` fails with :class:`FileExistsError` when the target
exists (even an empty directory, which :func:`os.rename` would replace);
:func:`exchange` swaps two paths in one step, so the target is never missing.
Both use Linux's ``renameat2`` (``RENAME_NOREPLACE``, ``RENAME_EXCHANGE``)
through ctypes; where it is unavailable (another OS, an old kernel, a
filesystem without it, e.g. NFS) an exclusive ``flock`` on the parent
directory serialises qbscale's own writers around a check and a plain rename
(the exchange is then two renames with a moment between them).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> (d / "a").mkdir(); (d / "b").mkdir()
>>> rename_noreplace(d / "a", d / "b")
Traceback (most recent call last):
...
FileExistsError: [Errno 17] File exists: ...
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import sys
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
#: errors meaning "renameat2 (or this flag) is not available here": fall back
_UNSUPPORTED = (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)

Path = str | os.PathLike[str]


@lru_cache(maxsize=1)
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                     ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def _try_renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Rename with ``flags``; False when renameat2 or the flag is unsupported here."""
    func = _renameat2()
    if func is None:
        return False
    if func(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), os.fspath(src), None, os.fspath(dst))


@contextlib.contextmanager
def _parent_locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the directory holding ``path`` (the fallback)."""
    import fcntl

    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; :class:`FileExistsError` if ``dst`` exists.

    Raises
    ------
    FileExistsError
        ``dst`` exists (a file, a directory, even an empty one, or a link).
    """
    if _try_renameat2(src, dst, RENAME_NOREPLACE):
        return
    with _parent_locked(dst):
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(dst))
        os.rename(src, dst)


def exchange(src: Path, dst: Path) -> None:
    """Swap ``src`` and ``dst`` (both must exist): ``dst`` then holds what ``src`` held.

    Raises
    ------
    FileNotFoundError
        One of them does not exist.
    """
    if _try_renameat2(src, dst, RENAME_EXCHANGE):
        return
    # (a name no cleanup removes: should the way back fail too, the old data stays here)
    head, name = os.path.split(os.path.abspath(dst))
    aside = os.path.join(head, f".{name}.replaced-{os.getpid()}")
    with _parent_locked(dst):
        os.rename(dst, aside)
        try:
            os.rename(src, dst)
        except OSError:
            os.rename(aside, dst)
            raise
        os.rename(aside, src)
