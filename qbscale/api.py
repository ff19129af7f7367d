"""The public surface: :func:`run` (= :func:`plan` then :meth:`RunPlan.execute`),
:func:`evaluate` and :func:`lazy`."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from qbscale.config import RunConfig
from qbscale.engine import plan as _plan
from qbscale.engine.metrics import retrieval_metrics
from qbscale.engine.statistics import GalleryStatistics
from qbscale.errors import ConfigError, NotFiniteError, OutputError, StoreFullError
from qbscale.executors import get_executor
from qbscale.storage.stores.sources import forget_open_arrays
from qbscale.storage.stores.store import open_experiment
from qbscale.types import Experiment, RowResult, RunResult


def _experiment(store: str | os.PathLike[str] | Experiment,
                storage_options: dict[str, Any] | None) -> Experiment:
    if isinstance(store, Experiment):
        return store
    return open_experiment(store, storage_options)


def _without_truth(experiment: Experiment, what: str) -> ConfigError:
    """The error for asking ``what`` of an experiment without a ground truth."""
    from qbscale.storage.stores.store import ADD_TRUTH_HINT

    where = experiment.url or "this experiment"
    how = f"; {ADD_TRUTH_HINT}" if experiment.url else ""
    return ConfigError(f"{where} has no ground truth (nobody knows the right answers): "
                       f"{what}{how}")


def _check_truth(experiment: Experiment, topk: int, save_scores: bool,
                 save_ranks: bool) -> None:
    if experiment.has_ground_truth:
        return
    if save_ranks:
        raise _without_truth(experiment, "there are no ranks to save")
    if not (topk or save_scores):
        raise _without_truth(experiment, "a run gives no metrics, so ask for the top-k "
                             "(topk=K, --topk K) or the scores (save_scores, --save-scores)")


@dataclass
class RunPlan:
    """A planned run: its lazy graph, and where its results go.

    :meth:`execute` computes the graph and saves what was asked for;
    :func:`run` is ``plan(...).execute(...)``.  Building a plan opens the
    store and the result writers but computes nothing.  Plans are made by
    :func:`plan`, not constructed by hand.

    Parameters
    ----------
    experiment : Experiment
        The experiment run on.
    config : RunConfig
        The run's settings.
    graph : Plan
        The lazy task graph.
    state : object, optional
        The store's result writers, or None for an in-memory experiment.
    save_scores, save_ranks : bool, default False
        Write the normalised matrix / the ranks into the store.
    lock : object, optional
        The store's writer lock, released by :meth:`execute`.
    resumable : bool, default False
        Keep finished row blocks when the run is interrupted.
    """

    experiment: Experiment
    config: RunConfig
    graph: _plan.Plan
    state: Any = None  # a resume.RunState when the run keeps a manifest
    save_scores: bool = False
    save_ranks: bool = False
    lock: Any = None  # a storage.durability.lock.StoreLock while the run writes into its store
    resumable: bool = False  # keep finished row blocks when the run fails (resume=True)

    def execute(self, scheduler: Any = "threads", num_workers: int | None = None,
                progress: bool = False,
                before_publish: Callable[[RunResult], None] | None = None) -> RunResult:
        """Compute the plan with ``scheduler``, then save its results.

        The store's writer lock, taken by :func:`plan`, is released at the end,
        also on errors.

        Parameters
        ----------
        scheduler : str or distributed.Client, default "threads"
            Where to compute, as in :func:`run`.
        num_workers : int, optional
            Threads or processes of a local scheduler.
        progress : bool, default False
            Show a progress bar.
        before_publish : callable, optional
            ``before_publish(result)`` runs once the results are saved under the
            run's unpublished prefix, before they replace the store's earlier ones
            (without a store: once they are computed); when it raises, nothing is
            published.

        Returns
        -------
        RunResult
            Everything the run measured.
        """
        try:
            try:
                return self._execute(scheduler, num_workers, progress, before_publish)
            except Exception as exc:  # a missing chunk, a failed write: of a deleted store?
                from qbscale.storage.stores.results import deleted, deleted_error

                if deleted(self.experiment.url):
                    raise deleted_error(str(self.experiment.url)) from exc
                raise
        except NotFiniteError as exc:  # an overflow, or stored data that are not finite?
            from qbscale.storage.stores.finite import nonfinite_error

            raise nonfinite_error(self.experiment, self.config.values, exc.input_data) \
                or exc from exc
        except OSError as exc:  # a full store, unless an output file (hits, --json) failed
            if self.state is None or exc.errno not in (errno.ENOSPC, errno.EDQUOT) \
                    or isinstance(exc, OutputError):
                self._discard_unless_resumable()
                raise
            self.state.discard()
            raise _no_space(self.experiment, exc) from exc
        except BaseException as exc:  # errors, Ctrl-C, SIGTERM (the CLI's Terminated)
            self._discard_unless_resumable(cancel=not isinstance(exc, Exception))
            raise
        finally:
            if self.lock is not None:
                self.lock.release()

    def _discard_unless_resumable(self, cancel: bool = False) -> None:
        """A failed run leaves nothing in its store, unless it was asked to be
        resumable (``resume=True``): then its finished row blocks stay for the
        next ``resume=True`` run of the same settings (not when the store was
        deleted meanwhile).  ``cancel``: it was interrupted (zarr's writes in
        flight are cancelled, not awaited)."""
        from qbscale.storage.stores.results import deleted

        if self.state is not None and (not self.resumable or deleted(self.experiment.url)):
            self.state.discard(cancel=cancel)

    def _execute(self, scheduler: Any, num_workers: int | None, progress: bool,
                 before_publish: Callable[[RunResult], None] | None) -> RunResult:
        t0 = time.perf_counter()
        outputs = self.graph.outputs() if self.state is None else self.state.outputs(self.graph)
        values: list[Any] = []
        if outputs:
            from qbscale.storage.stores.store import read_whole

            executor = get_executor(scheduler, num_workers)
            try:
                with read_whole(self.experiment):  # the store it opened, whole
                    # a cluster's workers may hold handles of arrays since rewritten
                    values = executor.compute(outputs, progress, setup=(forget_open_arrays,))
            finally:
                executor.close()
        if self.state is None:
            norm, *rows = values
        else:
            norm, rows = self.state.merge(values)
        result = assemble(self.config, self.experiment, norm, rows)
        result.seconds = time.perf_counter() - t0
        self.save(result, before_publish)
        return result

    def save(self, result: RunResult,
             before_publish: Callable[[RunResult], None] | None = None) -> None:
        """Write ranks, top-k and the run summary into the store and publish them.

        Publishing is atomic (:func:`qbscale.storage.stores.results.publish`).

        Parameters
        ----------
        result : RunResult
            The computed run.
        before_publish : callable, optional
            Called with ``result`` just before the results are published.
        """
        if self.state is not None:
            from qbscale.storage.stores.resume import finish

            result.extra["resume"] = self.state.summary()
            finish(self.state, result, save_ranks=self.save_ranks,
                   before_publish=before_publish)
        elif before_publish is not None:
            before_publish(result)


def plan(store: str | os.PathLike[str] | Experiment,
         beta: float | Iterable[float] | None = None, k: int = 1, method: str = "dis", *,
         topk: int = 0, save_scores: bool = False, save_ranks: bool = False,
         storage_options: dict[str, Any] | None = None, resume: bool = False,
         dynamic: bool = False, gallery_bank: Any = None,
         normaliser: GalleryStatistics | None = None,
         bank_sample: int | float | str | None = None, seed: int = 0,
         direction: str = "t2v", reverse_bank: Any = None, **params: Any) -> RunPlan:
    """Plan a run without computing it.

    The arguments are those of :func:`run`, but the scheduler's; the
    plan takes the store's writer lock until :meth:`RunPlan.execute` ends.

    Parameters
    ----------
    store : str, os.PathLike or Experiment
        The path or URL of a store from :func:`qbscale.ingest`, or an
        :class:`~qbscale.types.Experiment` (e.g. from
        :func:`qbscale.storage.stores.store.in_memory`).
    beta : float or sequence of float, optional
        Inverse temperature, or several (all computed in one pass); default 20.
    k : int, default 1
        Top-k bank columns forming the activation set.
    method : {"dis", "is", "csls", "nnn", "dual-is", "none"}, default "dis"
        The normalisation method (:mod:`qbscale.engine.methods`).
    topk : int, default 0
        Also return (and with a store, save) the ``topk`` best gallery items of
        every query after normalisation.
    save_scores, save_ranks : bool, default False
        Write the normalised matrix / the ranks into the store; for an
        in-memory experiment the normalised matrix is returned as
        ``result.scores``, (n_values, n_queries, n_gallery) float64.  Without a
        ground truth (``Experiment.gt is None``) a run needs ``topk`` or
        ``save_scores``, and its ``before`` and ``after`` are None.
    storage_options : dict, optional
        The fsspec options of a remote store (e.g. S3 credentials).
    resume : bool, default False
        Continue the interrupted run of the same settings in the store,
        computing only the row blocks it had not finished
        (:mod:`qbscale.storage.stores.resume`); without one, start from the
        beginning.
    dynamic : bool, default False
        Rescore only rows whose raw top-1 is in the activation set (``"is"``
        with ``dynamic=True`` is ``"dis"``).
    gallery_bank : array-like, str or block source, optional
        For ``"dual-is"``: the gallery-bank x gallery similarities (an array, a
        file or a block source); by default the store's gallery bank
        (:mod:`qbscale.storage.stores.gallery_bank`).
    normaliser : GalleryStatistics, optional
        A fitted :class:`~qbscale.engine.statistics.GalleryStatistics` for
        these settings and this gallery: the bank stage is skipped.
    bank_sample : int, float or str, optional
        Use only the querybank rows
        ``numpy.random.default_rng(seed).permutation(n_bank)[:N]``, ``N`` a
        count or a fraction in (0, 1] (``N = max(1, floor(f * n_bank + 0.5))``),
        :mod:`qbscale.engine.subsets`; each bank block is still read once.
    seed : int, default 0
        Seed of the ``bank_sample`` permutation.
    direction : {"t2v", "v2t"}, default "t2v"
        As for :func:`run`.
    reverse_bank : array-like or block source, optional
        As for :func:`run`.
    **params
        The method's parameters, e.g. ``alpha=[0.5, 0.75]`` and ``nnn_k=128``
        for ``"nnn"``, ``kc=10`` for ``"csls"``, ``gallery_beta=20`` for
        ``"dual-is"``; several values of the swept one (alpha, kc) are
        computed in one pass.

    Returns
    -------
    RunPlan
        The lazy graph, and where its results go.

    Examples
    --------
    >>> import numpy as np
    >>> from qbscale import plan
    >>> from qbscale.storage.stores.store import in_memory
    >>> rng = np.random.default_rng(0)
    >>> result = plan(in_memory(rng.random((50, 10)), rng.random((10, 10)))).execute()
    >>> sorted(result.after)
    [20.0]
    """
    from qbscale.storage.stores.gallery_bank import resolve

    config = RunConfig.make(beta, k, method, topk, dynamic, params, bank_sample, seed)
    experiment = _experiment(store, storage_options)
    if direction != "t2v" or reverse_bank is not None:
        experiment = _reversed(experiment, direction, config, reverse_bank, topk=topk,
                               save_scores=save_scores, save_ranks=save_ranks, resume=resume,
                               normaliser=normaliser)
    config = config.resolved(experiment.bank.shape[0])  # a fraction as its row count
    _check_truth(experiment, topk, save_scores, save_ranks)
    if normaliser is not None:
        normaliser = _matching(normaliser, config, experiment)
        banks = None
    else:
        banks = resolve(experiment, config, gallery_bank)
    writer = state = lock = None
    if resume or (experiment.url is not None and (save_scores or save_ranks or topk)):
        from qbscale.storage.stores.resume import RunState

        lock = _lock(experiment, "a resumed run" if resume else "a run saving results")
        try:
            state = RunState.open(experiment, config, save_scores=save_scores, resume=resume)
        except BaseException as exc:
            if lock is not None:
                lock.release()
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _no_space(experiment, exc) from exc
            raise
        writer = state.writer
        if normaliser is not None and state.bank is None:
            state.bank = normaliser
    known = state.bank if state is not None and state.bank is not None else normaliser
    try:
        # in memory, the normalised matrix comes back in the result (RunResult.scores)
        graph = _plan.build(experiment, config, writer, normaliser=known, banks=banks,
                            keep_scores=save_scores and experiment.url is None)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return RunPlan(experiment, config, graph, state, save_scores, save_ranks, lock, resume)


def _reversed(experiment: Experiment, direction: str, config: RunConfig, bank: Any,
              **asked: Any) -> Experiment:
    """The experiment of ``direction`` (:mod:`qbscale.storage.stores.directions`)."""
    from qbscale.storage.stores.directions import DIRECTIONS, has_bank, reverse

    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be one of {', '.join(DIRECTIONS)}, "
                          f"got {direction!r}")
    if direction == "t2v":
        raise ConfigError("a reverse bank is for direction='v2t' only")
    unsupported = sorted(name for name, value in asked.items() if value)
    if unsupported:
        raise ConfigError(f"direction v2t gives metrics only: {unsupported[0]} is for t2v")
    if config.method == "dual-is":
        raise ConfigError("dual-is needs a gallery bank of the t2v gallery: it runs in "
                          "direction t2v only")
    if isinstance(bank, np.ndarray):
        from qbscale.storage.stores.sources import NumpyMatrix
        from qbscale.storage.stores.store import check_matrix

        check_matrix("reverse bank", bank)
        bank = NumpyMatrix.wrap(bank, max(1, 2**24 // max(bank.shape[1], 1)))
    reversed_ = reverse(experiment, bank)
    if config.normalises and not has_bank(reversed_):
        raise ConfigError(f"{experiment.url or 'this experiment'} has no querybank for "
                          f"direction v2t (bank items x test queries): give it with "
                          f"qbscale ingest --v2t-bank FILE (reverse_bank=), or run method 'none'")
    return reversed_


def _no_space(experiment: Experiment, exc: OSError) -> StoreFullError:
    return StoreFullError(f"store {experiment.url}: no space left while saving this run "
                          f"({exc.strerror}): nothing was published, its partial arrays "
                          "were removed")


def _lock(experiment: Experiment, purpose: str) -> Any:
    """The store's writer lock (:mod:`qbscale.storage.durability.lock`), None without a store."""
    if experiment.url is None:
        return None
    from qbscale.storage.durability.lock import StoreLock

    return StoreLock.acquire(str(experiment.url), experiment.storage_options, purpose)


