"""Resuming an interrupted run: a manifest of the finished test row blocks.

A run that saves into a store (scores, ranks or top-k) keeps its progress in
the store's ``manifest`` group while it runs::

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
only the others.  A run that completes deletes its manifest.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from qbscale.engine.grid import offsets
from qbscale.engine.normaliser import Normaliser
from qbscale.engine.plan import Plan
from qbscale.errors import ConfigError
from qbscale.storage.results import SCORES, ScoresWriter, writable_array
from qbscale.storage.sources import freeze_options
from qbscale.types import RowResult

if TYPE_CHECKING:
    from dask.delayed import Delayed

    from qbscale.config import RunConfig
    from qbscale.types import Experiment

GROUP = "manifest"
DONE = "done"
BANK_DONE = "bank_done"

#: RowResult fields kept per row block: stored dtype and query axis
FIELDS = {
    "base_rank": ("float64", 0),
    "rank": ("float64", 1),
    "normalised": ("bool", 0),
    "top_idx": ("int64", 0),
    "topk_idx": ("int32", 1),
    "topk_score": ("float32", 1),
    "base_topk_idx": ("int32", 0),
}


def field_shapes(config: RunConfig, n_queries: int, n_gallery: int,
                 ranks: bool = True) -> dict[str, tuple[int, ...]]:
    """Shape of every kept field over all queries (``ranks=False``: no ground truth)."""
    n_v = len(config.values)
    shapes: dict[str, tuple[int, ...]] = {"normalised": (n_queries,), "top_idx": (n_queries,)}
    if ranks:
        shapes["base_rank"] = (n_queries,)
    if ranks and config.normalises:
        shapes["rank"] = (n_v, n_queries)
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

    def array(self, name: str) -> Any:
        return writable_array(self.url, f"{GROUP}/{name}", self.options, self.token)

    def record(self, i: int, row: RowResult) -> RowResult:
        """Store row block ``i``'s results, then its marker; returns ``row``."""
        stop = row.start + row.n_rows
        for name in self.fields:
            value = getattr(row, name)
            self.array(name)[_rows(name, row.start, stop)] = value
        self.array(DONE)[i] = 1
        return row

    def record_bank(self, norm: Normaliser) -> None:
        """Store the fitted normaliser, then its marker (one task: it may create arrays)."""
        import zarr

        if norm.shift is None:
            return
        for name, value in (("shift", norm.shift), ("activation", norm.activation)):
            zarr.create_array(self.url, name=f"{GROUP}/{name}", shape=value.shape,
                              dtype=value.dtype, compressors=None, overwrite=True,
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


def _saved_manifest(experiment: Experiment) -> Any:
    """The manifest group, or None when there is none (or it was never finished)."""
    import zarr

    try:
        group = _open(experiment, GROUP)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
        return None
    return group if "settings" in group.attrs else None


@dataclass
class RunState:
    """A run's manifest: what is done, and the outputs still to compute."""

    manifest: Manifest
    config: RunConfig
    row_chunks: tuple[int, ...]
    writer: ScoresWriter | None = None
    bank: Normaliser | None = None
    done: dict[int, RowResult] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)

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
        saved = _saved_manifest(experiment) if resume else None
        if saved is not None and dict(saved.attrs["settings"]) != settings:
            raise ConfigError(_mismatch(experiment.url, dict(saved.attrs["settings"]), settings))
        shapes = field_shapes(config, experiment.n_queries, experiment.n_gallery,
                              experiment.gt is not None)
        manifest = Manifest(str(experiment.url), freeze_options(experiment.storage_options),
                            tuple(shapes), uuid.uuid4().hex)
        state = cls(manifest, config, rows)
        if saved is None:
            state.writer = ScoresWriter.create(experiment, config) if save_scores else None
            _create(experiment, config, shapes, settings)
        else:
            state._load(experiment, saved, save_scores)
        return state

    def _load(self, experiment: Experiment, group: Any, save_scores: bool) -> None:
        flags = np.asarray(group[DONE][...])
        values = {name: np.asarray(group[name][...]) for name in self.manifest.fields}
        starts = offsets(self.row_chunks)
        for i in np.flatnonzero(flags):
            start, stop = starts[i], starts[i] + self.row_chunks[i]
            part: dict[str, Any] = dict.fromkeys(FIELDS)  # fields this run has not
            part.update({name: v[_rows(name, start, stop)] for name, v in values.items()})
            self.done[int(i)] = RowResult(start=start, **part)
        if self.config.normalises and group[BANK_DONE][0]:
            self.bank = Normaliser(self.config, np.asarray(group["shift"][...]),
                                   np.asarray(group["activation"][...]))
        if save_scores:
            self.writer = _existing_writer(experiment, self.config, self.row_chunks)

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

    def merge(self, values: list[Any]) -> tuple[Normaliser, list[RowResult]]:
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

    def summary(self) -> dict[str, Any]:
        return {"row_blocks": self.n_blocks, "reused": len(self.done),
                "computed": self.n_blocks - len(self.done), "bank_reused": self.bank is not None}


