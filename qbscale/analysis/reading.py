"""A plain-language reading of :mod:`qbscale.analysis.diagnose`'s figures.

The thresholds are stated here (and in docs/evaluating.md) and printed in the JSON:

* hub agreement, Spearman's rho of ``logZ`` and ``N_k``: strong at
  ``rho >= AGREE_STRONG`` (0.5), weak below ``AGREE_WEAK`` (0.2);
* domain gap, the KS statistic ``D`` of the bank's and the test's top-1
  similarities: small at ``D <= GAP_SMALL`` (0.1), large at
  ``D >= GAP_LARGE`` (0.3);
* the verdict: *likely to help* when the gap is small and agreement not
  weak, or agreement is strong and the gap not large; *unlikely to help
  (may hurt)* when agreement is weak or the gap is large; otherwise *a small
  effect either way*.  These are heuristics, checked on a handful of cases
  (``benchmarks/diagnose_banks.py``), not guarantees;
* the activated share gets a remark below ``ACTIVE_LOW`` (0.1: DIS changes
  few rows) or above ``ACTIVE_HIGH`` (0.9: DIS acts as plain inverted
  softmax on nearly every row).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

AGREE_STRONG = 0.5
AGREE_WEAK = 0.2
GAP_SMALL = 0.1
GAP_LARGE = 0.3
ACTIVE_LOW = 0.1
ACTIVE_HIGH = 0.9
THRESHOLDS = {"agree_strong": AGREE_STRONG, "agree_weak": AGREE_WEAK, "gap_small": GAP_SMALL,
              "gap_large": GAP_LARGE, "active_low": ACTIVE_LOW, "active_high": ACTIVE_HIGH}


def agreement(rho: float) -> str:
    """``"strong"``, ``"moderate"`` or ``"weak"`` (NaN: no ranking to agree with: weak)."""
    if rho >= AGREE_STRONG:
        return "strong"
    return "moderate" if rho >= AGREE_WEAK else "weak"


def gap(d: float) -> str:
    """``"small"``, ``"moderate"`` or ``"large"``."""
    if d <= GAP_SMALL:
        return "small"
    return "large" if d >= GAP_LARGE else "moderate"


def verdict(rho: float, d: float) -> str:
    """The expected effect of QB-Norm from hub agreement and domain gap."""
    agree, spread = agreement(rho), gap(d)
    if (spread == "small" and agree != "weak") or (agree == "strong" and spread != "large"):
        return "likely to help"
    if agree == "weak" or spread == "large":
        return "unlikely to help, and may hurt"
    return "likely to have a small effect either way"


def reading(figures: Mapping[str, Any], outcome: Mapping[str, float] | None = None) -> str:
    """One paragraph reading the figures of a diagnosis (and the measured R@1, if any)."""
    rho, d = figures["spearman"], figures["ks"]
    bank, test = figures["bank_top1"]["q50"], figures["test_top1"]["q50"]
    rho_text = "undefined (one view is constant)" if rho != rho else f"{rho:.2f}"
    parts = [
        f"Hub agreement is {agreement(rho)}: the bank's logZ orders the gallery like the "
        f"test queries' own N_k with Spearman rho = {rho_text} (strong >= {AGREE_STRONG}, "
        f"weak < {AGREE_WEAK}), {100 * figures['hub_overlap']:.0f}% of the top 1% of items "
        f"are hubs in both views, and the activation set holds "
        f"{100 * figures['hubs_activated']:.0f}% of the test's hubs.",
        f"The domain gap is {gap(d)}: the bank queries' top-1 similarities (median "
        f"{bank:.3f}) and the test queries' (median {test:.3f}) differ by KS D = {d:.3f} "
        f"(small <= {GAP_SMALL}, large >= {GAP_LARGE}).",
        f"DIS would normalise {100 * figures['activated_share']:.1f}% of the test rows"
        + _active_remark(figures["activated_share"]) + ".",
        f"QB-Norm with this bank is {verdict(rho, d)}"
        + ("" if verdict(rho, d) == "likely to help" else
           "; a querybank drawn like the test queries (e.g. validation rather than "
           "training queries) may suit it better") + ".",
    ]
    if outcome is not None:
        change = outcome["after"] - outcome["before"]
        parts.append(f"Measured with the ground truth: R@1 {outcome['before']:.1f} -> "
                     f"{outcome['after']:.1f} ({change:+.1f}).")
    return " ".join(parts)


def _active_remark(share: float) -> str:
    if share < ACTIVE_LOW:
        return f" (below {ACTIVE_LOW:.0%}: it changes few rankings)"
    if share > ACTIVE_HIGH:
        return f" (above {ACTIVE_HIGH:.0%}: it acts as plain inverted softmax)"
    return ""
