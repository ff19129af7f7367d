"""``qbscale sweep``: retrieval metrics against querybank size, in one pass."""

from __future__ import annotations

import json
from typing import Any

import click

from qbscale.config import METHODS
from qbscale.storage.durability import atomic

from .method_options import method_kwargs, method_options
from .options import (
    Command,
    InputPath,
    OutputPath,
    check_output_file,
    compute_options,
    k_option,
    library_errors,
    quiet_option,
)


@click.command(cls=Command)
@click.argument("store", type=InputPath())
@click.option("--bank-sizes", required=True, metavar="N,...",
              help="Querybank sizes: row counts, fractions in (0, 1] or 'all', e.g. "
                   "500,1000,5000,all.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Samples per size; repeat r permutes the bank with seed SEED + r.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the first repeat.")
@click.option("--beta", default=None,
              help="Inverse temperature (is, dis, dual-is; default 20); several as 10,20.")
@k_option
@click.option("--method", type=click.Choice([m for m in METHODS if m != "none"]),
              default="dis", show_default=True)
@click.option("--json", "json_path", type=OutputPath("JSON file"),
              help="Write every cell and the summary as JSON.")
@click.option("--plot", "plot_path", type=OutputPath("plot"),
              help="Draw R@1 against querybank size into this PNG (needs matplotlib).")
@compute_options
@quiet_option
@method_options
@library_errors
def sweep(store: str, bank_sizes: str, repeats: int, seed: int, beta: str | None, k: int,
          method: str, json_path: str | None, plot_path: str | None, scheduler: str,
          workers: int | None, quiet: bool, dynamic: bool, gallery_bank: str | None,
          **method_opts: Any) -> None:
    """Metrics of STORE against querybank size: every size and repeat in one pass.

    Repeat r uses the bank rows numpy.random.default_rng(SEED + r).permutation(n_bank),
    size N the first N of them, so each cell is `qbscale run --bank-sample N --seed
    SEED+r`.  Printed: mean(std) over the repeats per size; 'all' is the plain run.
    """
    from qbscale.analysis.banksize import (
        bank_size_figure,
        bank_size_sweep,
        format_sweep,
        require_matplotlib,
    )
    from qbscale.config import parse_values
    from qbscale.engine.subsets import parse_sample

    if plot_path:
        require_matplotlib()
    check_output_file(json_path)
    check_output_file(plot_path)
    sizes = [parse_sample(part, "--bank-sizes") for part in bank_sizes.split(",")
             if part.strip()]
    result = bank_size_sweep(store, sizes, repeats, seed,
                             None if beta is None else parse_values(beta), k, method,
                             dynamic=dynamic, gallery_bank=gallery_bank, scheduler=scheduler,
                             num_workers=workers, progress=not quiet,
                             **method_kwargs(method, method_opts))
    data = result.to_dict()
    seeds = ", ".join(map(str, result.seeds))
    click.echo(f"querybank sizes of {result.n_bank} bank rows, {len(result.seeds)} repeat(s) "
               f"(seeds {seeds}); mean(std) over repeats")
    click.echo(format_sweep(data))
    click.echo(f"time: {result.seconds:.2f} s")
    with atomic.held():  # both files, or neither
        if json_path:
            atomic.write_text(json_path, json.dumps(data, indent=2))
        if plot_path:
            atomic.write_bytes(plot_path, bank_size_figure(data))
