"""Writing run results into a store, and reading stored matrices back."""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from qbscale.engine import interrupt
from qbscale.engine.grid import offsets
from qbscale.errors import ConfigError, InputError
from qbscale.storage import layout
from qbscale.storage.stores.sources import ZarrMatrix, _open_zarr, freeze_options
from qbscale.types import MatrixSource

if TYPE_CHECKING:
    from qbscale.config import RunConfig
    from qbscale.types import Experiment, RunResult

SCORES = "scores"
#: where each run's arrays go: ``runs/<token>/<name>``
RUNS = "runs"
#: the group of a run's prefix that keeps its progress (:mod:`qbscale.storage.stores.resume`)
MANIFEST_GROUP = "manifest"
#: the result arrays a run saves (read through the ``last_run`` pointer)
RESULT_NAMES = (SCORES, "ranks", "ranks_baseline", "topk_index", "topk_score")


def new_prefix() -> str:
    """A fresh run prefix, ``runs/<token>``."""
    return f"{RUNS}/{uuid.uuid4().hex}"


def deleted(url: str | None) -> bool:
    """True when the local store at ``url`` has lost its root ``zarr.json``: it was
    deleted (or is being deleted) while a run used it.  Never for a URL (object
    storage has no directories a write could create again) or no store."""
    if url is None or layout.is_url(str(url)):
        return False
    return not os.path.isfile(os.path.join(layout.local_path(str(url)), "zarr.json"))


def deleted_error(url: str) -> Any:
    """The one-line error of a store deleted while a run used it."""
    from qbscale.errors import StoreChangedError

    return StoreChangedError(f"store {url} was deleted while this run used it: nothing was "
                             "reported or saved, and nothing was written in its place")


def check_present(url: str | None) -> None:
    """Stop before a write into a store that was deleted meanwhile: zarr creates
    the directories of every chunk it writes, so the write would leave the
    skeleton of a store where the user deleted one.

    Raises
    ------
    StoreChangedError
        The store's root ``zarr.json`` is gone (:func:`deleted`).
    """
    if deleted(url):
        raise deleted_error(str(url))


def published_prefix(attrs: dict[str, Any] | None) -> str | None:
    """The prefix of the published run in a store's ``qbscale`` attributes (None
    before the first run, or for a store whose results sit at the top level)."""
    last = (attrs or {}).get("last_run") or {}
    prefix = last.get("prefix") if isinstance(last, dict) else None
    return prefix if isinstance(prefix, str) and prefix else None


