"""Where a store is built: a hidden sibling directory renamed into place, or a
remote store written in place.

A local store is built in ``.exp.zarr.partial-<host>-<pid>`` and renamed into
place without replacing anything that appeared meanwhile; with ``overwrite``
old and new are exchanged in one step, so the old store is whole until then.
Leftovers of killed writers are removed when their process is gone, and only
by a writer on their own host (a PID means nothing on another machine sharing
the directory).  A remote store (fsspec URL) is written in place, its
``complete`` attribute set last.  :func:`staging` picks one and cleans up on
failure; :mod:`qbscale.storage.stores.writer` writes into it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qbscale.errors import ConfigError, OutputError, QBScaleError, StoreExistsError
from qbscale.storage import layout
from qbscale.storage.durability.paths import (
    check_filesystem,
    check_not_input,
    check_replaceable,
    describe_kind,
)

if TYPE_CHECKING:
    import zarr


class LocalStage:
    """A local store written in a hidden sibling directory, renamed into place.

    ``kind`` (``"experiment store"`` or ``"normaliser"``) is the only thing
    ``overwrite`` replaces (:func:`qbscale.storage.durability.paths.check_replaceable`).
    The finished store is renamed into place without replacing anything that
    appeared meanwhile (:func:`qbscale.storage.durability.rename.rename_noreplace`); with
    ``overwrite`` it is swapped with the old one in one step, so the old store
    stays whole until that last rename.
    """

    def __init__(self, out: str, overwrite: bool, kind: str = "experiment store") -> None:
        self.path = Path(layout.local_path(out))
        self.final = os.fspath(self.path)
        self.overwrite, self.kind = overwrite, kind
        if self.path.exists() or self.path.is_symlink():
            if not overwrite:
                raise StoreExistsError(f"{self.final} exists: pass --overwrite "
                                       "(overwrite=True) to replace it")
            check_replaceable(self.path, kind, self.final)
        if not self.path.parent.is_dir():
            raise ConfigError(f"cannot write {self.final}: no directory {self.path.parent}")
        if not os.access(self.path.parent, os.W_OK):
            raise OutputError(f"cannot write {self.final}: directory {self.path.parent} "
                              "is not writable")
        self.target = self.path.with_name(f".{self.path.name}.partial-{_owner()}")
        _remove_stale(self.path)
        # the store being replaced stays locked until it is gone: no run writes
        # its results into it meanwhile (they would land in the new store)
        self.lock = _lock_old(self.final, None) if self.path.is_dir() else None

    def create_group(self, attrs: dict[str, Any]) -> zarr.Group:
        import zarr

        shutil.rmtree(self.target, ignore_errors=True)
        return zarr.create_group(os.fspath(self.target), attributes=attrs)

    def discard(self, cancel: bool = False) -> None:
        """Remove the staging directory, once zarr's writes still in flight are over
        (``cancel``: cancelled first, see :func:`settle_zarr_writes`).  After an
        interruption at most :data:`~qbscale.storage.durability.removal.INTERRUPTED_BUDGET`
        seconds go to it; a detached process deletes the rest."""
        from qbscale.engine import interrupt
        from qbscale.storage.durability.removal import INTERRUPTED_BUDGET, remove_tree

        try:
            cancel = cancel or interrupt.requested()
            settle_zarr_writes(cancel=cancel or None)
            if cancel:
                remove_tree(self.target, INTERRUPTED_BUDGET)
                return
            for _ in range(50):
                _remove_tree(self.target)
                if not os.path.lexists(self.target):
                    return
                time.sleep(0.02)
        finally:
            if self.lock is not None:
                self.lock.release()

    def commit(self) -> None:
        """Move the finished store into place (an old one is swapped out only now).

        Raises
        ------
        StoreExistsError
            Something appeared at the path while the store was written (and
            ``overwrite`` was not given), or what appeared is not of this kind.
        """
        try:
            self._publish()
        except StoreExistsError:
            raise
        except FileExistsError as exc:  # another writer won the race
            raise StoreExistsError(f"{self.final} appeared while this {self.kind} was "
                                   "written (another writer?): not replacing it; pass "
                                   "--overwrite to replace it") from exc
        _remove_tree(self.target)  # the old store, swapped out
        if self.lock is not None:
            self.lock.release()

    def _publish(self) -> None:
        from qbscale.storage.durability.rename import exchange, rename_noreplace

        for _ in range(10):
            try:
                rename_noreplace(self.target, self.path)
                return
            except FileExistsError:
                if not self.overwrite:
                    raise
            check_replaceable(self.path, self.kind, self.final)  # what appeared meanwhile
            if self.lock is None and self.path.is_dir():
                self.lock = _lock_old(self.final, None)
            try:
                exchange(self.target, self.path)
                return
            except FileNotFoundError:  # removed meanwhile: try again
                continue
        raise OutputError(f"cannot write {self.final}: it keeps changing under this writer")


def _remove_tree(path: Path) -> None:
    """Delete a directory tree (or the link, or the file) at ``path``; gone is fine."""
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(OSError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def settle_zarr_writes(timeout: float = 60.0, cancel: bool | None = None) -> None:
    """Wait for every task still running on zarr's event loop (chunk writes left in
    flight when a write failed or was interrupted), and swallow their errors: a
    staging directory is removed only once nothing writes into it any more, and
    no "Task was destroyed but it is pending" is printed at exit.

    ``cancel`` (by default: when an interruption is pending,
    :mod:`qbscale.engine.interrupt`) cancels them first instead of letting them
    run to their end: one ``arr[...] = block`` of many small chunks can take
    minutes, while the chunk files being written when they are cancelled are
    done within milliseconds (:func:`wait_for_io_threads`)."""
    import asyncio
    import concurrent.futures

    from qbscale.engine import interrupt

    try:
        from zarr.core.sync import loop
    except ImportError:
        return
    running = loop[0]
    if running is None or running.is_closed() or not running.is_running():
        return
    if cancel is None:
        cancel = interrupt.requested()

    async def pending() -> None:
        me = asyncio.current_task()
        while tasks := [t for t in asyncio.all_tasks() if t is not me]:
            if cancel:
                for task in tasks:
                    task.cancel()
            done, _ = await asyncio.wait(tasks)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: no "never retrieved" message

    future = asyncio.run_coroutine_threadsafe(pending(), running)
    with contextlib.suppress(concurrent.futures.TimeoutError):
        # cancelled tasks end at their next await: a second is plenty
        future.result(min(timeout, 1.0) if cancel else timeout)
    if cancel:
        wait_for_io_threads(running, min(timeout, 0.5))


def cancel_zarr_work() -> None:
    """Cancel every task on zarr's event loop, without waiting (safe from a signal
    handler: it only schedules the cancellation on the loop's own thread)."""
    import sys

    sync = sys.modules.get("zarr.core.sync")
    running = getattr(sync, "loop", [None])[0] if sync is not None else None
    if running is None or running.is_closed() or not running.is_running():
        return

    def cancel_all() -> None:
        import asyncio

        for task in asyncio.all_tasks(running):
            task.cancel()

    with contextlib.suppress(RuntimeError):  # closed meanwhile
        running.call_soon_threadsafe(cancel_all)


