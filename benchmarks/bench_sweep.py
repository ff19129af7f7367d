#!/usr/bin/env python3
"""A bank-size sweep in one pass against one run per cell.

A synthetic similarity store (``qbscale synth --kind sims``, bank + test
~``--size`` GB float32 over a 50000-item gallery, 3:1 bank:test rows).  Timed,
each in its own process under ``/usr/bin/time -v``, interleaved ``--repeat``
times after a warm-up:

* ``sweep``: ``qbscale sweep STORE --bank-sizes SIZES --repeats R`` (every
  size x repeat cell, one read of the bank and of the test matrix);
* ``run N``: ``qbscale run STORE --bank-sample N --seed 0`` for every partial
  size N, and the plain ``qbscale run STORE`` (the size ``all``).

The separate runs are timed for one seed per size and extrapolated: the
``R x len(SIZES)`` runs a sweep replaces cost ``R * sum(run N)`` (a run's cost
does not depend on its seed; ``all`` is the same plain run in every repeat,
counted R times as a naive loop would run it).  Medians of process wall
times; peak RSS is the largest of any run of that kind.

usage: python benchmarks/bench_sweep.py [--size 4] [--sizes 500,1000,2000,5000,10000,all]
       [--repeats 3] [--repeat 3] [--store PATH] [--dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import shape_of
from common import interleaved, machine, median, peak, qbscale_command, table, wall, workdir


def make(folder: Path, size_gb: float, gallery: int) -> Path:
    n_bank, n_test = shape_of(size_gb, gallery)
    out = folder / "sweep.zarr"
    from common import timed

    timed([*qbscale_command(), "synth", str(out), "--kind", "sims", "--bank", str(n_bank),
           "--test", str(n_test), "--gallery", str(gallery), "--quiet", "--overwrite"])
    return out


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
    print(machine())
    folder = None
    if args.store:
        store = Path(args.store)
    else:
        folder = workdir(args.dir, "qbscale-bench-sweep")
        store = make(folder, args.size, args.gallery)
    sizes = [s for s in args.sizes.split(",") if s]
    base = [*qbscale_command()]
    commands = {"sweep": ([*base, "sweep", str(store), "--bank-sizes", args.sizes,
                           "--repeats", str(args.repeats), "--quiet"], None)}
    for size in sizes:
        extra = [] if size == "all" else ["--bank-sample", size, "--seed", "0"]
        commands[f"run {size}"] = ([*base, "run", str(store), *extra, "--quiet"], None)
    runs = interleaved(commands, args.repeat)
    cells = args.repeats * len(sizes)
    sweep_s = wall(runs["sweep"])
    plain_s = wall(runs["run all"]) if "run all" in runs else float("nan")
    separate = args.repeats * sum(wall(runs[f"run {s}"]) for s in sizes)
    separate_rss = max(peak(runs[f"run {s}"]) for s in sizes)
    rows = [
        ["sweep (one pass)", cells, f"{sweep_s:.2f}",
         f"{median([m.seconds() for m in runs['sweep']]):.2f}", f"{peak(runs['sweep']):.2f}",
         "1.00", f"{sweep_s / plain_s:.2f}"],
        [f"{cells} separate runs (extrapolated)", cells, f"{separate:.2f}", "-",
         f"{separate_rss:.2f}", f"{separate / sweep_s:.2f}", f"{separate / plain_s:.2f}"],
        ["one plain run", 1, f"{plain_s:.2f}",
         f"{median([m.seconds() for m in runs.get('run all', [])]):.2f}",
         f"{peak(runs['run all']):.2f}" if "run all" in runs else "-",
         f"{plain_s / sweep_s:.2f}", "1.00"],
    ]
    print(f"\nstore {store.name}: sizes {args.sizes}, {args.repeats} repeats; medians of "
          f"{args.repeat} interleaved rounds: process wall (time the process reported)")
    print(table(["what", "cells", "wall s", "reported s", "peak GiB", "vs sweep", "vs plain run"],
                rows))
    print("\nper separate run (one seed each):")
    print(table(["run", "wall s", "peak GiB"],
                [[name, f"{wall(m):.2f}", f"{peak(m):.2f}"] for name, m in runs.items()
                 if name != "sweep"]))
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
