#!/usr/bin/env python3
"""Stored codecs on the real pycode similarities: size, write time, read time.

For each codec (none, lz4, zstd) the pycode pickles are ingested three times
(write time: the arrays are already in memory, so this is encode + store) and
read back three times with ``da.from_zarr(...).sum().compute()`` (bank and
test); the table shows medians and ratios to ``none``.

usage: MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=1073741824 \\
       MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/bench_codecs.py [--repeat 3]

The malloc settings (see cli/__init__.py) must be set before Python starts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qbscale.storage.ingest import CODECS, ingest
from qbscale.storage.readers import load_pickle

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / "../shared/data").resolve()


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def pycode_sims(workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The float32 pycode pickles (bank 7951 x 4000, test 4000 x 4000), made here."""
    subprocess.run([sys.executable, str(DATA / "make_pickles.py"), str(DATA / "pycode"),
                    str(workdir)], check=True)
    return (load_pickle(workdir / "sims_train_test.pkl"), load_pickle(workdir / "sims_test.pkl"))


def time_read(store: Path) -> float:
    import dask.array as da

    start = time.perf_counter()
    for name in ("bank", "test"):
        da.from_zarr(str(store / name)).sum().compute()
    return time.perf_counter() - start


def measure(codec: str, bank: np.ndarray, test: np.ndarray, workdir: Path,
            repeat: int) -> dict[str, float]:
    store = workdir / f"{codec}.zarr"
    writes, reads = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        ingest(store, bank, test, codec=codec, overwrite=True, progress=False)
        writes.append(time.perf_counter() - start)
    for _ in range(repeat):
        reads.append(time_read(store))
    return {"disk": disk_bytes(store), "write": statistics.median(writes),
            "read": statistics.median(reads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not (DATA / "pycode").is_dir():
        sys.exit(f"no pycode data at {DATA / 'pycode'}")
    malloc = all(k in os.environ for k in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_",
                                            "MALLOC_TRIM_THRESHOLD_"))
    with tempfile.TemporaryDirectory(prefix="qbscale-bench-") as tmp:
        workdir = Path(tmp)
        bank, test = pycode_sims(workdir)
        raw = bank.nbytes + test.nbytes
        rows = {codec: measure(codec, bank, test, workdir, args.repeat) for codec in CODECS}
    base = rows["none"]
    print(f"pycode sims: bank {bank.shape} + test {test.shape} float32 = {raw / 2**20:.1f} MiB;"
          f" medians of {args.repeat}; malloc settings {'on' if malloc else 'OFF'}")
    print(f"{'codec':6} {'on disk MiB':>11} {'ratio':>6} {'write s':>8} {'write GB/s':>10} "
          f"{'read s':>7} {'read GB/s':>9} {'read vs none':>12}")
    for codec, row in rows.items():
        print(f"{codec:6} {row['disk'] / 2**20:11.1f} {raw / row['disk']:6.3f} "
              f"{row['write']:8.3f} {raw / row['write'] / 1e9:10.2f} {row['read']:7.3f} "
              f"{raw / row['read'] / 1e9:9.2f} {row['read'] / base['read']:11.2f}x")


if __name__ == "__main__":
    main()
