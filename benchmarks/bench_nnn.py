"""qbscale's nnn normaliser against NNN's own ``NNNRanker``, on the pycode embeddings.

NNN (nearest neighbor normalization, Chowdhury et al. 2024) scores
``q.g_j - alpha * mean(top-k reference similarities of g_j)``: qbscale's
``nnn`` method (``s - alpha * b(j)``, ``nnn_k`` best bank similarities).
Both fit on the querybank (7951 x 384) and return the top 10 of 4000 gallery
items for 4000 test queries.  NNN needs torch, which qbscale does not: run
this in a separate environment::

    python3 -m venv /tmp/nnn && . /tmp/nnn/bin/activate
    pip install nnn-retrieval==1.0.1 torch==2.13.0 && pip install -e .
    python benchmarks/bench_nnn.py [--repeats 5]

Printed: the median (min-max) wall time of fit + search for each
(interleaved runs, each in this one process, data already in memory,
``harness.Bench``) as a ratio to the floor (numpy's products ``bank @
gallery.T`` and ``queries @ gallery.T`` alone), and how many of the 4000 x 10
hits are equal.  NNN's scores are float32 (torch); qbscale ranks
by float64 scores, so lists may differ only where two scores are within
float32 precision: the largest score gap of any differing position is shown.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "pycode"
ALPHA, NNN_K, TOP = 0.5, 256, 10


def run_nnn(bank: np.ndarray, gallery: np.ndarray, queries: np.ndarray
            ) -> tuple[float, np.ndarray, np.ndarray]:
    from nnn import NNNRanker, NNNRetriever

    t0 = time.perf_counter()
    retriever = NNNRetriever(gallery.shape[1])
    ranker = NNNRanker(retriever, gallery, bank, alternate_ks=NNN_K, batch_size=128,
                       alternate_weight=ALPHA)
    scores, indices = ranker.search(queries, TOP)
    return time.perf_counter() - t0, scores, indices


def run_qbscale(bank: np.ndarray, gallery: np.ndarray, queries: np.ndarray,
                scheduler: str) -> tuple[float, np.ndarray, np.ndarray]:
    from qbscale.config import RunConfig
    from qbscale.engine.plan import fit
    from qbscale.retrieval.search import search
    from qbscale.storage.stores.sources import EmbeddingMatrix, NumpyMatrix
    from qbscale.types import Experiment

    t0 = time.perf_counter()
    gal = NumpyMatrix.wrap(gallery, len(gallery))
    sims = EmbeddingMatrix.build(NumpyMatrix.wrap(bank, -(-len(bank) // 4)), gal)
    config = RunConfig.make(None, method="nnn", params={"alpha": ALPHA, "nnn_k": NNN_K})
    norm = fit(Experiment(sims, sims, np.zeros(len(bank), np.int64), None),
               config).compute(scheduler=scheduler)
    scores, indices = search(norm, queries, TOP, gallery, scheduler=scheduler)
    return time.perf_counter() - t0, scores, indices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scheduler", default="threads")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    bank, gallery, queries = (np.load(DATA / f"{n}.npy").astype(np.float32)
                              for n in ("querybank", "gallery_test", "queries_test"))
    out: dict[str, tuple[float, np.ndarray, np.ndarray]] = {}
    bench = hb.Bench(args.repeats)
    bench.add("floor: numpy products", hb.call(lambda: (bank @ gallery.T, queries @ gallery.T)))
    bench.add("NNNRanker (torch, CPU)", hb.call(
        lambda: out.update(nnn=run_nnn(bank, gallery, queries))))
    bench.add("qbscale fit + search", hb.call(
        lambda: out.update(qbscale=run_qbscale(bank, gallery, queries, args.scheduler))))
    figures = bench.run()
    _, nnn_scores, nnn_idx = out["nnn"]
    _, qb_scores, qb_idx = out["qbscale"]
    equal = nnn_idx == qb_idx
    rows_equal = equal.all(axis=1)
    gap = float(np.abs(nnn_scores.astype(np.float64) - qb_scores)[~equal].max()) \
        if (~equal).any() else 0.0
    print(hb.machine())
    print(hb.report(f"pycode: bank {len(bank)}, gallery {len(gallery)}, {len(queries)} queries, "
                    f"{gallery.shape[1]}-d; nnn alpha={ALPHA} k={NNN_K}; top {TOP}", figures,
                    "floor: numpy products", bench))
    nnn_s = figures["NNNRanker (torch, CPU)"].median()
    print(f"qbscale / NNNRanker: {figures['qbscale fit + search'].median() / nnn_s:.2f}x")
    print(f"top-10 lists equal: {int(rows_equal.sum())} of {len(rows_equal)} queries; "
          f"hits equal: {int(equal.sum())} of {equal.size}; largest score difference at a "
          f"differing hit: {gap:.2e}")


if __name__ == "__main__":
    main()
