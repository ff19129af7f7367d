"""``qbscale eval``: metrics of any stored query x gallery matrix."""

from __future__ import annotations

import click

from .options import (
    Command,
    InputPath,
    OutputPath,
    check_json_output,
    compute_options,
    library_errors,
    quiet_option,
    write_json,
)
from .run import format_table


@click.command("eval", cls=Command)
@click.argument("store", type=InputPath())
@click.option("--array", default="test", show_default=True,
              help="Stored matrix to evaluate: test, scores, scores[1], ...")
@click.option("--json", "json_path", type=OutputPath("JSON file"), help="Write metrics as JSON.")
@compute_options
@quiet_option
@library_errors
def evaluate(store: str, array: str, json_path: str | None, scheduler: str,
             workers: int | None, quiet: bool) -> None:
    """Print the retrieval metrics of ARRAY in STORE."""
    from qbscale.api import evaluate as evaluate_api
    from qbscale.engine.metrics import rounded

    check_json_output(json_path, (store,))
    metrics = evaluate_api(store, array, scheduler=scheduler, num_workers=workers,
                           progress=not quiet)
    click.echo(format_table([{"method": array, "beta": None, **rounded(metrics)}]))
    if json_path:
        write_json(json_path, "eval", {"array": array, **metrics})