def wait_for_io_threads(running: Any, timeout: float) -> None:
    """Wait (at most ``timeout`` seconds) until no thread of ``running``'s default
    executor, where zarr's local store reads and writes files, is in a job.

    A cancelled task no longer waits for its thread, but the thread finishes the
    file it was writing (and may create its directory again): a staging
    directory is removed only after that.  A thread is busy while its stack
    holds a job's frame (``concurrent.futures`` keeps no count of them)."""
    import sys

    executor = getattr(running, "_default_executor", None)
    threads = list(getattr(executor, "_threads", ()))
    deadline = time.monotonic() + timeout

    def busy() -> bool:
        frames = sys._current_frames()
        for thread in threads:
            frame = frames.get(thread.ident or -1)
            while frame is not None:
                code = frame.f_code
                if code.co_name == "run" and code.co_filename.endswith(
                        os.path.join("concurrent", "futures", "thread.py")):
                    return True
                frame = frame.f_back
        return False

    while threads and busy() and time.monotonic() < deadline:
        time.sleep(0.005)


def _lock_old(url: str, options: dict[str, Any] | None) -> Any:
    """The lock of a store about to be replaced (:class:`StoreLockedError` while a
    run writes into it); None for a store nobody can write into (read-only)."""
    from qbscale.storage.durability.lock import StoreLock

    try:
        return StoreLock.acquire(url, options, "replacing the store (--overwrite)")
    except PermissionError:
        return None


