"""Writing an experiment store safely: staging, checked block writes, hashes, attrs.

Used by :mod:`qbscale.ingest`.  A local store is built in a hidden sibling
directory (``.exp.zarr.partial-<host>-<pid>``) and renamed into place once
complete; with ``overwrite`` the old store is replaced only then.  Leftovers of
killed writers are removed when their process is gone, and only by a writer on
their own host (a PID means nothing on another machine sharing the directory).  A remote store
(fsspec URL) is written in place, its ``complete`` attribute set last.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qbscale.errors import ConfigError, InputError, OutputError, QBScaleError, StoreExistsError
from qbscale.storage import layout, manifest, seal
from qbscale.storage.integrity import record_manifests
from qbscale.storage.paths import check_not_input, check_replaceable, describe_kind
from qbscale.storage.readers import InputMatrix

if TYPE_CHECKING:
    import zarr


@dataclass
class Target:
    """One 2-D array to write: its store name, input, stored dtype and chunks.

    ``transform(block, first_row)`` (optional) turns a checked input block into
    the stored block.  ``label`` names the input in messages (by default
    ``source.label(name)``, e.g. ``"bank (sims.pkl)"``).
    """

    name: str
    source: InputMatrix
    dtype: np.dtype
    chunks: tuple[int, int]
    transform: Callable[[np.ndarray, int], np.ndarray] | None = None
    label: str | None = None


def check_options(codec: str, dtype: Any = None) -> np.dtype | None:
    """Check a codec and a stored dtype (the one check every writer makes).

    ``dtype`` may be any numpy spelling of one of :data:`layout.DTYPES`
    (``"float32"``, ``"f4"``, ``np.float32``); None keeps each input's own.

    Returns
    -------
    numpy.dtype or None
        The stored dtype asked for.

    Raises
    ------
    ConfigError
        A codec not in :data:`layout.CODECS`, or a dtype not in :data:`layout.DTYPES`.

    >>> check_options("none", "f4")
    dtype('float32')
    """
    if codec not in layout.CODECS:
        raise ConfigError(f"unknown codec {codec!r}; choose one of {', '.join(layout.CODECS)}")
    if dtype is None:
        return None
    try:
        stored = np.dtype(dtype)
    except TypeError:
        stored = None
    if stored is None or str(stored) not in layout.DTYPES:
        raise ConfigError(f"unsupported dtype {dtype!r}; choose one of "
                          f"{', '.join(layout.DTYPES)}")
    return stored


def stored_dtype(src: InputMatrix, label: str, dtype: np.dtype | None) -> np.dtype:
    """The dtype to store ``src`` as: ``dtype`` if given, else its own float type.

    Raises
    ------
    InputError
        ``src`` does not hold floats, or holds a float type a store cannot.
    """
    if src.dtype.kind != "f":
        raise InputError(f"{label} holds {src.dtype} values; expected floats "
                         f"({', '.join(layout.DTYPES)})")
    if dtype is not None:
        return dtype
    if src.dtype.itemsize not in (2, 4, 8):
        raise InputError(f"{label} holds {src.dtype}; pass dtype= one of "
                         f"{', '.join(layout.DTYPES)}")
    return np.dtype(f"float{8 * src.dtype.itemsize}")


def unit_rows(label: str) -> Callable[[np.ndarray, int], np.ndarray]:
    """A block transform scaling rows to unit L2 norm (a zero row is refused).

    Rows are scaled in at least float32 and stored in the block's dtype.
    """

    def scale(block: np.ndarray, first_row: int) -> np.ndarray:
        work = block.astype(np.promote_types(block.dtype, np.float32), copy=False)
        norms = np.linalg.norm(work, axis=1)
        zero = np.flatnonzero(norms == 0)
        if zero.size:
            raise InputError(f"{label} has a zero vector at row {first_row + int(zero[0])} "
                             f"({zero.size} in rows {first_row}-{first_row + len(block) - 1}): "
                             "it cannot be normalised")
        return (work / norms[:, None]).astype(block.dtype, copy=False)

    return scale


#: bytes of input read (and written to the store) per step, rounded to whole chunks
READ_BYTES = 64 * 2**20


class LocalStage:
    """A local store written in a hidden sibling directory, renamed into place.

    ``kind`` (``"experiment store"`` or ``"normaliser"``) is the only thing
    ``overwrite`` replaces (:func:`qbscale.storage.paths.check_replaceable`).
    The finished store is renamed into place without replacing anything that
    appeared meanwhile (:func:`qbscale.storage.rename.rename_noreplace`); with
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

    def discard(self) -> None:
        """Remove the staging directory, once zarr's writes still in flight are over."""
        try:
            settle_zarr_writes()
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
        from qbscale.storage.rename import exchange, rename_noreplace

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


