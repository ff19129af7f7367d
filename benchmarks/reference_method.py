#!/usr/bin/env python3
"""The paper's method as its published code computes it: plain numpy, in memory.

This is the yardstick of ``bench_reference.py``: the same algorithm and the
same command line as the published script, written out here so it runs
without its repository (and under numpy 2):

* the activation set is the union of the bank rows' top-k columns, found by a
  full ``argsort`` of the bank matrix;
* bank and test similarities are exponentiated (``exp(beta * s)``, the exp
  domain: it overflows float32 for ``beta * s`` above ~88) and a test row
  whose top-1 (another full ``argsort``) is in the activation set becomes
  ``exp(beta * s) / sum_q exp(beta * B[q])``; other rows keep their raw scores;
* the metrics come from a full sort of every row and the ground truth's
  position in it, ties averaged (``t2v_metrics`` of the collaborative-experts
  code), rounded to one decimal.

usage: reference_method.py --sims_train_test_path BANK.pkl --sims_test_path TEST.pkl
       [--test_query_masks_path MASKS.pkl] [--beta 20] [--k 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import pickle
import time

import numpy as np


def activation_set(bank: np.ndarray, k: int) -> np.ndarray:
    """Gallery items in some bank row's top-k (full argsort, as published)."""
    order = np.argsort(-bank, axis=1)
    return np.unique(order[:, :k].reshape(-1))


def rows_to_normalise(sims: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Rows whose top-1 item is in ``items`` (a full argsort and a Python loop)."""
    top1 = np.argsort(-sims, axis=1)[:, 0]
    return np.nonzero(np.array([item in items for item in top1]))


def dynamic_inverted_softmax(bank: np.ndarray, test: np.ndarray, beta: float,
                             k: int) -> np.ndarray:
    """DIS in the exp domain; ``test`` is overwritten (and returned), as published."""
    items = activation_set(bank, k)
    exp_bank = np.exp(bank * beta)
    exp_test = np.exp(test * beta)
    normaliser = np.sum(exp_bank, axis=0)
    rows = rows_to_normalise(exp_test, items)
    test[rows, :] = np.divide(exp_test[rows, :], normaliser)
    return test


def t2v_metrics(sims: np.ndarray, masks: np.ndarray | None = None) -> dict[str, float]:
    """Ranks by a full sort of every row, ties averaged; query i -> item i // (n_q / n_g)."""
    n_queries, n_items = sims.shape
    dists = -sims
    ordered = np.sort(dists, axis=1)
    per_item = n_queries // n_items
    gt_flat = np.array([[np.ravel_multi_index([q, item], (n_queries, n_items))
                         for q in range(item * per_item, (item + 1) * per_item)]
                        for item in range(n_items)]).reshape(-1)
    gt = dists.reshape(-1)[gt_flat][:, None]
    rows, cols = np.where((ordered - gt) == 0)
    if rows.size > n_queries:  # ties: average the positions of each row's matches
        starts = np.insert(np.nonzero(np.diff(rows))[0] + 1, 0, 0)
        counts = np.diff(np.append(starts, rows.size))
        cols = np.add.reduceat(cols, starts) / counts
    if masks is not None:
        cols = cols[masks.reshape(-1).astype(bool)]
        n_queries = int(masks.sum())
    return cols2metrics(cols, n_queries)


def cols2metrics(cols: np.ndarray, n_queries: int) -> dict[str, float]:
    out = {
        "R1": 100 * float(np.sum(cols == 0)) / n_queries,
        "R5": 100 * float(np.sum(cols < 5)) / n_queries,
        "R10": 100 * float(np.sum(cols < 10)) / n_queries,
        "R50": 100 * float(np.sum(cols < 50)) / n_queries,
        "MedR": float(np.median(cols)) + 1,
        "MeanR": float(np.mean(cols)) + 1,
    }
    out["geometric_mean_R1-R5-R10"] = float(np.prod([out["R1"], out["R5"], out["R10"]])
                                             ** (1 / 3))
    return {key: round(value, 1) for key, value in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims_train_test_path", required=True)
    parser.add_argument("--sims_test_path", required=True)
    parser.add_argument("--test_query_masks_path", default=None)
    parser.add_argument("--beta", type=float, default=20.0)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--json", default=None, help="write both metric dicts here")
    args = parser.parse_args()
    start = time.perf_counter()
    with open(args.sims_train_test_path, "rb") as f:
        bank = pickle.load(f)
    with open(args.sims_test_path, "rb") as f:
        test = pickle.load(f)
    masks = None
    if args.test_query_masks_path:
        with open(args.test_query_masks_path, "rb") as f:
            masks = pickle.load(f)
    loaded = time.perf_counter()
    before = t2v_metrics(test, masks)
    print("Metrics before applying QB-Norm")
    print(before)
    after = t2v_metrics(dynamic_inverted_softmax(bank, test, args.beta, args.k), masks)
    print("Metrics after QB-Norm")
    print(after)
    print(f"load: {loaded - start:.2f} s")
    print(f"time: {time.perf_counter() - loaded:.2f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"before": before, "after": after}, f)


if __name__ == "__main__":
    main()