def _owner() -> str:
    """``HOST-PID`` of this process, the suffix of its staging directories."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _remove_stale(path: Path) -> None:
    """Delete leftovers of killed writers into ``path``: this host's only, and
    only those whose process is gone."""
    prefixes = (f".{path.name}.partial-", f".{path.name}.old-")
    host = socket.gethostname()
    for entry in path.parent.iterdir():
        prefix = next((p for p in prefixes if entry.name.startswith(p)), None)
        if prefix is None:
            continue
        owner, _, pid = entry.name[len(prefix):].rpartition("-")
        if owner == host and pid.isdigit() and int(pid) != os.getpid() \
                and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RemoteStage:
    """A store at a fsspec URL, written in place (``complete`` is set last)."""

    def __init__(self, url: str, overwrite: bool, storage_options: dict[str, Any] | None,
                 kind: str = "experiment store") -> None:
        import fsspec

        self.final = self.target = url
        self.options = storage_options
        self.fs, self.root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.created = False
        self.replace = False
        if self.fs.exists(self.root):
            if not overwrite:
                raise StoreExistsError(f"{url} exists: pass --overwrite (overwrite=True) "
                                       "to replace it")
            meta = f"{self.root}/zarr.json"
            found = describe_kind(self.fs.cat_file(meta) if self.fs.exists(meta) else b"")
            if found != kind:
                raise StoreExistsError(f"{url} exists and is "
                                       f"{'not a qbscale store' if found is None else 'a ' + found}"
                                       f", not a {kind}: not replacing it")
            self.replace = True
        # held until create_group deletes the old store (the lock with it); the
        # new one counts as incomplete until it is finished, so no run writes into it
        self.lock = _lock_old(url, storage_options) if self.replace else None

    def create_group(self, attrs: dict[str, Any]) -> zarr.Group:
        import zarr

        if self.replace:
            self.fs.rm(self.root, recursive=True)
        self.created = True
        return zarr.create_group(self.final, attributes=attrs, storage_options=self.options)

    def discard(self, cancel: bool = False) -> None:
        try:
            settle_zarr_writes(cancel=cancel or None)
            if self.created and self.fs.exists(self.root):
                self.fs.rm(self.root, recursive=True)
        finally:
            if self.lock is not None:
                self.lock.release()

    def commit(self) -> None:
        """Nothing to move: the ``complete`` attribute, written last, commits."""
        if self.lock is not None:
            self.lock.release()


def output_error(exc: OSError, out: str) -> OutputError:
    """A one-line :class:`OutputError` for an OSError met while writing ``out``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    name = os.fspath(exc.filename) if exc.filename else ""
    if name and os.path.basename(os.fspath(out)) not in name:  # an input, not the store
        return OutputError(f"{name}: {reason}")
    return OutputError(f"cannot write {out}: {reason}")


@contextmanager
def staging(out: str, overwrite: bool, storage_options: dict[str, Any] | None,
            kind: str = "experiment store", inputs: Sequence[object] = ()
            ) -> Iterator[LocalStage | RemoteStage]:
    """Where to write ``out``, a qbscale ``kind``; removed on any error, committed on success.

    Raises
    ------
    StoreExistsError
        ``out`` exists and ``overwrite`` is False, or it is neither a qbscale
        ``kind`` nor an empty directory (a file, another store, another group);
        or something appeared at ``out`` while it was written.
    ConfigError
        ``out`` is, holds or lies inside one of ``inputs``.
    OutputError
        Writing failed (disk full, read-only, ...); nothing is left behind.
    """
    check_not_input(out, inputs)
    check_filesystem(out)
    with _one_line_errors(out):
        stage = RemoteStage(out, overwrite, storage_options, kind) if layout.is_url(out) \
            else LocalStage(out, overwrite, kind)
    try:
        with _one_line_errors(out):
            yield stage
    except BaseException as exc:  # an interruption cancels the writes in flight
        stage.discard(cancel=not isinstance(exc, Exception))
        raise
    try:
        with _one_line_errors(out):
            stage.commit()
    except BaseException as exc:
        stage.discard(cancel=not isinstance(exc, Exception))
        raise


@contextmanager
def _one_line_errors(out: str) -> Iterator[None]:
    """An OSError inside becomes an OutputError naming ``out`` (qbscale's own pass)."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, QBScaleError):
            raise
        raise output_error(exc, out) from exc