def settle_zarr_writes(timeout: float = 60.0) -> None:
    """Wait for every task still running on zarr's event loop (chunk writes left in
    flight when a write failed or was interrupted), and swallow their errors: a
    staging directory is removed only once nothing writes into it any more, and
    no "Task was destroyed but it is pending" is printed at exit."""
    import asyncio
    import concurrent.futures

    try:
        from zarr.core.sync import loop
    except ImportError:
        return
    running = loop[0]
    if running is None or running.is_closed() or not running.is_running():
        return

    async def pending() -> None:
        me = asyncio.current_task()
        while tasks := [t for t in asyncio.all_tasks() if t is not me]:
            done, _ = await asyncio.wait(tasks)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: no "never retrieved" message

    future = asyncio.run_coroutine_threadsafe(pending(), running)
    with contextlib.suppress(concurrent.futures.TimeoutError):
        future.result(timeout)


def _lock_old(url: str, options: dict[str, Any] | None) -> Any:
    """The lock of a store about to be replaced (:class:`StoreLockedError` while a
    run writes into it); None for a store nobody can write into (read-only)."""
    from qbscale.storage.lock import StoreLock

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

    def discard(self) -> None:
        try:
            settle_zarr_writes()
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
    with _one_line_errors(out):
        stage = RemoteStage(out, overwrite, storage_options, kind) if layout.is_url(out) \
            else LocalStage(out, overwrite, kind)
    try:
        with _one_line_errors(out):
            yield stage
    except BaseException:
        stage.discard()
        raise
    try:
        with _one_line_errors(out):
            stage.commit()
    except BaseException:
        stage.discard()
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


class FiniteCheck:
    """Counts NaN and inf over the blocks of one matrix and remembers the first."""

    def __init__(self, label: str, note: str = "") -> None:
        self.label, self.note = label, note
        self.nan = self.inf = 0
        self.first: tuple[int, int] | None = None

    def __call__(self, block: np.ndarray, first_row: int) -> bool:
        """True while every value seen so far is finite (the block may be written)."""
        finite = np.isfinite(block)
        if finite.all():
            return self.first is None
        nan = int(np.count_nonzero(np.isnan(block)))
        self.nan += nan
        self.inf += finite.size - int(np.count_nonzero(finite)) - nan
        if self.first is None:
            row, col = np.unravel_index(int(np.argmin(finite)), finite.shape)
            self.first = (first_row + int(row), int(col))
        return False

    def raise_if_bad(self) -> None:
        if self.first is None:
            return
        raise InputError(
            f"{self.label} holds {self.nan + self.inf} non-finite values ({self.nan} NaN, "
            f"{self.inf} inf){self.note}; the first is at row {self.first[0]}, "
            f"column {self.first[1]}"
        )


def compressors(codec: str) -> Any:
    """The zarr compressor of a codec name (None for ``"none"``)."""
    import zarr.codecs

    if codec == "none":
        return None
    if codec == "lz4":
        return zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    return zarr.codecs.ZstdCodec()


