#!/usr/bin/env python3
"""The two hot block kernels against their previous versions.

On one 64 MiB float32 block (335 x 50000, a whole-row chunk of the default
layout), single-threaded, medians of ``--repeat`` interleaved timings of this
thread's CPU time (``harness.Bench``), each also as a multiple of the floor:
numpy's float64 ``exp`` of as many elements, a row at a time:

* counting, for one beta and for a sweep of 8: :func:`qbscale.engine.kernels.count_block`
  as it is (float32 candidate prefilter, candidates rescored in float64);
  the same with the prefilter switched off (every entry scored in float64,
  in place, counted row by row); and the previous kernel (``previous_count``
  below: a mixed-type multiply and ``count_nonzero(..., axis=1)`` per slab).
  Each row's ground truth sits at a rank drawn from a geometric distribution
  (most near the top, as in real retrieval), one row in ten anywhere.  All
  three must give the same counts.
* the bank's column logsumexp: :func:`qbscale.engine.kernels.bank_logsumexp` against
  the previous version (``previous_logsumexp``); results equal to 1e-12.

usage: python benchmarks/bench_kernels.py [--repeat 7] [--rows 335] [--cols 50000]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rows", type=int, default=335)
    parser.add_argument("--cols", type=int, default=50000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    block = rng.standard_normal((args.rows, args.cols), dtype=np.float32) * 0.1
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
        for got in (now(), no_prefilter(now)()):
            assert isinstance(got, kernels.RowCounts)
            for a, b in zip((got.above, got.equal, got.norm_above, got.norm_equal), want,
                            strict=True):
                assert (a == b).all()
        t = timings({"now": now, "dense": no_prefilter(now),
                     "before": lambda s=scales, z=log_z, g=gt_norm:
                     previous_count(block, gt_raw, g, z, s)}, args.repeat)
        out.append([f"counting, {len(betas)} beta{'s' if len(betas) > 1 else ''}",
                    f"{t['now'] * 1e3:.1f} ({n / t['now'] / 1e9:.2f})",
                    f"{t['dense'] * 1e3:.1f} ({n / t['dense'] / 1e9:.2f})",
                    f"{t['before'] * 1e3:.1f} ({n / t['before'] / 1e9:.2f})",
                    f"{t['dense'] / t['now']:.2f}x", f"{t['before'] / t['now']:.2f}x"])
    beta = np.array([20.0])
    assert np.allclose(kernels.bank_logsumexp(block, beta)[0], previous_logsumexp(block, 20.0),
                       rtol=1e-12, atol=0)
    t = timings({"now": lambda: kernels.bank_logsumexp(block, beta),
                 "before": lambda: previous_logsumexp(block, 20.0)}, args.repeat)
    out.append(["bank logsumexp, 1 beta", f"{t['now'] * 1e3:.1f} ({n / t['now'] / 1e9:.2f})",
                "-", f"{t['before'] * 1e3:.1f} ({n / t['before'] / 1e9:.2f})", "-",
                f"{t['before'] / t['now']:.2f}x"])
    floor = hb.exp_seconds(block.shape)
    for row in out:
        now_ms = float(row[1].split()[0])
        row.append(f"{now_ms / 1e3 / floor:.2f}x")
    print(f"ms per block (Gelem/s); floor: float64 exp of the block {floor * 1e3:.1f} ms; "
          + hb.footer(None))
    print(hb.table(["kernel", "now", "prefilter off", "previous", "prefilter gain",
                    "gain over previous", "now x exp floor"], out))


if __name__ == "__main__":
    main()
