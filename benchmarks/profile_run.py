#!/usr/bin/env python3
"""Where a run's and a fit's time goes, as proportions of CPU time, and per-stage kernel rates.

1. ``qbscale.run(STORE, beta=...)`` and ``qbscale.Normaliser.fit(STORE)`` on
   the synchronous scheduler under cProfile, timed by this thread's CPU clock
   (a neighbour's load changes the total much less than wall time, and the
   proportions hardly at all).  Each stage's share: reading chunk files
   (copy or map), crc32c, the bank's column logsumexp, the activation top-k,
   the test stage's argmax and counting, and the rest (dask, Python, set-up).
2. One bank chunk, one thread: Gelem/s of each pass the numpy bank kernel
   makes (column max, float32 -> float64 cast, multiply, subtract, exp, row
   add), of the bank kernel in use (``kernels.kernel_name()``: the fused one
   unless ``QBSCALE_KERNEL=numpy``) and of the numpy passes whole, fastest
   of ``--repeat``.

It imports whichever qbscale is first on the path: ``PYTHONPATH=DIR`` with an
older tree (``git archive REV qbscale | tar -x -C DIR``) profiles that one,
for a before/after comparison.

usage: python benchmarks/profile_run.py STORE [--betas 20] [--repeat 5] [--skip-fit]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

#: stage -> (function name, only the calls made from this caller or None): cumulative CPU time
STAGES = {
    "crc32c": ("crc32c", None),
    "read chunk files": ("read_chunk_file", None),  # minus crc32c
    "bank logsumexp": ("bank_logsumexp_sets", None),
    "activation top-k": ("row_topk", "_piece"),
    "test argmax": ("argmax", "_test_block"),
    "test counting": ("count_block", None),
}


def cumulative(stats: pstats.Stats, name: str, caller: str | None) -> float:
    total = 0.0
    raw = stats.stats  # type: ignore[attr-defined]
    for (_, _, func), (_, _, _, ct, callers) in raw.items():
        if func != name:
            continue
        if caller is None:
            total += ct
        else:
            total += sum(c[3] for (_, _, f), c in callers.items() if f == caller)
    return total


def shares(fn: Callable[[], object]) -> tuple[float, dict[str, float]]:
    prof = cProfile.Profile(time.thread_time)
    start = time.thread_time()
    prof.runcall(fn)
    total = time.thread_time() - start
    stats = pstats.Stats(prof)
    out = {stage: cumulative(stats, *spec) for stage, spec in STAGES.items()}
    out["read chunk files"] -= out["crc32c"]
    out["dask, Python, other"] = total - sum(out.values())
    return total, out


def profile_table(store: str, betas: list[float], skip_fit: bool) -> str:
    import qbscale

    runs = {"run": lambda: qbscale.run(store, beta=betas, scheduler="synchronous",
                                       progress=False)}
    if not skip_fit:
        runs["fit"] = lambda: qbscale.Normaliser.fit(store, beta=betas,
                                                     scheduler="synchronous")
    results = {name: shares(fn) for name, fn in runs.items()}
    stages = list(next(iter(results.values()))[1])
    rows = [[stage, *(f"{parts[stage]:.2f} s, {100 * parts[stage] / total:.0f}%"
                      for total, parts in results.values())] for stage in stages]
    rows.append(["total CPU", *(f"{total:.2f} s" for total, _ in results.values())])
    return hb.table(["stage", *results], rows)


def stage_rates(store: str, repeat: int) -> str:
    from qbscale.engine import kernels
    from qbscale.storage.stores.sources import ZarrMatrix

    bank = ZarrMatrix.open(store, "bank")
    block = np.ascontiguousarray(bank.read(0, 0))
    n = block.size
    n_cols = block.shape[1]
    y = np.empty(n_cols)
    total = np.zeros(n_cols)
    peak = block.max(axis=0).astype(np.float64) * 20
    scaled = np.empty(n_cols)

    def rows(op: Callable[[int], object]) -> Callable[[], object]:
        return lambda: [op(r) for r in range(len(block))]

    np.subtract(np.multiply(block[0].astype(np.float64), 20.0), peak, out=scaled)
    passes: dict[str, Callable[[], object]] = {
        "read + crc32c (one chunk file)": lambda: bank.read(0, 0),
        "column max": lambda: block.max(axis=0),
        "cast float32 -> float64": rows(lambda r: np.copyto(y, block[r])),
        "multiply": rows(lambda r: np.multiply(y, 20.0, out=y)),
        "subtract": rows(lambda r: np.subtract(y, peak, out=y)),
        "exp float64": rows(lambda r: np.exp(scaled, out=y)),
        "add rows": rows(lambda r: np.add(total, y, out=total)),
        "bank kernel, 1 beta": lambda: kernels.bank_logsumexp_sets(block, np.array([20.0]),
                                                                   None),
        "bank kernel, 4 betas": lambda: kernels.bank_logsumexp_sets(
            block, np.array([10.0, 20.0, 30.0, 40.0]), None),
        "row argmax": lambda: np.argmax(block, axis=1),
    }
    numpy_passes = getattr(kernels, "numpy_logsumexp_sets", None)  # absent in older trees
    if numpy_passes is not None:
        passes["numpy passes, 1 beta"] = lambda: numpy_passes(block, np.array([20.0]), None)
    out = []
    with np.errstate(all="ignore"):
        for name, fn in passes.items():
            best = float("inf")
            for _ in range(repeat):
                start = time.thread_time()
                fn()
                best = min(best, time.thread_time() - start)
            elements = n * (4 if "4 betas" in name else 1)
            out.append([name, f"{best * 1e3:.2f}", f"{elements / best / 1e9:.2f}"])
    return hb.table([f"stage on one {block.shape[0]} x {n_cols} block", "ms (CPU, best)",
                     "Gelem/s"], out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--betas", default="20")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-fit", action="store_true")
    args = parser.parse_args()
    import qbscale
    from qbscale.engine import kernels
    from qbscale.executors.local import one_blas_thread

    print(hb.machine())
    print(f"qbscale from {Path(qbscale.__file__).parent}; store {args.store}, "
          f"{sum(f.stat().st_size for f in hb.chunk_files(args.store)) / 1e9:.2f} GB; "
          f"bank kernel {getattr(kernels, 'kernel_name', lambda: 'numpy')()}")
    hb.read_files(hb.chunk_files(args.store))  # page cache warm, as for the floor
    with one_blas_thread():
        before = hb.load()
        text = profile_table(args.store, [float(b) for b in args.betas.split(",")],
                             args.skip_fit)
        print(f"\nCPU time by stage, synchronous scheduler (load {before:.2f} before, "
              f"{hb.load():.2f} after{'  LOADED' if hb.loaded(max(before, hb.load())) else ''})")
        print(text)
        before = hb.load()
        text = stage_rates(args.store, args.repeat)
        after = hb.load()
        print(f"\nbank kernel passes, one thread (load {before:.2f} before, {after:.2f} after"
              f"{'  LOADED: the other core was busy' if max(before, after) > 1 else ''})")
        print(text)


if __name__ == "__main__":
    main()