def write_matrix(group: zarr.Group, target: Target, codec: str, bar: Any) -> None:
    """Create ``target.name`` and fill it block by block, checking every value.

    After the first non-finite value, blocks are only scanned (to count them
    all) and the error is raised at the end.  An array of that name already
    in ``group`` is replaced.
    """
    from qbscale.storage.integrity import create_array

    src = target.source
    arr = create_array(group.store, target.name, shape=src.shape, dtype=target.dtype,
                       chunks=target.chunks, compressor=compressors(codec),
                       dimension_names=layout.DIMS[target.name], overwrite=True)
    row_bytes = src.shape[1] * target.dtype.itemsize
    chunk_rows = target.chunks[0]
    step = chunk_rows * max(1, READ_BYTES // max(1, chunk_rows * row_bytes))
    narrower = target.dtype.itemsize < src.dtype.itemsize
    check = FiniteCheck(target.label or src.label(target.name),
                        f" after conversion to {target.dtype}" if narrower else "")
    for r0, block in src.blocks(step):
        with np.errstate(over="ignore"):  # overflow to inf is reported by the check
            block = np.asarray(block, dtype=target.dtype)
        if check(block, r0):
            arr[r0:r0 + len(block)] = block if target.transform is None else \
                target.transform(block, r0)
        bar.update(len(block))
    check.raise_if_bad()


def write_vector(group: zarr.Group, name: str, values: np.ndarray, codec: str,
                 chunk_bytes: int) -> None:
    """Write a small 1-D array (query mask, ground truth) in one go."""
    from qbscale.storage.integrity import create_array

    rows = max(1, min(len(values), chunk_bytes // values.dtype.itemsize))
    arr = create_array(group.store, name, shape=values.shape, dtype=values.dtype,
                       chunks=(rows,), compressor=compressors(codec),
                       dimension_names=layout.DIMS[name])
    arr[...] = values


def describe(src: InputMatrix) -> dict[str, Any]:
    """The ``sources`` entry of an input (its sha256 is filled in later)."""
    return {"file": None if src.in_memory else src.name, "sha256": None,
            "dtype": str(src.dtype), "shape": list(src.shape)}


class Hashes:
    """SHA-256 of the input files, computed in a background thread meanwhile."""

    def __init__(self, inputs: Mapping[str, InputMatrix]) -> None:
        self.inputs = inputs

    def __enter__(self) -> Hashes:
        self.cancel = threading.Event()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="qbscale-sha256")
        self.futures = {role: self.pool.submit(src.sha256, self.cancel)
                        for role, src in self.inputs.items()}
        return self

    def results(self) -> dict[str, str | None]:
        return {role: future.result() for role, future in self.futures.items()}

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.cancel.set()
        self.pool.shutdown(wait=True, cancel_futures=True)


def write_store(stage: LocalStage | RemoteStage, targets: Sequence[Target],
                vectors: Mapping[str, np.ndarray | None], attrs: Mapping[str, Any],
                inputs: Mapping[str, InputMatrix | None], codec: str, progress: bool) -> None:
    """Write every array of a store into ``stage``, then mark it complete."""
    from tqdm import tqdm

    present = {role: src for role, src in inputs.items() if src is not None}
    sources = {role: describe(src) for role, src in present.items()}
    # a fresh id per write: a reader that sees it change knows the store was
    # replaced under it (qbscale.storage.store.check_unchanged)
    attrs = {**attrs, "store_id": uuid.uuid4().hex, "sources": sources, "complete": False}
    total = sum(t.source.shape[0] for t in targets)
    with Hashes(present) as hashes:
        group = stage.create_group({layout.ATTR: attrs})
        with tqdm(total=total, unit="row", file=sys.stderr, disable=not progress,
                  desc="ingest", dynamic_ncols=True) as bar:
            for target in targets:
                bar.set_postfix_str(target.name)
                write_matrix(group, target, codec, bar)
        for name, values in vectors.items():
            if values is not None:
                write_vector(group, name, values, codec, attrs["chunking"]["chunk_bytes"])
        for role, digest in hashes.results().items():
            sources[role]["sha256"] = digest
    record_manifests(os.fspath(stage.target), getattr(stage, "options", None))
    finish(group, seal.sealed({**attrs, "sources": sources, manifest.ATTR: manifest.FORMAT,
                               "complete": True}))


def consolidate(store: Any) -> None:
    """Consolidate a group's metadata (without zarr's "not in the v3 spec" warning)."""
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        # the lock of a run or replacement (qbscale.lock) is no zarr node
        warnings.filterwarnings("ignore", message="Object at .* is not recognized")
        zarr.consolidate_metadata(store)


def finish(group: zarr.Group, attrs: dict[str, Any]) -> None:
    """Consolidate the metadata, then set the attributes with ``complete`` last."""
    import zarr

    consolidate(group.store)
    zarr.open_group(group.store, mode="r+").attrs.update({layout.ATTR: attrs})
