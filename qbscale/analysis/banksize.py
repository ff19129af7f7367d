"""Querybank size studies: R@1 against the number of querybank rows.

:func:`bank_size_sweep` evaluates a method on bank samples of several sizes,
each repeated with several seeds, in ONE pass over the data: repeat ``r``
uses seed ``seed + r`` and size ``N`` the first ``N`` rows of that repeat's
permutation (:mod:`qbscale.engine.subsets`), so every cell ``(N, r)`` is the
run ``run(..., bank_sample=N, seed=seed + r)``.  Each bank block is read once
and gives every cell's statistics; each test block is read once and counts
every cell's variants (a :class:`~qbscale.engine.stack.Stack`).  ``"all"``
is the plain run (the same in every repeat, so its std is 0).

The summary is the mean and the population standard deviation (``ddof=0``)
over the repeats, per size and value, as papers print them: ``14.4(0.1)``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qbscale.config import RunConfig
from qbscale.engine import plan as _plan
from qbscale.engine.metrics import retrieval_metrics
from qbscale.engine.stack import Stack
from qbscale.engine.subsets import ALL, SampleSpec, Subsets
from qbscale.executors import get_executor
from qbscale.storage.stores.store import read_whole
from qbscale.types import Experiment, RowResult

#: metrics summarised per size (key, header)
METRICS = (("R1", "R@1"), ("R5", "R@5"), ("R10", "R@10"), ("MedR", "MedR"),
           ("MeanR", "MeanR"), ("geometric_mean_R1-R5-R10", "geom"))


@dataclass
class CellResult:
    """One bank sample: ``size`` rows of repeat ``repeat`` (None: the whole bank)."""

    size: int
    repeat: int | None
    seed: int | None
    after: dict[float, dict[str, float]]  #: metrics per value of the swept parameter
    normalised_share: float
    activation_size: int

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "repeat": self.repeat, "seed": self.seed,
                "after": {str(v): m for v, m in self.after.items()},
                "normalised_share": self.normalised_share,
                "activation_size": self.activation_size}


@dataclass
class BankSizeSweep:
    """Every cell of a bank-size sweep, and their summary per size."""

    config: RunConfig
    n_bank: int
    n_gallery: int
    sizes: list[tuple[str, int]]  #: (label as given, rows), ascending
    seeds: list[int]  #: one per repeat
    before: dict[str, float]
    cells: list[CellResult]
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def cell(self, size: int, repeat: int) -> CellResult:
        """The cell of ``size`` rows in repeat ``repeat`` (the whole bank: any repeat)."""
        for c in self.cells:
            if c.size == size and (c.repeat is None or c.repeat == repeat):
                return c
        raise KeyError((size, repeat))

    def summary(self) -> list[dict[str, Any]]:
        """Per size and value: mean and std over repeats of every metric, the
        activation-set size and the normalised share."""
        rows = []
        for label, size in self.sizes:
            cells = [self.cell(size, r) for r in range(len(self.seeds))]
            for value in self.config.values:
                stats = {key: [c.after[value][key] for c in cells] for key, _ in METRICS}
                stats["activation_size"] = [float(c.activation_size) for c in cells]
                stats["normalised_share"] = [c.normalised_share for c in cells]
                rows.append({"label": label, "size": size, "value": value,
                             "mean": {k: float(np.mean(v)) for k, v in stats.items()},
                             "std": {k: float(np.std(v)) for k, v in stats.items()}})
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings, baseline, every cell and the summary."""
        return {
            "kind": "bank_size_sweep", "method": self.config.method, "k": self.config.k,
            "values": list(self.config.values), "variant": self.config.variant_name,
            "dynamic": self.config.is_dynamic, "params": self.config.param_dict,
            "n_bank": self.n_bank, "n_gallery": self.n_gallery,
            "sizes": [{"label": label, "size": size} for label, size in self.sizes],
            "repeats": len(self.seeds), "seeds": self.seeds, "before": self.before,
            "cells": [c.to_dict() for c in self.cells], "summary": self.summary(),
            "seconds": self.seconds,
        }