def _matching(norm: GalleryStatistics, config: RunConfig,
              experiment: Experiment) -> GalleryStatistics:
    """``norm`` when it was fitted with ``config``'s method settings, else a clear error."""
    from dataclasses import replace

    norm.check_gallery(experiment.n_gallery)
    fitted = replace(norm.config, topk=config.topk)
    if fitted != config:
        raise ConfigError(f"the normaliser was fitted with method={norm.config.label} "
                          f"{norm.config.variant_name}={list(norm.config.values)} "
                          f"k={norm.config.k}{_sample(norm.config)}; this run asks for "
                          f"method={config.label} {config.variant_name}={list(config.values)} "
                          f"k={config.k}{_sample(config)}")
    return GalleryStatistics(config, norm.shift, norm.activation, dict(norm.fingerprint))


def _sample(config: RunConfig) -> str:
    if config.bank_sample is None:
        return ""
    return f" bank_sample={config.bank_sample} seed={config.seed}"


def run(store: str | os.PathLike[str] | Experiment,
        beta: float | Iterable[float] | None = None, k: int = 1, method: str = "dis", *,
        scheduler: Any = "threads", num_workers: int | None = None, topk: int = 0,
        save_scores: bool = False, save_ranks: bool = False, progress: bool = False,
        storage_options: dict[str, Any] | None = None, resume: bool = False,
        dynamic: bool = False, gallery_bank: Any = None,
        normaliser: GalleryStatistics | None = None,
        bank_sample: int | float | str | None = None, seed: int = 0,
        before_publish: Callable[[RunResult], None] | None = None,
        direction: str = "t2v", reverse_bank: Any = None, **params: Any) -> RunResult:
    """Querybank-normalise a store and evaluate before and after.

    Parameters
    ----------
    store : str, os.PathLike or Experiment
        The path or URL of a store from :func:`qbscale.ingest`, or an
        :class:`~qbscale.types.Experiment` (e.g. from
        :func:`qbscale.storage.stores.store.in_memory`).
    beta : float or sequence of float, optional
        Inverse temperature, or several (all computed in one pass); default 20.
    k : int, default 1
        Top-k bank columns forming the activation set.
    method : {"dis", "is", "csls", "nnn", "dual-is", "none"}, default "dis"
        The normalisation method (:mod:`qbscale.engine.methods`).
    scheduler : str or distributed.Client, default "threads"
        ``"threads"``, ``"processes"``, ``"synchronous"``, ``"local:N"`` (a
        LocalCluster of N worker processes), ``"tcp://HOST:PORT"`` or a client.
    num_workers : int, optional
        Threads or processes of a local scheduler.
    topk : int, default 0
        Also return (and with a store, save) the ``topk`` best gallery items of
        every query after normalisation.
    save_scores, save_ranks : bool, default False
        Write the normalised matrix / the ranks into the store; for an
        in-memory experiment the normalised matrix is returned as
        ``result.scores``, (n_values, n_queries, n_gallery) float64.  Without a
        ground truth (``Experiment.gt is None``) a run needs ``topk`` or
        ``save_scores``, and its ``before`` and ``after`` are None.
    progress : bool, default False
        Show a progress bar.
    storage_options : dict, optional
        The fsspec options of a remote store (e.g. S3 credentials).
    resume : bool, default False
        Continue the interrupted run of the same settings in the store,
        computing only the row blocks it had not finished
        (:mod:`qbscale.storage.stores.resume`); without one, start from the
        beginning.
    dynamic : bool, default False
        Rescore only rows whose raw top-1 is in the activation set (``"is"``
        with ``dynamic=True`` is ``"dis"``).
    gallery_bank : array-like, str or block source, optional
        For ``"dual-is"``: the gallery-bank x gallery similarities (an array, a
        file or a block source); by default the store's gallery bank
        (:mod:`qbscale.storage.stores.gallery_bank`).
    normaliser : GalleryStatistics, optional
        A fitted :class:`~qbscale.engine.statistics.GalleryStatistics` for
        these settings and this gallery: the bank stage is skipped.
    bank_sample : int, float or str, optional
        Use only the querybank rows
        ``numpy.random.default_rng(seed).permutation(n_bank)[:N]``, ``N`` a
        count or a fraction in (0, 1] (``N = max(1, floor(f * n_bank + 0.5))``),
        :mod:`qbscale.engine.subsets`; each bank block is still read once.
    seed : int, default 0
        Seed of the ``bank_sample`` permutation.
    before_publish : callable, optional
        Called with the result once it is saved under the run's own prefix,
        before the store's earlier results are replaced (e.g. to write files
        that must exist before the store's results change); when it raises,
        the run's arrays are deleted and nothing is published.
    direction : {"t2v", "v2t"}, default "t2v"
        ``"t2v"``: the store's queries against its gallery; ``"v2t"``: every
        gallery item against the test queries, the test matrix read transposed
        block by block; an item's positives are the queries whose ground truth
        holds it, masked queries are neither positives nor competitors (the
        reference code's ``v2t_metrics``); metrics only.
    reverse_bank : array-like or block source, optional
        For ``"v2t"``: the querybank of that direction (bank items x test
        queries); by default the store's (``ingest --v2t-bank``); without one
        only ``method="none"`` runs.
    **params
        The method's parameters, e.g. ``alpha=[0.5, 0.75]`` and ``nnn_k=128``
        for ``"nnn"``, ``kc=10`` for ``"csls"``, ``gallery_beta=20`` for
        ``"dual-is"``; several values of the swept one (alpha, kc) are
        computed in one pass.

    Returns
    -------
    RunResult
        The metrics before and after, ranks, top-k and the fitted normaliser.

    See Also
    --------
    plan : The same run as a lazy graph, computed later.

    Examples
    --------
    >>> import numpy as np
    >>> from qbscale import run
    >>> from qbscale.storage.stores.store import in_memory
    >>> rng = np.random.default_rng(0)
    >>> exp = in_memory(rng.random((50, 10)), rng.random((10, 10)))
    >>> res = run(exp, beta=20)
    >>> sorted(res.after)
    [20.0]
    """
    return plan(store, beta, k, method, topk=topk, save_scores=save_scores,
                save_ranks=save_ranks, storage_options=storage_options, resume=resume,
                dynamic=dynamic, gallery_bank=gallery_bank, normaliser=normaliser,
                bank_sample=bank_sample, seed=seed, direction=direction,
                reverse_bank=reverse_bank, **params).execute(scheduler, num_workers,
                                                                       progress, before_publish)


