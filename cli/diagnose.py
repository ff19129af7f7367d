"""``qbscale diagnose``: will QB-Norm help on a store, and is its bank the right one?"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import click

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

if TYPE_CHECKING:
    from qbscale.analysis.diagnose import Diagnosis


def format_diagnosis(d: Diagnosis) -> str:
    """The figures of a diagnosis as aligned text, then its reading."""
    from qbscale.analysis.diagnose import QUANTILES
    from qbscale.analysis.reading import reading

    f = d.figures
    lines = [
        f"{d.config.method} beta={d.beta:g} k={d.config.k}: bank {d.n_bank} of "
        f"{d.n_bank_total} rows, {d.n_queries} test queries, {d.n_gallery} gallery items, "
        f"N_k at depth {d.depth}",
        "hub agreement",
        f"  Spearman rho of logZ and N_k        {f['spearman']:8.3f}",
        f"  top-1% hubs in both views           {f['hub_overlap']:8.3f}",
        f"  test hubs in the activation set     {f['hubs_activated']:8.3f}",
        f"  gallery in the activation set       {f['activation_share']:8.3f}",
        "domain gap (top-1 similarity of each query)",
        "  quantile  " + "".join(f"{q:>8g}" for q in QUANTILES),
        "  bank      " + "".join(f"{v:8.3f}" for v in f["bank_top1"].values()),
        "  test      " + "".join(f"{v:8.3f}" for v in f["test_top1"].values()),
        f"  Kolmogorov-Smirnov D                {f['ks']:8.3f}",
        f"test rows DIS normalises              {f['activated_share']:8.3f}",
    ]
    if d.result is not None and d.result.before is not None and d.result.after:
        before, after = d.result.before, d.result.after[d.config.values[0]]
        lines.append("with the ground truth      " + "".join(
            f"{h:>8}" for h in ("R@1", "R@5", "R@10", "MedR", "geom")))
        for name, m in (("  none", before), (f"  {d.config.method}", after)):
            lines.append(f"{name:<27}" + "".join(
                f"{m[c]:8.1f}" for c in ("R1", "R5", "R10", "MedR",
                                         "geometric_mean_R1-R5-R10")))
    lines += ["", textwrap.fill(reading(d.figures, d.result_figures()), 88)]
    return "\n".join(lines)


@click.command(cls=Command)
@click.argument("store", type=InputPath())
@click.option("--beta", type=click.FloatRange(min=0, min_open=True), default=20.0,
              show_default=True,
              help="Inverse temperature of the inverted softmax diagnosed.")
@activation_k_option
@depth_option
@bank_sample_option
@seed_option
@click.option("--json", "json_path", type=OutputPath("JSON file"),
              help="Write the figures and the reading as JSON.")
@compute_options
@quiet_option
@library_errors
def diagnose(store: str, beta: float, activation_k: int, depth: int,
             bank_sample_text: str | None, seed: int, json_path: str | None, scheduler: str,
             workers: int | None, quiet: bool) -> None:
    """Will QB-Norm help on STORE, and is its querybank the right one?

    Without a ground truth: how well the bank's view of the hubs (logZ, the
    activation set) matches the test queries' own (N_k of the raw scores),
    the gap between the bank's and the test queries' top-1 similarities
    (quantiles, Kolmogorov-Smirnov D), and the share of test rows DIS
    normalises.  With a ground truth, the figures before and after DIS too.
    One read of the bank and one of the test matrix; the store is only read.
    """
    from qbscale.analysis.diagnose import diagnose as run_diagnosis

    check_output_file(json_path)
    result = run_diagnosis(store, beta, activation_k, depth,
                           bank_sample=bank_sample(bank_sample_text), seed=seed,
                           scheduler=scheduler, num_workers=workers, progress=not quiet)
    click.echo(format_diagnosis(result))
    if json_path:
        write_json(json_path, "diagnose", result.to_dict())