def bank_size_sweep(store: str | os.PathLike[str] | Experiment, sizes: Sequence[SampleSpec],
                    repeats: int = 3, seed: int = 0,
                    beta: float | Iterable[float] | None = None, k: int = 1,
                    method: str = "dis", *, dynamic: bool = False, gallery_bank: Any = None,
                    scheduler: Any = "threads", num_workers: int | None = None,
                    progress: bool = False, storage_options: dict[str, Any] | None = None,
                    **params: Any) -> BankSizeSweep:
    """Evaluate ``method`` on querybank samples of every size in ``sizes``.

    Each size is sampled ``repeats`` times, all in one pass over the bank and
    one over the test matrix.

    Parameters
    ----------
    store : str, os.PathLike or Experiment
        A store path or URL, or an :class:`~qbscale.types.Experiment`.
    sizes : sequence of int, float or str
        Bank sizes: row counts, fractions in (0, 1] or ``"all"``.
    repeats : int, default 3
        Samples per size.
    seed : int, default 0
        Repeat ``r`` permutes the bank with seed ``seed + r``.
    beta : float or sequence of float, optional
        Inverse temperature(s), as in :func:`qbscale.run`.
    k : int, default 1
        Top-k bank columns forming the activation set.
    method : str, default "dis"
        The method, as in :func:`qbscale.run`.
    dynamic : bool, default False
        Rescore only rows whose raw top-1 is in the activation set.
    gallery_bank : array-like or str, optional
        For ``"dual-is"``, as in :func:`qbscale.run`.
    scheduler : str or distributed.Client, default "threads"
        Where to compute, as in :func:`qbscale.run`.
    num_workers : int, optional
        Threads or processes of a local scheduler.
    progress : bool, default False
        Show a progress bar on stderr.
    storage_options : dict, optional
        The fsspec options of a remote store.
    **params
        The method's parameters, as in :func:`qbscale.run`.

    Returns
    -------
    BankSizeSweep
        The metrics per size, mean and std over the repeats, and the baseline.
    """
    from qbscale.api import _experiment
    from qbscale.storage.stores.gallery_bank import resolve

    t0 = time.perf_counter()
    config = RunConfig.make(beta, k, method, 0, dynamic, params)
    experiment = _experiment(store, storage_options)
    n_bank = experiment.bank.shape[0]
    subsets = Subsets.make(n_bank, list(sizes), repeats, seed)
    cells = _plan.fit_cells(experiment, config, subsets,
                            banks=resolve(experiment, config, gallery_bank))
    stack = _stack(cells)
    graph = _plan.build(experiment, config, normaliser=stack)
    executor = get_executor(scheduler, num_workers)
    try:
        with read_whole(experiment):
            stacked, *rows = executor.compute(graph.outputs(), progress)
    finally:
        executor.close()
    result = _assemble(config, experiment, subsets, sizes, stacked, rows)
    result.seconds = time.perf_counter() - t0
    return result


def _stack(cells: Any) -> Any:
    from dask.delayed import delayed

    return delayed(Stack.of)(cells)


def _labels(sizes: Sequence[SampleSpec], subsets: Subsets) -> list[tuple[str, int]]:
    from qbscale.engine.subsets import sample_size

    out = []
    for spec in sizes:
        n = sample_size(spec, subsets.n_rows, "bank size")
        out.append((ALL if n == subsets.n_rows else str(spec), n))
    return sorted(out, key=lambda pair: pair[1])


