#!/usr/bin/env python3
"""Same bits before and after a change: a run's logZ, ranks and flags on a store.

``--save FILE`` writes the outputs of ``qbscale.run(STORE, beta=...)`` (DIS,
several betas in one pass, top-5) and of a bank-sampled fit; ``--against
FILE`` recomputes them with the code on ``PYTHONPATH`` and reports every
array that differs in any bit, and by how much: for floats, how many
entries moved and the largest move in ulps (of the saved value); for
integers and flags (ranks, indices, activation), how many entries moved
and the largest difference.  Run it with the old code (e.g. ``git archive
REV qbscale | tar -x -C DIR`` then ``PYTHONPATH=DIR``) and the new.

usage: python benchmarks/bitcheck.py STORE (--save FILE | --against FILE)
       [--betas 10,20,40]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def outputs(store: str, betas: list[float]) -> dict[str, np.ndarray]:
    import qbscale

    result = qbscale.run(store, beta=betas, topk=5, progress=False)
    out = {"shift": result.normaliser.shift, "activation": result.normaliser.activation,
           "base_ranks": result.base_ranks, "normalised": result.normalised,
           "topk_index": result.topk_index, "topk_score": result.topk_score}
    out.update({f"ranks_{b:g}": r for b, r in result.ranks.items()})
    sampled = qbscale.Normaliser.fit(store, beta=betas[:2], bank_sample=0.5, seed=3)
    out["sampled_shift"] = np.asarray(sampled.shifts)
    return out


def same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def moved(want: np.ndarray, got: np.ndarray) -> str:
    """How ``got`` differs from ``want``: entries moved, and by how much."""
    want, got = np.asarray(want), np.asarray(got)
    if want.shape != got.shape or want.dtype != got.dtype:
        return f"shape/dtype {want.shape} {want.dtype} -> {got.shape} {got.dtype}"
    if want.dtype.kind == "f":
        both = np.isfinite(want) & np.isfinite(got)
        diff = want != got
        finite_ulps = np.abs(got[both] - want[both]) / np.spacing(np.abs(want[both]))
        worst = float(finite_ulps.max()) if finite_ulps.size else 0.0
        other = int(np.sum(diff & ~both & ~(np.isnan(want) & np.isnan(got))))
        return (f"{int(np.sum(diff & both))} of {want.size} entries moved, at most "
                f"{worst:.3g} ulp" + (f"; {other} non-finite changed" if other else ""))
    diff = want != got
    step = np.abs(got.astype(np.float64) - want.astype(np.float64))
    return f"{int(diff.sum())} of {want.size} entries moved, at most {float(step.max()):g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--betas", default="10,20,40")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--save")
    what.add_argument("--against")
    args = parser.parse_args()
    got = outputs(args.store, [float(b) for b in args.betas.split(",")])
    if args.save:
        np.savez(args.save, **got)
        print(f"saved {len(got)} arrays to {args.save}")
        return 0
    want = dict(np.load(args.against))
    bad = sorted(k for k in set(want) | set(got)
                 if k not in want or k not in got or not same(want[k], got[k]))
    print(f"{len(want)} arrays compared: " + (f"DIFFER: {', '.join(bad)}" if bad
                                               else "all identical, bit for bit"))
    for k in bad:
        print(f"  {k}: " + ("missing on one side" if k not in want or k not in got
                            else moved(want[k], got[k])))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
