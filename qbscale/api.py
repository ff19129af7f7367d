"""The public surface: :func:`run`, :func:`evaluate` and :func:`lazy`."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from qbscale.analysis.metrics import retrieval_metrics
from qbscale.config import RunConfig
from qbscale.engine import plan as _plan
from qbscale.executors import get_executor
from qbscale.storage.store import open_experiment
from qbscale.types import Experiment, RunResult


def _experiment(store: str | os.PathLike[str] | Experiment,
                storage_options: dict[str, Any] | None) -> Experiment:
    if isinstance(store, Experiment):
        return store
    return open_experiment(store, storage_options)


def run(store: str | os.PathLike[str] | Experiment,
        beta: float | Iterable[float] | None = None, k: int = 1, method: str = "dis", *,
        scheduler: Any = "threads", num_workers: int | None = None, topk: int = 0,
        save_scores: bool = False, save_ranks: bool = False, progress: bool = False,
        storage_options: dict[str, Any] | None = None, resume: bool = False,
        dynamic: bool = False, gallery_bank: Any = None, **params: Any) -> RunResult:
    """Querybank-normalise a store and evaluate before and after.

    Parameters
    ----------
    store : path or URL of a store from :func:`qbscale.ingest`, or an
        :class:`~qbscale.storage.store.Experiment` (e.g. :func:`qbscale.storage.store.in_memory`)
    beta : inverse temperature, or several (all computed in one pass);
        default 20
    k : top-k bank columns forming the activation set
    method : ``"dis"`` (default), ``"is"``, ``"csls"``, ``"nnn"``,
        ``"dual-is"`` or ``"none"`` (:mod:`qbscale.engine.methods`)
    scheduler : ``"threads"``, ``"processes"``, ``"synchronous"``,
        ``"local:N"``, ``"tcp://HOST:PORT"`` or a ``distributed.Client``
    topk : also return (and with a store, save) the ``topk`` best gallery
        items of every query after normalisation
    save_scores, save_ranks : write the normalised matrix / the ranks into
        the store
    resume : continue the interrupted run of the same settings in the store,
        computing only the row blocks it had not finished
        (:mod:`qbscale.storage.resume`; without one, start from the beginning)
    dynamic : rescore only rows whose raw top-1 is in the activation set
        (``"is"`` with ``dynamic=True`` is ``"dis"``)
    gallery_bank : for ``"dual-is"``: gallery-bank x gallery similarities (an
        array, a file or a block source); by default the store's gallery bank
        (:mod:`qbscale.storage.gallery_bank`)
    **params : the method's parameters, e.g. ``alpha=[0.5, 0.75]`` and
        ``nnn_k=128`` for ``"nnn"``, ``kc=10`` for ``"csls"``,
        ``gallery_beta=20`` for ``"dual-is"``; several values of the swept
        one (alpha, kc) are computed in one pass

    Returns
    -------
    RunResult

    Examples
    --------
    >>> from qbscale.storage.store import in_memory
    >>> rng = np.random.default_rng(0)
    >>> exp = in_memory(rng.random((50, 10)), rng.random((10, 10)))
    >>> res = run(exp, beta=20)
    >>> sorted(res.after)
    [20.0]
    """
    from qbscale.storage.gallery_bank import resolve

    config = RunConfig.make(beta, k, method, topk, dynamic, params)
    experiment = _experiment(store, storage_options)
    banks = resolve(experiment, config, gallery_bank)
    t0 = time.perf_counter()
    writer = state = None
    if resume or (experiment.url is not None and (save_scores or save_ranks or topk)):
        from qbscale.storage.resume import RunState

        state = RunState.open(experiment, config, save_scores=save_scores, resume=resume)
        writer = state.writer
    elif save_scores:
        from qbscale.storage.results import ScoresWriter

        writer = ScoresWriter.create(experiment, config)
    graph = _plan.build(experiment, config, writer, bank=state.bank if state else None,
                        banks=banks)
    outputs = graph.outputs() if state is None else state.outputs(graph)
    values: list[Any] = []
    if outputs:
        executor = get_executor(scheduler, num_workers)
        try:
            values = executor.compute(outputs, progress)
        finally:
            executor.close()
    if state is None:
        log_z, act, *rows = values
    else:
        log_z, act, rows = state.merge(values)
    result = _assemble(config, experiment, log_z, act, rows)
    result.seconds = time.perf_counter() - t0
    if save_ranks or topk or save_scores:
        from qbscale.storage.results import write_results

        if experiment.url is not None:
            write_results(experiment, result, save_ranks=save_ranks, save_scores=save_scores)
    if state is not None:
        from qbscale.storage.resume import finish

        finish(experiment)
        result.extra["resume"] = state.summary()
    return result


def _assemble(config: RunConfig, experiment: Experiment, log_z: np.ndarray, act: np.ndarray,
              rows: list[_plan.RowResult]) -> RunResult:
    rows = sorted(rows, key=lambda r: r.start)
    mask = experiment.mask
    base = np.concatenate([r.base_rank for r in rows])
    ranks: dict[float, np.ndarray] = {}
    if config.normalises:
        stacked = np.concatenate([r.rank for r in rows if r.rank is not None], axis=1)
        ranks = {beta: stacked[b] for b, beta in enumerate(config.betas)}
    result = RunResult(
        config=config,
        before=retrieval_metrics(base, mask),
        after={beta: retrieval_metrics(r, mask) for beta, r in ranks.items()},
        base_ranks=base,
        ranks=ranks,
        normalised=np.concatenate([r.normalised for r in rows]),
        activation_size=int(np.count_nonzero(act)),
        n_gallery=experiment.n_gallery,
        mask=mask,
        log_z=log_z,
    )
    if config.topk:
        result.topk_index = np.concatenate([r.topk_idx for r in rows], axis=1)
        result.topk_score = np.concatenate([r.topk_score for r in rows], axis=1)
        if all(r.base_topk_idx is not None for r in rows):  # (resumed blocks lack it)
            result.base_topk_index = np.concatenate([r.base_topk_idx for r in rows])
    return result


def evaluate(store: str | os.PathLike[str] | Experiment, array: str = "test", *,
             scheduler: Any = "threads", progress: bool = False,
             storage_options: dict[str, Any] | None = None) -> dict[str, float]:
    """Metrics of any stored query x gallery matrix (default: the test sims).

    ``array`` may name a 2-D array of shape ``(n_queries, n_gallery)`` or a
    3-D ``(n, n_queries, n_gallery)`` array such as ``scores`` (its first
    slice is evaluated; select another with ``"scores[1]"``).
    """
    from qbscale.storage.results import matrix_source

    experiment = _experiment(store, storage_options)
    source = matrix_source(experiment, array)
    evaluated = Experiment(source, source, experiment.gt, experiment.mask)
    result = run(evaluated, method="none", scheduler=scheduler, progress=progress)
    return result.before


def lazy(store: str | os.PathLike[str] | Experiment,
         beta: float | Iterable[float] | None = None, k: int = 1, method: str = "dis",
         storage_options: dict[str, Any] | None = None, *, dynamic: bool = False,
         gallery_bank: Any = None, **params: Any) -> dict[str, Any]:
    """Dask arrays of a run's building blocks, for composing your own graphs.

    Returns ``{"log_z": (n_betas, n_gallery), "activation": (n_gallery,),
    "base_ranks": (n_queries,), "ranks": (n_betas, n_queries)}``; nothing is
    computed until you call ``.compute()``.  ``log_z`` holds the shifts of
    the method's variants; the other arguments are those of :func:`run`.
    """
    import dask.array as da

    from qbscale.storage.gallery_bank import resolve

    config = RunConfig.make(beta, k, method, 0, dynamic, params)
    experiment = _experiment(store, storage_options)
    graph = _plan.build(experiment, config, banks=resolve(experiment, config, gallery_bank))
    n_b, n_g = len(config.betas), experiment.n_gallery
    sizes = experiment.test.row_chunks
    base = [da.from_delayed(_get(r, "base_rank"), (n,), float)
            for r, n in zip(graph.rows, sizes, strict=True)]
    out = {
        "log_z": da.from_delayed(graph.log_z, (n_b, n_g), float),
        "activation": da.from_delayed(graph.activation, (n_g,), bool),
        "base_ranks": da.concatenate(base),
    }
    if config.normalises:
        ranks = [da.from_delayed(_get(r, "rank"), (n_b, n), float)
                 for r, n in zip(graph.rows, sizes, strict=True)]
        out["ranks"] = da.concatenate(ranks, axis=1)
    return out


def _get(obj: Any, name: str) -> Any:
    from dask import delayed

    return delayed(getattr)(obj, name)
