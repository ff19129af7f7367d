"""A self-contained HTML report of a :class:`~qbscale.analysis.compare.Comparison`.

``write_report(comparison, "report/")`` writes ``report/index.html`` with
every figure embedded as a base64 PNG (the page opens anywhere on its own),
and the same PNGs beside it:

* the metrics and hubness of every method at its defaults, the baseline first;
* the N_k distributions before and after (log scale);
* R@1 and N_k skewness against each method's swept parameter (beta, alpha,
  kc; one pass per method, every value at once: ``compare(..., sweep=True)``);
* the hubs before normalisation (top 1% by N_k) and which methods stopped
  them being hubs, with each item's text when ``items`` are given;
* with ``bank_sizes`` (a *bank-size sweep*, :mod:`qbscale.analysis.banksize`,
  as ``qbscale sweep --json`` writes it; not to be confused with the
  *parameter sweeps* above): R@1 against the number of querybank rows, mean
  and std over repeats, and its table.

matplotlib is imported only inside the functions that draw.
"""

from __future__ import annotations

import base64
import gzip
import html
import io
import json
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qbscale.analysis import hubness as hub
from qbscale.analysis.compare import Comparison
from qbscale.storage.durability.atomic import building
from qbscale.storage.durability.paths import REPORT_MARKER

if TYPE_CHECKING:
    from qbscale.analysis.diagnose import Diagnosis

#: most hub rows shown
MAX_HUB_ROWS = 40
METRICS = (("R1", "R@1", ".1f", max), ("R5", "R@5", ".1f", max), ("R10", "R@10", ".1f", max),
           ("R50", "R@50", ".1f", max), ("MedR", "MedR", ".1f", min),
           ("MeanR", "MeanR", ".1f", min), ("geometric_mean_R1-R5-R10", "geom", ".1f", max),
           ("hub_skewness", "N<sub>k</sub> skew", ".2f", min),
           ("hub_robin_hood", "Robin Hood", ".3f", min),
           ("hub_hub_occupation", "hub occ.", ".3f", min),
           ("hub_antihub_rate", "antihubs", ".3f", min),
           ("hub_max_occurrence", "max N<sub>k</sub>", "d", min))
COLOURS = ("#444444", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
           "#e377c2")


def load_items(path: str | os.PathLike[str]) -> list[str]:
    """One short label per gallery item from a JSON-lines file (``.gz`` too).

    Each line is an object; the label is the first non-blank line of its
    ``code``, else of its ``text``, ``query``, ``caption`` or ``id`` field.

    Raises
    ------
    InputError
        A line is not a JSON object with one of those fields, or the file
        cannot be read (e.g. a damaged ``.gz``); the message names the file
        and the line.
    """
    from qbscale.errors import InputError
    from qbscale.storage.durability.paths import check_regular

    check_regular(path)

    opener: Any = gzip.open if os.fspath(path).endswith(".gz") else open
    labels: list[str] = []
    n = 0  # lines read
    try:
        with opener(path, "rb") as fh:  # decoded line by line: errors name their line
            for n, line in enumerate(fh, 1):
                if line.strip():
                    labels.append(_label(line, f"{os.fspath(path)}, line {n}"))
    except (OSError, EOFError, zlib.error) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise InputError(f"{os.fspath(path)}, line {n + 1}: cannot read it ({reason})") from exc
    return labels


def _label(line: bytes, where: str) -> str:
    """The label of one JSON line (see :func:`load_items`); ``where`` names it in errors."""
    from qbscale.errors import InputError

    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where}: not UTF-8 ({exc})") from exc
    try:
        item = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(item, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(item).__name__}")
    fields = ("code", "text", "query", "caption", "id")
    if not any(f in item for f in fields):
        raise InputError(f"{where}: no {', '.join(fields[:-1])} or {fields[-1]} field "
                         f"(it has {', '.join(sorted(map(str, item))) or 'none'})")
    label = next((str(item[f]) for f in fields if item.get(f)), "")
    first = next((part.strip() for part in label.splitlines() if part.strip()), "")
    return first[:120]


# ---------------------------------------------------------------- figures


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _series(result: Comparison) -> list[tuple[str, np.ndarray]]:
    return [("before", result.before_occurrence),
            *((r.label, r.occurrence[r.default]) for r in result.runs)]


