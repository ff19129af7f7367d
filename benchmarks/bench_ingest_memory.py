#!/usr/bin/env python3
"""Peak memory of ``qbscale ingest`` on a generated float32 matrix of ~1.6 GB.

Writes bank (ROWS x COLS float32, default 20000 x 20000 = 1.6 GB) and a small
test matrix (2000 x COLS) as .npy (memory-mapped, read block by block), .npz
(stored member, streamed through zipfile) and, for contrast, a pickle (loaded
whole by nature), then runs ``python -m qbscale.cli ingest`` on each under
``/usr/bin/time -v`` and prints the peak resident set size against the input
size.  Wall times are medians of ``--repeat`` runs; the ``cp`` row (copying
the input files) is the machine's disk floor for comparison.

usage: python benchmarks/bench_ingest_memory.py [--rows 20000] [--cols 20000]
       [--chunk-mb 64 16] [--formats npy npz pkl] [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def generate(path: Path, rows: int, cols: int, seed: int) -> None:
    """A float32 .npy of uniform [-1, 1) values, written block by block."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, cols))
    rng = np.random.default_rng(seed)
    step = max(1, 2**26 // (cols * 4))
    for r0 in range(0, rows, step):
        n = min(step, rows - r0)
        out[r0:r0 + n] = rng.random((n, cols), dtype=np.float32) * 2 - 1
    out.flush()


def convert(npy: Path, fmt: str) -> Path:
    """The same array as a stored .npz or a pickle (made once)."""
    target = npy.with_suffix(f".{fmt}")
    if target.exists():
        return target
    arr = np.load(npy, mmap_mode="r")
    if fmt == "npz":
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as zf, \
                zf.open("sims.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, arr)
    else:
        with open(target, "wb") as f:
            pickle.dump(np.asarray(arr), f, protocol=4)
    return target


def run_ingest(bank: Path, test: Path, out: Path, chunk_mb: float) -> tuple[float, float]:
    """(peak RSS in bytes, wall seconds) of one CLI ingest."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "qbscale.cli", "ingest",
           "--bank", str(bank), "--test", str(test), "--queries-per-item", "1",
           "-o", str(out), "--overwrite", "--quiet", "--chunk-mb", str(chunk_mb)]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr)[1])
    return peak_kb * 1024, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--cols", type=int, default=20000)
    parser.add_argument("--chunk-mb", type=float, nargs="+", default=[64, 16])
    parser.add_argument("--formats", nargs="+", default=["npy", "npz", "pkl"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qbscale-mem-", dir=args.workdir) as tmp:
        work = Path(tmp)
        generate(work / "bank.npy", args.rows, args.cols, 0)
        generate(work / "test.npy", 2000, args.cols, 1)
        bank_bytes = (work / "bank.npy").stat().st_size
        total = bank_bytes + (work / "test.npy").stat().st_size
        print(f"bank {args.rows} x {args.cols} float32 ({bank_bytes / 2**30:.2f} GiB) + test "
              f"2000 x {args.cols}: {total / 2**30:.2f} GiB of input")
        print(f"{'format':7} {'chunk MiB':>9} {'peak RSS MiB':>12} {'RSS / bank file':>15} "
              f"{'wall s':>7} {'GB/s':>6}")
        walls = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            for name in ("bank.npy", "test.npy"):
                shutil.copyfile(work / name, work / f"copy-{name}")
            walls.append(time.perf_counter() - start)
            for name in ("bank.npy", "test.npy"):
                (work / f"copy-{name}").unlink()
        wall = statistics.median(walls)
        print(f"{'cp':7} {'-':>9} {'-':>12} {'-':>15} {wall:7.2f} {total / wall / 1e9:6.2f}")
        for fmt in args.formats:
            bank = work / "bank.npy" if fmt == "npy" else convert(work / "bank.npy", fmt)
            for chunk_mb in args.chunk_mb:
                runs = [run_ingest(bank, work / "test.npy", work / "out.zarr", chunk_mb)
                        for _ in range(args.repeat)]
                peak = max(r[0] for r in runs)
                wall = statistics.median(r[1] for r in runs)
                print(f"{fmt:7} {chunk_mb:9g} {peak / 2**20:12.0f} {peak / bank_bytes:15.3f} "
                      f"{wall:7.2f} {total / wall / 1e9:6.2f}")


if __name__ == "__main__":
    main()
