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