def _log_bins(top: int) -> np.ndarray:
    """Integer bin edges: 0 and 1 alone, then about 8 bins per decade up to ``top``."""
    edges = np.unique(np.round(np.geomspace(1, max(top, 1) + 1, 4 + 8 * len(str(top)))))
    return np.concatenate([[0], edges])


def occurrence_figure(result: Comparison) -> bytes:
    """N_k histograms (log bins, log y) and ranked N_k (log-log), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    series = _series(result)
    edges = _log_bins(max(int(nk.max(initial=0)) for _, nk in series))
    for n, (label, nk) in enumerate(series):
        style = {"color": COLOURS[n % len(COLOURS)], "lw": 2.2 if n == 0 else 1.3,
                 "ls": "-" if n == 0 else "--", "label": label}
        counts, _ = np.histogram(nk, edges)
        density = counts / np.diff(edges)  # items per unit of N_k
        left.stairs(np.where(density > 0, density, np.nan), edges, baseline=None, **style)
        ranked = np.sort(nk)[::-1]
        right.plot(np.arange(1, len(ranked) + 1), np.maximum(ranked, 0.5), **style)
    left.set(xscale="symlog", yscale="log", xlabel=f"N_k (k={result.k}; logarithmic bins)",
             ylabel="gallery items per unit of N_k", title="Distribution of N_k")
    left.legend(fontsize=8, loc="lower left")
    right.set(xscale="log", yscale="log", xlabel="items ranked by N_k",
              ylabel=f"N_k (k={result.k}; 0 drawn at 0.5)", title="Ranked k-occurrence")
    mean = result.k * result.n_queries / result.n_gallery
    right.axhline(mean, color="grey", lw=0.8, ls=":")
    right.annotate(f"mean N_k = {mean:g}", (1.2, mean), fontsize=8, color="grey",
                   va="bottom")
    for ax in (left, right):
        ax.grid(True, which="major", alpha=0.3)
    return _png(fig)


def sweep_figure(result: Comparison) -> bytes:
    """R@1 and N_k skewness against each method's swept parameter, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result.runs)
    assert result.before is not None, "checked by write_report"
    fig, axes = plt.subplots(2, n, figsize=(3.0 * n + 1, 5.6), squeeze=False)
    for col, run in enumerate(result.runs):
        after = run.result.after or {}
        values = sorted(after)
        r1 = [after[v]["R1"] for v in values]
        skew = [run.hubness[v].skewness for v in values]
        for row, (ys, base, name) in enumerate(((r1, result.before["R1"], "R@1"),
                                                (skew, result.before_hubness.skewness,
                                                 "N_k skewness"))):
            ax = axes[row][col]
            ax.plot(values, ys, marker="o", ms=3.5, color=COLOURS[1 + col % 7])
            ax.axhline(base, color="grey", ls="--", lw=1, label="no normalisation")
            ax.plot([run.default], [ys[values.index(run.default)]], marker="*", ms=12,
                    color="black", ls="none", label="default")
            if min(values) > 0:
                ax.set_xscale("log")
            ax.set_title(run.label if row == 0 else "", fontsize=10)
            ax.set_xlabel(run.param if row == 1 else "")
            if col == 0:
                ax.set_ylabel(name)
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------- HTML


def _cell(value: Any, fmt: str) -> str:
    return format(value, fmt) if value is not None else "-"