def _assemble(config: RunConfig, experiment: Experiment, subsets: Subsets,
              sizes: Sequence[SampleSpec], stack: Stack, rows: list[RowResult]
              ) -> BankSizeSweep:
    rows = sorted(rows, key=lambda r: r.start)
    mask = experiment.mask
    base = np.concatenate([r.base_rank for r in rows])
    ranks = np.concatenate([r.rank for r in rows if r.rank is not None], axis=1)
    flags = np.concatenate([r.normalised for r in rows], axis=1)  # (n_cells, n_queries)
    n_values = len(config.values)
    results = []
    for c, cell in enumerate(subsets.cells):
        norm = stack.members[c]
        chosen = flags[c] if mask is None else flags[c][mask]
        results.append(CellResult(
            cell.size, cell.repeat, cell.seed,
            {value: retrieval_metrics(ranks[c * n_values + b], mask)
             for b, value in enumerate(config.values)},
            float(chosen.mean()) if chosen.size else 0.0,
            int(np.count_nonzero(norm.activation))))
    return BankSizeSweep(config, subsets.n_rows, experiment.n_gallery,
                         _labels(sizes, subsets), list(subsets.seeds),
                         retrieval_metrics(base, mask), results)


# ---------------------------------------------------------------- output


def paper(mean: float, std: float, digits: int = 1) -> str:
    """``mean(std)`` as papers print it: ``paper(14.44, 0.08)`` is ``'14.4(0.1)'``."""
    return f"{mean:.{digits}f}({std:.{digits}f})"


def format_sweep(sweep: dict[str, Any]) -> str:
    """The summary of a sweep (:meth:`BankSizeSweep.to_dict`) as a fixed-width table."""
    variant = sweep["variant"]
    head = (f"{'bank size':>10}{'rows':>8}{variant:>7}"
            + "".join(f"{h:>12}" for _, h in METRICS) + f"{'act. set':>15}{'normalised %':>14}")
    lines = [head]
    for row in sweep["summary"]:
        mean, std = row["mean"], row["std"]
        cells = "".join(f"{paper(mean[k], std[k]):>12}" for k, _ in METRICS)
        act = paper(mean["activation_size"], std["activation_size"])
        share = paper(100 * mean["normalised_share"], 100 * std["normalised_share"])
        lines.append(f"{row['label']:>10}{row['size']:>8}{row['value']:>7g}{cells}"
                     f"{act:>15}{share:>14}")
    before = sweep["before"]
    lines.append(f"{'none':>10}{'-':>8}{'-':>7}"
                 + "".join(f"{before[k]:>12.1f}" for k, _ in METRICS))
    return "\n".join(lines)


def load_sweep(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A bank-size sweep read back from ``qbscale sweep --json`` (a clear error otherwise)."""
    import json

    from qbscale.errors import InputError
    from qbscale.storage.durability.paths import check_regular

    check_regular(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the bank-size sweep {os.fspath(path)}: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != "bank_size_sweep":
        raise InputError(f"{os.fspath(path)} is not a bank-size sweep "
                         "(write one with `qbscale sweep --json`)")
    return data


def require_matplotlib() -> None:
    """A clear error, before any work, when matplotlib (the ``report`` extra) is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from qbscale.errors import ConfigError

        raise ConfigError("plotting needs matplotlib: pip install matplotlib (or, in a "
                          "qbscale clone, pip install '.[report]')") from None


def bank_size_figure(sweep: dict[str, Any]) -> bytes:
    """R@1 against the number of querybank rows (log x), mean with a +-std band
    per value, the raw similarities dashed; a PNG of :meth:`BankSizeSweep.to_dict`."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for n, value in enumerate(sweep["values"]):
        rows = [r for r in sweep["summary"] if r["value"] == value]
        x = np.array([r["size"] for r in rows], float)
        mean = np.array([r["mean"]["R1"] for r in rows])
        std = np.array([r["std"]["R1"] for r in rows])
        colour = f"C{n % 10}"
        ax.plot(x, mean, marker="o", ms=4, color=colour,
                label=f"{sweep['method']} {sweep['variant']}={value:g}")
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.25, lw=0)
    ax.axhline(sweep["before"]["R1"], color="grey", ls="--", lw=1, label="no normalisation")
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ticks = [row["size"] for row in sweep["sizes"]]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel=f"querybank rows (of {sweep['n_bank']}; log scale)", ylabel="R@1 (%)",
           title=f"R@1 against querybank size: mean and std over {sweep['repeats']} "
                 f"repeat{'s' if sweep['repeats'] != 1 else ''}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
