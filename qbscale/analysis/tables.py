"""Several runs of one setting (e.g. three training seeds of a model): mean(std) tables.

The paper's README reports every figure as ``mean(std)`` over 3 seeds,
e.g. ``14.4(0.1)``.  Its std is the *population* standard deviation
(``ddof=0``, numpy's default), as its MdR cells show: a median rank is a
multiple of 0.5, and among such triples only 13, 14, 14 gives ``13.7(0.5)``
(population std 0.47; its sample std, 0.58, would print 0.6) and only
9, 10, 11 gives ``10.0(0.8)`` (0.82 against 1.0); no triple has a
*sample* std that rounds to those cells.
:data:`DDOF` is that choice.

:func:`summarise` gives one row per method setting (the baseline first)
with the mean and std of every metric over the runs; :func:`markdown`
prints the paper's columns (``| model | R@1 | R@5 | R@10 | MdR | Geom |``),
:func:`text` every metric in a fixed-width table.  A single run prints
plain means (the paper's single-seed rows have no std).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from qbscale.engine.metrics import NAMES
from qbscale.errors import ConfigError
from qbscale.types import RunResult

#: delta degrees of freedom of the std (0: population, as the paper's tables)
DDOF = 0
#: the paper's README columns: (metric, header)
PAPER_COLUMNS = (("R1", "R@1"), ("R5", "R@5"), ("R10", "R@10"), ("MedR", "MdR"),
                 ("geometric_mean_R1-R5-R10", "Geom"))
TEXT_COLUMNS = tuple(zip(NAMES, ("R@1", "R@5", "R@10", "R@50", "MedR", "MeanR", "geom"),
                         strict=True))


def summarise(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Mean and std (:data:`DDOF`) of every metric over ``results``, per setting.

    Parameters
    ----------
    results : sequence of RunResult
        Runs of the same settings (e.g. one per training seed of a model).

    Returns
    -------
    list of dict
        Rows ``{"method", "value", "param", "n", "mean": {...}, "std": {...}}``:
        the baseline (``method="none"``, ``value=None``), then one per value of
        the swept parameter.

    Raises
    ------
    ConfigError
        ``results`` is empty, or the runs' settings differ.
    """
    if not results:
        raise ConfigError("no runs to summarise")
    config = results[0].config
    for r in results[1:]:
        if r.config != config:
            raise ConfigError(f"runs with different settings: {config} and {r.config}")
    befores = [r.before for r in results if r.before is not None]
    afters = [r.after for r in results if r.after is not None]
    if len(befores) < len(results) or len(afters) < len(results):
        raise ConfigError("a run without a ground truth has no metrics to summarise")
    settings: list[tuple[str, float | None, list[dict[str, float]]]] = [
        ("none", None, befores)]
    settings += [(config.label, value, [after[value] for after in afters])
                 for value in config.values if config.normalises]
    rows = []
    for method, value, metrics in settings:
        table = np.array([[m[name] for name in NAMES] for m in metrics], dtype=np.float64)
        rows.append({"method": method, "value": value,
                     "param": config.variant_name if value is not None else None,
                     "n": len(metrics),
                     "mean": dict(zip(NAMES, map(float, table.mean(axis=0)), strict=True)),
                     "std": dict(zip(NAMES, map(float, table.std(axis=0, ddof=DDOF)),
                                     strict=True))})
    return rows


def cell(row: dict[str, Any], name: str) -> str:
    """``mean(std)`` to one decimal, e.g. ``14.4(0.1)``; the mean alone for one run."""
    mean = f"{row['mean'][name]:.1f}"
    return mean if row["n"] == 1 else f"{mean}({row['std'][name]:.1f})"


def _model(row: dict[str, Any], label: str, several: bool) -> str:
    if row["value"] is None:
        return label
    name = "QB-Norm" if row["method"] in ("is", "dis") else row["method"]
    setting = f", {row['param']}={row['value']:g}" if several else ""
    return f"{label} (+{name}{setting})"


