#!/usr/bin/env python3
"""A million-item gallery from embeddings: memory, wall time and GFLOP/s.

``qbscale synth --kind embeddings`` writes gallery 1,000,000 x 384, bank
10,000 and test 10,000 (one query per item on the first 10,000 items); DIS
(beta 20) then computes every similarity block on the fly.  Achieved GFLOP/s
is ``2 * (n_bank + n_test) * n_gallery * dim / compute time``, where compute
time is what ``qbscale run`` reports (the whole pass: products *and* the
QB-Norm block kernels), next to numpy's own matmul rate on the same block
shapes measured in the same run (one caller; two concurrent callers, as the
engine's two threads are).

Before the full run, a smaller gallery (``--compare-gallery``) compares block
grids and BLAS threading, interleaved ``--repeat`` times:

* ``before``: the grid the engine used to pick (8192 query rows x 10922
  gallery items, blocks cutting across 64 MiB stored chunks);
* ``after``: :func:`qbscale.storage.stores.store.embedding_grid` (all queries in one block
  up to the budget, gallery blocks inside stored chunks), on 64 MiB and on
  4 MiB stored chunks (synth's default for embeddings);
* the same with ``OPENBLAS_NUM_THREADS=1`` (no BLAS threads beside dask's).

usage: python benchmarks/bench_million.py [--gallery 1000000] [--bank 10000]
       [--test 10000] [--compare-gallery 100000] [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

DIM = 384
ONE_BLAS_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}

RUN = """\
import sys
from qbscale.api import run
from qbscale.storage.stores.store import open_experiment
url, grid = sys.argv[1], sys.argv[2]
exp = open_experiment(url)
if grid == "before":  # the sizing the engine used before embedding_grid
    from qbscale.storage.stores.sources import EmbeddingMatrix, ZarrMatrix
    gallery = ZarrMatrix.open(url, "gallery_emb", None, 2**24 // 384 // 4)
    bank, test = (ZarrMatrix.open(url, name, None, 8192) for name in ("bank_emb", "test_emb"))
    exp.bank = EmbeddingMatrix.build(bank, gallery)
    exp.test = EmbeddingMatrix.build(test, gallery)
res = run(exp, beta=20)
blocks = (exp.bank.row_chunks[0], exp.bank.col_chunks[0])
print(f"grid: {blocks[0]} x {blocks[1]}")
print(f"R1: {res.before['R1']:.2f} -> {res.after[20.0]['R1']:.2f}")
print(f"time: {res.seconds:.2f} s")
"""

MATMUL = """\
import sys, threading, time
import numpy as np
q_rows, g_rows, dim, reps = map(int, sys.argv[1:5])
rng = np.random.default_rng(0)
q = rng.standard_normal((q_rows, dim), dtype=np.float32)
g = rng.standard_normal((g_rows, dim), dtype=np.float32)
def work(n):
    for _ in range(n):
        q @ g.T
work(1)
flop = 2 * q_rows * g_rows * dim * reps
start = time.perf_counter(); work(reps); one = flop / (time.perf_counter() - start) / 1e9
pair = [threading.Thread(target=work, args=(reps,)) for _ in range(2)]
start = time.perf_counter()
for t in pair: t.start()
for t in pair: t.join()
two = 2 * flop / (time.perf_counter() - start) / 1e9
print(f"one: {one:.1f}")
print(f"two: {two:.1f}")
"""


def store(folder: Path, name: str, gallery: int, bank: int, test: int,
          chunk_mb: float | None = None) -> Path:
    extra = [] if chunk_mb is None else ["--chunk-mb", str(chunk_mb)]
    return hb.synth_store(folder / f"{name}.zarr", "--kind", "embeddings", "--bank", str(bank),
                          "--test", str(test), "--gallery", str(gallery), "--dim", str(DIM),
                          "--queries-per-item", "1", *extra)


def run_item(url: Path, grid: str, blas: dict[str, str] | None) -> object:
    return hb.process([hb.PYTHON, "-c", RUN, url, grid], {**hb.MALLOC_ENV, **(blas or {})})


def value(text: str, label: str) -> str:
    found = re.findall(rf"^{label}: (.+)$", text, re.M)
    return found[-1] if found else "?"


def gflops(fig: hb.Figure, flop: float) -> float:
    return flop / fig.median("reported") / 1e9


def matmul_floor(flop: float, q_rows: int, g_rows: int) -> object:
    """The products alone at numpy's rate on the engine's block shape, 2 callers."""
    return hb.projected(lambda: 1 / hb.matmul_rate(q_rows, DIM, g_rows, callers=2), flop)


def compare(folder: Path, gallery: int, bank: int, test: int, repeat: int) -> str:
    big = store(folder, "chunks64", gallery, bank, test, chunk_mb=64)
    small = store(folder, "chunks4", gallery, bank, test)
    flop = 2.0 * (bank + test) * gallery * DIM
    probe = hb.run_command([hb.PYTHON, "-c", RUN, small, "after"], hb.MALLOC_ENV)
    grid = value(probe.stdout, "grid")
    bench = hb.Bench(repeat)
    bench.add("matmul floor", matmul_floor(flop, *(int(x) for x in grid.split(" x "))))
    bench.add("before: old grid, 64 MiB chunks", run_item(big, "before", None))
    bench.add("after: new grid, 64 MiB chunks", run_item(big, "after", None))
    bench.add("after: new grid, 4 MiB chunks", run_item(small, "after", None))
    bench.add("after, 4 MiB chunks, 1 BLAS thread", run_item(small, "after", ONE_BLAS_THREAD))
    figures = bench.run()
    rows = [[name, value(fig.samples[0].stdout, "grid"), f"{gflops(fig, flop):.0f}",
             value(fig.samples[0].stdout, "R1")]
            for name, fig in figures.items() if name != "matmul floor"]
    shutil.rmtree(big)
    shutil.rmtree(small)
    return (hb.report("variants against the products at numpy's rate", figures, "matmul floor",
                      bench)
            + "\n" + hb.table(["variant", "block (queries x items)", "GFLOP/s",
                               "R@1 before -> after"], rows))


def matmul_rates(q_rows: int, g_rows: int) -> list[list[object]]:
    rows = []
    for label, env in (("default BLAS threads", None), ("1 BLAS thread", ONE_BLAS_THREAD)):
        out = hb.run_command([hb.PYTHON, "-c", MATMUL, q_rows, g_rows, DIM, 8], env).stdout
        rows.append([f"numpy matmul {q_rows} x {DIM} @ {DIM} x {g_rows}, {label}",
                     value(out, "one"), value(out, "two")])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--bank", type=int, default=10_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--compare-gallery", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--full-repeat", type=int, default=1)
    parser.add_argument("--dir", default=None, help="scratch directory (default: temp)")
    args = parser.parse_args()
    folder = hb.workdir(args.dir, "qbscale-bench-million")
    print(hb.machine())
    if args.compare_gallery:
        text = compare(folder, args.compare_gallery, args.bank, args.test, args.repeat)
        print(f"\nblock grids and BLAS threads, gallery {args.compare_gallery} x {DIM}, bank "
              f"{args.bank}, test {args.test}; medians of {args.repeat}")
        print(text)
    url = store(folder, "million", args.gallery, args.bank, args.test)
    flop = 2.0 * (args.bank + args.test) * args.gallery * DIM
    bench = hb.Bench(args.full_repeat, warmup=False)
    bench.add("run", run_item(url, "after", None))
    run = bench.run()["run"]
    grid = value(run.samples[0].stdout, "grid")
    q_rows, g_rows = (int(x) for x in grid.split(" x "))
    floor = flop / hb.matmul_rate(q_rows, DIM, g_rows, callers=2)
    rows = [[f"qbscale DIS beta 20 (wall {run.median():.1f} s, compute "
             f"{run.median('reported'):.1f} s = {run.median('reported') / floor:.2f}x the "
             f"products at numpy's 2-caller rate, peak RSS {run.rss:.2f} GiB)",
             f"{gflops(run, flop):.0f}", "-"]]
    rows += matmul_rates(q_rows, g_rows)
    print(f"\ngallery {args.gallery} x {DIM}, bank {args.bank}, test {args.test} "
          f"({flop / 1e12:.1f} TFLOP of products), blocks {grid}; R@1 "
          f"{value(run.samples[0].stdout, 'R1')}")
    print(hb.table(["what", "GFLOP/s (1 caller / engine)", "GFLOP/s 2 callers"], rows))
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
