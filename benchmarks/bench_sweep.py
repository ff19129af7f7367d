#!/usr/bin/env python3
"""A bank-size sweep in one pass against one run per cell.

A synthetic similarity store (``qbscale synth --kind sims``, bank + test
~``--size`` GB float32 over a 50000-item gallery, 3:1 bank:test rows).  Timed,
each in its own process, interleaved ``--repeat`` times after a warm-up
(``harness.Bench``), beside the floor (a 2-thread ``np.fromfile`` of the
store's chunk files):

* ``sweep``: ``qbscale sweep STORE --bank-sizes SIZES --repeats R`` (every
  size x repeat cell, one read of the bank and of the test matrix);
* ``run N``: ``qbscale run STORE --bank-sample N --seed 0`` for every partial
  size N, and the plain ``qbscale run STORE`` (the size ``all``).

The separate runs are timed for one seed per size and extrapolated: the
``R x len(SIZES)`` runs a sweep replaces cost ``R * sum(run N)`` (a run's cost
does not depend on its seed; ``all`` is the same plain run in every repeat,
counted R times as a naive loop would run it).  Medians (min-max) of process
wall times; peak RSS is the largest of any run of that kind.

usage: python benchmarks/bench_sweep.py [--size 4] [--sizes 500,1000,2000,5000,10000,all]
       [--repeats 3] [--repeat 3] [--store PATH] [--dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=4.0, help="bank + test GB")
    parser.add_argument("--sizes", default="500,1000,2000,5000,10000,all")
    parser.add_argument("--repeats", type=int, default=3, help="sweep repeats (seeds)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds")
    parser.add_argument("--gallery", type=int, default=50000)
    parser.add_argument("--store", default=None, help="an existing store (else one is made)")
    parser.add_argument("--dir", default=None, help="scratch directory (default: temp)")
    args = parser.parse_args()
    print(hb.machine())
    folder = None
    if args.store:
        store = Path(args.store)
    else:
        folder = hb.workdir(args.dir, "qbscale-bench-sweep")
        store = hb.sims_store(folder, "sweep", args.size, args.gallery)
    sizes = [s for s in args.sizes.split(",") if s]
    base = [*hb.qbscale_command()]
    bench = hb.Bench(args.repeat)
    bench.add("read floor", hb.read_floor(hb.chunk_files(store)))
    bench.add("sweep", hb.process([*base, "sweep", store, "--bank-sizes", args.sizes,
                                   "--repeats", args.repeats, "--quiet"]))
    for size in sizes:
        extra = [] if size == "all" else ["--bank-sample", size, "--seed", "0"]
        bench.add(f"run {size}", hb.process([*base, "run", store, *extra, "--quiet"]))
    runs = bench.run()
    print(hb.report(f"store {store.name}: sizes {args.sizes}, {args.repeats} repeats", runs,
                    "read floor", bench))
    cells = args.repeats * len(sizes)
    sweep_s = runs["sweep"].median()
    plain_s = runs["run all"].median() if "run all" in runs else float("nan")
    separate = args.repeats * sum(runs[f"run {s}"].median() for s in sizes)
    separate_rss = max(runs[f"run {s}"].rss for s in sizes)
    floor = runs["read floor"].median()
    rows = [
        ["sweep (one pass)", cells, f"{sweep_s:.2f}", f"{runs['sweep'].rss:.2f}", "1.00",
         f"{sweep_s / plain_s:.2f}", f"{sweep_s / floor:.2f}"],
        [f"{cells} separate runs (extrapolated)", cells, f"{separate:.2f}",
         f"{separate_rss:.2f}", f"{separate / sweep_s:.2f}", f"{separate / plain_s:.2f}",
         f"{separate / floor:.2f}"],
        ["one plain run", 1, f"{plain_s:.2f}",
         f"{runs['run all'].rss:.2f}" if "run all" in runs else "-",
         f"{plain_s / sweep_s:.2f}", "1.00", f"{plain_s / floor:.2f}"],
    ]
    print(hb.table(["what", "cells", "wall s", "peak GiB", "vs sweep", "vs plain run",
                    "x read floor"], rows))
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
