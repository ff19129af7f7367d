"""Several positives per query, exported: a store ingested from a qrels file, its
ground truth written back as qrels and a run's hits scored by ir-measures give
qbscale's own R@K (Success@K), MRR (RR) and mAP (AP), over random stores."""

from __future__ import annotations

import ir_measures  # in the test extra: missing is a failure, not a skip
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import qbscale
from qbscale.storage.outputs.hits import write_run_hits
from qbscale.storage.outputs.qrels import write_qrels
from qbscale.storage.stores.store import open_experiment

MEASURES = [ir_measures.Success @ 1, ir_measures.Success @ 5, ir_measures.Success @ 10,
            ir_measures.RR, ir_measures.AP]


def _oracle(scores: np.ndarray, pos: list[np.ndarray]) -> dict[str, float]:
    """Dense figures from the definitions: best positive's rank, reciprocal rank,
    average precision over all positives (no ties in continuous random scores)."""
    best, rr, ap = [], [], []
    for row, p in zip(scores, pos, strict=True):
        order = np.argsort(-row, kind="stable")
        place = np.empty_like(order)
        place[order] = np.arange(order.size)
        ranks = np.sort(place[p])
        best.append(ranks[0])
        rr.append(1 / (ranks[0] + 1))
        ap.append(np.mean((np.arange(ranks.size) + 1) / (ranks + 1)))
    best_a = np.asarray(best)
    return {"R1": 100 * np.mean(best_a == 0), "R5": 100 * np.mean(best_a < 5),
            "R10": 100 * np.mean(best_a < 10), "MRR": 100 * np.mean(rr),
            "mAP": 100 * np.mean(ap)}


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), n_gallery=st.integers(12, 30),
       n_queries=st.integers(5, 40), method=st.sampled_from(["dis", "is", "none"]))
def test_multi_positive_qrels_and_hits_give_qbscales_figures(tmp_path_factory, seed,
                                                            n_gallery, n_queries, method):
    tmp = tmp_path_factory.mktemp("mp")
    rng = np.random.default_rng(seed)
    bank = rng.standard_normal((30, n_gallery))
    test = rng.standard_normal((n_queries, n_gallery))
    pos = [np.sort(rng.choice(n_gallery, size=rng.integers(1, 5), replace=False))
           for _ in range(n_queries)]
    pos[0] = np.array([0, 1])  # some query has several
    (tmp / "in.qrels").write_text("".join(f"{q} 0 {j} 1\n" for q, p in enumerate(pos)
                                          for j in p))
    out = tmp / "exp.zarr"
    qbscale.ingest(out, bank, test, positives=str(tmp / "in.qrels"), progress=False)
    beta = None if method == "none" else 12.0
    result = qbscale.run(str(out), method=method, beta=beta, topk=n_gallery, progress=False)
    experiment = open_experiment(out)
    write_run_hits(tmp / "run.trec", result, experiment)
    write_qrels(tmp / "truth.qrels", experiment)
    qrels = ir_measures.read_trec_qrels(str(tmp / "truth.qrels"))
    got = ir_measures.calc_aggregate(MEASURES, qrels,
                                     ir_measures.read_trec_run(str(tmp / "run.trec")))
    figures = next(iter(result.after.values())) if result.config.normalises else result.before
    assert figures is not None
    # the dense oracle over the scores the run ranked by
    if method == "none":
        scored = test
    else:
        logz = np.logaddexp.reduce(beta * bank, axis=0)
        if method == "is":
            scored = beta * test - logz
        else:
            active = np.zeros(n_gallery, bool)
            active[np.argmax(bank, axis=1)] = True
            normalised = active[np.argmax(test, axis=1)]
            scored = np.where(normalised[:, None], beta * test - logz, test)
    want = _oracle(scored, pos)
    irm = {"R1": 100 * got[MEASURES[0]], "R5": 100 * got[MEASURES[1]],
           "R10": 100 * got[MEASURES[2]], "MRR": 100 * got[MEASURES[3]],
           "mAP": 100 * got[MEASURES[4]]}
    for key, value in want.items():
        assert abs(figures[key] - value) < 1e-9, (key, figures[key], value)
        assert abs(irm[key] - value) < 1e-9, (key, irm[key], value)
