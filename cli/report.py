"""``qbscale report``: an HTML page comparing every normaliser on a store."""

from __future__ import annotations

import click

from qbscale.engine.methods import REGISTRY

from .options import (
    Command,
    InputPath,
    OutputPath,
    activation_k_option,
    check_output_dir,
    compute_options,
    depth_option,
    library_errors,
    quiet_option,
)


@click.command(cls=Command)
@click.argument("store", type=InputPath())
@click.option("-o", "--output", required=True, metavar="DIR", type=OutputPath("report"),
              help="Directory to write index.html (and its figures) into: a new or empty "
                   "one, or (with --overwrite) an earlier report.")
@click.option("--items", metavar="JSONL", type=InputPath(exists=True, dir_okay=False),
              help="JSON lines (.gz too), one per gallery item, to label the hubs: the first "
                   "line of each item's code, text, query or id field.")
@click.option("--method", "names", multiple=True, type=click.Choice(list(REGISTRY)),
              help="A method to include; repeat for several (default: every method that can "
                   "run on STORE).")
@depth_option
@activation_k_option
@click.option("--gallery-bank", metavar="PATH", type=InputPath(exists=True),
              help="Gallery-bank x gallery similarities for dual-is (default: the store's).")
@click.option("--title", default="Querybank normalisation report", show_default=True)
@click.option("--sweep", "sweep_path", metavar="SWEEP.json",
              type=InputPath(exists=True, dir_okay=False),
              help="A bank-size sweep from `qbscale sweep --json`: adds R@1 against "
                   "querybank size.")
@click.option("--diagnose/--no-diagnose", "with_diagnosis", default=True, show_default=True,
              help="Add the diagnostics of `qbscale diagnose` (hub agreement, domain gap; "
                   "one more read of the bank and the test).")
@click.option("--overwrite", is_flag=True,
              help="Replace the report already in DIR (a folder holding anything else is "
                   "never written into).")
@compute_options
@quiet_option
@library_errors
def report(store: str, output: str, items: str | None, names: tuple[str, ...], depth: int,
           activation_k: int, gallery_bank: str | None, title: str, with_diagnosis: bool,
           sweep_path: str | None, overwrite: bool, scheduler: str, workers: int | None,
           quiet: bool) -> None:
    """Write a self-contained HTML report on STORE: metrics and hubness of every
    method, N_k distributions, R@1 against each method's parameter and the hubs
    that normalisation removed.  One pass over the data per method; the store is
    only read."""
    check_report_dependencies()
    check_output_dir(output)
    from qbscale.analysis.banksize import load_sweep
    from qbscale.analysis.compare import compare
    from qbscale.analysis.report import load_items, write_report

    labels = load_items(items) if items else None
    bank_sizes = load_sweep(sweep_path) if sweep_path else None
    result = compare(store, list(names) or None, k=depth, sweep=True, activation_k=activation_k,
                     gallery_bank=gallery_bank, scheduler=scheduler, num_workers=workers,
                     progress=not quiet)
    diagnosis = None
    if with_diagnosis:
        from qbscale.analysis.diagnose import diagnose

        diagnosis = diagnose(store, k=activation_k, depth=depth, scheduler=scheduler,
                             num_workers=workers, progress=not quiet)
    page = write_report(result, output, labels, title, diagnosis, bank_sizes, overwrite)
    methods = ", ".join(r.label for r in result.runs)
    click.echo(f"Wrote {page} ({methods}; N_k at depth {depth})")


def check_report_dependencies() -> None:
    """Fail before any work when matplotlib (the ``report`` extra) is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "qbscale report needs matplotlib: pip install matplotlib (or, in a qbscale "
            "clone, pip install '.[report]')") from None
