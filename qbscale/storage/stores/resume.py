"""Resuming an interrupted run: a manifest of the finished test row blocks.

A run that saves into a store (scores, ranks or top-k) writes everything
under its own prefix ``runs/<token>/`` (:mod:`qbscale.storage.stores.results`), and
keeps its progress in that prefix's ``manifest`` group while it runs::

    manifest/shift, activation   the fitted normaliser, once computed
    manifest/bank_done  (1,)     1 once they are stored
    manifest/<field>             the RowResult of every row block, chunked
                                 like the test rows (base_rank, rank, ...)
    manifest/done  (n_blocks,)   1 per finished row block, a chunk each

A marker is written only after everything it vouches for (the block's scores
and results), and every write covers whole chunks, so a task rerun after a
lost worker, or a block recomputed after an interruption, rewrites identical
bytes.  ``run(..., resume=True)`` checks that the manifest was written with
the same settings over the same inputs, loads the finished blocks and computes
only the others.  A run that completes deletes its manifest and is published
(:func:`qbscale.storage.stores.results.publish`); a new run that does not resume
deletes the prefixes of interrupted runs first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from qbscale.engine import interrupt
from qbscale.engine.grid import offsets
from qbscale.engine.plan import Plan
from qbscale.engine.statistics import GalleryStatistics
from qbscale.errors import ConfigError
from qbscale.storage import layout
from qbscale.storage.stores.results import (
    MANIFEST_GROUP,
    RUNS,
    SCORES,
    ScoresWriter,
    check_present,
    new_prefix,
    publish,
    published_prefix,
    unpublished_prefixes,
    writable_array,
    write_results,
)
from qbscale.storage.stores.resume_check import (
    CRC,
    block_crcs,
    block_keys,
    done_blocks,
    flags,
    stored_normaliser,
    templates,
)
from qbscale.storage.stores.sources import freeze_options
from qbscale.types import RowResult

if TYPE_CHECKING:
    from dask.delayed import Delayed

    from qbscale.config import RunConfig
    from qbscale.types import Experiment

GROUP = MANIFEST_GROUP
DONE = "done"
BANK_DONE = "bank_done"

#: RowResult fields kept per row block: stored dtype and query axis
FIELDS = {
    "base_rank": ("float64", 0),
    "rank": ("float64", 1),
    "normalised": ("bool", 0),
    "top_idx": ("int64", 0),
    "topk_idx": ("int32", 1),
    "topk_score": ("float64", 1),
    "base_topk_idx": ("int32", 0),
    "base_ap": ("float64", 0),
    "ap": ("float64", 1),
}


def field_shapes(config: RunConfig, n_queries: int, n_gallery: int,
                 ranks: bool = True, precisions: bool = False) -> dict[str, tuple[int, ...]]:
    """Shape of every kept field over all queries (``ranks=False``: no ground
    truth; ``precisions``: average precisions too, with several positives)."""
    n_v = len(config.values)
    shapes: dict[str, tuple[int, ...]] = {"normalised": (n_queries,), "top_idx": (n_queries,)}
    if ranks:
        shapes["base_rank"] = (n_queries,)
    if ranks and config.normalises:
        shapes["rank"] = (n_v, n_queries)
    if ranks and precisions:
        shapes["base_ap"] = (n_queries,)
        if config.normalises:
            shapes["ap"] = (n_v, n_queries)
    if config.topk:
        k = min(config.topk, n_gallery)
        shapes["topk_idx"] = shapes["topk_score"] = (n_v if config.normalises else 1,
                                                     n_queries, k)
        shapes["base_topk_idx"] = (n_queries, k)
    return shapes


def _rows(name: str, start: int, stop: int) -> tuple[slice, ...]:
    """The index of rows ``start:stop`` in field ``name``."""
    return (slice(None),) * FIELDS[name][1] + (slice(start, stop),)


@dataclass(frozen=True)
class Manifest:
    """The handle tasks use to record progress (small and picklable)."""

    url: str
    options: tuple[tuple[str, Any], ...]
    fields: tuple[str, ...]
    token: str
    prefix: str  # the run's runs/<token>
    keys: tuple[str, ...] = ()  # the chunks a row block writes: resume_check.templates

    @property
    def group(self) -> str:
        return f"{self.prefix}/{GROUP}"

    def array(self, name: str) -> Any:
        return writable_array(self.url, f"{self.group}/{name}", self.options, self.token)

    def record(self, i: int, row: RowResult) -> RowResult:
        """Store row block ``i``'s results, then its marker; returns ``row``."""
        interrupt.check()  # SIGTERM: no new block recorded while the run stops
        check_present(self.url)
        stop = row.start + row.n_rows
        for name in self.fields:
            value = getattr(row, name)
            self.array(name)[_rows(name, row.start, stop)] = value
        if self.keys:  # what the block wrote, bound to its place, before its marker
            self.array(CRC)[i] = block_crcs(self.url, dict(self.options) or None,
                                            block_keys(self.keys, i))
        self.array(DONE)[i] = 1
        return row

    def record_bank(self, norm: GalleryStatistics) -> None:
        """Store the fitted normaliser, then its marker (one task: it may create arrays)."""
        from qbscale.storage.durability.integrity import create_array

        if norm.shift is None:
            return
        interrupt.check()
        check_present(self.url)  # create_array makes missing parents
        for name, value in (("shift", norm.shift), ("activation", norm.activation)):
            create_array(self.url, f"{self.group}/{name}", shape=value.shape,
                         dtype=value.dtype, chunks=value.shape, overwrite=True,
                         storage_options=dict(self.options) or None)[...] = value
        self.array(BANK_DONE)[0] = 1


