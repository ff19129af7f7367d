#!/usr/bin/env python3
"""``qbscale fit`` on a large bank: one read of the bank, beside ``qbscale run``'s bank stage.

A synthetic similarity store (``qbscale synth --kind sims``) holds a bank of
``--size`` GB float32 over a ``--gallery``-item gallery and a small test
matrix (``--test`` rows).  Interleaved ``--repeat`` times after a warm-up,
each in its own process (``harness.Bench``), beside the floor:

* ``read floor``: a 2-thread ``np.fromfile`` of the bank's chunk files;
* ``read bank``: ``da.from_zarr(store, component="bank").sum()``: the bank
  read once through zarr, nothing computed on it but a sum;
* ``fit``: ``qbscale fit STORE -o NORM.zarr --beta 20`` (DIS statistics);
* ``run``: ``qbscale run STORE --beta 20``: the bank stage, then the test rows;
* ``run --normaliser``: ``qbscale run STORE --normaliser NORM.zarr``: the test
  rows alone, so ``run`` minus it is the run's bank stage.

Each process reports the bytes its read calls returned (``rchar`` of
``/proc/self/io``, page-cache hits included), shown as a multiple of the
bank's size: "one read of the bank" is a ratio of 1.0 (plus the test rows for
the runs).  The tables show medians (min-max) of wall times as ratios to the read
floor and the largest peak RSS, then the exp floor: numpy's float64 ``exp``
of every bank entry (its rate measured here, spread over all cores).

usage: python benchmarks/bench_fit.py [--size 16] [--gallery 50000]
       [--test 2000] [--repeat 3] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

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


def read_bytes(fig: hb.Figure) -> float:
    """Median bytes returned by the processes' read calls."""
    found = [re.search(r"^rchar: (\d+)$", m.stderr, re.M) for m in fig.samples]
    values = sorted(float(f.group(1)) for f in found if f)
    return values[len(values) // 2] if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=16.0, help="bank GB (float32)")
    parser.add_argument("--gallery", type=int, default=50000)
    parser.add_argument("--test", type=int, default=2000, help="test rows")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="scratch directory (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the store afterwards")
    args = parser.parse_args()
    folder = hb.workdir(args.dir, "qbscale-bench-fit")
    n_bank = max(1, round(args.size * 1e9 / (4 * args.gallery)))
    store, norm = folder / "big.zarr", folder / "norm.zarr"
    hb.synth_store(store, "--kind", "sims", "--bank", str(n_bank), "--test", str(args.test),
                   "--gallery", str(args.gallery))
    bank_bytes = n_bank * args.gallery * 4
    print(hb.machine())
    print(f"store: bank {n_bank} x {args.gallery} ({bank_bytes / 1e9:.1f} GB), test "
          f"{args.test} rows ({args.test * args.gallery * 4 / 1e9:.2f} GB)")
    wrapped = [hb.PYTHON, "-c", CLI_IO]
    bench = hb.Bench(args.repeat)
    bench.add("read floor", hb.read_floor(hb.chunk_files(store, ("bank",))))
    bench.add("read bank", hb.process([hb.PYTHON, "-c", READ_BANK, store], hb.MALLOC_ENV))
    bench.add("fit", hb.process([*wrapped, "fit", store, "-o", norm, "--beta", "20", "--quiet",
                                 "--overwrite"]))
    bench.add("run", hb.process([*wrapped, "run", store, "--beta", "20", "--quiet"]))
    bench.add("run --normaliser", hb.process([*wrapped, "run", store, "--normaliser", norm,
                                              "--quiet"]))
    figures = bench.run()
    print(hb.report("fit against the read floor of the bank", figures, "read floor", bench,
                    gb=bank_bytes / 1e9))
    print(hb.table(["command", "bytes read / bank bytes"],
                   [[name, f"{read_bytes(fig) / bank_bytes:.2f}"] for name, fig in figures.items()
                    if name != "read floor"]))
    bank_stage = figures["run"].median() - figures["run --normaliser"].median()
    exp_s = n_bank * args.gallery / hb.exp_rate((256, args.gallery)) / hb.cores()
    floor = figures["read floor"].median()
    print(f"run's bank stage (run - run --normaliser): {bank_stage:.1f} s; "
          f"fit / bank stage: {figures['fit'].median() / bank_stage:.2f}")
    print(f"exp floor: numpy's float64 exp takes {exp_s:.1f} s for the bank's "
          f"{n_bank * args.gallery / 1e9:.1f} G entries on {hb.cores()} cores; read floor + exp = "
          f"{floor + exp_s:.1f} s; fit / that: {figures['fit'].median() / (floor + exp_s):.2f}")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
