#!/usr/bin/env python3
"""The two hot block kernels against the straightforward float64 versions.

On one 64 MiB float32 block (335 x 50000, a whole-row chunk of the default
layout), single-threaded, medians of ``--repeat`` interleaved timings:

* counting: :func:`qbscale.kernels.count_block` (float32 candidate prefilter,
  candidates rescored in float64) against scoring every entry in float64 and
  counting (``dense``).  The ground truth of each row sits at a rank drawn
  from a geometric distribution (most near the top, as in real retrieval),
  with a few rows at random ranks; the counts must agree exactly.
* bank: :func:`qbscale.kernels.bank_logsumexp` (cast once per row, in-place
  float64 ufuncs) against one mixed-type ``np.multiply(..., dtype=float64)``
  per slab and a ``sum(axis=0)`` per row (``mixed``); the results must agree
  to 1e-12.

usage: python benchmarks/bench_kernels.py [--repeat 7] [--rows 335] [--cols 50000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table

from qbscale import kernels


def dense_counts(block: np.ndarray, gt_norm: np.ndarray, offsets: np.ndarray,
                 scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Every entry scored in float64, one row at a time, then counted."""
    above = np.empty(len(block), np.int64)
    equal = np.empty(len(block), np.int64)
    s = np.empty(block.shape[1])
    for r, row in enumerate(block):
        np.multiply(row, scale, out=s, dtype=np.float64)
        np.subtract(s, offsets, out=s)
        above[r] = np.count_nonzero(s > gt_norm[r])
        equal[r] = np.count_nonzero(s == gt_norm[r])
    return above, equal


def mixed_logsumexp(block: np.ndarray, beta: float) -> np.ndarray:
    """Column logsumexp with one mixed-type multiply per row and a sum per row."""
    top = block.max(axis=0).astype(np.float64)
    shift = top * beta
    total = np.zeros(block.shape[1])
    y = np.empty((1, block.shape[1]))
    for r in range(len(block)):
        np.multiply(block[r:r + 1], beta, out=y, dtype=np.float64)
        np.subtract(y, shift, out=y)
        np.exp(y, out=y)
        total += y.sum(axis=0)
    return shift + np.log(total)  # type: ignore[no-any-return]


def timings(funcs: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds per function, calls interleaved."""
    runs: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(repeat):
        for name, func in funcs.items():
            start = time.perf_counter()
            func()
            runs[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rows", type=int, default=335)
    parser.add_argument("--cols", type=int, default=50000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    block = rng.standard_normal((args.rows, args.cols), dtype=np.float32) * 0.1
    beta = 20.0
    log_z = kernels.bank_logsumexp(block, np.array([beta]))
    # ground truths mostly near the top of their normalised row
    order = np.argsort(-(block * beta - log_z[0]), axis=1)
    rank = np.minimum(rng.geometric(0.05, args.rows) - 1, args.cols - 1)
    every = max(1, args.rows // 10)  # one row in ten: anywhere
    rank[::every] = rng.integers(0, args.cols, len(rank[::every]))
    gt = order[np.arange(args.rows), rank]
    gt_raw = block[np.arange(args.rows), gt].astype(np.float64)
    scales = np.array([beta])
    gt_norm = kernels.normalised_gt(gt_raw, gt, log_z, scales)

    got = kernels.count_block(block, 0, gt_raw, gt_norm, log_z, scales)
    want = dense_counts(block, gt_norm[0], log_z[0], beta)
    assert (got.norm_above[0] == want[0]).all() and (got.norm_equal[0] == want[1]).all()
    lse = kernels.bank_logsumexp(block, scales)[0]
    assert np.allclose(lse, mixed_logsumexp(block, beta), rtol=1e-12, atol=0)

    t = timings({
        "count": lambda: kernels.count_block(block, 0, gt_raw, gt_norm, log_z, scales),
        "dense": lambda: (np.argmax(block, axis=1),
                          np.count_nonzero(block > gt_raw[:, None].astype(np.float32), axis=1),
                          np.count_nonzero(block == gt_raw[:, None].astype(np.float32), axis=1),
                          dense_counts(block, gt_norm[0], log_z[0], beta)),
        "bank": lambda: kernels.bank_logsumexp(block, scales),
        "mixed": lambda: mixed_logsumexp(block, beta),
    }, args.repeat)
    n = block.size
    print(machine())
    print(f"block {args.rows} x {args.cols} float32, 1 thread, medians of {args.repeat}; "
          f"ground-truth ranks: median {int(np.median(rank))}, {int((rank > 1000).sum())} "
          f"rows past 1000")
    headers = ["kernel", "qbscale ms", "Gelem/s", "float64 baseline ms", "Gelem/s", "speed-up"]
    print(table(headers, [
        ["counting (raw + DIS)", f"{t['count'] * 1e3:.1f}", f"{n / t['count'] / 1e9:.2f}",
         f"{t['dense'] * 1e3:.1f}", f"{n / t['dense'] / 1e9:.2f}",
         f"{t['dense'] / t['count']:.2f}x"],
        ["bank logsumexp", f"{t['bank'] * 1e3:.1f}", f"{n / t['bank'] / 1e9:.2f}",
         f"{t['mixed'] * 1e3:.1f}", f"{n / t['mixed'] / 1e9:.2f}",
         f"{t['mixed'] / t['bank']:.2f}x"],
    ]))


if __name__ == "__main__":
    main()
