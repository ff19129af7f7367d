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
shows medians of wall time (of the whole process, start-up included) and of
CPU time (user + system, steadier than wall time on a busy machine), and the
largest peak RSS, with ratios to ``re-exec``.

Verdict (kept in the CLI): ``mallopt``.  On this machine it is as fast as
the re-exec (the difference is within the noise of a shared 2-core machine)
and never slower than the defaults, and it is simpler: no second interpreter
start, no environment variable to stop the re-exec from looping, argv and
``--help``/``--version`` untouched, and it works the same under a debugger or
``python -m qbscale.cli``.  Its one limit: ``mallopt`` takes an ``int``, so
the trim threshold is capped at 2 GiB - 1 (the environment set 16 GiB);
trimming only returns freed memory to the system, and the run's peak RSS is
the same either way (see the table).

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
    rows = [[name, wall(r), wall(r) / base_wall, cpu(r), cpu(r) / base_cpu, peak(r),
             peak(r) / base_rss, json.dumps([round(m.wall, 1) for m in r])]
            for name, r in runs.items()]
    print(table(["variant", "wall s", "wall / re-exec", "CPU s", "CPU / re-exec",
                 "peak RSS GiB", "RSS / re-exec", "walls"], rows))


if __name__ == "__main__":
    sys.exit(main())
