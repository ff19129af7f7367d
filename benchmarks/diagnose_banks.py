"""Do the diagnostics of ``qbscale diagnose`` predict whether QB-Norm helps?

Runs :func:`qbscale.analysis.diagnose.diagnose` (DIS, beta 20, k 1, N_k at
depth 10) on several querybanks for the same test queries and prints each
bank's figures, the verdict and the measured R@1 before and after::

    python benchmarks/diagnose_banks.py [--data DIR] [--splits 2]

Cases:

* pycode, all 4000 test queries, the shipped training querybank (7951 queries
  from other source files): the README's benchmark, where DIS does not help;
* pycode, the test queries split in random halves: one half is tested, the
  other is the bank (an in-domain bank, queries drawn like the test's), against
  the training bank on the same tested half;
* synthetic (``qbscale synth --query-noise 2 --hub-share 0.5``, 8000 bank,
  2000 test, 2000 gallery, dim 64): its own bank, and a bank generated with
  another seed (other clusters and popular directions: an off-domain bank).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from qbscale.analysis.diagnose import diagnose
from qbscale.analysis.reading import verdict
from qbscale.storage.stores.store import in_memory
from qbscale.synth import SynthSpec, gallery_rows, query_rows

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "pycode"


Case = tuple[str, str, np.ndarray, np.ndarray, np.ndarray]


def pycode(data: Path, splits: int) -> Iterator[Case]:
    """(case, bank, bank sims, test sims, gt) of the pycode cases."""
    gallery = np.load(data / "gallery_test.npy").astype(np.float32)
    queries = np.load(data / "queries_test.npy").astype(np.float32)
    train = np.load(data / "querybank.npy").astype(np.float32) @ gallery.T
    test = queries @ gallery.T
    yield "pycode, 4000 test", "training (7951)", train, test, np.arange(len(queries))
    for split in range(splits):
        perm = np.random.default_rng(split).permutation(len(queries))
        held, tested = np.sort(perm[:len(perm) // 2]), np.sort(perm[len(perm) // 2:])
        case = f"pycode, half {split}"
        yield case, "training (7951)", train, test[tested], tested
        yield case, f"other half ({len(held)})", test[held], test[tested], tested


def synthetic(seeds: int) -> Iterator[Case]:
    for seed in range(seeds):
        spec = SynthSpec(n_bank=8000, n_test=2000, n_gallery=2000, dim=64, seed=seed,
                         query_noise=2.0, hub_share=0.5)
        other = SynthSpec(**{**spec.__dict__, "seed": 100 + seed})
        gallery = gallery_rows(spec, 0, spec.n_gallery)
        test = query_rows(spec, "test", 0, spec.n_test) @ gallery.T
        gt = np.arange(spec.n_test)
        case = f"synthetic, seed {seed}"
        yield case, "own (8000)", query_rows(spec, "bank", 0, spec.n_bank) @ gallery.T, test, gt
        yield case, "off-domain (8000)", query_rows(other, "bank", 0, 8000) @ gallery.T, test, gt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--splits", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    print("| case | bank | Spearman rho | hub overlap | KS D | DIS rows | verdict "
          "| R@1 before | R@1 after | change |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case, bank_name, bank, test, gt in [*pycode(args.data, args.splits),
                                            *synthetic(args.seeds)]:
        d = diagnose(in_memory(bank, test, gt_index=gt))
        assert d.result is not None
        before, after = d.result.before["R1"], d.result.after[20.0]["R1"]
        print(f"| {case} | {bank_name} | {d['spearman']:.3f} | {d['hub_overlap']:.3f} | "
              f"{d['ks']:.3f} | {d['activated_share']:.3f} | {verdict(d['spearman'], d['ks'])} "
              f"| {before:.1f} | {after:.1f} | {after - before:+.1f} |", flush=True)


if __name__ == "__main__":
    main()
