"""A fitted normaliser on the pycode benchmark: what fitting once saves.

Ingests the pycode similarities (4000 test queries, 7951 bank queries, 4000
code snippets) into a store, then times, medians of ``--repeat`` runs:

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
import statistics
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np

import qbscale
from qbscale.normaliser import Normaliser

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "pycode"


def median_time(func, repeat: int):  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = func()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


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
    with tempfile.TemporaryDirectory(prefix="qbscale-bench-") as tmp:
        store = qbscale.ingest(Path(args.out or tmp) / "pycode.zarr", bank, test,
                               chunk_bytes=16 * 2**20, overwrite=True, progress=False)
        kw = {"beta": betas, "scheduler": args.scheduler}
        t_run, full = median_time(lambda: qbscale.run(store, **kw), args.repeat)
        t_fit, norm = median_time(lambda: Normaliser.fit(store, **kw), args.repeat)
        t_with, fitted = median_time(lambda: qbscale.run(store, normaliser=norm, **kw),
                                     args.repeat)
    same = all(np.array_equal(full.ranks[b], fitted.ranks[b]) for b in full.ranks)
    is_norm = Normaliser.fit(bank, beta=betas[-1], method="is")
    log_z = is_norm.shift[0]
    dis_norm = Normaliser.fit(bank, beta=betas[-1], method="dis")
    t_tr, _ = median_time(lambda: is_norm.transform(test), args.repeat)
    t_dis, _ = median_time(lambda: dis_norm.transform(test), args.repeat)
    lazy = da.from_array(test, chunks=(1000, 1000))
    t_lazy, _ = median_time(lambda: dis_norm.transform(lazy).compute(scheduler=args.scheduler),
                            args.repeat)
    t_np, _ = median_time(lambda: betas[-1] * test.astype(np.float64) - log_z, args.repeat)
    rows = [("run (fits)", t_run, t_run), ("fit alone", t_fit, t_run),
            ("run --normaliser", t_with, t_run), ("transform (is)", t_tr, t_np),
            ("transform (dis)", t_dis, t_np),
            ("transform (dis, dask)", t_lazy, t_np),
            ("numpy beta*T - logZ", t_np, t_np)]
    print(f"pycode: bank {bank.shape}, test {test.shape}, betas {betas}, "
          f"scheduler {args.scheduler}, medians of {args.repeat}")
    print(f"{'step':<22}{'seconds':>9}{'ratio':>8}")
    for name, seconds, base in rows:
        print(f"{name:<22}{seconds:>9.3f}{seconds / base:>8.2f}")
    print(f"ranks of run --normaliser identical to run: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
