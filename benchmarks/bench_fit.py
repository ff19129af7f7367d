#!/usr/bin/env python3
"""``qbscale fit`` on a large bank: one read of the bank, beside ``qbscale run``'s bank stage.

A synthetic similarity store (``qbscale synth --kind sims``) holds a bank of
``--size`` GB float32 over a ``--gallery``-item gallery and a small test
matrix (``--test`` rows).  Interleaved ``--repeat`` times after a warm-up,
each in its own process under ``/usr/bin/time -v``:

* ``read bank``: ``da.from_zarr(store, component="bank").sum()``, the floor:
  the bank read once, nothing computed on it but a sum;
* ``fit``: ``qbscale fit STORE -o NORM.zarr --beta 20`` (DIS statistics);
* ``run``: ``qbscale run STORE --beta 20``: the bank stage, then the test rows;
* ``run --normaliser``: ``qbscale run STORE --normaliser NORM.zarr``: the test
  rows alone, so ``run`` minus it is the run's bank stage.

Each process reports the bytes its read calls returned (``rchar`` of
``/proc/self/io``, page-cache hits included), shown as a multiple of the
bank's size: "one read of the bank" is a ratio of 1.0 (plus the test rows for
the runs).  The table shows medians of wall times and the largest peak RSS,
then the machine's floor: the bare read plus numpy's float64 ``exp`` of every
bank entry (its rate measured here, spread over all cores).

usage: python benchmarks/bench_fit.py [--size 16] [--gallery 50000]
       [--test 2000] [--repeat 3] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    MALLOC_ENV,
    PYTHON,
    Measure,
    interleaved,
    machine,
    median,
    peak,
    qbscale_command,
    table,
    wall,
    workdir,
)

READ_BANK = """\
import sys, time
import dask.array as da
start = time.perf_counter()
da.from_zarr(sys.argv[1], component="bank").sum(dtype="float64").compute()
print(f"time: {time.perf_counter() - start:.2f} s")
with open("/proc/self/io") as f:
    print(f.read(), file=sys.stderr)
"""

#: the CLI's own entry point, then the process's read counters on stderr
CLI_IO = """\
import sys
from qbscale.cli import main
sys.argv = ["qbscale", *sys.argv[1:]]
try:
    main()
finally:
    with open("/proc/self/io") as f:
        print(f.read(), file=sys.stderr)
"""


def read_bytes(runs: list[Measure]) -> float:
    """Median bytes returned by the processes' read calls."""
    found = [re.search(r"^rchar: (\d+)$", m.stderr, re.M) for m in runs]
    return median([float(f.group(1)) if f else None for f in found])


def exp_rate(repeat: int = 5) -> float:
    """numpy's float64 ``exp``, elements per second on one core (median)."""
    import time

    import numpy as np

    y = np.random.default_rng(0).standard_normal(2**24)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        np.exp(y, out=y.copy())
        times.append(time.perf_counter() - start)
    return float(y.size / median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=16.0, help="bank GB (float32)")
    parser.add_argument("--gallery", type=int, default=50000)
    parser.add_argument("--test", type=int, default=2000, help="test rows")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="scratch directory (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the store afterwards")
    args = parser.parse_args()
    folder = workdir(args.dir, "qbscale-bench-fit")
    n_bank = max(1, round(args.size * 1e9 / (4 * args.gallery)))
    store, norm = folder / "big.zarr", folder / "norm.zarr"
    cli = [*qbscale_command()]
    timed_synth = interleaved({"synth": ([*cli, "synth", str(store), "--kind", "sims",
                                          "--bank", str(n_bank), "--test", str(args.test),
                                          "--gallery", str(args.gallery), "--quiet",
                                          "--overwrite"], None)}, 1, warmup=False)
    bank_bytes = n_bank * args.gallery * 4
    test_bytes = args.test * args.gallery * 4
    print(machine())
    print(f"store: bank {n_bank} x {args.gallery} ({bank_bytes / 1e9:.1f} GB), test "
          f"{args.test} rows ({test_bytes / 1e9:.2f} GB), written in "
          f"{wall(timed_synth['synth']):.0f} s")
    wrapped = [PYTHON, "-c", CLI_IO]
    runs = interleaved({
        "read bank": ([PYTHON, "-c", READ_BANK, str(store)], MALLOC_ENV),
        "fit": ([*wrapped, "fit", str(store), "-o", str(norm), "--beta", "20", "--quiet",
                 "--overwrite"], None),
        "run": ([*wrapped, "run", str(store), "--beta", "20", "--quiet"], None),
        "run --normaliser": ([*wrapped, "run", str(store), "--normaliser", str(norm),
                              "--quiet"], None),
    }, args.repeat)
    floor = wall(runs["read bank"])
    rows = []
    for name, measured in runs.items():
        seconds = wall(measured)
        rows.append([name, f"{seconds:.1f}", f"{seconds / floor:.2f}",
                     f"{read_bytes(measured) / bank_bytes:.2f}", f"{peak(measured):.2f}"])
    bank_stage = wall(runs["run"]) - wall(runs["run --normaliser"])
    rate = exp_rate()
    cores = os.cpu_count() or 1
    exp_s = n_bank * args.gallery / rate / cores
    print(f"\nmedians of {args.repeat} interleaved runs (process wall, start-up included); "
          "read = bytes read / bank bytes")
    print(table(["command", "seconds", "vs read bank", "read", "peak RSS GiB"], rows))
    print(f"\nrun's bank stage (run - run --normaliser): {bank_stage:.1f} s; "
          f"fit / bank stage: {wall(runs['fit']) / bank_stage:.2f}")
    print(f"the machine's floor: numpy's float64 exp at {rate / 1e9:.2f} G/s per core takes "
          f"{exp_s:.1f} s for the bank's {n_bank * args.gallery / 1e9:.1f} G entries on "
          f"{cores} cores; read bank + exp = {floor + exp_s:.1f} s; fit / that: "
          f"{wall(runs['fit']) / (floor + exp_s):.2f}")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
