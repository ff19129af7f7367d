"""A fitted normaliser on the pycode benchmark: what fitting once saves.

Ingests the pycode similarities (4000 test queries, 7951 bank queries, 4000
code snippets) into a store, then times, in this process, medians (min-max)
of ``--repeat`` interleaved runs (``harness.Bench``), beside two floors: a
2-thread ``np.fromfile`` read of the store's chunk files (for the store
passes) and the bare numpy ``beta * T - logZ`` (for the transforms):

* ``run``: a run that fits (reads the bank and the test matrix);
* ``fit``: ``Normaliser.fit(store)`` alone (reads the bank only);
* ``run --normaliser``: a run given the fitted normaliser (test matrix only);
* ``transform``: ``norm.transform`` of the whole test matrix in memory
  (``is``: every row; ``dis``: rows whose top-1 is activated), against the
  bare numpy expression ``beta * T - logZ`` on every row, for one beta; and
  ``dis`` on the test matrix as a dask array of 1000 x 1000 chunks, computed;

and checks the runs' ranks are identical::

    python benchmarks/bench_normaliser.py [--out DIR] [--repeat 3] [--scheduler threads]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import dask.array as da
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

import qbscale
from qbscale.retrieval.normaliser import Normaliser

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "pycode"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scheduler", default="threads")
    parser.add_argument("--beta", default="10,20")
    args = parser.parse_args(argv)
    betas = [float(b) for b in args.beta.split(",")]
    load = lambda name: np.load(DATA / name).astype(np.float32)  # noqa: E731
    gallery = load("gallery_test.npy")
    bank, test = load("querybank.npy") @ gallery.T, load("queries_test.npy") @ gallery.T
    print(hb.machine())
    kept: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="qbscale-bench-") as tmp:
        store = qbscale.ingest(Path(args.out or tmp) / "pycode.zarr", bank, test,
                               chunk_bytes=16 * 2**20, overwrite=True, progress=False)
        kw = {"beta": betas, "scheduler": args.scheduler}
        kept["norm"] = Normaliser.fit(store, **kw)
        bench = hb.Bench(args.repeat)
        bench.add("read floor", hb.read_floor(hb.chunk_files(store)))
        bench.add("run (fits)", hb.call(lambda: kept.update(full=qbscale.run(store, **kw))))
        bench.add("fit alone", hb.call(lambda: Normaliser.fit(store, **kw)))
        bench.add("run --normaliser", hb.call(lambda: kept.update(
            fitted=qbscale.run(store, normaliser=kept["norm"], **kw))))
        stores = bench.run()
    full, fitted = kept["full"], kept["fitted"]
    same = all(np.array_equal(full.ranks[b], fitted.ranks[b])  # type: ignore[attr-defined]
               for b in full.ranks)  # type: ignore[attr-defined]
    is_norm = Normaliser.fit(bank, beta=betas[-1], method="is")
    log_z = is_norm.shift[0]
    dis_norm = Normaliser.fit(bank, beta=betas[-1], method="dis")
    lazy = da.from_array(test, chunks=(1000, 1000))
    bench = hb.Bench(args.repeat)
    bench.add("numpy beta*T - logZ", hb.call(lambda: betas[-1] * test.astype(np.float64) - log_z))
    bench.add("transform (is)", hb.call(lambda: is_norm.transform(test)))
    bench.add("transform (dis)", hb.call(lambda: dis_norm.transform(test)))
    bench.add("transform (dis, dask)", hb.call(
        lambda: dis_norm.transform(lazy).compute(scheduler=args.scheduler)))
    transforms = bench.run()
    title = (f"pycode: bank {bank.shape}, test {test.shape}, betas {betas}, "
             f"scheduler {args.scheduler}")
    print(hb.report(f"{title}: store passes", stores, "read floor"))
    print(hb.report(f"{title}: transforms in memory", transforms, "numpy beta*T - logZ", bench))
    print(f"ranks of run --normaliser identical to run: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
