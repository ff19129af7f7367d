"""Options shared by several commands, and the error bridge."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

scheduler_option = click.option(
    "--scheduler", default="threads", show_default=True, metavar="NAME|local:N|tcp://HOST:PORT",
    help="threads, processes, synchronous; local:N for a LocalCluster of N worker processes; "
         "or the address of a running dask scheduler.",
)
workers_option = click.option("--workers", type=int, default=None,
                              help="Threads/processes for the local schedulers.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
hub_k_option = click.option("--k", "k", type=click.IntRange(min=1), default=10,
                            show_default=True, help="Depth of the top-k lists counted in N_k.")
activation_k_option = click.option(
    "--activation-k", type=click.IntRange(min=1), default=1, show_default=True,
    help="Top-k bank columns per querybank row forming the activation set.")


def library_errors(func: F) -> F:
    """Turn qbscale errors into a clean ``Error: ...`` and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from qbscale.errors import QBScaleError

        try:
            return func(*args, **kwargs)
        except QBScaleError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]
