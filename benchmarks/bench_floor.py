#!/usr/bin/env python3
"""``run`` and ``fit`` against the machine's floor: the raw read of the same chunk files.

One command prints every table of the issue "performance at the machine
floor"; each figure is a ratio to a floor measured in the same run,
interleaved with it (``harness.Bench``):

1. **run**: ``qbscale run STORE --beta 20 --quiet`` (DIS, crc32c checksums
   on, as ``qbscale synth`` writes them) on a ``--sizes`` GB store each (bank
   + test 3:1 over a 50000-item gallery, whole-row 64 MiB chunks), against a
   2-thread ``np.fromfile`` read of its chunk files, page cache warm; whole
   process and the time ``run`` reports; peak RSS (so this table is also the
   memory table: flat from 1 to 16 GB is the goal).  The exp floor is the
   bank's float64 ``exp`` count at one thread's measured rate, over the cores.
2. **extra betas** (on the ``--beta-size`` store): ``--beta 20`` against
   ``--beta 10,20,30,40``; one extra beta costs a third of the difference.
3. **fit**: ``qbscale fit`` on a store whose bank alone is ``--fit-size`` GB,
   against the raw read of the bank's chunk files.

Stores are written into ``--dir`` (default: temp) one at a time and deleted
after their table.

usage: python benchmarks/bench_floor.py [--sizes 1,4,16] [--beta-size 4]
       [--fit-size 16] [--repeat 3] [--dir DIR] [--tables run,betas,fit]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

GALLERY = 50000


def exp_floor(n_elements: int, betas: int = 1) -> float:
    """Seconds of the bank's float64 exps on every core at one thread's rate."""
    return n_elements * betas / hb.exp_rate((256, GALLERY)) / hb.cores()


def rates_table() -> str:
    """One thread's numpy rates on the stores' block shapes: the compute floors."""
    shape = (334, GALLERY)  # a whole-row 64 MiB chunk
    rows = [[f"exp {dtype}, {shape[0]} x {shape[1]} a row at a time, 1 thread",
             f"{hb.exp_rate(shape, dtype) / 1e9:.2f} Gelem/s"] for dtype in ("float64", "float32")]
    rows.append(["matmul float32 2000 x 384 @ 384 x 8192, 2 callers x 1 BLAS thread",
                 f"{hb.matmul_rate(2000, 384, 8192, callers=2) / 1e9:.0f} GFLOP/s"])
    return f"\nnumpy's rates ({hb.footer(None)})\n" + hb.table(["floor", "rate"], rows)


def run_table(folder: Path, size: float, repeat: int) -> tuple[str, float]:
    """The run table at ``size`` GB, and the run's peak RSS (GiB)."""
    store = hb.sims_store(folder, f"run{size:g}", size, GALLERY)
    n_bank, n_test = hb.sims_rows(size, GALLERY)
    bench = hb.Bench(repeat)
    bench.add("read floor", hb.read_floor(hb.chunk_files(store)))
    bench.add("run, DIS beta 20", hb.process([*hb.qbscale_command(), "run", store, "--beta", "20",
                                              "--quiet"]))
    figures = bench.run()
    shutil.rmtree(store)
    floor = exp_floor(n_bank * GALLERY)
    text = (hb.report(f"run on {size:g} GB (bank {n_bank} + test {n_test} rows x {GALLERY})",
                      figures, "read floor", bench, gb=(n_bank + n_test) * GALLERY * 4 / 1e9)
            + f"\nexp floor (bank, float64, {hb.cores()} cores): {hb.fmt(floor)} s = "
            f"{hb.ratio(floor, figures['read floor'].median())} read floor")
    return text, figures["run, DIS beta 20"].rss


def beta_table(folder: Path, size: float, repeat: int) -> str:
    store = hb.sims_store(folder, f"betas{size:g}", size, GALLERY)
    n_bank, _ = hb.sims_rows(size, GALLERY)
    bench = hb.Bench(repeat)
    bench.add("read floor", hb.read_floor(hb.chunk_files(store)))
    for betas in ("20", "10,20,30,40"):
        bench.add(f"run, beta {betas}", hb.process([*hb.qbscale_command(), "run", store, "--beta",
                                                    betas, "--quiet"]))
    figures = bench.run()
    shutil.rmtree(store)
    one, four = figures["run, beta 20"], figures["run, beta 10,20,30,40"]
    floor = figures["read floor"].median()
    extra = (four.median("reported") - one.median("reported")) / 3
    return (hb.report(f"extra betas on {size:g} GB", figures, "read floor", bench)
            + f"\none extra beta (reported time): {hb.fmt(extra)} s = "
            f"{hb.ratio(extra, floor)} read floor; its exp floor: "
            f"{hb.fmt(exp_floor(n_bank * GALLERY))} s")


def fit_table(folder: Path, size: float, repeat: int) -> str:
    n_bank = round(size * 1e9 / (4 * GALLERY))
    store = hb.synth_store(folder / "fit.zarr", "--kind", "sims", "--bank", str(n_bank),
                           "--test", "1000", "--gallery", str(GALLERY))
    out = folder / "norm.zarr"
    bench = hb.Bench(repeat)
    bench.add("read floor (bank)", hb.read_floor(hb.chunk_files(store, ("bank",))))
    bench.add("fit, DIS beta 20", hb.process([*hb.qbscale_command(), "fit", store, "-o", out,
                                              "--overwrite", "--quiet"]))
    figures = bench.run()
    shutil.rmtree(store)
    shutil.rmtree(out, ignore_errors=True)
    floor = exp_floor(n_bank * GALLERY)
    return (hb.report(f"fit on a {size:g} GB bank ({n_bank} x {GALLERY})", figures,
                      "read floor (bank)", bench, gb=n_bank * GALLERY * 4 / 1e9)
            + f"\nexp floor (bank, float64, {hb.cores()} cores): {hb.fmt(floor)} s = "
            f"{hb.ratio(floor, figures['read floor (bank)'].median())} read floor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,16", help="run table: store GB, comma-separated")
    parser.add_argument("--beta-size", type=float, default=4.0)
    parser.add_argument("--fit-size", type=float, default=16.0, help="bank GB of the fit table")
    parser.add_argument("--tables", default="run,betas,fit")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="scratch directory (default: temp)")
    args = parser.parse_args()
    folder = hb.workdir(args.dir, "qbscale-bench-floor")
    tables = set(args.tables.split(","))
    print(hb.machine(), flush=True)
    print(rates_table(), flush=True)
    try:
        if "run" in tables:
            peaks = {}
            for size in (float(s) for s in args.sizes.split(",")):
                text, peaks[size] = run_table(folder, size, args.repeat)
                print(text, flush=True)
            print("\npeak RSS of run: " + ", ".join(f"{peak:.2f} GiB at {size:g} GB"
                                                    for size, peak in peaks.items()), flush=True)
        if "betas" in tables:
            print(beta_table(folder, args.beta_size, args.repeat), flush=True)
        if "fit" in tables:
            print(fit_table(folder, args.fit_size, args.repeat), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

