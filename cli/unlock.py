"""``qbscale unlock``: break the writer lock a killed run left in a store."""

from __future__ import annotations

import os

import click

from .options import Command, InputPath, library_errors, quiet_option


@click.command(cls=Command)
@click.argument("store", type=InputPath())
@quiet_option
@library_errors
def unlock(store: str, quiet: bool) -> None:
    """Delete STORE's writer lock, left by a run that died, and the unpublished
    results of interrupted runs that `--resume` cannot use (``runs/<token>``
    prefixes the store does not point at, which `qbscale check` names; a run
    without --resume deletes the others).

    Refused while the run holding it is alive on this host; a lock taken on
    another host is broken as asked (make sure that run is gone).
    """
    from qbscale.errors import StoreNotFoundError
    from qbscale.storage.durability.lock import break_lock, describe
    from qbscale.storage.layout import is_url, local_path

    if not is_url(store) and not os.path.isdir(local_path(store)):
        raise StoreNotFoundError(f"no store at {store}: nothing to unlock")
    from qbscale.storage.stores.results import remove_unpublished

    from .check import interrupted_hint

    info = break_lock(store)
    if info is None:
        click.echo(f"{store} is not locked")
    else:
        click.echo(f"broke the lock of {describe(info)}")
    removed, kept = remove_unpublished(store)
    for prefix in removed:
        click.echo(f"removed {prefix}: an interrupted run's unpublished results")
    for prefix in kept:
        click.echo(f"kept {prefix}: {interrupted_hint(store, True)}")