def _settings(experiment: Experiment, config: RunConfig, save_scores: bool) -> dict[str, Any]:
    """What a manifest must match to be resumed (as read back from JSON)."""
    attrs = experiment.attrs or {}
    settings = {
        **dataclasses.asdict(config), "save_scores": save_scores,
        "bank_shape": list(experiment.bank.shape), "test_shape": list(experiment.test.shape),
        "row_chunks": list(experiment.test.row_chunks), "inputs": attrs.get("sources"),
        "gallery_bank": attrs.get("gallery_bank"),
    }
    return dict(json.loads(json.dumps(settings)))


def _open(experiment: Experiment, path: str = "", mode: Literal["r", "r+", "w"] = "r") -> Any:
    import zarr

    return zarr.open_group(experiment.url, path=path, mode=mode, use_consolidated=False,
                           storage_options=experiment.storage_options)


def _pending(experiment: Experiment) -> dict[str, Any]:
    """``{prefix: manifest group}`` of the unpublished runs with a finished manifest."""
    import zarr

    missing = (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError,
               zarr.errors.NodeNotFoundError)
    try:
        runs = _open(experiment, RUNS)
    except missing:
        return {}
    published = published_prefix(_open(experiment).attrs.get("qbscale"))
    found = {}
    for key in sorted(runs.group_keys()):
        prefix = f"{RUNS}/{key}"
        if prefix == published:
            continue
        try:
            group = _open(experiment, f"{prefix}/{GROUP}")
        except missing:
            group = None
        found[prefix] = group if group is not None and "settings" in group.attrs else None
    return found


def _pick(experiment: Experiment, pending: dict[str, Any], settings: dict[str, Any]
          ) -> tuple[str, Any] | None:
    """The pending run with these settings; a mismatch error if others exist only."""
    usable = {p: g for p, g in pending.items() if g is not None}
    for prefix, group in usable.items():
        if dict(group.attrs["settings"]) == settings:
            return prefix, group
    if usable:
        newest = max(usable.values(), key=lambda g: str(g.attrs.get("created", "")))
        raise ConfigError(_mismatch(str(experiment.url), dict(newest.attrs["settings"]),
                                    settings))
    return None


