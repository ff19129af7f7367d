"""``qbscale qrels``: a store's ground truth as a TREC qrels file."""

from __future__ import annotations

import click

from .options import Command, InputPath, OutputPath, library_errors, quiet_option


@click.command(cls=Command)
@click.argument("store", type=InputPath())
@click.option("-o", "--output", required=True, type=OutputPath("qrels file"), metavar="FILE",
              help="The qrels file to write (replaced if it exists).")
@quiet_option
@library_errors
def qrels(store: str, output: str, quiet: bool) -> None:
    """Write STORE's ground truth as TREC qrels (`qid 0 item 1`, one line per
    relevant item; masked queries left out).

    Queries and items are named by the store's ids (`qbscale ingest
    --query-ids/--gallery-ids`, `qbscale ids`), else by 0-based index, as in
    the hits files of `qbscale run --topk K --hits run.trec`: ir_measures,
    ranx or trec_eval on the two give qbscale's R@K (Success@K) and the mean
    reciprocal rank (RR).
    """
    from qbscale.storage.durability.paths import check_not_input
    from qbscale.storage.outputs.qrels import check_qrels_path, write_qrels
    from qbscale.storage.stores.store import open_experiment

    check_not_input(output, (store,))
    check_qrels_path(output)
    experiment = open_experiment(store)
    path = write_qrels(output, experiment)
    n = experiment.n_queries if experiment.mask is None else int(experiment.mask.sum())
    click.echo(f"Wrote {path}: the relevant items of {n} queries")
