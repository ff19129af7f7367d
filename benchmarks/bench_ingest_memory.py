#!/usr/bin/env python3
"""Peak memory of ``qbscale ingest`` on a generated float32 matrix of ~1.6 GB.

Writes bank (ROWS x COLS float32, default 20000 x 20000 = 1.6 GB) and a small
test matrix (2000 x COLS) as .npy (memory-mapped, read block by block), .npz
(stored member, streamed through zipfile) and, for contrast, a pickle (loaded
whole by nature), then runs ``python -m qbscale.cli ingest`` on each under
``harness.Bench`` (peak RSS from ``wait4``) and prints the peak resident set
size against the input size.  Wall times are medians (min-max) of ``--repeat``
interleaved runs, as ratios to the ``cp`` row (copying the input files), the
machine's disk floor.

usage: python benchmarks/bench_ingest_memory.py [--rows 20000] [--cols 20000]
       [--chunk-mb 64 16] [--formats npy npz pkl] [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import pickle
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb


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


def copy_inputs(work: Path) -> None:
    """The floor: copy both input files (``cp``), then remove the copies."""
    for name in ("bank.npy", "test.npy"):
        shutil.copyfile(work / name, work / f"copy-{name}")
    for name in ("bank.npy", "test.npy"):
        (work / f"copy-{name}").unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--cols", type=int, default=20000)
    parser.add_argument("--chunk-mb", type=float, nargs="+", default=[64, 16])
    parser.add_argument("--formats", nargs="+", default=["npy", "npz", "pkl"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    print(hb.machine())
    with tempfile.TemporaryDirectory(prefix="qbscale-mem-", dir=args.workdir) as tmp:
        work = Path(tmp)
        generate(work / "bank.npy", args.rows, args.cols, 0)
        generate(work / "test.npy", 2000, args.cols, 1)
        bank_bytes = (work / "bank.npy").stat().st_size
        total = bank_bytes + (work / "test.npy").stat().st_size
        bench = hb.Bench(args.repeat)
        bench.add("cp", hb.call(lambda: copy_inputs(work)))
        for fmt in args.formats:
            bank = work / "bank.npy" if fmt == "npy" else convert(work / "bank.npy", fmt)
            for chunk_mb in args.chunk_mb:
                bench.add(f"{fmt}, {chunk_mb:g} MiB chunks", hb.process(
                    [hb.PYTHON, "-m", "qbscale.cli", "ingest", "--bank", bank, "--test",
                     work / "test.npy", "--queries-per-item", "1", "-o", work / "out.zarr",
                     "--overwrite", "--quiet", "--chunk-mb", chunk_mb], cwd=hb.ROOT))
        figures = bench.run()
        print(hb.report(f"ingest of bank {args.rows} x {args.cols} float32 "
                        f"({bank_bytes / 2**30:.2f} GiB) + test 2000 x {args.cols}: "
                        f"{total / 2**30:.2f} GiB of input", figures, "cp", bench, gb=total / 1e9))
        print(hb.table(["ingest", "peak RSS / bank file"],
                       [[name, f"{fig.rss * 2**30 / bank_bytes:.3f}"]
                        for name, fig in figures.items() if name != "cp"]))


if __name__ == "__main__":
    main()
