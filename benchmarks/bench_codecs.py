#!/usr/bin/env python3
"""Stored codecs on the real pycode similarities: size, write time, read time.

For each codec (none, lz4, zstd) the pycode pickles are ingested (write time:
the arrays are already in memory, so this is encode + store) and read back
with ``da.from_zarr(...).sum().compute()`` (bank and test), interleaved
``--repeat`` times (``harness.Bench``, in this process, which applies the
CLI's malloc settings); the tables show medians (min-max), ratios to the
floor (a 2-thread ``np.fromfile`` of the uncompressed store's chunk files)
and to ``none``.

usage: python benchmarks/bench_codecs.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

from qbscale.storage.inputs.readers import load_pickle
from qbscale.storage.stores.ingest import CODECS, ingest

DATA = (hb.ROOT / "../shared/data").resolve()


def pycode_sims(workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The float32 pycode pickles (bank 7951 x 4000, test 4000 x 4000), made here."""
    subprocess.run([sys.executable, str(DATA / "make_pickles.py"), str(DATA / "pycode"),
                    str(workdir)], check=True)
    return (load_pickle(workdir / "sims_train_test.pkl"), load_pickle(workdir / "sims_test.pkl"))


def read_store(store: Path) -> None:
    import dask.array as da

    for name in ("bank", "test"):
        da.from_zarr(str(store / name)).sum().compute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not (DATA / "pycode").is_dir():
        sys.exit(f"no pycode data at {DATA / 'pycode'}")
    print(hb.machine())
    with tempfile.TemporaryDirectory(prefix="qbscale-bench-") as tmp:
        workdir = Path(tmp)
        bank, test = pycode_sims(workdir)
        raw = bank.nbytes + test.nbytes
        stores = {codec: workdir / f"{codec}.zarr" for codec in CODECS}
        for codec, store in stores.items():
            ingest(store, bank, test, codec=codec, overwrite=True, progress=False)
        bench = hb.Bench(args.repeat)
        bench.add("read floor", hb.read_floor(hb.chunk_files(stores["none"])))
        for codec, store in stores.items():
            bench.add(f"write {codec}", hb.call(lambda c=codec, s=store: ingest(
                s, bank, test, codec=c, overwrite=True, progress=False)))
            bench.add(f"read {codec}", hb.call(lambda s=store: read_store(s)))
        figures = bench.run()
        sizes = {codec: hb.disk_bytes(store) for codec, store in stores.items()}
    print(hb.report(f"pycode sims: bank {bank.shape} + test {test.shape} float32 = "
                    f"{raw / 2**20:.1f} MiB", figures, "read floor", bench, gb=raw / 1e9))
    base = figures["read none"].median()
    print(hb.table(["codec", "on disk MiB", "compression", "read vs none"],
                   [[codec, f"{sizes[codec] / 2**20:.1f}", f"{raw / sizes[codec]:.3f}",
                  f"{figures[f'read {codec}'].median() / base:.2f}x"] for codec in CODECS]))


if __name__ == "__main__":
    main()
