#!/usr/bin/env python3
"""The CLI's glibc malloc settings: re-exec with MALLOC_ENV, mallopt, or neither.

``qbscale`` (the console script) sets the glibc malloc settings of
:data:`qbscale.executors.MALLOC_ENV` (one arena, a 1 GiB mmap threshold, a
large trim threshold: PERF_NOTES pitfall 1) before it computes.  This script
times three ways of doing that on the same ``qbscale run`` of a store made by
``qbscale synth``:

* ``re-exec``: the process imports the CLI, then ``os.execve``'s a fresh
  interpreter with ``MALLOC_ENV`` in its environment (what the CLI did);
* ``mallopt``: the same settings through ``mallopt(3)`` via ctypes, in the
  running process, before anything big is allocated
  (:func:`qbscale.executors.tune_malloc`);
* ``neither``: glibc's defaults.

Every variant runs in its own process (``harness.Bench``: peak RSS, CPU time
and minor faults from ``wait4``), after one untimed warm-up each, interleaved
``--repeat`` times beside the floor (a 2-thread ``np.fromfile`` of the
store's chunk files); the tables show medians (min-max) of wall time (of the
whole process, start-up included) as ratios to the floor, of CPU time (user +
system, steadier than wall time on a busy machine) and of minor page faults,
and the largest peak RSS, with ratios to ``re-exec``.

Verdict (kept in the CLI): ``mallopt``, for being as fast and simpler.  On
a 0.72 GiB store (the defaults below) on this shared 2-core machine (load
average 13-17), four runs put mallopt's median wall time at 0.95-1.15x the
re-exec's and its CPU time at 0.95-1.09x: no difference beyond the noise.
The count that load does not change agrees: minor page faults 12.3k with
mallopt, 14.8k with the re-exec (its second interpreter start), 16.2k with
neither; peak RSS is the same for both (0.235 GiB; 0.177 GiB with neither,
which used 1.13-1.2x the CPU).  mallopt needs no second interpreter start,
no environment flag to stop the re-exec from looping, leaves argv and
``--help``/``--version`` alone, and works the same under a debugger or
``python -m qbscale.cli``.  Its one limit: ``mallopt`` takes an ``int``, so
the trim threshold is capped at 2 GiB - 1 (the environment set 16 GiB);
trimming only returns freed memory to the system.  Since chunks of
uncompressed local stores are read with ``np.fromfile`` rather than through
zarr's byte buffers, the settings matter less than PERF_NOTES measured
(there: 2-5x faster zarr reads).

usage: python benchmarks/bench_malloc.py [--bank 16000] [--test 8000]
       [--gallery 8000] [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

#: run the CLI group as the console script would, without its own malloc step
NEITHER = "from qbscale.cli import cli; cli(prog_name='qbscale')"
MALLOPT = ("from qbscale.executors import tune_malloc; tune_malloc(); "
           "from qbscale.cli import cli; cli(prog_name='qbscale')")
REEXEC = ("import os, sys; from qbscale.cli import cli; from qbscale.executors import MALLOC_ENV; "
          f"os.execve(sys.executable, [sys.executable, '-c', {NEITHER!r}, *sys.argv[1:]], "
          "{**os.environ, **MALLOC_ENV})")


def faults(fig: hb.Figure) -> float:
    """Median minor page faults, in thousands: what the malloc settings cut, and a
    count that other work on the machine does not change."""
    return fig.median("faults") / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bank", type=int, default=16000)
    parser.add_argument("--test", type=int, default=8000)
    parser.add_argument("--gallery", type=int, default=8000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="scratch directory (default: temp dir)")
    args = parser.parse_args()

    root = hb.workdir(args.dir, "qbscale-bench-malloc")
    store = hb.synth_store(root / "synth.zarr", "--bank", str(args.bank), "--test", str(args.test),
                           "--gallery", str(args.gallery))
    run_args = ["run", str(store), "--beta", "20", "-q"]
    inherited = sorted(set(hb.MALLOC_ENV) & set(os.environ))
    if inherited:
        sys.exit(f"unset {', '.join(inherited)} first: every variant must start from defaults")
    bench = hb.Bench(args.repeat)
    bench.add("read floor", hb.read_floor(hb.chunk_files(store)))
    bench.add("re-exec", hb.process([hb.PYTHON, "-c", REEXEC, *run_args]))
    bench.add("mallopt", hb.process([hb.PYTHON, "-c", MALLOPT, *run_args]))
    bench.add("neither", hb.process([hb.PYTHON, "-c", NEITHER, *run_args]))
    runs = bench.run()
    size = (args.bank + args.test) * args.gallery * 4 / 2**30
    print(hb.machine())
    print(hb.report(f"qbscale run {store.name} --beta 20 -q: bank {args.bank} x {args.gallery}, "
                    f"test {args.test} x {args.gallery} float32 ({size:.2f} GiB)", runs,
                    "read floor", bench))
    base = runs["re-exec"]
    rows = [[name, f"{r.median() / base.median():.2f}", f"{r.median('cpu'):.2f}",
             f"{r.median('cpu') / base.median('cpu'):.2f}", f"{faults(r):.1f}",
             f"{r.rss / base.rss:.2f}"]
            for name, r in runs.items() if name != "read floor"]
    print(hb.table(["variant", "wall / re-exec", "CPU s", "CPU / re-exec", "minor faults k",
                    "RSS / re-exec"], rows))


if __name__ == "__main__":
    sys.exit(main())
