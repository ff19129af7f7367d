"""The diagnostics section of ``qbscale report`` (:mod:`qbscale.analysis.diagnose`).

matplotlib is imported only inside :func:`diagnosis_figure`.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from qbscale.analysis.diagnose import QUANTILES, Diagnosis
from qbscale.analysis.reading import reading


def diagnosis_figure(d: Diagnosis) -> bytes:
    """logZ against N_k (the two views of the hubs) and the top-1 similarity ECDFs, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.scatter(d.log_z, d.occurrence, s=4, alpha=0.4, c=np.where(d.activation, "#1f77b4",
                                                                      "#bbbbbb"))
    left.set(yscale="symlog", xlabel=f"logZ (bank's view, beta={d.beta:g}; blue: activated)",
             ylabel=f"N_k (test queries' view, k={d.depth})",
             title=f"Hub agreement: Spearman rho = {d['spearman']:.2f}")
    for label, values, colour in (("bank", d.bank_top1, "#ff7f0e"),
                                  ("test", d.test_top1, "#1f77b4")):
        x = np.sort(values)
        right.step(x, np.arange(1, x.size + 1) / x.size, where="post", color=colour, label=label)
    right.set(xlabel="top-1 similarity of each query", ylabel="share of queries",
              title=f"Domain gap: KS D = {d['ks']:.3f}")
    right.legend(fontsize=8, loc="lower right")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def diagnosis_section(d: Diagnosis, png: bytes) -> str:
    """HTML: the diagnostics' figures, the plot and the plain-language reading."""
    f = d.figures
    rows = [("Spearman rho of logZ and N<sub>k</sub>", f["spearman"]),
            ("top-1% hubs in both views", f["hub_overlap"]),
            ("test hubs in the activation set", f["hubs_activated"]),
            ("gallery in the activation set", f["activation_share"]),
            ("Kolmogorov-Smirnov D of the top-1 similarities", f["ks"]),
            ("test rows DIS normalises", f["activated_share"])]
    body = "".join(f"<tr><th>{name}</th><td>{value:.3f}</td></tr>" for name, value in rows)
    head = "".join(f"<th>q{round(100 * q):02d}</th>" for q in QUANTILES)
    quant = "".join(
        f"<tr><th>{who}</th>{''.join(f'<td>{v:.3f}</td>' for v in f[key].values())}</tr>"
        for who, key in (("bank", "bank_top1"), ("test", "test_top1")))
    data = base64.b64encode(png).decode("ascii")
    return f"""<h2>Will QB-Norm help? Diagnostics of the querybank</h2>
<p>{html.escape(d.config.method)} beta = {d.beta:g}, k = {d.config.k}; bank {d.n_bank} of
{d.n_bank_total} rows; N<sub>k</sub> at depth {d.depth}.</p>
<table><tbody>{body}</tbody></table>
<table><thead><tr><th>top-1 similarity</th>{head}</tr></thead><tbody>{quant}</tbody></table>
<img src="data:image/png;base64,{data}" alt="hub agreement and domain gap">
<p>{html.escape(reading(d.figures, d.result_figures()))}</p>
"""
