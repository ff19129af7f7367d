"""Reading a file of a store only when it is a regular file, and only as much as expected.

A chunk (or a manifest, or a ``zarr.json``) replaced by a FIFO, a socket, a
device or a symlink to one would block a reader forever (a FIFO without a
writer) or feed it bytes without end (``/dev/zero``).  Every local read of a
store's files goes through :func:`read_regular`: the file is opened with
``O_NONBLOCK`` (opening a FIFO does not wait for a writer), ``fstat`` of the
open descriptor must say a regular file (no race between a check and the
open), and at most ``limit`` bytes are accepted.
"""

from __future__ import annotations

import os
import stat

from qbscale.storage.durability.paths import file_type


class NotRegularError(OSError):
    """A store's file is no regular file, or larger than it may be; ``reason`` says
    which without the path (``not a regular file (a FIFO)``)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path} is {reason}")
        self.reason = reason


def open_regular(path: str) -> int:
    """A read-only descriptor of ``path`` once ``fstat`` says it is a regular file.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path`` (NotADirectoryError: a file where a folder was expected).
    NotRegularError
        ``path`` is (or a symlink leads to) a FIFO, a socket, a device or a directory.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:
        raise NotRegularError(path, "not a regular file (a directory)") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularError(path, f"not a regular file ({file_type(mode)})")
    return fd


def read_regular(path: str, limit: int | None = None) -> bytearray:
    """The bytes of the regular file ``path``, refusing one larger than ``limit``.

    Read in one pass into one writable buffer.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    NotRegularError
        Not a regular file (:func:`open_regular`), or more than ``limit`` bytes.
    """
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if limit is not None and size > limit:
            raise NotRegularError(path, f"damaged ({size} bytes, at most {limit} expected)")
        out = bytearray(size)  # writable: numpy views of it may be modified
        view, done = memoryview(out), 0
        while done < size:
            got = os.readv(fd, [view[done:]])
            if not got:
                del view
                del out[done:]  # truncated meanwhile: the reader's size check says so
                break
            done += got
        return out
    finally:
        os.close(fd)

