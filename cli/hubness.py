"""``qbscale hubness``: k-occurrence statistics before and after each normaliser."""

from __future__ import annotations

from typing import Any

import click

from qbscale.engine.methods import REGISTRY

from .options import (
    Command,
    InputPath,
    OutputPath,
    activation_k_option,
    bank_sample,
    bank_sample_option,
    check_output_file,
    compute_options,
    depth_option,
    library_errors,
    quiet_option,
    seed_option,
    write_json,
)

COLUMNS = (("R1", "R@1", ".1f"), ("hub_skewness", "N_k skew", ".2f"),
           ("hub_robin_hood", "Robin Hood", ".3f"), ("hub_hub_occupation", "hub occ.", ".3f"),
           ("hub_antihub_rate", "antihubs", ".3f"), ("hub_max_occurrence", "max N_k", "d"))


def format_hubness(rows: list[dict[str, Any]]) -> str:
    """Fixed-width table of :meth:`qbscale.analysis.compare.Comparison.rows`."""
    width = max(8, *(len(row["method"]) + 1 for row in rows))
    head = f"{'method':<{width}}{'setting':>12}" + "".join(f"{h:>11}" for _, h, _ in COLUMNS)
    lines = [head]
    for row in rows:
        setting = "-" if row["value"] is None else f"{row['param']}={row['value']:g}"
        lines.append(f"{row['method']:<{width}}{setting:>12}"
                     + "".join(f"{'-':>11}" if row.get(c) is None else f"{row[c]:>11{f}}"
                               for c, _, f in COLUMNS))
    return "\n".join(lines)


@click.command(cls=Command)
@click.argument("store", type=InputPath())
@click.option("--method", "names", multiple=True, type=click.Choice(list(REGISTRY)),
              help="A method to measure; repeat for several (default: every method that can "
                   "run on STORE; dual-is needs a gallery bank).")
@depth_option
@activation_k_option
@click.option("--dynamic", is_flag=True,
              help="Rescore only rows whose top-1 is in the activation set.")
@click.option("--gallery-bank", metavar="PATH", type=InputPath(exists=True),
              help="Gallery-bank x gallery similarities for dual-is (default: the store's).")
@click.option("--json", "json_path", type=OutputPath("JSON file"),
              help="Write the table (metrics and hubness per method) as JSON.")
@bank_sample_option
@seed_option
@compute_options
@quiet_option
@library_errors
def hubness(store: str, names: tuple[str, ...], depth: int, activation_k: int, dynamic: bool,
            gallery_bank: str | None, json_path: str | None, bank_sample_text: str | None,
            seed: int, scheduler: str,
            workers: int | None, quiet: bool) -> None:
    """Hubness of STORE's retrieval before and after each normaliser.

    N_k(j) counts the test queries with gallery item j in their top DEPTH.  Printed:
    the skewness of N_k, the Robin Hood index (share of top-k slots to move for
    every item to have the mean), hub occupation (share of top-k slots taken by
    the top 1% of items), the antihub rate (share of items never retrieved) and
    the largest N_k.  Every method runs at its defaults, one pass each; the
    store is only read.
    """
    from qbscale.analysis.compare import compare

    check_output_file(json_path)
    result = compare(store, list(names) or None, k=depth, dynamic=dynamic,
                     activation_k=activation_k, gallery_bank=gallery_bank,
                     bank_sample=bank_sample(bank_sample_text), seed=seed,
                     scheduler=scheduler, num_workers=workers, progress=not quiet)
    click.echo(f"N_k at depth {depth} over {result.n_queries} test queries and {result.n_gallery} "
               "gallery items")
    click.echo(format_hubness(result.rows()))
    if json_path:
        write_json(json_path, "hubness", {"depth": depth, "k": activation_k,
                                          "rows": result.rows()})
