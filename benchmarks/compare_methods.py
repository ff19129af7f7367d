"""Every querybank normaliser on the pycode benchmark, at its defaults.

Prints retrieval metrics (R@1/5/10/50, MedR, MeanR, geom) and the skewness of
the k-occurrence N_k before and after each method, one pass per method::

    python benchmarks/compare_methods.py [--data DIR] [--k 10] [--scheduler threads]

Similarities are built from the float16 embeddings in float32, as
``make_pickles.py`` does: test = queries_test @ gallery_test.T, querybank =
querybank @ gallery_test.T.  pycode has no code items besides the test
gallery, so ``dual-is`` uses the test gallery itself as its gallery bank
(gallery_test @ gallery_test.T: the gallery is known before any query
arrives, no test query is used).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from qbscale.analysis.compare import Comparison, compare
from qbscale.storage.stores.store import in_memory

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "pycode"
COLUMNS = ("R1", "R5", "R10", "R50", "MedR", "MeanR", "geometric_mean_R1-R5-R10")
HEADERS = ("R@1", "R@5", "R@10", "R@50", "MedR", "MeanR", "geom")


def similarities(data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(bank, test, gallery bank)`` similarity matrices in float32."""
    gallery = np.load(data / "gallery_test.npy").astype(np.float32)
    queries = np.load(data / "queries_test.npy").astype(np.float32)
    bank = np.load(data / "querybank.npy").astype(np.float32)
    return bank @ gallery.T, queries @ gallery.T, gallery @ gallery.T


def table(result: Comparison, seconds: dict[str, float]) -> str:
    """The comparison as fixed-width text, the baseline first."""
    before = result.before_hubness.skewness
    head = (f"{'method':<10}{'setting':>12}" + "".join(f"{h:>7}" for h in HEADERS)
            + f"{'skew before':>13}{'skew after':>12}{'Robin Hood':>12}{'time s':>8}")
    lines = [head, "-" * len(head)]
    for row in result.rows():
        setting = "-" if row["value"] is None else f"{row['param']}={row['value']:g}"
        after = "-" if row["value"] is None else f"{row['hub_skewness']:.2f}"
        spent = seconds.get(row["method"])
        lines.append(f"{row['method']:<10}{setting:>12}"
                     + "".join(f"{row[c]:>7.1f}" for c in COLUMNS)
                     + f"{before:>13.2f}{after:>12}{row['hub_robin_hood']:>12.3f}"
                     + (f"{spent:>8.1f}" if spent is not None else f"{'-':>8}"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--k", type=int, default=10, help="hubness depth (N_k)")
    parser.add_argument("--scheduler", default="threads")
    args = parser.parse_args(argv)
    bank, test, gallery_bank = similarities(args.data)
    experiment = in_memory(bank, test, names=("querybank", "test"))
    runs, seconds = [], {}
    for name in ("dis", "is", "csls", "nnn", "dual-is"):
        t0 = time.perf_counter()
        part = compare(experiment, [name], k=args.k, scheduler=args.scheduler,
                       gallery_bank=gallery_bank if name == "dual-is" else None)
        seconds[part.runs[0].label] = time.perf_counter() - t0
        runs.append(part)
    result = runs[0]
    result.runs = [r.runs[0] for r in runs]
    print(f"pycode: {result.n_queries} test queries, {result.n_gallery} gallery items, "
          f"{result.n_bank} querybank queries; N_k at k={args.k}; every method at its "
          "defaults (dis/is beta=20 k=1, csls kc=10, nnn alpha=0.75 nnn_k=128, "
          "dual-is beta=20 gallery_beta=20 with the test gallery as gallery bank)")
    print(table(result, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
