"""An updatable normaliser's updates against a refit, on random embeddings.

A gallery of ``--gallery`` items (default 1,000,000) x ``--dim`` (384) and a
bank of ``--bank`` (10,000) rows, float32, in memory.  Timed (interleaved
repeats, ``harness.Bench``), each against the refit it replaces:

* ``refit``: ``Normaliser.fit(bank_emb=, gallery_emb=, updatable=True)`` on
  the whole bank and gallery (the floor);
* ``plain fit``: the same fit, not updatable (the engine's bank stage);
* ``add 1%``: ``add_items`` of 1% new items (target <= 3% of a refit);
* ``grow 10%``: ``partial_fit`` of 10% more bank rows (target <= 12%);
* ``fit half`` and ``merge``: a fit on half the bank, and the merge of two
  halves (target < 5% of a fit of either).

Run by hand on a quiet machine (the load average is printed before and
after)::

    python benchmarks/bench_living.py                    # full size
    python benchmarks/bench_living.py --gallery 20000 --bank 2000 --repeats 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

from qbscale.retrieval.normaliser import Normaliser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--bank", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average {hb.load():.2f} at start; {hb.machine()}")
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((args.gallery, args.dim), dtype=np.float32)
    bank = rng.standard_normal((args.bank, args.dim), dtype=np.float32)
    new_items = rng.standard_normal((max(1, args.gallery // 100), args.dim), dtype=np.float32)
    new_rows = rng.standard_normal((max(1, args.bank // 10), args.dim), dtype=np.float32)
    half = args.bank // 2
    base = Normaliser.fit(bank_emb=bank, gallery_emb=gallery, updatable=True)
    halves = [Normaliser.fit(bank_emb=part, gallery_emb=gallery, updatable=True)
              for part in (bank[:half], bank[half:])]

    bench = hb.Bench(repeat=args.repeats, warmup=False)
    bench.add("refit", hb.call(lambda: Normaliser.fit(bank_emb=bank, gallery_emb=gallery,
                                                      updatable=True)))
    bench.add("plain fit", hb.call(lambda: Normaliser.fit(bank_emb=bank, gallery_emb=gallery)))
    bench.add("add 1%", hb.call(lambda: base.add_items(new_items)))
    bench.add("grow 10%", hb.call(lambda: base.partial_fit(bank_emb=new_rows)))
    bench.add("fit half", hb.call(lambda: Normaliser.fit(bank_emb=bank[:half],
                                                         gallery_emb=gallery, updatable=True)))
    bench.add("merge", hb.call(lambda: Normaliser.merge(halves)))
    figures = bench.run()
    print(hb.report(f"updates of a {args.gallery} x {args.dim} gallery, {args.bank} bank rows",
                    figures, "refit", bench))
    refit, fit_half = figures["refit"].median(), figures["fit half"].median()
    rows = [["add 1%", hb.ratio(figures["add 1%"].median(), refit), "<= 0.03x refit"],
            ["grow 10%", hb.ratio(figures["grow 10%"].median(), refit), "<= 0.12x refit"],
            ["merge", hb.ratio(figures["merge"].median(), fit_half), "< 0.05x fit half"]]
    print(hb.table(["update", "ratio", "target"], rows))


if __name__ == "__main__":
    main()
