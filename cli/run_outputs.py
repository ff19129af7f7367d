"""What ``qbscale run`` gives besides metrics: hits files, and the summary of a
run over queries without a ground truth."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from .options import OutputPath

if TYPE_CHECKING:
    from qbscale.types import RunResult

hits_option = click.option(
    "--hits", "hits_path", type=OutputPath("hits file"), metavar="FILE",
    help="Write the top-k hits after normalisation (needs --topk): .parquet, .tsv, .trec "
         "(TREC run, one value) or .npz.")


def check_hits(hits: str | None, topk: int, given: dict[str, Any], n_stores: int) -> None:
    """Refuse a bad hits file before any work starts (``given``: the run's
    ``beta``, ``k``, ``method``, ``dynamic`` and method parameters)."""
    if hits is None:
        return
    from qbscale.config import RunConfig
    from qbscale.errors import ConfigError
    from qbscale.storage.outputs.hits import check_hits_path

    if not topk:
        raise click.UsageError("--hits needs --topk K (the hits per query)")
    if n_stores > 1:
        raise click.UsageError("--hits writes the hits of one STORE; give one")
    rest = {k: v for k, v in given.items() if k not in ("beta", "k", "method", "dynamic")}
    config = RunConfig.make(given["beta"], given["k"], given["method"], topk,
                            given["dynamic"], rest)
    path = check_hits_path(hits)
    if path.suffix == ".trec" and len(config.values) > 1:
        raise ConfigError(f"hits file {path}: a TREC run holds one variant, this run has "
                          f"{len(config.values)} values: run one, or write .tsv, .parquet "
                          "or .npz")


def check_all_have_truth(names: list[str], results: list[RunResult]) -> None:
    """Tables over several stores need metrics: a clear error for a store without."""
    from qbscale.errors import ConfigError

    for name, result in zip(names, results, strict=True):
        if not result.has_ground_truth:
            raise ConfigError(f"{name} has no ground truth: tables over several stores need "
                              "metrics; run it alone with --topk K or --save-scores")


def save_hits(hits: str | None, result: RunResult, target: Any) -> None:
    """Write the run's hits, with the store's ids when it has them."""
    if hits is None:
        return
    from qbscale.storage.outputs.hits import write_run_hits
    from qbscale.storage.stores.store import open_experiment
    from qbscale.types import Experiment

    experiment = target if isinstance(target, Experiment) else open_experiment(str(target))
    write_run_hits(hits, result, experiment)


def summary_without_truth(result: RunResult, store: str | None, hits: str | None,
                          save_scores: bool) -> str:
    """What a run without a ground truth did, in place of the metrics table
    (``store``: the store run on, None for the seed's pickles)."""
    n_queries, n_gallery = result.n_queries, result.n_gallery
    lines = [f"no ground truth, so no metrics: {n_queries} queries x {n_gallery} gallery items"]
    if result.config.normalises:
        lines.append(f"normalised rows: {100 * result.normalised_share:.1f}% of {n_queries}; "
                     f"activation set: {result.activation_size} of {n_gallery} gallery items")
    saved = bool(store) and (save_scores or result.topk_index is not None)
    folder = f"{store}/{_run_folder(store)}" if saved and store else ""  # one read
    if result.topk_index is not None:
        places = [hits] if hits else []
        if store:
            places.append(f"{folder} (topk_index, topk_score)")
        lines.append(f"top-{result.topk_index.shape[-1]} hits: "
                     f"{', '.join(places) or 'not saved (give --hits FILE)'}")
    if save_scores:
        shape = f"{len(result.config.values)} x {n_queries} x {n_gallery}"
        lines.append(f"normalised scores: {folder}scores ({shape} float64)")
    if saved:
        lines.append("read them with qbscale.open_result(STORE, NAME) (the last run's)")
    if store:
        from qbscale.storage.stores.store import ADD_TRUTH_HINT

        lines.append(f"metrics need a ground truth: {ADD_TRUTH_HINT}")
    return "\n".join(lines)


def _run_folder(store: str) -> str:
    """``runs/<token>/``: where the last run published its arrays in ``store``
    (read once from the store's attributes)."""
    from qbscale.storage.stores.results import published_path

    return published_path(store, "scores")[: -len("scores")]