def _create(experiment: Experiment, config: RunConfig, shapes: dict[str, tuple[int, ...]],
            settings: dict[str, Any]) -> None:
    import zarr

    group = _open(experiment, GROUP, mode="w")
    rows = experiment.test.row_chunks[0]

    def put(name: str, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...]) -> None:
        zarr.create_array(group.store, name=f"{GROUP}/{name}", shape=shape, dtype=dtype,
                          chunks=chunks, compressors=None, fill_value=0, overwrite=True)

    for name, shape in shapes.items():
        dtype, axis = FIELDS[name]
        put(name, shape, dtype, tuple(rows if a == axis else n for a, n in enumerate(shape)))
    put(DONE, (len(experiment.test.row_chunks),), "uint8", (1,))
    put(BANK_DONE, (1,), "uint8", (1,))
    group.attrs["settings"] = settings  # last: a manifest without it is ignored


def _existing_writer(experiment: Experiment, config: RunConfig, rows: tuple[int, ...]
                     ) -> ScoresWriter:
    import zarr

    want = (len(config.values), *experiment.test.shape)
    try:
        arr = zarr.open_array(experiment.url, path=SCORES, mode="r",
                              storage_options=experiment.storage_options)
        shape = tuple(arr.shape)
    except (FileNotFoundError, KeyError, zarr.errors.NodeNotFoundError):
        shape = None
    if shape != want:
        raise ConfigError(
            f"{experiment.url} has a manifest but its {SCORES} array has shape {shape}, "
            f"expected {want}: run without resuming to start over")
    return ScoresWriter(str(experiment.url), freeze_options(experiment.storage_options), rows,
                        uuid.uuid4().hex)


def _mismatch(url: str, saved: dict[str, Any], wanted: dict[str, Any]) -> str:
    diffs = [f"{key}={saved.get(key)!r} (now {wanted.get(key)!r})"
             for key in sorted({*saved, *wanted}) if saved.get(key) != wanted.get(key)]
    return (f"the interrupted run in {url} had {', '.join(diffs)}: resume with its settings, "
            "or run without resuming to start over")


def finish(experiment: Experiment) -> None:
    """Delete the manifest of a completed run (and refresh consolidated metadata)."""
    import zarr

    root = _open(experiment, mode="r+")
    if GROUP in set(root.group_keys()):
        del root[GROUP]
    try:
        consolidated = zarr.open_group(experiment.url, mode="r",
                                       storage_options=experiment.storage_options)
        if consolidated.metadata.consolidated_metadata is not None:
            from qbscale.storage.writer import consolidate

            consolidate(root.store)
    except (FileNotFoundError, KeyError):  # pragma: no cover - the store was just written
        return