def unpublished_prefixes(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The run prefixes ``runs/<token>`` of the store at ``url`` that its root does
    not point at: what a saving run that was interrupted or killed left (its
    partial arrays and resume manifest), or the previous run's results a run
    killed right after publishing its own had not deleted yet.  Not damage:
    nothing reads them but ``--resume``.  An unreadable root: none (the
    published prefix is unknown)."""
    from qbscale.storage.durability.manifest import read_json

    try:
        root = read_json(url, storage_options, "zarr.json")
    except (ValueError, OSError):
        return []
    attrs = (root.get("attributes") or {}).get(layout.ATTR) if isinstance(root, dict) else None
    if not isinstance(attrs, dict):
        return []
    published = published_prefix(attrs)
    if not layout.is_url(url):
        try:
            entries = [e.name for e in os.scandir(os.path.join(layout.local_path(url), RUNS))
                       if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []
    else:
        import fsspec

        fs, base = fsspec.core.url_to_fs(url, **(storage_options or {}))
        folder = f"{base.rstrip('/')}/{RUNS}"
        if not fs.exists(folder):
            return []
        entries = [str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
                   for e in fs.ls(folder, detail=True) if e.get("type") == "directory"]
    return sorted(f"{RUNS}/{name}" for name in entries
                  if not name.startswith(".") and f"{RUNS}/{name}" != published)


def resumable(url: str, storage_options: dict[str, Any] | None, prefix: str) -> bool:
    """True when run prefix ``prefix`` holds a finished resume manifest: a run with
    the same options and ``--resume`` reuses its finished row blocks."""
    from qbscale.storage.durability.manifest import read_json

    try:
        meta = read_json(url, storage_options, f"{prefix}/{MANIFEST_GROUP}/zarr.json")
    except (ValueError, OSError):
        return False
    return isinstance(meta, dict) and "settings" in (meta.get("attributes") or {})


def remove_unpublished(url: str, storage_options: dict[str, Any] | None = None
                       ) -> tuple[list[str], list[str]]:
    """Delete the store's :func:`unpublished_prefixes` that no ``--resume`` can use,
    holding its writer lock (a run that starts meanwhile is not touched).

    Returns
    -------
    tuple of list of str
        The prefixes deleted, and those kept because a ``--resume`` run reuses
        them (a run without ``--resume`` deletes them).

    Raises
    ------
    StoreLockedError
        A run holds the store's lock.
    """
    from qbscale.storage.durability.lock import StoreLock
    from qbscale.storage.durability.publish import delete_nodes

    if not unpublished_prefixes(url, storage_options):
        return [], []  # no lock taken: a read-only store is fine
    with StoreLock.acquire(url, storage_options, "removing an interrupted run's results"):
        found = unpublished_prefixes(url, storage_options)
        kept = [p for p in found if resumable(url, storage_options, p)]
        removed = [p for p in found if p not in kept]
        delete_nodes(url, storage_options, removed)
    return removed, kept


def result_path(attrs: dict[str, Any] | None, name: str) -> str:
    """Where result array ``name`` (``scores``, ``ranks``, ...) of the last run is."""
    prefix = published_prefix(attrs)
    return f"{prefix}/{name}" if prefix and name in RESULT_NAMES else name


def published_path(store: str, name: str, storage_options: dict[str, Any] | None = None
                   ) -> str:
    """The path inside ``store`` of the last published run's array ``name``
    (``runs/<token>/scores``; what :func:`open_result` opens)."""
    return result_path(_attrs(store, storage_options), name)


def _attrs(store: str | os.PathLike[str], storage_options: dict[str, Any] | None
           ) -> dict[str, Any]:
    """The ``qbscale`` attributes of ``store``, their seal checked.

    Raises
    ------
    StoreNotFoundError
        No qbscale store there.
    DamagedStoreError
        The store has no seal, or its attributes (a run's results) were edited.
    """
    import zarr

    from qbscale.errors import DamagedStoreError, StoreNotFoundError
    from qbscale.storage.durability import seal

    try:
        group = zarr.open_group(os.fspath(store), mode="r", storage_options=storage_options)
        attrs: Any = group.attrs.get(layout.ATTR) or {}
    except (OSError, KeyError, ValueError, TypeError, zarr.errors.BaseZarrError) as exc:
        raise StoreNotFoundError(f"no qbscale store at {os.fspath(store)}") from exc
    if not isinstance(attrs, dict) or not attrs:
        raise StoreNotFoundError(f"no qbscale store at {os.fspath(store)}")
    refused = seal.refusal(os.fspath(store), attrs)
    if refused is not None:
        raise DamagedStoreError(refused)
    return dict(attrs)


def open_result(store: str, name: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The last published run's array ``name``.

    Reads go through the ``last_run`` pointer of the store, so a reader sees
    one run's results, never a mix.

    Parameters
    ----------
    store : str
        A store path or URL.
    name : str
        ``"scores"``, ``"ranks"``, ``"topk_index"``, ...
    storage_options : dict, optional
        The fsspec options of a URL.

    Returns
    -------
    zarr.Array
        The array, read lazily.

    Examples
    --------
    >>> from qbscale import open_result
    >>> open_result("exp.zarr", "ranks")[...]  # doctest: +SKIP
    """
    import zarr

    from qbscale.storage.durability.integrity import check_metadata, forget, verified_store

    forget()  # the store may have been rewritten since this process last read it
    attrs = _attrs(store, storage_options)
    path = result_path(attrs, name)
    check_metadata(os.fspath(store), storage_options, [path], required=False, root=attrs)
    try:  # every chunk read verified: a missing one is an error, not its fill value
        return zarr.open_array(verified_store(os.fspath(store), storage_options), path=path,
                               mode="r")
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.NodeNotFoundError) as exc:
        raise InputError(f"{store} has no saved {name!r} (give `qbscale run` "
                         "--save-scores, --save-ranks or --topk)") from exc


@lru_cache(maxsize=32)
def writable_array(url: str, name: str, options: tuple[tuple[str, Any], ...], token: str) -> Any:
    """Array ``name`` of the store at ``url``, opened for writing (cached per process).

    Opened directly, not through the group, so consolidated metadata of an
    earlier run cannot hide it; ``token`` (one per run) keeps a worker that
    served an earlier run from reusing that run's handle, perhaps of another
    shape.
    """
    import zarr

    arr = zarr.open_array(url, path=name, mode="r+", storage_options=dict(options) or None)
    # every chunk stored, fill values included: an absent chunk is never data
    return arr.with_config({"write_empty_chunks": True})


@dataclass(frozen=True)
class ScoresWriter:
    """Writes the normalised matrix, block by block, from inside the tasks."""

    url: str
    options: tuple[tuple[str, Any], ...]
    row_chunks: tuple[int, ...]
    token: str = ""  # one per run: see :func:`writable_array`
    prefix: str = ""  # the run's ``runs/<token>``

    @property
    def path(self) -> str:
        return f"{self.prefix}/{SCORES}" if self.prefix else SCORES

    @classmethod
    def create(cls, experiment: Experiment, config: RunConfig, prefix: str) -> ScoresWriter:
        from qbscale.storage.durability.integrity import create_array

        test = experiment.test
        if experiment.url is None:
            raise ConfigError("results can only be saved into a store (this run has none)")
        if len(test.col_chunks) != 1:
            raise ConfigError("saving scores needs a test matrix chunked by rows only")
        rows = test.row_chunks[0]
        scores = create_array(
            str(experiment.url), f"{prefix}/{SCORES}", shape=(len(config.values), *test.shape),
            dtype="float64", chunks=(1, rows, test.shape[1]), overwrite=True,
            dimension_names=(config.variant_name, "query", "gallery"),
            storage_options=experiment.storage_options,
        )
        scores.attrs.update({"values": list(config.values), "method": config.method})
        return cls(str(experiment.url), freeze_options(experiment.storage_options),
                   test.row_chunks, uuid.uuid4().hex, prefix)

    def write(self, b: int, i: int, block: np.ndarray) -> None:
        interrupt.check()  # SIGTERM: no new block written while the run stops
        check_present(self.url)
        arr = writable_array(self.url, self.path, self.options, self.token)
        r0 = offsets(self.row_chunks)[i]
        arr[b, r0:r0 + block.shape[0], :] = block


def write_results(experiment: Experiment, prefix: str, result: RunResult, *,
                  save_ranks: bool) -> None:
    """Store the ranks / top-k arrays of a run under its ``prefix`` (unpublished)."""
    from qbscale.storage.durability.integrity import create_array

    values = list(result.config.values)
    variant = result.config.variant_name  # beta, alpha or kc: the axis of the swept values

    def put(name: str, data: np.ndarray, dims: tuple[str, ...]) -> None:
        check_present(str(experiment.url))  # create_array makes missing parents
        arr = create_array(str(experiment.url), f"{prefix}/{name}", shape=data.shape,
                           dtype=data.dtype, chunks=data.shape, overwrite=True,
                           dimension_names=dims, storage_options=experiment.storage_options)
        arr[...] = data
        arr.attrs.update({"values": values, "method": result.config.method})

    if save_ranks and result.base_ranks is not None:  # (no ranks without a ground truth)
        put("ranks_baseline", result.base_ranks, ("query",))
        if result.ranks:
            put("ranks", np.stack([result.ranks[b] for b in result.config.values]),
                (variant, "query"))
    if result.topk_index is not None and result.topk_score is not None:
        put("topk_index", result.topk_index, (variant, "query", "topk"))
        put("topk_score", result.topk_score, (variant, "query", "topk"))


def publish(experiment: Experiment, prefix: str, summary: dict[str, Any],
            digests: dict[str, str] | None = None) -> None:
    """Make the run under ``prefix`` the store's results, atomically.

    The root ``zarr.json`` (attributes with ``last_run`` pointing at
    ``prefix``, the SHA-256 of the run's chunk manifests ``digests`` in place of
    the previous run's, sealed again; and consolidated metadata) is replaced in
    one write; only then are the previous run's arrays deleted.

    Raises
    ------
    DamagedStoreError
        The store's attributes were edited since it was sealed: sealing them
        again would pass the edit off as the store's.
    """
    from qbscale.errors import DamagedStoreError
    from qbscale.storage.durability import seal
    from qbscale.storage.durability.publish import delete_nodes, replace_root_attrs

    url = str(experiment.url)
    check_present(url)
    old = dict(root_attrs(experiment))
    if not old:  # a bare group where the store was: made again by a write in flight
        raise deleted_error(url)
    refused = seal.refusal(url, old)
    if refused is not None:
        raise DamagedStoreError(refused)
    if old.get("store_id") != (experiment.attrs or {}).get("store_id"):
        from qbscale.errors import StoreChangedError

        raise StoreChangedError(f"store {url} was replaced while this run wrote into it: "
                                "its results were not published")
    previous = published_prefix(old)
    sealed = {name: digest for name, digest in dict(old[seal.MANIFESTS]).items()
              if not (previous and name.startswith(f"{previous}/"))
              and name not in RESULT_NAMES}
    attrs = seal.sealed({**old, "last_run": {**summary, "prefix": prefix},
                         seal.MANIFESTS: {**sealed, **(digests or {})}})
    replace_root_attrs(url, experiment.storage_options, attrs)
    from qbscale.storage.durability.integrity import forget

    forget()  # this process's copies of the root and manifests are the old ones
    stale = [previous] if previous and previous != prefix else []
    stale += [name for name in RESULT_NAMES if not previous]  # results of older versions
    delete_nodes(url, experiment.storage_options, stale)


def root_attrs(experiment: Experiment) -> dict[str, Any]:
    import zarr

    group = zarr.open_group(str(experiment.url), mode="r", use_consolidated=False,
                            storage_options=experiment.storage_options)
    attrs: Any = group.attrs.get(layout.ATTR) or {}
    return dict(attrs)


def matrix_source(experiment: Experiment, array: str) -> MatrixSource:
    """A source for ``"test"``, ``"bank"``, ``"scores"`` or ``"scores[1]"``."""
    if array == layout.TEST:
        return experiment.test
    if array == layout.BANK:
        raise InputError("the bank has no ground truth: evaluate a query x gallery matrix")
    match = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", array)
    if match is None or experiment.url is None:
        raise InputError(f"cannot evaluate {array!r}: name a stored array, e.g. scores[0]")
    name, index = result_path(experiment.attrs, match.group(1)), match.group(2)
    try:
        arr = _open_zarr(experiment.url, name, freeze_options(experiment.storage_options))
    except KeyError as exc:
        raise InputError(f"{experiment.url} has no array {match.group(1)!r}") from exc
    if arr.ndim < 2 or (index is not None and (arr.ndim != 3 or int(index) >= arr.shape[0])):
        slices = f"{arr.shape[0]} slice{'s' * (arr.shape[0] != 1)}" if arr.ndim == 3 else \
            "no slices"
        raise InputError(f"cannot evaluate {array!r}: {match.group(1)} has shape {arr.shape} "
                         f"({slices})")
    prefix = (int(index),) if index is not None else (0,) * (arr.ndim - 2)
    source = ZarrMatrix.open(experiment.url, name, experiment.storage_options, index=prefix)
    if source.shape != experiment.test.shape:
        raise InputError(f"{match.group(1)} has shape {source.shape}, "
                         f"expected {experiment.test.shape}")
    return source
