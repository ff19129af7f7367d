"""Exact streaming search over a large gallery, against numpy's matmul and faiss.

Writes an (n_gallery, 384) float32 gallery block by block into a Zarr array
(unit vectors around 1000 random centres; queries and querybank are noisy
copies of gallery items), fits DIS (beta 20) on a querybank, then measures:

* ``search(norm, queries, 10, gallery.zarr)``: wall time, queries/s, GFLOP/s
  of the similarity products (``2 * n_queries * n_gallery * dim``) end to end,
  against numpy's own ``q @ g.T`` over the very same block shapes and reads in
  the same run (the floor, interleaved with the searches by ``harness.Bench``;
  the target: search within 1/0.85 of it), and against the products alone
  (blocks read beforehand, untimed);
* the peak RSS of the search (a fresh child process, ``wait4``);
* faiss Flat and HNSW32 indexes (:func:`qbscale.retrieval.search.to_faiss`): build time,
  queries/s, recall@10 against the exact top 10.

Usage::

    python benchmarks/bench_search.py [--n-gallery 1000000] [--queries 4000]
        [--repeats 3] [--workdir DIR] [--skip-faiss]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

DIM, K, BETA = 384, 10, 20.0
CHUNK = 16384


def write_gallery(path: Path, n: int, seed: int = 0) -> None:
    """Unit vectors around 1000 random centres, written chunk by chunk."""
    import zarr

    if (path / "zarr.json").exists():
        return
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, DIM)).astype(np.float32)
    arr = zarr.create_array(path, shape=(n, DIM), dtype="float32", chunks=(CHUNK, DIM),
                            compressors=None)
    for r0 in range(0, n, CHUNK):
        m = min(CHUNK, n - r0)
        block = centres[rng.integers(0, 1000, m)] + 1.5 * rng.standard_normal((m, DIM))
        arr[r0:r0 + m] = (block / np.linalg.norm(block, axis=1, keepdims=True)).astype("f4")


def near(path: Path, n: int, seed: int) -> np.ndarray:
    """Noisy unit copies of ``n`` random gallery items."""
    import zarr

    arr = zarr.open_array(path, mode="r")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(arr.shape[0], n, replace=False))
    base = np.stack([arr[int(r)] for r in rows]) + 0.1 * rng.standard_normal((n, DIM))
    out = (base / np.linalg.norm(base, axis=1, keepdims=True)).astype(np.float32)
    return out[rng.permutation(n)]


def child(args: argparse.Namespace) -> None:
    """One exact search in a fresh process: prints its seconds (``time: 1.23 s``)."""
    from qbscale.config import RunConfig
    from qbscale.engine.statistics import GalleryStatistics
    from qbscale.retrieval.search import search

    work = Path(args.workdir)
    saved = np.load(work / "norm.npz")
    norm = GalleryStatistics(RunConfig.make(BETA, method="dis"), saved["shift"],
                             saved["activation"])
    queries = np.load(work / "queries.npy")
    t0 = time.perf_counter()
    _, indices = search(norm, queries, K, str(work / "gallery.zarr"))
    seconds = time.perf_counter() - t0
    np.save(work / "exact_idx.npy", indices)
    print(f"time: {seconds:.3f} s")


def numpy_floor(work: Path, queries: np.ndarray) -> tuple[float, float]:
    """Seconds of ``q @ g.T`` over search's block shapes: reading the gallery
    and the products, and the products alone."""
    from qbscale.retrieval.search import block_grid
    from qbscale.storage.inputs.gallery_rows import gallery_source

    gal = gallery_source(str(work / "gallery.zarr"))
    rows, items = block_grid(len(queries), gal.shape[0], gal.chunk)
    parts = gal.blocks(items)
    products = 0.0
    t0 = time.perf_counter()
    for r0 in range(0, len(queries), rows):
        q = queries[r0:r0 + rows]
        for c in range(len(parts.row_chunks)):
            g = np.asarray(parts.read(c), np.float32)
            t1 = time.perf_counter()
            q @ g.T
            products += time.perf_counter() - t1
    return time.perf_counter() - t0, products


def fit_normaliser(work: Path, n_bank: int) -> None:
    from qbscale.config import RunConfig
    from qbscale.engine.plan import fit
    from qbscale.storage.inputs.gallery_rows import gallery_source
    from qbscale.storage.stores.sources import EmbeddingMatrix, NumpyMatrix
    from qbscale.types import Experiment

    bank = near(work / "gallery.zarr", n_bank, 2)
    gal = gallery_source(str(work / "gallery.zarr"))
    sims = EmbeddingMatrix.build(NumpyMatrix.wrap(bank, n_bank), gal.blocks(gal.chunk or CHUNK))
    experiment = Experiment(sims, sims, np.zeros(n_bank, np.int64), None)
    norm = fit(experiment, RunConfig.make(BETA, method="dis")).compute()
    np.savez(work / "norm.npz", shift=norm.shift, activation=norm.activation)


def faiss_rows(work: Path, queries: np.ndarray, exact: np.ndarray) -> list[list[object]]:
    from qbscale.config import RunConfig
    from qbscale.engine.statistics import GalleryStatistics
    from qbscale.retrieval.search import to_faiss

    saved = np.load(work / "norm.npz")
    norm = GalleryStatistics(RunConfig.make(BETA, method="dis"), saved["shift"],
                             saved["activation"])
    rows = []
    for factory in ("Flat", "HNSW32"):
        t0 = time.perf_counter()
        index = to_faiss(norm, str(work / "gallery.zarr"), factory)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, found = index.search(queries, K)
        seconds = time.perf_counter() - t0
        recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(found, exact, strict=True)])
        rows.append([factory, f"{build:.1f}", f"{seconds:.2f}", f"{len(queries) / seconds:.0f}",
                     f"{recall:.4f}"])
        del index
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-gallery", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=4000)
    parser.add_argument("--bank", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--skip-faiss", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="qb-search-"))
    work = work / f"g{args.n_gallery}"
    work.mkdir(parents=True, exist_ok=True)
    print(hb.machine())
    t0 = time.perf_counter()
    write_gallery(work / "gallery.zarr", args.n_gallery)
    queries = near(work / "gallery.zarr", args.queries, 1)
    np.save(work / "queries.npy", queries)
    fit_normaliser(work, args.bank)
    print(f"gallery {args.n_gallery} x {DIM} float32 in {work} (+ bank {args.bank}, fit) "
          f"in {time.perf_counter() - t0:.0f} s")
    products: list[float] = []
    bench = hb.Bench(args.repeats, warmup=False)
    bench.add("numpy q @ g.T, same blocks and reads",
              hb.call(lambda: products.append(numpy_floor(work, queries)[1])))
    bench.add("qbscale search", hb.process([hb.PYTHON, __file__, "--child", "--workdir", work]))
    figures = bench.run()
    flop = 2.0 * args.queries * args.n_gallery * DIM
    print(hb.report(f"exact search, DIS beta {BETA:g}, top {K}, {args.queries} queries",
                    figures, "numpy q @ g.T, same blocks and reads", bench))
    timed = {"numpy q @ g.T, same blocks and reads":
             figures["numpy q @ g.T, same blocks and reads"].median(),
             "numpy q @ g.T alone (each block read first, untimed)":
             sorted(products)[len(products) // 2],
             "qbscale search (reported)": figures["qbscale search"].median("reported")}
    print(hb.table(["what", "seconds", "queries/s", "GFLOP/s"],
                   [[name, f"{t:.2f}", f"{args.queries / t:.0f}", f"{flop / t / 1e9:.0f}"]
                    for name, t in timed.items()]))
    if args.skip_faiss:
        return
    exact = np.load(work / "exact_idx.npy")
    print(f"\nfaiss over the same gallery ({hb.cores()} cores), recall@{K} against "
          "the exact search")
    print(hb.table(["index", "build s", "search s", "queries/s", f"recall@{K}"],
                   faiss_rows(work, queries, exact)))


if __name__ == "__main__":
    main()
