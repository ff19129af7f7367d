"""``qbscale unlock``: break the writer lock a killed run left in a store."""

from __future__ import annotations

import click

from .options import library_errors


@click.command()
@click.argument("store")
@library_errors
def unlock(store: str) -> None:
    """Delete STORE's writer lock, left by a run that died.

    Refused while the run holding it is alive on this host; a lock taken on
    another host is broken as asked (make sure that run is gone).
    """
    from qbscale.storage.lock import break_lock, describe

    info = break_lock(store)
    if info is None:
        click.echo(f"{store} is not locked")
    else:
        click.echo(f"broke the lock of {describe(info)}")
