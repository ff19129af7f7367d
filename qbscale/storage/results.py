"""Writing run results into a store, and reading stored matrices back."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from qbscale.engine.grid import offsets
from qbscale.errors import ConfigError, InputError
from qbscale.storage import layout
from qbscale.storage.sources import ZarrMatrix, _open_zarr, freeze_options
from qbscale.types import MatrixSource

if TYPE_CHECKING:
    from qbscale.config import RunConfig
    from qbscale.types import Experiment, RunResult

SCORES = "scores"


def _group(experiment: Experiment) -> Any:
    import zarr

    if experiment.url is None:
        raise ConfigError("results can only be saved into a store (this run has none)")
    return zarr.open_group(experiment.url, mode="a", storage_options=experiment.storage_options)


@lru_cache(maxsize=32)
def writable_array(url: str, name: str, options: tuple[tuple[str, Any], ...], token: str) -> Any:
    """Array ``name`` of the store at ``url``, opened for writing (cached per process).

    Opened directly, not through the group, so consolidated metadata of an
    earlier run cannot hide it; ``token`` (one per run) keeps a worker that
    served an earlier run from reusing that run's handle, perhaps of another
    shape.
    """
    import zarr

    return zarr.open_array(url, path=name, mode="r+", storage_options=dict(options) or None)


@dataclass(frozen=True)
class ScoresWriter:
    """Writes the normalised matrix, block by block, from inside the tasks."""

    url: str
    options: tuple[tuple[str, Any], ...]
    row_chunks: tuple[int, ...]
    token: str = ""  # one per run: see :func:`writable_array`

    @classmethod
    def create(cls, experiment: Experiment, config: RunConfig) -> ScoresWriter:
        import zarr

        test = experiment.test
        if len(test.col_chunks) != 1:
            raise ConfigError("saving scores needs a test matrix chunked by rows only")
        group = _group(experiment)
        rows = test.row_chunks[0]
        scores = zarr.create_array(
            group.store, name=SCORES, shape=(len(config.values), *test.shape), dtype="float64",
            chunks=(1, rows, test.shape[1]), compressors=None, overwrite=True,
            dimension_names=("beta", "query", "gallery"),
        )
        # not group[SCORES]: with consolidated metadata that is the previous run's array
        scores.attrs.update({"values": list(config.values), "method": config.method})
        return cls(str(experiment.url), freeze_options(experiment.storage_options),
                   test.row_chunks, uuid.uuid4().hex)

    def write(self, b: int, i: int, block: np.ndarray) -> None:
        arr = writable_array(self.url, SCORES, self.options, self.token)
        r0 = offsets(self.row_chunks)[i]
        arr[b, r0:r0 + block.shape[0], :] = block


def write_results(experiment: Experiment, result: RunResult, *, save_ranks: bool,
                  save_scores: bool) -> None:
    """Store ranks / top-k arrays and a summary of the run in the group."""
    import zarr

    group = _group(experiment)
    values = list(result.config.values)

    def put(name: str, data: np.ndarray, dims: tuple[str, ...]) -> None:
        arr = zarr.create_array(group.store, name=name, shape=data.shape, dtype=data.dtype,
                                chunks=data.shape, overwrite=True, dimension_names=dims)
        arr[...] = data
        arr.attrs.update({"values": values, "method": result.config.method})

    if save_ranks and result.base_ranks is not None:  # (no ranks without a ground truth)
        put("ranks_baseline", result.base_ranks, ("query",))
        if result.ranks:
            put("ranks", np.stack([result.ranks[b] for b in result.config.values]),
                ("beta", "query"))
    if result.topk_index is not None and result.topk_score is not None:
        put("topk_index", result.topk_index, ("beta", "query", "topk"))
        put("topk_score", result.topk_score, ("beta", "query", "topk"))
    runs = dict(group.attrs.get(layout.ATTR) or {})
    runs["last_run"] = result.to_dict() | {"saved_scores": save_scores}
    group.attrs[layout.ATTR] = runs
    from qbscale.storage.writer import consolidate

    consolidate(group.store)


def matrix_source(experiment: Experiment, array: str) -> MatrixSource:
    """A source for ``"test"``, ``"bank"``, ``"scores"`` or ``"scores[1]"``."""
    if array == layout.TEST:
        return experiment.test
    if array == layout.BANK:
        raise InputError("the bank has no ground truth: evaluate a query x gallery matrix")
    match = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", array)
    if match is None or experiment.url is None:
        raise InputError(f"cannot evaluate {array!r}: name a stored array, e.g. scores[0]")
    name, index = match.group(1), match.group(2)
    try:
        arr = _open_zarr(experiment.url, name, freeze_options(experiment.storage_options))
    except KeyError as exc:
        raise InputError(f"{experiment.url} has no array {name!r}") from exc
    if arr.ndim < 2 or (index is not None and (arr.ndim != 3 or int(index) >= arr.shape[0])):
        slices = f"{arr.shape[0]} slice{'s' * (arr.shape[0] != 1)}" if arr.ndim == 3 else \
            "no slices"
        raise InputError(f"cannot evaluate {array!r}: {name} has shape {arr.shape} "
                         f"({slices})")
    prefix = (int(index),) if index is not None else (0,) * (arr.ndim - 2)
    source = ZarrMatrix.open(experiment.url, name, experiment.storage_options, index=prefix)
    if source.shape != experiment.test.shape:
        raise InputError(f"{name} has shape {source.shape}, expected {experiment.test.shape}")
    return source
