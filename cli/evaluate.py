"""``qbscale eval``: metrics of any stored query x gallery matrix."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import library_errors, quiet_option, scheduler_option
from .run import format_table


@click.command()
@click.argument("store")
@click.option("--array", default="test", show_default=True,
              help="Stored matrix to evaluate: test, scores, scores[1], ...")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write metrics as JSON.")
@scheduler_option
@quiet_option
@library_errors
def evaluate(store: str, array: str, json_path: str | None, scheduler: str, quiet: bool) -> None:
    """Print the retrieval metrics of ARRAY in STORE."""
    from qbscale.api import evaluate as evaluate_api
    from qbscale.engine.metrics import rounded

    metrics = evaluate_api(store, array, scheduler=scheduler, progress=not quiet)
    click.echo(format_table([{"method": array, "beta": None, **rounded(metrics)}]))
    if json_path:
        Path(json_path).write_text(json.dumps(metrics, indent=2))