def assemble(config: RunConfig, experiment: Experiment, norm: GalleryStatistics,
             rows: list[RowResult]) -> RunResult:
    """The RunResult of computed row blocks (any order): ranks, metrics, hits."""
    rows = sorted(rows, key=lambda r: r.start)
    mask = experiment.evaluated
    base = before = after = None
    ranks: dict[float, np.ndarray] = {}
    if experiment.has_ground_truth:
        base = np.concatenate([r.base_rank for r in rows if r.base_rank is not None])
        if config.normalises:
            stacked = np.concatenate([r.rank for r in rows if r.rank is not None], axis=1)
            ranks = {value: stacked[b] for b, value in enumerate(config.values)}
        base_ap, aps = _average_precisions(config, experiment, rows)
        before = retrieval_metrics(base, mask, base_ap)
        after = {value: retrieval_metrics(r, mask, None if aps is None else aps[b])
                 for b, (value, r) in enumerate(ranks.items())}
    result = RunResult(
        config=config,
        before=before,
        after=after,
        base_ranks=base,
        ranks=ranks,
        normalised=np.concatenate([r.normalised for r in rows]),
        normaliser=norm,
        mask=mask,
        scores=_kept_scores(rows, experiment),
    )
    if config.topk:
        result.topk_index = np.concatenate([r.topk_idx for r in rows], axis=1)
        result.topk_score = np.concatenate([r.topk_score for r in rows], axis=1)
        if all(r.base_topk_idx is not None for r in rows):  # (resumed blocks lack it)
            result.base_topk_index = np.concatenate([r.base_topk_idx for r in rows])
    return result


