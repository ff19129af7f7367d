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

Every variant runs in its own process under ``/usr/bin/time -v`` (peak RSS),
after one untimed warm-up each, interleaved ``--repeat`` times; the table
shows medians of wall time (of the whole process, start-up included), of CPU
time (user + system, steadier than wall time on a busy machine) and of minor
page faults, and the largest peak RSS, with ratios to ``re-exec``.

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
import json
import os
import re
import sys

from common import (
    PYTHON,
    Measure,
    interleaved,
    machine,
    median,
    peak,
    synth_store,
    table,
    wall,
    workdir,
)

from qbscale.executors import MALLOC_ENV

#: run the CLI group as the console script would, without its own malloc step
NEITHER = "from qbscale.cli import cli; cli(prog_name='qbscale')"
MALLOPT = ("from qbscale.executors import tune_malloc; tune_malloc(); "
           "from qbscale.cli import cli; cli(prog_name='qbscale')")
REEXEC = ("import os, sys; from qbscale.cli import cli; from qbscale.executors import MALLOC_ENV; "
          f"os.execve(sys.executable, [sys.executable, '-c', {NEITHER!r}, *sys.argv[1:]], "
          "{**os.environ, **MALLOC_ENV})")


def cpu(runs: list[Measure]) -> float:
    """Median user + system CPU seconds (``/usr/bin/time -v``): less sensitive than wall
    time to other work on a shared machine."""
    def one(m: Measure) -> float | None:
        found = [re.search(rf"{kind} time \(seconds\): ([0-9.]+)", m.stderr)
                 for kind in ("User", "System")]
        return sum(float(f.group(1)) for f in found if f) if all(found) else None

    return median([one(m) for m in runs])


def faults(runs: list[Measure]) -> float:
    """Median minor page faults (``/usr/bin/time -v``), in thousands: what the malloc
    settings cut, and a count that other work on the machine does not change."""
    found = [re.search(r"Minor \(reclaiming a frame\) page faults: (\d+)", m.stderr)
             for m in runs]
    return median([int(f.group(1)) / 1000 if f else None for f in found])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bank", type=int, default=16000)
    parser.add_argument("--test", type=int, default=8000)
    parser.add_argument("--gallery", type=int, default=8000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="scratch directory (default: temp dir)")
    args = parser.parse_args()

    root = workdir(args.dir, "qbscale-bench-malloc")
    store = synth_store(root / "synth.zarr", "--bank", str(args.bank), "--test", str(args.test),
                        "--gallery", str(args.gallery))
    run_args = ["run", str(store), "--beta", "20", "-q"]
    inherited = sorted(set(MALLOC_ENV) & set(os.environ))
    if inherited:
        sys.exit(f"unset {', '.join(inherited)} first: every variant must start from defaults")
    clean = None
    variants = {
        "re-exec": ([PYTHON, "-c", REEXEC, *run_args], clean),
        "mallopt": ([PYTHON, "-c", MALLOPT, *run_args], clean),
        "neither": ([PYTHON, "-c", NEITHER, *run_args], clean),
    }
    runs = interleaved(variants, args.repeat)
    size = (args.bank + args.test) * args.gallery * 4 / 2**30
    print(f"qbscale run {store.name} --beta 20 -q: bank {args.bank} x {args.gallery}, test "
          f"{args.test} x {args.gallery} float32 ({size:.2f} GiB); medians of {args.repeat}")
    print(machine())
    base_wall, base_rss = wall(runs["re-exec"]), peak(runs["re-exec"])
    base_cpu = cpu(runs["re-exec"])
    rows = [[name, wall(r), wall(r) / base_wall, cpu(r), cpu(r) / base_cpu, faults(r),
             peak(r), peak(r) / base_rss, json.dumps([round(m.wall, 1) for m in r])]
            for name, r in runs.items()]
    print(table(["variant", "wall s", "wall / re-exec", "CPU s", "CPU / re-exec",
                 "minor faults k", "peak RSS GiB", "RSS / re-exec", "walls"], rows))


if __name__ == "__main__":
    sys.exit(main())
