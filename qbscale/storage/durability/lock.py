"""One writer at a time: a lock object inside the store.

A run that writes into a store (``--save-scores``, ``--save-ranks``,
``--topk``, ``--resume``) first creates ``STORE/qbscale.lock``, a small JSON
object with the holder's host, PID, start time and a random token, and deletes
it when it ends (also on errors).  Creation is exclusive:

* local disk and shared filesystems: the lock is written whole to a unique
  temporary name, then hard-linked to ``qbscale.lock`` (atomic, fails if it
  exists; ``open(O_CREAT | O_EXCL)`` where hard links are not supported);
* object storage (s3fs): a conditional put (``If-None-Match: *``), which
  AWS S3 and moto honour; where the server refuses conditional puts, the lock
  is written only if absent, then read back after a pause and kept only if it
  still holds this run's token.  That fallback leaves a small window: two
  writers starting within the pause of each other on a server without
  conditional puts can both win (documented in docs/failure.md).

Readers never look at the lock.  A lock left by a killed run is broken with
``qbscale unlock STORE`` (:func:`break_lock`), which refuses while the holder
is a live process on this host.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from qbscale.errors import ConfigError, StoreLockedError

KEY = "qbscale.lock"
#: seconds between writing and re-reading a lock where puts cannot be conditional
VERIFY_PAUSE = 0.5


def _local(url: str) -> str | None:
    """The local directory of ``url``, or None for an fsspec URL."""
    from qbscale.storage.layout import is_url, local_path

    return None if is_url(url) else local_path(url)


def _fs(url: str, options: dict[str, Any] | None) -> tuple[Any, str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **(options or {}))
    return fs, f"{root.rstrip('/')}/{KEY}"


def read_lock(url: str, options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The holder of the store's lock (host, pid, started, token, purpose), or None."""
    local = _local(url)
    try:
        if local is not None:
            with open(os.path.join(local, KEY), encoding="utf-8") as fh:
                text = fh.read()
        else:
            fs, path = _fs(url, options)
            text = fs.cat_file(path).decode()
    except FileNotFoundError:
        return None
    try:
        return dict(json.loads(text))
    except ValueError:  # a lock being written, or torn: still a lock
        return {"host": "?", "pid": 0, "started": "?", "token": ""}


def describe(info: dict[str, Any]) -> str:
    return (f"{info.get('purpose', 'a run')} by PID {info.get('pid')} on {info.get('host')} "
            f"since {info.get('started')}")


def _refused(url: str, info: dict[str, Any] | None) -> StoreLockedError:
    held = describe(info) if info else "another run"
    if info and holder_alive(info) is False:
        return StoreLockedError(
            f"store {url} is locked by {held}, which is no longer running: break its lock "
            f"with `qbscale unlock {url}`, then rerun (a `qbscale run` started with --resume "
            "keeps its finished blocks)")
    return StoreLockedError(
        f"store {url} is locked by {held}: one writer at a time. If that run is dead, "
        f"break the lock with `qbscale unlock {url}`")


@dataclass
class StoreLock:
    """A held lock; :meth:`release` (idempotent) deletes it if it is still ours."""

    url: str
    options: dict[str, Any] | None
    info: dict[str, Any]
    _finalizer: Any = field(default=None, repr=False)

    @classmethod
    def acquire(cls, url: str, options: dict[str, Any] | None = None,
                purpose: str = "a run") -> StoreLock:
        """Take the store's lock or raise :class:`StoreLockedError` at once."""
        token = uuid.uuid4().hex
        info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "token": token, "purpose": purpose}
        data = json.dumps(info).encode()
        local = _local(url)
        # SIGTERM/SIGINT wait until the lock exists and its release is registered:
        # one arriving in between would leave a lock (or its temporary file) behind
        with signals_deferred():
            if local is not None:
                _create_local(url, os.path.join(local, KEY), data)
            else:
                _create_remote(url, options, data, token)
            lock = cls(url, options, info)
            lock._finalizer = weakref.finalize(lock, _release, url, options, token)
        return lock

    def release(self) -> None:
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> StoreLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGTERM and SIGINT back (main thread only) until the block ends; a
    signal that arrived meanwhile is delivered then."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGTERM, signal.SIGINT}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _create_local(url: str, path: str, data: bytes) -> None:
    """Write the lock whole beside ``path``, then hard-link it into place: the link
    is atomic and fails if ``path`` exists, so nobody reads a half-written lock."""
    folder, name = os.path.split(path)
    _remove_stale_partials(folder, name)
    tmp = os.path.join(folder, f".{name}.partial-{socket.gethostname()}-{os.getpid()}-"
                               f"{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except FileNotFoundError as exc:
        raise ConfigError(f"cannot lock {url}: no such store directory") from exc
    except BaseException:  # e.g. a full disk: leave nothing behind
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _refused(url, read_lock(url)) from None
    except OSError:  # a filesystem without hard links: exclusive create instead
        _create_exclusive(url, path, data)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _remove_stale_partials(folder: str, name: str) -> None:
    """Delete the temporary lock files of killed processes on this host
    (``.qbscale.lock.partial-HOST-PID-HEX``; a PID means nothing on another host)."""
    prefix = f".{name}.partial-{socket.gethostname()}-"
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            pid = entry[len(prefix):].split("-")[0] if entry.startswith(prefix) else ""
            if pid.isdigit() and int(pid) != os.getpid() \
                    and holder_alive({"host": socket.gethostname(), "pid": pid}) is False:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, entry))


def _create_exclusive(url: str, path: str, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise _refused(url, read_lock(url)) from None
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # e.g. a full disk: leave no torn lock behind
        os.remove(path)
        raise


def _create_remote(url: str, options: dict[str, Any] | None, data: bytes, token: str) -> None:
    fs, path = _fs(url, options)
    try:
        fs.pipe_file(path, data, mode="create")
        return
    except FileExistsError:
        raise _refused(url, read_lock(url, options)) from None
    except (TypeError, NotImplementedError, ValueError):
        pass  # this filesystem has no exclusive create: write, then verify
    if fs.exists(path):
        raise _refused(url, read_lock(url, options))
    fs.pipe_file(path, data)
    time.sleep(VERIFY_PAUSE)
    info = read_lock(url, options)
    if not info or info.get("token") != token:
        raise _refused(url, info)


def _release(url: str, options: dict[str, Any] | None, token: str) -> None:
    info = read_lock(url, options)
    if not info or info.get("token") != token:
        return
    _remove(url, options)


def holder_alive(info: dict[str, Any]) -> bool | None:
    """True / False for a holder on this host, None when it runs elsewhere."""
    if info.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(info.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return int(info.get("pid", 0)) > 0


def break_lock(url: str, options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Delete a stale lock; returns what it held (None if there was none).

    Raises
    ------
    StoreLockedError
        The holder is a live process on this host.
    """
    info = read_lock(url, options)
    if info is None:
        return None
    if holder_alive(info):
        raise StoreLockedError(f"store {url} is locked by {describe(info)}, which is still "
                               "running: not breaking its lock")
    _remove(url, options)
    return info


def _remove(url: str, options: dict[str, Any] | None) -> None:
    """Delete the lock object (gone already is fine)."""
    local = _local(url)
    try:
        if local is not None:
            os.remove(os.path.join(local, KEY))
        else:
            fs, path = _fs(url, options)
            fs.rm_file(path)
    except FileNotFoundError:
        return