def metrics_table(result: Comparison) -> str:
    """The comparison's rows as an HTML table, the best of each column in bold."""
    rows = result.rows()
    best = {key: pick(r[key] for r in rows) for key, _, _, pick in METRICS
            if len({r[key] for r in rows}) > 1}  # no best when all are equal
    head = "".join(f"<th>{label}</th>" for _, label, _, _ in METRICS)
    body = []
    for r in rows:
        setting = "" if r["value"] is None else f"{r['param']} = {r['value']:g}"
        cells = "".join(
            f"<td{' class=best' if key in best and r[key] == best[key] else ''}>"
            f"{_cell(r[key], fmt)}</td>" for key, _, fmt, _ in METRICS)
        body.append(f"<tr><th>{html.escape(r['method'])}</th><td>{setting}</td>{cells}</tr>")
    return (f"<table><thead><tr><th>method</th><th>setting</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def hubs_table(result: Comparison, items: list[str] | None = None) -> str:
    """The hubs before normalisation and their N_k after each method."""
    before = result.before_occurrence
    top = hub.hubs(before)[:MAX_HUB_ROWS]
    after = {r.label: r.occurrence[r.default] for r in result.runs}
    kept = {label: set(hub.hubs(nk).tolist()) for label, nk in after.items()}
    head = "".join(f"<th>{html.escape(label)}</th>" for label in after)
    text_head = "<th class=text>text</th>" if items else ""
    body = []
    for rank, j in enumerate(top, 1):
        cells = "".join(f"<td{'' if j in kept[label] else ' class=gone'}>{nk[j]}</td>"
                        for label, nk in after.items())
        text = ""
        if items:
            label = items[j] if j < len(items) else ""
            text = f"<td class=text><code>{html.escape(label)}</code></td>"
        body.append(f"<tr><td>{rank}</td><td>{j}</td><td>{before[j]}</td>{cells}{text}</tr>")
    return (f"<table><thead><tr><th>#</th><th>item</th><th>before</th>{head}{text_head}"
            f"</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _lost_summary(result: Comparison) -> str:
    before = result.before_occurrence
    n = len(hub.hubs(before))
    lost = [f"<b>{html.escape(r.label)}</b> {len(hub.lost_hubs(before, nk))}"
            for r in result.runs for nk in (r.occurrence[r.default],)]
    hubs = "the hub" if n == 1 else f"the {n} hubs"
    return (f"Of {hubs} before (the top 1% of items by N<sub>k</sub>), no longer among them "
            f"after: {', '.join(lost)} (as many other items took their places).")


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
thead th { background: #f0f0f0; } tbody th { text-align: left; }
td.best { font-weight: bold; background: #eaf5ea; }
td.gone { background: #fde2d6; } .text { text-align: left; max-width: 480px; }
.text code { white-space: pre; font-size: 0.95em; }
img { max-width: 100%; } .note { color: #555; font-size: 0.9em; max-width: 900px; }
"""


def bank_size_section(sweep: dict[str, Any], image: str) -> str:
    """The bank-size sweep's section: its figure (an ``<img>``) and summary table."""
    from qbscale.analysis.banksize import METRICS, paper

    head = "".join(f"<th>{label}</th>" for _, label in METRICS)
    body = []
    for row in sweep["summary"]:
        cells = "".join(f"<td>{paper(row['mean'][key], row['std'][key])}</td>"
                        for key, _ in METRICS)
        act = paper(row["mean"]["activation_size"], row["std"]["activation_size"])
        body.append(f"<tr><th>{html.escape(row['label'])}</th><td>{row['size']}</td>"
                    f"<td>{row['value']:g}</td>{cells}<td>{act}</td></tr>")
    seeds = ", ".join(map(str, sweep["seeds"]))
    return f"""<h2>R@1 against querybank size</h2>
{image}
<table><thead><tr><th>bank size</th><th>rows</th><th>{html.escape(sweep["variant"])}</th>
{head}<th>activation set</th></tr></thead><tbody>{''.join(body)}</tbody></table>
<p class=note>{html.escape(sweep["method"])} on bank samples of {sweep["n_bank"]} querybank rows:
repeat r uses the rows <code>default_rng(seed + r).permutation(n_bank)[:N]</code> (seeds
{seeds}); mean(std) over the repeats, the band one std either side; all is the whole bank.
</p>
"""


def render(result: Comparison, images: dict[str, bytes], items: list[str] | None = None,
           title: str = "Querybank normalisation report", diagnostics: str = "",
           bank_sizes: dict[str, Any] | None = None) -> str:
    """The whole page as a string (figures embedded); ``bank_sizes``: a bank-size
    sweep (:meth:`qbscale.analysis.banksize.BankSizeSweep.to_dict`) for its section."""
    def img(name: str, alt: str) -> str:
        data = base64.b64encode(images[name]).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{alt}">'

    sizes = "" if bank_sizes is None else bank_size_section(
        bank_sizes, img("bank_sizes.png", "R@1 against querybank size"))

    setup = (f"{result.n_queries} test queries, {result.n_gallery} gallery items, "
             f"{result.n_bank} querybank queries; N<sub>k</sub> counts each item's "
             f"appearances in the test queries' top-{result.k}.")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{setup}</p>
<h2>Every method at its defaults</h2>
{metrics_table(result)}
<p class=note>R@K in percent; MedR and MeanR are 1-based ranks; geom is the geometric mean of
R@1, R@5 and R@10.  Robin Hood index: share of top-k slots that would have to move for every
item to have the mean N<sub>k</sub>.  Hub occupation: share of top-k slots held by the top 1%
of items.  Antihubs: share of items in no top-k list.  Best of each column in bold.</p>
<h2>N<sub>k</sub> distributions before and after</h2>
{img("occurrence.png", "N_k distributions")}
<h2>R@1 and hubness against each method's parameter</h2>
{img("sweeps.png", "R@1 and skewness against each parameter")}
<p class=note>One pass over the data per method computes every value at once; the star is the
default, the dashed line the raw similarities.</p>
{sizes}<h2>Hubs before normalisation, and after</h2>
<p>{_lost_summary(result)}  Shaded: no longer among the top 1% by N<sub>k</sub>.</p>
{hubs_table(result, items)}
{diagnostics}
</body></html>
"""


def write_report(result: Comparison, out_dir: str | os.PathLike[str],
                 items: str | os.PathLike[str] | list[str] | None = None,
                 title: str = "Querybank normalisation report",
                 diagnosis: Diagnosis | None = None,
                 bank_sizes: dict[str, Any] | None = None, overwrite: bool = True) -> Path:
    """Draw the figures and write ``out_dir/index.html`` (and the PNGs beside it).

    The files are written into a hidden staging folder and moved into place
    once all are written (:func:`qbscale.storage.durability.atomic.building`): a failure
    (full disk, bad ``items``) leaves ``out_dir`` as it was.  ``out_dir`` must be
    new, empty or an earlier report (its ``qbscale-report.json`` says so; only
    with ``overwrite``): a folder holding anything else is refused
    (:func:`check_report_folder`).

    ``items`` labels the gallery items in the hubs table: a JSON-lines file
    (:func:`load_items`) or a list of strings.  ``diagnosis``
    (:func:`qbscale.analysis.diagnose.diagnose`) adds the diagnostics section
    (:mod:`qbscale.analysis.diagnose_report`).  ``bank_sizes``: a bank-size
    sweep (:meth:`qbscale.analysis.banksize.BankSizeSweep.to_dict`, or
    ``qbscale sweep --json`` read back) adds its section.  Returns the page's path.
    """
    if result.before is None:
        from qbscale.errors import ConfigError

        raise ConfigError("the report plots metrics, which need a ground truth, and this "
                          "experiment has none: `qbscale hubness` measures hubness without one")
    labels = load_items(items) if isinstance(items, (str, os.PathLike)) else items
    images = {"occurrence.png": occurrence_figure(result), "sweeps.png": sweep_figure(result)}
    diagnostics = ""
    if diagnosis is not None:
        from qbscale.analysis.diagnose_report import diagnosis_figure, diagnosis_section

        images["diagnostics.png"] = diagnosis_figure(diagnosis)
        diagnostics = diagnosis_section(diagnosis, images["diagnostics.png"])
    if bank_sizes is not None:
        from qbscale.analysis.banksize import bank_size_figure

        images["bank_sizes.png"] = bank_size_figure(bank_sizes)
    page = render(result, images, labels, title, diagnostics, bank_sizes)
    from qbscale import __version__

    out = Path(out_dir)
    check_report_folder(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    with building(out) as staging:  # a failure leaves an earlier report as it was
        for name, data in images.items():
            (staging / name).write_bytes(data)
        (staging / "index.html").write_text(page, encoding="utf-8")
        (staging / REPORT_MARKER).write_text(json.dumps(
            {"kind": "report", "qbscale_version": __version__}, indent=2) + "\n")
    return out / "index.html"


def check_report_folder(out: Path, overwrite: bool = True) -> None:
    """Refuse to write a report into an existing folder that is neither empty nor
    an earlier report (one carrying :data:`~qbscale.storage.durability.paths.REPORT_MARKER`):
    its ``index.html`` and figures would replace a user's files.  Without
    ``overwrite`` an earlier report is refused too.

    Raises
    ------
    StoreExistsError
        ``site exists and is a directory that is not a qbscale store, not a
        report: not replacing it``; ``rep exists: pass --overwrite to replace it``.
    """
    if out.exists() or out.is_symlink():
        from qbscale.errors import StoreExistsError
        from qbscale.storage.durability.paths import check_replaceable, what_is

        check_replaceable(out, "report", os.fspath(out))  # another kind: never
        if not overwrite and what_is(out) != "an empty directory":
            raise StoreExistsError(f"{os.fspath(out)} exists: pass --overwrite to replace it")
