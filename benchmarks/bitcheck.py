#!/usr/bin/env python3
"""Same bits before and after a change: a run's logZ, ranks and flags on a store.

``--save FILE`` writes the outputs of ``qbscale.run(STORE, beta=...)`` (DIS,
several betas in one pass, top-5) and of a bank-sampled fit; ``--against
FILE`` recomputes them with the code on ``PYTHONPATH`` and reports every
array that differs in any bit.  Run it with the old code (e.g. ``git archive
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
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