def markdown(rows: list[dict[str, Any]], label: str = "model") -> str:
    """The paper's README table: ``| model | R@1 | R@5 | R@10 | MdR | Geom |``.

    Parameters
    ----------
    rows : list of dict
        Rows of :func:`summarise`.
    label : str, default "model"
        The model's name in the first column.

    Returns
    -------
    str
        The Markdown table, ``mean(std)`` cells.

    Examples
    --------
    >>> from qbscale.analysis.tables import markdown
    >>> rows = [{"method": "none", "value": None, "param": None, "n": 3,
    ...          "mean": {"R1": 14.43, "R5": 37.4, "R10": 50.2, "MedR": 10.0,
    ...                   "geometric_mean_R1-R5-R10": 30.0},
    ...          "std": {"R1": 0.1, "R5": 0.1, "R10": 0.1, "MedR": 0.0,
    ...                  "geometric_mean_R1-R5-R10": 0.1}}]
    >>> print(markdown(rows, "CE+"))
    | model | R@1 | R@5 | R@10 | MdR | Geom |
    | --- | --- | --- | --- | --- | --- |
    | CE+ | 14.4(0.1) | 37.4(0.1) | 50.2(0.1) | 10.0(0.0) | 30.0(0.1) |
    """
    several = sum(row["value"] is not None for row in rows) > 1
    lines = ["| model | " + " | ".join(h for _, h in PAPER_COLUMNS) + " |",
             "| " + " | ".join(["---"] * (len(PAPER_COLUMNS) + 1)) + " |"]
    for row in rows:
        cells = " | ".join(cell(row, name) for name, _ in PAPER_COLUMNS)
        lines.append(f"| {_model(row, label, several)} | {cells} |")
    return "\n".join(lines)


def text(rows: list[dict[str, Any]]) -> str:
    """Every metric as ``mean(std)`` in a fixed-width table (the run table's columns)."""
    param = next((row["param"] for row in rows if row["param"]), "beta")
    width = max(8, *(len(row["method"]) + 1 for row in rows))
    lines = [f"{'method':<{width}}{param:>6}" + "".join(f"{h:>12}" for _, h in TEXT_COLUMNS)]
    for row in rows:
        value = "-" if row["value"] is None else f"{row['value']:g}"
        lines.append(f"{row['method']:<{width}}{value:>6}"
                     + "".join(f"{cell(row, name):>12}" for name, _ in TEXT_COLUMNS))
    return "\n".join(lines)


def markdown_directions(summaries: dict[str, list[dict[str, Any]]], label: str = "model") -> str:
    """The paper's columns for each direction side by side:
    ``| model | t2v R@1 | ... | v2t R@1 | ... |``; a setting one direction
    lacks (no v2t querybank) has ``-`` cells there.

    >>> row = {"method": "none", "value": None, "param": None, "n": 1,
    ...        "mean": {"R1": 14.4, "R5": 37.4, "R10": 50.2, "MedR": 10.0,
    ...                 "geometric_mean_R1-R5-R10": 30.0}, "std": {}}
    >>> print(markdown_directions({"t2v": [row], "v2t": [row]}, "CE+"))
    | model | t2v R@1 | R@5 | R@10 | MdR | Geom | v2t R@1 | R@5 | R@10 | MdR | Geom |
    | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
    | CE+ | 14.4 | 37.4 | 50.2 | 10.0 | 30.0 | 14.4 | 37.4 | 50.2 | 10.0 | 30.0 |
    """
    directions = list(summaries)
    heads = []
    for d in directions:
        heads += [f"{d} {PAPER_COLUMNS[0][1]}", *(h for _, h in PAPER_COLUMNS[1:])]
    lines = ["| model | " + " | ".join(heads) + " |",
             "| " + " | ".join(["---"] * (len(heads) + 1)) + " |"]
    keys: list[tuple[str, Any]] = []
    rows_by: dict[str, dict[tuple[str, Any], dict[str, Any]]] = {}
    for d in directions:
        rows_by[d] = {(row["method"], row["value"]): row for row in summaries[d]}
        keys += [key for key in rows_by[d] if key not in keys]
    first = {key: row for d in reversed(directions) for key, row in rows_by[d].items()}
    several = sum(key[1] is not None for key in keys) > 1
    for key in keys:
        cells = []
        for d in directions:
            row = rows_by[d].get(key)
            cells += [cell(row, name) if row is not None else "-" for name, _ in PAPER_COLUMNS]
        lines.append(f"| {_model(first[key], label, several)} | {' | '.join(cells)} |")
    return "\n".join(lines)
