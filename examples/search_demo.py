"""Deploying QB-Norm: fit once on a querybank, then search new queries.

On the pycode embeddings shipped in ``examples/data/pycode`` (docstring ->
code retrieval, 4000 functions, all-MiniLM-L6-v2), this script

1. fits dynamic inverted softmax on the querybank (7951 queries; the bank
   stage reads ``querybank @ gallery.T`` block by block, never whole);
2. searches the 4000 test queries for their top 10 functions
   (:func:`qbscale.retrieval.search.search`) and writes the hits to a file;
3. evaluates the same test queries with ``qbscale.run`` and the same
   normaliser, and checks that the hits' R@1 (top-1 is the query's own
   function) equals the run's R@1; it exits with 1 if they differ.

Usage::

    python examples/search_demo.py [--out DIR] [--beta 20] [--topk 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import qbscale
from qbscale.config import RunConfig
from qbscale.engine.plan import fit
from qbscale.retrieval.search import search
from qbscale.storage.outputs.hits import write_hits
from qbscale.storage.stores.sources import EmbeddingMatrix, NumpyMatrix
from qbscale.storage.stores.store import embedding_grid
from qbscale.types import Experiment

DATA = Path(__file__).resolve().parent / "data" / "pycode"


def experiment(bank: np.ndarray, test: np.ndarray, gallery: np.ndarray) -> Experiment:
    """In-memory embeddings; similarities are computed block by block."""
    rows, items = embedding_grid(len(test), len(gallery))
    gal = NumpyMatrix.wrap(gallery, items)
    sims = [EmbeddingMatrix.build(NumpyMatrix.wrap(x, rows), gal) for x in (bank, test)]
    return Experiment(sims[0], sims[1], np.arange(len(test)), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where to write the hits")
    parser.add_argument("--beta", type=float, default=20.0)
    parser.add_argument("--topk", type=int, default=10)
    args = parser.parse_args(argv)
    bank, test, gallery = (np.load(DATA / f"{name}.npy").astype(np.float32)
                           for name in ("querybank", "queries_test", "gallery_test"))
    exp = experiment(bank, test, gallery)

    t0 = time.perf_counter()
    norm = fit(exp, RunConfig.make(args.beta, method="dis")).compute()
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores, indices = search(norm, test, args.topk, gallery)
    t_search = time.perf_counter() - t0
    print(f"fit on {len(bank)} querybank queries: {t_fit:.2f} s; activation set "
          f"{int(norm.activation.sum())} of {norm.n_gallery} items")
    print(f"search of {len(test)} queries for their top {args.topk} among "
          f"{len(gallery)} functions: {t_search:.2f} s")

    out = args.out or Path(tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    hits_file = out / "hits.npz"
    write_hits(hits_file, scores, indices, variant=f"dis:beta={args.beta:g}")
    print(f"hits written to {hits_file}")

    result = qbscale.run(exp, beta=args.beta, method="dis", normaliser=norm)
    hits_r1 = 100 * float(np.mean(indices[:, 0] == np.arange(len(test))))
    run_r1 = float(result.after[args.beta]["R1"])
    base = search(qbscale.engine.statistics.GalleryStatistics.baseline(
        RunConfig.make(args.beta, method="none"), len(gallery)), test, 1, gallery)[1]
    base_r1 = 100 * float(np.mean(base[:, 0] == np.arange(len(test))))
    print(f"R@1 without QB-Norm: hits {base_r1:.3f}, run {result.before['R1']:.3f}")
    print(f"R@1 with DIS beta={args.beta:g}: hits {hits_r1:.3f}, run {run_r1:.3f}")
    if abs(hits_r1 - run_r1) > 1e-9:
        print("MISMATCH: the hits' R@1 differs from qbscale run's", file=sys.stderr)
        return 1
    print("the hits' R@1 equals qbscale run's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
