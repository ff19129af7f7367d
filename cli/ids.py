"""``qbscale ids``: add query and gallery ids to an existing store."""

from __future__ import annotations

import click

from .options import Command, InputPath, library_errors, quiet_option

_SOURCES = "a text file (one id a line), a .npy of integers or strings, or FILE.parquet:COLUMN"


@click.command(cls=Command)
@click.argument("store", type=InputPath())
@click.option("--queries", "query_ids", metavar="PATH", type=InputPath(),
              help=f"One id per test query: {_SOURCES}.")
@click.option("--gallery", "gallery_ids", metavar="PATH", type=InputPath(),
              help="One id per gallery item (same formats).")
@click.option("--overwrite", is_flag=True, help="Replace ids of a kind the store has.")
@quiet_option
@library_errors
def ids(store: str, query_ids: str | None, gallery_ids: str | None, overwrite: bool,
        quiet: bool) -> None:
    """Add query and/or gallery ids to STORE (written by `qbscale ingest`).

    Hits files, `qbscale qrels` and qbscale.open_dataset name queries and
    items by them.  The ids are checked (one per query or item, unique, no
    white space), written with checksums and chunk manifests under the
    store's lock, and published in one atomic write of its metadata.
    """
    from qbscale.storage.durability.paths import check_not_input
    from qbscale.storage.stores.ids import add_ids, experiment_ids
    from qbscale.storage.stores.store import open_experiment

    if query_ids is None and gallery_ids is None:
        raise click.UsageError("give --queries FILE, --gallery FILE or both")
    check_not_input(store, (query_ids, gallery_ids))
    add_ids(store, query_ids, gallery_ids, overwrite=overwrite)
    queries, gallery = experiment_ids(open_experiment(store))
    held = [f"{len(v)} {what} ids" for what, v in (("query", queries), ("gallery", gallery))
            if v is not None]
    click.echo(f"{store}: {' and '.join(held)}")
