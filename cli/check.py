"""``qbscale check``: verify every chunk of a store."""

from __future__ import annotations

import sys

import click

from .options import Command, InputPath, library_errors, quiet_option


@click.command(cls=Command)
@click.argument("store", type=InputPath())
@click.option("--repair-hint", is_flag=True,
              help="Also say, per damaged array, how to get it back.")
@quiet_option
@library_errors
def check(store: str, repair_hint: bool, quiet: bool) -> None:
    """Verify every chunk of STORE (checksums, sizes, presence, places) and every
    array's metadata; exit 1 if anything is bad.

    Reads one chunk at a time: memory stays at a chunk whatever the store's size.
    """
    from qbscale.storage.stores.check import check_store
    from qbscale.storage.stores.check import repair_hint as hints

    report = check_store(store, progress=not quiet)
    for key, why in sorted(report.bad.items()):
        click.echo(f"{key}: {why}")
    for line in unpublished_lines(store, report.unpublished):
        click.echo(line)
    if report.unchecked:
        click.echo(f"notice: {len(report.unchecked)} array(s) carry no checksums (written "
                   f"before them): {', '.join(report.unchecked)}")
    click.echo(f"{store}: {report.chunks} chunks in {report.arrays} arrays checked, "
               f"{len(report.bad)} bad")
    if repair_hint and report.bad:
        for line in hints(report):
            click.echo(f"hint: {line}")
    if report.bad:
        sys.exit(1)


def unpublished_lines(store: str, prefixes: list[str]) -> list[str]:
    """One line per run prefix no root points at: the results of a run in progress
    (its lock's holder is alive), or an interrupted run's, which are no damage."""
    from qbscale.storage.durability.lock import describe, holder_alive, read_lock
    from qbscale.storage.stores.results import resumable

    if not prefixes:
        return []
    info = read_lock(store)
    if info and holder_alive(info):
        return [f"{prefix}: unpublished results of the run in progress ({describe(info)}): "
                "not damage" for prefix in prefixes]
    return [f"{prefix}: {interrupted_hint(store, resumable(store, None, prefix))}"
            for prefix in prefixes]


def interrupted_hint(store: str, resumes: bool) -> str:
    """What an interrupted run's unpublished results are, and what removes them."""
    what = "an interrupted run's unpublished results (not damage)"
    if resumes:
        return (f"{what}: `qbscale run {store} --resume` with its options reuses its finished "
                "row blocks, a run without --resume removes them")
    return f"{what}: `qbscale unlock {store}` removes them"