def _average_precisions(config: RunConfig, experiment: Experiment, rows: list[RowResult]
                        ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(raw, (n_values, n_queries))`` average precisions, with several positives
    per query (None otherwise, or when some block did not keep them)."""
    if experiment.positives is None or not experiment.positives.several \
            or any(r.base_ap is None for r in rows):
        return None, None
    base = np.concatenate([r.base_ap for r in rows if r.base_ap is not None])
    if not config.normalises or any(r.ap is None for r in rows):
        return base, None
    return base, np.concatenate([r.ap for r in rows if r.ap is not None], axis=1)


def _kept_scores(rows: list[RowResult], experiment: Experiment) -> np.ndarray | None:
    """The normalised rows the tasks kept (in-memory runs), in one array."""
    if not rows or rows[0].scores is None:
        return None
    out = np.empty((rows[0].scores.shape[0], *experiment.test.shape))
    for row in rows:
        assert row.scores is not None
        out[:, row.start:row.start + row.n_rows] = row.scores
        row.scores = None  # free each block once copied
    return out


def evaluate(store: str | os.PathLike[str] | Experiment, array: str = "test", *,
             scheduler: Any = "threads", progress: bool = False,
             storage_options: dict[str, Any] | None = None,
             num_workers: int | None = None) -> dict[str, float]:
    """Metrics of any stored query x gallery matrix (default: the test sims).

    Parameters
    ----------
    store : str, os.PathLike or Experiment
        A store path or URL, or an in-memory experiment, as in :func:`run`.
    array : str, default "test"
        The array evaluated: a 2-D array of shape ``(n_queries, n_gallery)``,
        or a 3-D ``(n, n_queries, n_gallery)`` array such as ``scores`` (its
        first slice; select another with ``"scores[1]"``).
    scheduler : str or distributed.Client, default "threads"
        Where to compute, as in :func:`run`.
    progress : bool, default False
        Show a progress bar.
    storage_options : dict, optional
        The fsspec options of a remote store.
    num_workers : int, optional
        Threads or processes of a local scheduler.

    Returns
    -------
    dict of str to float
        The metrics (``"R1"``, ``"R5"``, ``"R10"``, ``"MedR"``, ...).
    """
    from qbscale.storage.stores.results import matrix_source

    experiment = _experiment(store, storage_options)
    if not experiment.has_ground_truth:
        raise _without_truth(experiment, "there is nothing to evaluate against (use "
                             "`qbscale run --topk K --hits FILE` for its top-k hits)")
    source = matrix_source(experiment, array)
    evaluated = Experiment(source, source, experiment.gt, experiment.mask,
                           positives=experiment.positives, excluded=experiment.excluded)
    from qbscale.storage.stores.store import read_whole

    with read_whole(experiment):
        result = run(evaluated, method="none", scheduler=scheduler, num_workers=num_workers,
                     progress=progress)
    assert result.before is not None
    return result.before


def lazy(store: str | os.PathLike[str] | Experiment,
         beta: float | Iterable[float] | None = None, k: int = 1, method: str = "dis",
         storage_options: dict[str, Any] | None = None, *, dynamic: bool = False,
         gallery_bank: Any = None, bank_sample: int | float | str | None = None,
         seed: int = 0, **params: Any) -> dict[str, Any]:
    """Dask arrays of a run's building blocks, for composing your own graphs.

    Nothing is computed until you call ``.compute()``.

    Parameters
    ----------
    store : str, os.PathLike or Experiment
        A store path or URL, or an in-memory experiment, as in :func:`run`.
    beta : float or sequence of float, optional
        Inverse temperature(s); default 20.
    k : int, default 1
        Top-k bank columns forming the activation set.
    method : str, default "dis"
        The normalisation method, as in :func:`run`.
    storage_options : dict, optional
        The fsspec options of a remote store.
    dynamic : bool, default False
        Rescore only rows whose raw top-1 is in the activation set.
    gallery_bank : array-like, str or block source, optional
        For ``"dual-is"``: the gallery-bank x gallery similarities.
    bank_sample : int, float or str, optional
        Use only a sample of the querybank rows, as in :func:`run`.
    seed : int, default 0
        Seed of the querybank sample.
    **params
        The method's parameters, as in :func:`run`.

    Returns
    -------
    dict of str to dask.array.Array
        ``{"shift": (n_values, n_gallery), "activation": (n_gallery,),
        "base_ranks": (n_queries,), "ranks": (n_values, n_queries)}``;
        ``shift`` holds the per-gallery shifts of the method's variants.
    """
    import dask.array as da

    from qbscale.storage.stores.gallery_bank import resolve

    config = RunConfig.make(beta, k, method, 0, dynamic, params, bank_sample, seed)
    experiment = _experiment(store, storage_options)
    if not experiment.has_ground_truth:
        raise _without_truth(experiment, "there are no ranks to compute")
    graph = _plan.build(experiment, config, banks=resolve(experiment, config, gallery_bank))
    n_b, n_g = len(config.values), experiment.n_gallery
    sizes = experiment.test.row_chunks
    base = [da.from_delayed(_get(r, "base_rank"), (n,), float)
            for r, n in zip(graph.rows, sizes, strict=True)]
    out = {
        "shift": da.from_delayed(_get(graph.normaliser, "shift"), (n_b, n_g), float),
        "activation": da.from_delayed(_get(graph.normaliser, "activation"), (n_g,), bool),
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