@dataclass
class RunState:
    """A run's manifest: what is done, and the outputs still to compute."""

    manifest: Manifest
    config: RunConfig
    row_chunks: tuple[int, ...]
    experiment: Experiment
    save_scores: bool = False
    writer: ScoresWriter | None = None
    bank: GalleryStatistics | None = None
    done: dict[int, RowResult] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)  # finished blocks found damaged

    @classmethod
    def open(cls, experiment: Experiment, config: RunConfig, *, save_scores: bool,
             resume: bool) -> RunState:
        """Start a manifest, or with ``resume`` pick up the one in the store."""
        if experiment.url is None:
            raise ConfigError("only a run over a store can be resumed (this run has none)")
        rows = experiment.test.row_chunks
        if any(r != rows[0] for r in rows[:-1]) or rows[-1] > rows[0]:
            raise ConfigError(f"saving a run needs equal test row blocks, got {rows}")
        settings = _settings(experiment, config, save_scores)
        pending = _pending(experiment)
        picked = _pick(experiment, pending, settings) if resume else None
        if picked is None:  # a fresh run: interrupted ones are abandoned
            from qbscale.storage.durability.publish import delete_nodes

            # with the prefixes a killed run left before its manifest group was made
            leftovers = unpublished_prefixes(str(experiment.url), experiment.storage_options)
            delete_nodes(str(experiment.url), experiment.storage_options,
                         sorted({*pending, *leftovers}))
        prefix = picked[0] if picked is not None else new_prefix()
        shapes = field_shapes(config, experiment.n_queries, experiment.n_gallery,
                              experiment.has_ground_truth,
                              experiment.positives is not None and experiment.positives.several)
        keys = templates(prefix, f"{prefix}/{GROUP}",
                         {n: (len(s), FIELDS[n][1]) for n, s in shapes.items()},
                         len(config.values) if save_scores else 0)
        manifest = Manifest(str(experiment.url), freeze_options(experiment.storage_options),
                            tuple(shapes), uuid.uuid4().hex, prefix, keys)
        state = cls(manifest, config, rows, experiment, save_scores)
        if picked is None:
            try:
                state.writer = ScoresWriter.create(experiment, config, prefix) \
                    if save_scores else None
                _create(experiment, manifest.group, shapes, settings, len(keys))
            except BaseException:
                state.discard()
                raise
        else:
            state._load(experiment, picked[1], save_scores)
        return state

    def _load(self, experiment: Experiment, group: Any, save_scores: bool) -> None:
        """The finished blocks whose chunks are intact (the others are computed again,
        :mod:`qbscale.storage.stores.resume_check`), and the stored normaliser if it reads."""
        url, options = str(experiment.url), experiment.storage_options
        ok, self.rejected = done_blocks(url, options, group, DONE, self.manifest.keys)
        starts = offsets(self.row_chunks)
        for i in ok:
            start, stop = starts[i], starts[i] + self.row_chunks[i]
            part: dict[str, Any] = dict.fromkeys(FIELDS)  # fields this run has not
            part.update({name: np.asarray(group[name][_rows(name, start, stop)])
                         for name in self.manifest.fields})
            self.done[i] = RowResult(start=start, **part)
        if self.config.normalises and flags(group, BANK_DONE)[0]:
            self.bank = stored_normaliser(url, options, self.manifest.group, self.config)
        if save_scores:
            self.writer = _existing_writer(experiment, self.config, self.row_chunks,
                                           self.manifest.prefix)

    @property
    def n_blocks(self) -> int:
        return len(self.row_chunks)

    def outputs(self, plan: Plan) -> list[Delayed]:
        """The plan's outputs still to compute, each row recorded as it finishes."""
        from dask.delayed import delayed

        token = self.manifest.token
        self.missing = [i for i in range(self.n_blocks) if i not in self.done]
        out = []
        if self.bank is None:
            out.append(plan.normaliser)
            if self.config.normalises:
                out.append(delayed(self.manifest.record_bank)(
                    plan.normaliser, dask_key_name=f"qb-record-bank-{token}"))
        out += [delayed(self.manifest.record)(i, plan.rows[i],
                                              dask_key_name=f"qb-record-{i}-{token}")
                for i in self.missing]
        return out

    def merge(self, values: list[Any]) -> tuple[GalleryStatistics, list[RowResult]]:
        """``(normaliser, rows)`` from the computed and the loaded values."""
        it = iter(values)
        if self.bank is None:
            norm = next(it)
            if self.config.normalises:
                next(it)
        else:
            norm = self.bank
        computed = dict(zip(self.missing, it, strict=True))
        return norm, [self.done[i] if i in self.done else computed[i]
                      for i in range(self.n_blocks)]

    def discard(self, settle: float = 0.2, tries: int = 15, cancel: bool = False) -> None:
        """Delete this run's prefix (its partial arrays and manifest).

        Tasks still in flight when the run failed may write a chunk after the
        deletion: it is repeated until the prefix stays gone for ``settle``
        seconds (at most ``tries`` times).  After an interruption (``cancel``,
        or one pending: :mod:`qbscale.engine.interrupt`) zarr's writes in flight
        are cancelled instead, and at most
        :data:`~qbscale.storage.durability.removal.INTERRUPTED_BUDGET` seconds go to
        the deletion (a detached process deletes the rest).  A prefix the store
        already publishes (a failure after its root ``zarr.json`` was replaced) is
        never deleted.  A store deleted meanwhile: what writes in flight made
        again at its path is removed too."""
        import time

        from qbscale.storage.durability.publish import delete_nodes
        from qbscale.storage.durability.removal import INTERRUPTED_BUDGET, remove_skeleton
        from qbscale.storage.durability.stage import settle_zarr_writes
        from qbscale.storage.stores.results import deleted, root_attrs

        url, options = str(self.experiment.url), self.experiment.storage_options
        with contextlib.suppress(Exception):  # an unreadable root: nothing points here
            if published_prefix(root_attrs(self.experiment)) == self.manifest.prefix:
                return
        if cancel or interrupt.requested() or deleted(url):  # nothing to wait for
            settle_zarr_writes(cancel=True)
            delete_nodes(url, options, [self.manifest.prefix], budget=INTERRUPTED_BUDGET)
        else:
            for _ in range(tries):
                delete_nodes(url, options, [self.manifest.prefix])
                time.sleep(settle)
                if not _any_under(url, options, self.manifest.prefix):
                    break
        if deleted(url):
            remove_skeleton(layout.local_path(url))

    def summary(self) -> dict[str, Any]:
        return {"row_blocks": self.n_blocks, "reused": len(self.done),
                "computed": self.n_blocks - len(self.done), "bank_reused": self.bank is not None,
                "rejected": list(self.rejected)}


