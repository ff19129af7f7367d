#!/usr/bin/env python3
"""The two hot block kernels against their previous versions.

On one 64 MiB float32 block (335 x 50000, a whole-row chunk of the default
layout), single-threaded, medians of ``--repeat`` interleaved timings of this
thread's CPU time (``harness.Bench``), each also as a multiple of the floor:
numpy's float64 ``exp`` of as many elements, a row at a time:

* counting, for one beta and for a sweep of 8: :func:`qbscale.engine.kernels.count_block`
  as it is (the fused numba pass, every entry scored in float64); its numpy
  passes (``QBSCALE_KERNEL=numpy``: float32 candidate prefilter, candidates
  rescored in float64); the same with the prefilter switched off (every
  entry scored in float64, in place, counted row by row); and the previous
  kernel (``previous_count`` below: a mixed-type multiply and
  ``count_nonzero(..., axis=1)`` per slab).
  Each row's ground truth sits at a rank drawn from a geometric distribution
  (most near the top, as in real retrieval), one row in ten anywhere.  All
  four must give the same counts.
* the bank's column logsumexp: :func:`qbscale.engine.kernels.bank_logsumexp` against
  the previous version (``previous_logsumexp``); results equal to 1e-12.
* the bank kernel against numpy's float64 ``exp`` measured in the same
  process, interleaved (``--only bank`` runs just this): the fused numba
  kernel and the numpy passes, for 1 and 4 betas and for 4 activation sets,
  as a rate in multiples of ``np.exp``'s (per beta); then two threads, each
  on its own block (as dask's threaded scheduler calls it), against two
  threads of ``np.exp``; then a cold process's first call (numba compiling,
  an empty cache) and a warm one (read from the cache).  Every table
  prints the load average: on a shared machine the figures are indicative.

usage: python benchmarks/bench_kernels.py [--repeat 7] [--rows 335] [--cols 50000]
       [--only bank|count]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

from qbscale.engine import kernels


def previous_count(block: np.ndarray, gt_raw: np.ndarray, gt_norm: np.ndarray,
                   offsets: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, ...]:
    """The counting kernel before the prefilter (its code, all rows normalised)."""
    n_rows, n_cols = block.shape
    np.argmax(block, axis=1)
    gt_same = gt_raw.astype(block.dtype)[:, None]
    above = np.empty(n_rows, np.int64)
    equal = np.empty(n_rows, np.int64)
    for rows in kernels._slabs(n_rows, n_cols):
        above[rows] = np.count_nonzero(block[rows] > gt_same[rows], axis=1)
        equal[rows] = np.count_nonzero(block[rows] == gt_same[rows], axis=1)
    norm_above = np.zeros((len(scales), n_rows), np.int64)
    norm_equal = np.zeros((len(scales), n_rows), np.int64)
    buf = np.empty(2**16)
    for slab in kernels._slabs(n_rows, n_cols):
        x = block[slab]
        s = buf[: x.size].reshape(x.shape)
        for b, scale in enumerate(scales):
            np.multiply(x, scale, out=s, dtype=np.float64)
            np.subtract(s, offsets[b], out=s)
            g = gt_norm[b, slab][:, None]
            norm_above[b, slab] = np.count_nonzero(s > g, axis=1)
            norm_equal[b, slab] = np.count_nonzero(s == g, axis=1)
    return above, equal, norm_above, norm_equal


def previous_logsumexp(block: np.ndarray, beta: float) -> np.ndarray:
    """The bank's logsumexp before (its code): mixed-type multiply, sum per slab."""
    n_rows, n_cols = block.shape
    shift = block.max(axis=0).astype(np.float64) * beta
    total = np.zeros(n_cols)
    buf = np.empty(2**16)
    for rows in kernels._slabs(n_rows, n_cols):
        y = buf[: (rows.stop - rows.start) * n_cols].reshape(-1, n_cols)
        np.multiply(block[rows], beta, out=y, dtype=np.float64)
        np.subtract(y, shift, out=y)
        np.exp(y, out=y)
        total += y.sum(axis=0)
    return shift + np.log(total)  # type: ignore[no-any-return]


