#!/usr/bin/env python3
"""qbscale against the paper's code (``reference_method.py``) on random float32 data.

For each size (bank x gallery; the test matrix is gallery x gallery, one query
per item) the script writes seed-format pickles, ingests them into a store,
and times, each in its own process (``harness.Bench``, peak RSS from
``wait4``), interleaved ``--repeat`` times after one warm-up, beside the floor
(a 2-thread ``np.fromfile`` of the store's chunk files):

* ``reference``: ``reference_method.py`` on the pickles (process start,
  pickle load, full argsorts and sorts, exp-domain DIS);
* ``store``: ``qbscale run STORE --beta 20``;
* ``pickles``: ``qbscale run --sims_train_test_path ... --sims_test_path ...``
  (process start and pickle load included).

It checks that all three print the same metrics, then prints medians, peak
RSS, the speed-ups, and where the seed path's start-up time goes
(``-X importtime``).

usage: python benchmarks/bench_reference.py [--sizes 2000x1000,9000x3000,...]
       [--repeat 3] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

SIZES = "2000x1000,9000x3000,20000x5000,40000x10000"
METRICS = ("R1", "R5", "R10", "R50", "MedR", "MeanR")
HEAVY = ("zarr", "xarray", "dask.array", "distributed", "numcodecs", "pandas", "fsspec")


def write_inputs(folder: Path, n_bank: int, n_gallery: int, seed: int = 0) -> dict[str, Path]:
    """Random float32 pickles (as the seed code reads them) and a store of them."""
    rng = np.random.default_rng(seed)
    paths = {"bank": folder / "sims_train_test.pkl", "test": folder / "sims_test.pkl"}
    for role, shape in (("bank", (n_bank, n_gallery)), ("test", (n_gallery, n_gallery))):
        with open(paths[role], "wb") as f:
            pickle.dump(rng.random(shape, dtype=np.float32), f, protocol=4)
    paths["store"] = folder / "exp.zarr"
    hb.run_command([*hb.qbscale_command(), "ingest", "--bank", paths["bank"], "--test",
                    paths["test"], "-o", paths["store"], "--quiet"])
    return paths


def bench(paths: dict[str, Path], repeat: int) -> hb.Bench:
    """The three paths, and the floor: a 2-thread read of the store's chunk files."""
    seed_flags = ["--sims_train_test_path", paths["bank"], "--sims_test_path", paths["test"]]
    folder = paths["store"].parent
    out = hb.Bench(repeat)
    out.add("read floor", hb.read_floor(hb.chunk_files(paths["store"])))
    out.add("reference", hb.process([hb.PYTHON, hb.ROOT / "benchmarks" / "reference_method.py",
                                     *seed_flags, "--beta", "20", "--k", "1", "--json",
                                     folder / "ref.json"]))
    out.add("store", hb.process([*hb.qbscale_command(), "run", paths["store"], "--beta", "20",
                                 "--quiet", "--json", folder / "store.json"]))
    out.add("pickles", hb.process([*hb.qbscale_command(), "run", *seed_flags, "--beta", "20",
                                   "--quiet", "--json", folder / "pickles.json"]))
    return out


def agree(folder: Path) -> bool:
    """All three printed the same (rounded) metrics, before and after."""
    ref = json.loads((folder / "ref.json").read_text())
    for name in ("store", "pickles"):
        rows = json.loads((folder / f"{name}.json").read_text())["table"]
        for got, want in ((rows[0], ref["before"]), (rows[1], ref["after"])):
            if any(round(float(got[m]), 1) != want[m] for m in METRICS):
                return False
    return True


def import_profile(paths: dict[str, Path]) -> tuple[float, list[tuple[str, float]], list[str]]:
    """Seed path start-up: total import seconds, the largest top-level imports, heavy ones."""
    env = dict(hb.MALLOC_ENV)
    cmd = [hb.PYTHON, "-X", "importtime", "-m", "qbscale.cli", "run", "--sims_train_test_path",
           str(paths["bank"]), "--sims_test_path", str(paths["test"]), "--quiet"]
    err = hb.run_command(cmd, env).stderr
    entries = re.findall(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", err)
    total = sum(int(self_us) for self_us, _, _, _ in entries) / 1e6
    top = [(name, int(cum) / 1e6) for _, cum, indent, name in entries if len(indent) == 1]
    top.sort(key=lambda item: -item[1])
    loaded = {name for *_, name in entries}
    return total, top[:8], [h for h in HEAVY if h in loaded]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=SIZES, help="bank x gallery sizes, e.g. 2000x1000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="scratch directory (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the inputs afterwards")
    args = parser.parse_args()
    root = hb.workdir(args.dir, "qbscale-bench-reference")
    print(hb.machine())
    rows, profile = [], None
    for size in args.sizes.split(","):
        n_bank, n_gallery = (int(x) for x in size.split("x"))
        folder = root / size
        folder.mkdir()
        paths = write_inputs(folder, n_bank, n_gallery)
        timing = bench(paths, args.repeat)
        runs = timing.run()
        ref, store, pick = (runs[k] for k in ("reference", "store", "pickles"))
        floor = runs["read floor"].median()
        rows.append([f"{n_bank} x {n_gallery}", ref.median(), f"{ref.rss:.2f}", store.median(),
                     f"{store.rss:.2f}", pick.median(), f"{pick.rss:.2f}",
                     f"{ref.median() / store.median():.1f}x",
                     f"{pick.median() / ref.median():.2f}",
                     f"{store.median() / floor:.1f}x", "yes" if agree(folder) else "NO"])
        rows[-1][0] += " LOADED" if any(f.loaded for f in runs.values()) else ""
        print(f"{size}: done ({hb.footer(timing)})", file=sys.stderr, flush=True)
        print(f"{size}: done", file=sys.stderr, flush=True)
        if profile is None:
            profile = import_profile(paths)
        if not args.keep:
            shutil.rmtree(folder)
    print(f"\nwall seconds (median of {args.repeat} interleaved) and peak RSS GiB, DIS beta 20, "
          "k 1; every process timed from start to exit; floor: a 2-thread read of the "
          f"store's chunk files; {hb.footer(None)} after")
    print(hb.table(["bank x gallery", "reference s", "ref GiB", "store s", "store GiB",
                    "pickles s", "pickles GiB", "ref/store", "pickles/ref", "store x floor",
                    "same metrics"], rows))
    if profile is not None:
        total, top, heavy = profile
        print(f"\nseed path start-up (python -X importtime, smallest size): imports "
              f"{total:.2f} s; heavy modules loaded: {', '.join(heavy) or 'none'}")
        print("largest top-level imports: " + ", ".join(f"{n} {s:.2f} s" for n, s in top))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