def _create(experiment: Experiment, path: str, shapes: dict[str, tuple[int, ...]],
            settings: dict[str, Any], n_keys: int) -> None:
    """The manifest group ``path``: its arrays, then its settings (written last)."""
    from datetime import datetime, timezone

    from qbscale.storage.durability.integrity import create_array

    group = _open(experiment, path, mode="w")
    rows = experiment.test.row_chunks[0]

    def put(name: str, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...]) -> None:
        create_array(group.store, f"{path}/{name}", shape=shape, dtype=dtype, chunks=chunks,
                     fill_value=0, overwrite=True)  # unwritten markers read as 0

    for name, shape in shapes.items():
        dtype, axis = FIELDS[name]
        put(name, shape, dtype, tuple(rows if a == axis else n for a, n in enumerate(shape)))
    put(DONE, (len(experiment.test.row_chunks),), "uint8", (1,))
    put(BANK_DONE, (1,), "uint8", (1,))
    put(CRC, (len(experiment.test.row_chunks), n_keys), "uint32", (1, n_keys))
    group.attrs["created"] = datetime.now(timezone.utc).isoformat()
    group.attrs["settings"] = settings  # last: a manifest without it is ignored


def _any_under(url: str, options: dict[str, Any] | None, prefix: str) -> bool:
    """True while anything is stored under ``prefix``."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **(options or {}))
    return bool(fs.exists(f"{root.rstrip('/')}/{prefix}"))


def _existing_writer(experiment: Experiment, config: RunConfig, rows: tuple[int, ...],
                     prefix: str) -> ScoresWriter:
    import zarr

    want = (len(config.values), *experiment.test.shape)
    try:
        arr = zarr.open_array(experiment.url, path=f"{prefix}/{SCORES}", mode="r",
                              storage_options=experiment.storage_options)
        shape = tuple(arr.shape)
    except (FileNotFoundError, KeyError, zarr.errors.NodeNotFoundError):
        shape = None
    if shape != want:
        raise ConfigError(
            f"{experiment.url} has a manifest but its {SCORES} array has shape {shape}, "
            f"expected {want}: run without resuming to start over")
    return ScoresWriter(str(experiment.url), freeze_options(experiment.storage_options), rows,
                        uuid.uuid4().hex, prefix)


def _mismatch(url: str, saved: dict[str, Any], wanted: dict[str, Any]) -> str:
    diffs = [f"{key}={saved.get(key)!r} (now {wanted.get(key)!r})"
             for key in sorted({*saved, *wanted}) if saved.get(key) != wanted.get(key)]
    return (f"the interrupted run in {url} had {', '.join(diffs)}: resume with its settings, "
            "or run without resuming to start over")


def finish(state: RunState, result: Any, *, save_ranks: bool,
           before_publish: Callable[[Any], None] | None = None) -> None:
    """Complete a run: its ranks / top-k under its prefix, its manifest deleted,
    ``before_publish(result)`` called, then published (or, when it saved nothing,
    its prefix deleted).  When ``before_publish`` raises, the prefix is deleted
    and the store's earlier results stay published."""
    from qbscale.storage.durability.integrity import record_manifests
    from qbscale.storage.durability.publish import delete_nodes

    experiment, prefix = state.experiment, state.manifest.prefix
    url, options = str(experiment.url), experiment.storage_options
    saving = save_ranks or state.save_scores or bool(state.config.topk)
    if saving:
        write_results(experiment, prefix, result, save_ranks=save_ranks)
    delete_nodes(url, options, [state.manifest.group])
    if before_publish is not None:
        try:
            before_publish(result)
        except BaseException:
            state.discard(settle=0)
            raise
    if saving:
        digests = record_manifests(url, options, prefix,
                                   store=str((experiment.attrs or {}).get("store_id")))
        publish(experiment, prefix, result.to_dict() | {"saved_scores": state.save_scores},
                digests)
    else:
        delete_nodes(url, options, [prefix])
