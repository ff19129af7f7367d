#!/usr/bin/env python3
"""Hits files: write and read throughput of each format (qbscale.storage.outputs.hits).

Random top-K lists (float32 scores, as a run returns them) for N queries are
written with :class:`HitsWriter` in blocks of ``--block`` queries (as a search
over millions of queries would), then read back with ``read_hits``; the table
shows medians of ``--repeat`` runs, hits per second and the file size.

usage: python benchmarks/bench_hits.py [--queries 100000] [--k 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

from qbscale.storage.outputs.hits import SUFFIXES, HitsWriter, read_hits


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
    print(hb.machine())
    with tempfile.TemporaryDirectory() as tmp:
        def write(path: Path) -> None:
            with HitsWriter(path, variant="dis:beta=20") as writer:
                for r0 in range(0, args.queries, args.block):
                    writer.append(scores[r0:r0 + args.block], indices[r0:r0 + args.block])

        def read(path: Path) -> None:
            assert read_hits(path)["item"].size == hits

        raw = Path(tmp) / "raw.npz"
        bench = hb.Bench(args.repeat)
        bench.add("floor: np.savez", hb.call(lambda: np.savez(raw, scores=scores, item=indices)))
        paths = {suffix: Path(tmp) / f"hits{suffix}" for suffix in SUFFIXES}
        for suffix, path in paths.items():
            bench.add(f"write {suffix}", hb.call(lambda p=path: write(p)))
            bench.add(f"read {suffix}", hb.call(lambda p=path: read(p)))
        figures = bench.run()
        print(hb.report(f"{args.queries} queries x top-{args.k} = {hits} hits, blocks of "
                        f"{args.block} queries", figures, "floor: np.savez", bench))
        rates = "; ".join(f"{s}: write {hits / figures[f'write {s}'].median() / 1e6:.2f}, read "
                          f"{hits / figures[f'read {s}'].median() / 1e6:.2f} Mhits/s, "
                          f"{p.stat().st_size / 2**20:.1f} MiB" for s, p in paths.items())
        print(rates)


if __name__ == "__main__":
    main()
