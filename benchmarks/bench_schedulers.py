#!/usr/bin/env python3
"""One run, three schedulers: threads, a LocalCluster of 1 and of 2 workers.

A synthetic similarity store (``qbscale synth --kind sims``, default ~1.6 GB:
bank 30000 x 10000, test 10000 x 10000, 64 MiB chunks as ``qbscale ingest``
writes them) is generated once; the same DIS run (beta 20) is then timed,
each in its own process, interleaved ``--repeat`` times after a warm-up
(``harness.Bench``), per scheduler, beside the floor (a 2-thread
``np.fromfile`` of the store's chunk files).  The process wall time includes
starting and stopping the LocalCluster; the time ``run`` reports is the run
itself.  The tables show medians (min-max), ratios to the floor and to threads.

usage: python benchmarks/bench_schedulers.py [--gallery 10000] [--bank-rows 30000]
       [--repeat 3] [--dir DIR] [--topk 0]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

SCHEDULERS = ("threads", "local:1", "local:2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery", type=int, default=10000)
    parser.add_argument("--bank-rows", type=int, default=30000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--topk", type=int, default=0)
    parser.add_argument("--dir", default=None, help="scratch directory (default: temp)")
    args = parser.parse_args()
    folder = hb.workdir(args.dir, "qbscale-bench-schedulers")
    store = hb.synth_store(folder / "bench.zarr", "--kind", "sims", "--bank", str(args.bank_rows),
                           "--test", str(args.gallery), "--gallery", str(args.gallery))
    gbytes = (args.bank_rows + args.gallery) * args.gallery * 4 / 1e9
    print(hb.machine())
    bench = hb.Bench(args.repeat)
    bench.add("read floor", hb.read_floor(hb.chunk_files(store)))
    for name in SCHEDULERS:
        bench.add(name, hb.process([*hb.qbscale_command(), "run", store, "--beta", "20", "--topk",
                                    args.topk, "--scheduler", name, "--quiet"]))
    figures = bench.run()
    print(hb.report(f"store: bank {args.bank_rows} x {args.gallery} + test {args.gallery} x "
                    f"{args.gallery} float32 = {gbytes:.2f} GB", figures, "read floor", bench,
                    gb=gbytes))
    threads = figures["threads"]

    def overhead(name: str) -> float:
        """Process wall less the reported run: start-up, cluster start and stop."""
        return figures[name].median() - figures[name].median("reported")

    print(hb.table(["scheduler", "run (reported) x threads", "cluster start + stop s"],
                   [[name, hb.ratio(figures[name].median("reported"), threads.median("reported")),
                  f"{overhead(name) - overhead('threads'):.2f}"] for name in SCHEDULERS]))
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
