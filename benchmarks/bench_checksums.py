#!/usr/bin/env python3
"""What chunk checksums cost: the same store with and without crc32c.

A synthetic similarity store (``qbscale synth --kind sims``, whole-row 64 MiB
chunks, uncompressed, crc32c as written by qbscale) and an exact copy with the
checksums stripped (each chunk file's last 4 bytes cut, ``crc32c`` dropped
from the codecs: a store as written before checksums).  Interleaved
``--repeat`` times, each in its own process with the CLI's malloc settings:

* ``read``: every block of bank and test through ``ZarrMatrix.read`` (the
  direct chunk-file reads a run uses), 2 threads;
* ``run``: ``qbscale run STORE --beta 20`` (DIS).

Beside them the floor (``harness``): a 2-thread ``np.fromfile`` of the crc32c
store's chunk files.  Medians (min-max) of process wall times and of the pass
alone (reported), each as a ratio to the floor.

usage: python benchmarks/bench_checksums.py [--gb 1] [--repeat 5] [--gallery 50000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

READ = """\
import sys, time
from concurrent.futures import ThreadPoolExecutor
from qbscale.storage.stores.sources import ZarrMatrix
url = sys.argv[1]
start = time.perf_counter()
for name in ("bank", "test"):
    m = ZarrMatrix.open(url, name)
    blocks = [(i, c) for i in range(len(m.row_chunks)) for c in range(len(m.col_chunks))]
    with ThreadPoolExecutor(2) as pool:
        total = sum(float(b[0, 0]) for b in pool.map(lambda ic: m.read(*ic), blocks))
print(f"time: {time.perf_counter() - start:.3f} s")
"""


def strip_checksums(src: Path, dst: Path) -> None:
    """Copy the store at ``src`` to ``dst`` as if written without crc32c."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    for name in ("bank", "test"):
        meta_path = dst / name / "zarr.json"
        meta = json.loads(meta_path.read_text())
        meta["codecs"] = [c for c in meta["codecs"] if c["name"] != "crc32c"]
        meta["fill_value"] = 0.0
        meta_path.write_text(json.dumps(meta))
        for chunk in (dst / name / "c").rglob("*"):
            if chunk.is_file():
                with open(chunk, "r+b") as fh:
                    fh.truncate(chunk.stat().st_size - 4)
    (dst / "zarr.json").write_text(
        json.dumps({k: v for k, v in json.loads((dst / "zarr.json").read_text()).items()
                    if k != "consolidated_metadata"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="bank + test GB")
    parser.add_argument("--gallery", type=int, default=50000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="scratch directory (default: temp)")
    args = parser.parse_args()
    print(hb.machine())
    root = hb.workdir(args.dir, "qbscale-bench-checksums")
    rows = int(args.gb * 1e9 / 4 / args.gallery)
    bank, test = rows * 3 // 4, rows - rows * 3 // 4
    crc = hb.synth_store(root / "crc32c.zarr", "--kind", "sims", "--bank", str(bank), "--test",
                         str(test), "--gallery", str(args.gallery), "--queries-per-item", "1")
    plain = root / "plain.zarr"
    strip_checksums(crc, plain)
    bench = hb.Bench(args.repeat)
    bench.add("read floor", hb.read_floor(hb.chunk_files(crc)))
    for label, store in (("crc32c", crc), ("none", plain)):
        bench.add(f"read {label}", hb.process([hb.PYTHON, "-c", READ, store], hb.MALLOC_ENV))
        bench.add(f"run {label}", hb.process([*hb.qbscale_command(), "run", store, "--beta", "20",
                                              "-q"]))
    figures = bench.run()
    print(hb.report(f"{args.gb:g} GB (bank {bank} + test {test} rows x {args.gallery})", figures,
                    "read floor", bench, gb=args.gb))
    inner = {name: fig.median("reported") for name, fig in figures.items()}
    print(f"crc32c / none, pass alone: read {hb.ratio(inner['read crc32c'], inner['read none'])}, "
          f"run {hb.ratio(inner['run crc32c'], inner['run none'])}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
