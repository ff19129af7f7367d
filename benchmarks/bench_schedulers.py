#!/usr/bin/env python3
"""One run, three schedulers: threads, a LocalCluster of 1 and of 2 workers.

A random float32 store (default ~1.6 GB: bank 30000 x 10000, test 10000 x
10000, 64 MiB chunks as ``qbscale ingest`` writes them) is generated once;
after one untimed warm-up run (page cache) the same DIS run (beta 20) is timed
``--repeat`` times per scheduler.  Cluster start-up (LocalCluster + Client)
and teardown are timed apart from the run itself.  The table shows medians,
the read rate over the store's bytes, and the ratio to threads.

usage: python benchmarks/bench_schedulers.py [--gallery 10000] [--bank-rows 30000]
       [--repeat 3] [--dir DIR] [--topk 0]

The script re-executes itself once with the malloc settings of the CLI
(they must be set before Python starts); LocalCluster workers get them too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from qbscale.executors.distributed import MALLOC_ENV


def reexec_with_malloc_settings() -> None:
    if sys.platform == "linux" and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})


def generate(path: Path, n_bank: int, n_gallery: int, seed: int = 0) -> str:
    """A sims store written chunk by chunk (never the whole matrix in memory)."""
    import zarr

    from qbscale.storage import layout
    from qbscale.storage.ingest import chunk_shape

    rng = np.random.default_rng(seed)
    group = zarr.open_group(str(path), mode="w")
    for name, n_rows in ((layout.BANK, n_bank), (layout.TEST, n_gallery)):
        chunks = chunk_shape(n_rows, n_gallery, 4)
        arr = zarr.create_array(group.store, name=name, shape=(n_rows, n_gallery),
                                dtype="float32", chunks=chunks, compressors=None,
                                dimension_names=layout.DIMS[name])
        for r0 in range(0, n_rows, chunks[0]):
            block = rng.random((min(chunks[0], n_rows - r0), n_gallery), dtype=np.float32)
            if name == layout.TEST:  # the ground truth (query i -> item i) scores higher
                rows = np.arange(block.shape[0])
                block[rows, r0 + rows] += 0.05
            arr[r0:r0 + block.shape[0]] = block
    group.attrs[layout.ATTR] = {"version": 1, "kind": layout.KIND_SIMS,
                                "queries_per_item": 1, "complete": True}
    return str(path)


def timed(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def bench(store: str, repeat: int, topk: int) -> list[tuple[str, float, float | None]]:
    """(scheduler, median run seconds, median start-up + teardown seconds or None)."""
    from distributed import Client

    from qbscale.api import run
    from qbscale.executors.distributed import start_local_cluster

    rows: list[tuple[str, float, float | None]] = []
    run(store, beta=20, topk=topk)  # warm-up: page cache, imports
    times = [timed(lambda: run(store, beta=20, topk=topk)) for _ in range(repeat)]
    rows.append(("threads", statistics.median(times), None))
    for n in (1, 2):
        runs, overheads = [], []
        for _ in range(repeat):
            start = time.perf_counter()
            cluster = start_local_cluster(n)
            client = Client(cluster)
            overhead = time.perf_counter() - start
            runs.append(timed(lambda c=client: run(store, beta=20, topk=topk, scheduler=c)))
            overhead += timed(lambda c=client, cl=cluster: (c.close(), cl.close()))
            overheads.append(overhead)
        rows.append((f"local:{n}", statistics.median(runs), statistics.median(overheads)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery", type=int, default=10000)
    parser.add_argument("--bank-rows", type=int, default=30000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--topk", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to write the store (default: a temporary directory)")
    args = parser.parse_args()
    reexec_with_malloc_settings()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t0 = time.perf_counter()
        store = generate(Path(tmp) / "bench.zarr", args.bank_rows, args.gallery)
        gbytes = (args.bank_rows + args.gallery) * args.gallery * 4 / 1e9
        print(f"store: bank {args.bank_rows} x {args.gallery} + test {args.gallery} x "
              f"{args.gallery} float32 = {gbytes:.2f} GB, generated in "
              f"{time.perf_counter() - t0:.1f} s; medians of {args.repeat}; "
              f"{os.cpu_count()} cores")
        rows = bench(store, args.repeat, args.topk)
    base = rows[0][1]
    print(f"{'scheduler':<10}{'run s':>8}{'GB/s':>8}{'vs threads':>12}{'start+stop s':>14}"
          f"{'total s':>9}")
    for name, seconds, overhead in rows:
        extra = "-" if overhead is None else f"{overhead:.2f}"
        total = seconds + (overhead or 0.0)
        print(f"{name:<10}{seconds:>8.2f}{gbytes / seconds:>8.2f}{base / seconds:>11.2f}x"
              f"{extra:>14}{total:>9.2f}")


if __name__ == "__main__":
    main()
