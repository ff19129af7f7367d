#!/usr/bin/env python3
"""Hits files: write and read throughput of each format (qbscale.storage.hits).

Random top-K lists (float32 scores, as a run returns them) for N queries are
written with :class:`HitsWriter` in blocks of ``--block`` queries (as a search
over millions of queries would), then read back with ``read_hits``; the table
shows medians of ``--repeat`` runs, hits per second and the file size.

usage: python benchmarks/bench_hits.py [--queries 100000] [--k 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from qbscale.storage.hits import SUFFIXES, HitsWriter, read_hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--block", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    scores = -np.sort(-rng.standard_normal((args.queries, args.k)).astype(np.float32), axis=1)
    indices = rng.integers(0, 1_000_000, (args.queries, args.k))
    hits = args.queries * args.k
    print(f"{args.queries} queries x top-{args.k} = {hits} hits, blocks of {args.block} queries; "
          f"medians of {args.repeat}")
    print("| format | write s | write Mhits/s | read s | read Mhits/s | MiB |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in SUFFIXES:
            path = Path(tmp) / f"hits{suffix}"
            writes, reads = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                with HitsWriter(path, variant="dis:beta=20") as writer:
                    for r0 in range(0, args.queries, args.block):
                        writer.append(scores[r0:r0 + args.block], indices[r0:r0 + args.block])
                writes.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                assert read_hits(path)["item"].size == hits
                reads.append(time.perf_counter() - t0)
            w, r = statistics.median(writes), statistics.median(reads)
            print(f"| {suffix} | {w:.2f} | {hits / w / 1e6:.2f} | {r:.2f} | {hits / r / 1e6:.2f} "
                  f"| {path.stat().st_size / 2**20:.1f} |")


if __name__ == "__main__":
    main()