def timings(funcs: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds of this thread's CPU per function, calls interleaved (``harness``)."""
    bench = hb.Bench(repeat, warmup=False)
    for name, func in funcs.items():
        bench.add(name, hb.call(func))
    return {name: fig.median("cpu") for name, fig in bench.run().items()}


def no_prefilter(func: Callable[[], object]) -> Callable[[], object]:
    def patched() -> object:
        with mock.patch.object(kernels, "candidate_floor", lambda *a: None):
            return func()
    return patched


def _with_kernel(name: str, func: Callable[[], object]) -> Callable[[], object]:
    def call() -> object:
        os.environ["QBSCALE_KERNEL"] = name
        try:
            return func()
        finally:
            del os.environ["QBSCALE_KERNEL"]
    return call


def _np_exp(block: np.ndarray) -> Callable[[], object]:
    """numpy's float64 exp over the block's element count, a row at a time into
    a cache-sized buffer (``harness.exp_seconds``'s floor)."""
    rows = -np.abs(block[: min(len(block), 64)].astype(np.float64)) * 20
    out = np.empty(block.shape[1])

    def call() -> None:
        for i in range(len(block)):
            np.exp(rows[i % len(rows)], out=out)
    return call


def _interleaved(funcs: dict[str, Callable[[], object]], repeat: int, clock: Callable[[], float]
                 ) -> dict[str, float]:
    """Median seconds per function over ``repeat`` round-robin rounds (one warm-up)."""
    times: dict[str, list[float]] = {name: [] for name in funcs}
    for n in range(repeat + 1):
        for name, func in funcs.items():
            start = clock()
            func()
            if n:
                times[name].append(clock() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def _cold_and_warm(rows: int, cols: int) -> list[list[str]]:
    """Seconds of a new process's import and first bank kernel call: numba's
    cache empty (it compiles), then filled."""
    code = ("import time; t = time.perf_counter(); import numpy as np; "
            "from qbscale.engine import kernels; "
            f"b = np.ones(({rows}, {cols}), np.float32); "
            "kernels.bank_logsumexp(b, np.array([20.0])); "
            "kernels.bank_logsumexp_sets(b, np.array([20.0]), np.ones((2, len(b)), bool)); "
            "print(time.perf_counter() - t)")
    out = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for what in ("cold (empty cache: compiles)", "warm (from the cache)", "warm, again"):
            took = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                  capture_output=True, text=True).stdout.strip()
            out.append([what, f"{float(took):.2f}"])
    return out


def bank_tables(block: np.ndarray, repeat: int) -> None:
    """The bank kernel as a multiple of numpy's float64 exp rate, same process."""
    n = block.size
    one, four = np.array([20.0]), np.array([10.0, 20.0, 30.0, 40.0])
    sets = np.random.default_rng(1).random((4, len(block))) < 0.5
    funcs: dict[str, Callable[[], object]] = {"np.exp": _np_exp(block)}
    for kernel in ("fused", "numpy"):
        funcs[f"{kernel}, 1 beta"] = _with_kernel(
            kernel, lambda: kernels.bank_logsumexp(block, one))
        funcs[f"{kernel}, 4 betas"] = _with_kernel(
            kernel, lambda: kernels.bank_logsumexp(block, four))
        funcs[f"{kernel}, 1 beta, 4 sets"] = _with_kernel(
            kernel, lambda: kernels.bank_logsumexp_sets(block, one, sets))
    for kernel in ("fused", "numpy"):  # compile, and agree
        _with_kernel(kernel, lambda: kernels.bank_logsumexp(block, four))()
    t = _interleaved(funcs, repeat, time.thread_time)
    rows = []
    for name, sec in t.items():
        per_beta = 4 if "4 betas" in name else 1
        rows.append([name, f"{sec * 1e3:.1f}", f"{n * per_beta / sec / 1e9:.2f}",
                     f"{t['np.exp'] / (sec / per_beta):.2f}x"])
    print(f"\nbank kernel, one {block.shape[0]} x {block.shape[1]} {block.dtype} block, "
          f"1 thread, CPU time, medians of {repeat} interleaved; load average "
          f"{os.getloadavg()[0]:.2f} (shared machine: indicative)")
    print(hb.table(["kernel", "ms", "Gelem/s (per beta)", "x np.exp rate"], rows))
    blocks = [block, block.copy()]
    pool = ThreadPoolExecutor(2)

    def two(func: Callable[[np.ndarray], object]) -> Callable[[], object]:
        return lambda: list(pool.map(func, blocks))

    exps = [_np_exp(b) for b in blocks]
    funcs2 = {"np.exp": lambda: list(pool.map(lambda f: f(), exps)),
              "fused, 1 beta": _with_kernel("fused", two(lambda b: kernels.bank_logsumexp(b, one))),
              "numpy, 1 beta": _with_kernel("numpy", two(lambda b: kernels.bank_logsumexp(b, one)))}
    t = _interleaved(funcs2, repeat, time.perf_counter)
    rows = [[name, f"{sec * 1e3:.1f}", f"{2 * n / sec / 1e9:.2f}", f"{t['np.exp'] / sec:.2f}x"]
            for name, sec in t.items()]
    pool.shutdown()
    print(f"\ntwo threads, one block each, wall time, medians of {repeat}; load average "
          f"{os.getloadavg()[0]:.2f} (indicative)")
    print(hb.table(["kernel", "ms", "Gelem/s", "x 2-thread np.exp rate"], rows))
    print(f"\nnew process: import + first call of the fused kernel; load average "
          f"{os.getloadavg()[0]:.2f} (indicative)")
    print(hb.table(["process", "seconds"], _cold_and_warm(*block.shape)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rows", type=int, default=335)
    parser.add_argument("--cols", type=int, default=50000)
    parser.add_argument("--only", choices=["bank", "count"])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    block = rng.standard_normal((args.rows, args.cols), dtype=np.float32) * 0.1
    if args.only == "bank":
        print(hb.machine())
        bank_tables(block, args.repeat)
        return
    rows = np.arange(args.rows)
    # ground truths mostly near the top of their normalised row (beta 20)
    log_z20 = kernels.bank_logsumexp(block, np.array([20.0]))
    order = np.argsort(-(block * 20.0 - log_z20[0]), axis=1)
    rank = np.minimum(rng.geometric(0.05, args.rows) - 1, args.cols - 1)
    every = max(1, args.rows // 10)  # one row in ten: anywhere
    rank[::every] = rng.integers(0, args.cols, len(rank[::every]))
    gt = order[rows, rank]
    gt_raw = block[rows, gt].astype(np.float64)

    print(hb.machine())
    print(f"block {args.rows} x {args.cols} float32, 1 thread, medians of {args.repeat}; "
          f"ground-truth ranks (beta 20): median {int(np.median(rank))}, "
          f"{int((rank > 1000).sum())} rows past 1000")
    out = []
    n = block.size
    for betas in ([20.0], [5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0]):
        scales = np.array(betas)
        log_z = kernels.bank_logsumexp(block, scales)
        gt_norm = kernels.normalised_gt(gt_raw, gt, log_z, scales)

        def now(scales: np.ndarray = scales, log_z: np.ndarray = log_z,
                gt_norm: np.ndarray = gt_norm) -> kernels.RowCounts:
            return kernels.count_block(block, 0, gt_raw, gt_norm, log_z, scales)

        want = previous_count(block, gt_raw, gt_norm, log_z, scales)
        numpy_passes = _with_kernel("numpy", now)
        dense = _with_kernel("numpy", no_prefilter(now))
        for got in (now(), numpy_passes(), dense()):
            assert isinstance(got, kernels.RowCounts)
            for a, b in zip((got.above, got.equal, got.norm_above, got.norm_equal), want,
                            strict=True):
                assert (a == b).all()
        t = timings({"now": now, "numpy": numpy_passes, "dense": dense,
                     "before": lambda s=scales, z=log_z, g=gt_norm:
                     previous_count(block, gt_raw, g, z, s)}, args.repeat)
        out.append([f"counting, {len(betas)} beta{'s' if len(betas) > 1 else ''}",
                    f"{t['now'] * 1e3:.1f} ({n / t['now'] / 1e9:.2f})",
                    f"{t['numpy'] * 1e3:.1f} ({n / t['numpy'] / 1e9:.2f})",
                    f"{t['dense'] * 1e3:.1f} ({n / t['dense'] / 1e9:.2f})",
                    f"{t['before'] * 1e3:.1f} ({n / t['before'] / 1e9:.2f})",
                    f"{t['numpy'] / t['now']:.2f}x", f"{t['before'] / t['now']:.2f}x"])
    beta = np.array([20.0])
    assert np.allclose(kernels.bank_logsumexp(block, beta)[0], previous_logsumexp(block, 20.0),
                       rtol=1e-12, atol=0)
    t = timings({"now": lambda: kernels.bank_logsumexp(block, beta),
                 "before": lambda: previous_logsumexp(block, 20.0)}, args.repeat)
    out.append(["bank logsumexp, 1 beta", f"{t['now'] * 1e3:.1f} ({n / t['now'] / 1e9:.2f})",
                "-", "-", f"{t['before'] * 1e3:.1f} ({n / t['before'] / 1e9:.2f})", "-",
                f"{t['before'] / t['now']:.2f}x"])
    floor = hb.exp_seconds(block.shape)
    for row in out:
        now_ms = float(row[1].split()[0])
        row.append(f"{now_ms / 1e3 / floor:.2f}x")
    print(f"ms per block (Gelem/s); floor: float64 exp of the block {floor * 1e3:.1f} ms; "
          + hb.footer(None))
    print(hb.table(["kernel", "now", "numpy passes", "numpy, prefilter off", "previous",
                    "gain over numpy passes", "gain over previous", "now x exp floor"], out))
    if args.only is None:
        bank_tables(block, args.repeat)


if __name__ == "__main__":
    main()
