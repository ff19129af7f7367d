#!/usr/bin/env python3
"""Bounded memory at any size: ``qbscale run`` against merely reading the store once.

Synthetic similarity stores (``qbscale synth --kind sims``, written chunk by
chunk) of bank + test ~1, ~4 and ~16 GB float32 over a 50000-item gallery.
For each, interleaved ``--repeat`` times after a warm-up (``harness.Bench``),
each in its own process with the CLI's malloc settings, beside the floor:

* ``read floor``: a 2-thread ``np.fromfile`` of the store's chunk files (in
  the harness's process);
* ``read``: ``da.from_zarr(store, component=...).sum()`` of bank and test;
* ``run``: ``qbscale run STORE --beta 20`` (DIS).

Then, at each of ``--v2t-sizes`` GB, a store of 20 captions per video
(``synth --queries-per-item 20``, test only: a 1000-row bank) read the
other way round: ``qbscale run STORE --direction v2t`` (each video against
every caption, its 20 captions its positives: best rank, MRR and mAP) beside
the t2v baseline on the same store, with peak RSS: the transpose is read
block by block, never held.

First, at ``--choice-size`` GB, the same pair for four layouts (whole-row vs
2-D chunks, no compression vs lz4), the measurements behind ``qbscale
ingest``'s default layout.  The size table then uses ``--layout`` (default:
the ingest default, whole rows in 64 MiB chunks, uncompressed; ``fastest``
takes the fastest run of the layout table).  Tables show medians of process
wall times (start-up included) and, in brackets, the time the process itself
reported for the pass alone; ``run/floor`` is the run's process wall over the
read floor.  ``bench_floor.py`` prints the run and fit tables against the
floor alone; this script keeps the layout choice and the zarr read.

usage: python benchmarks/bench_memory.py [--sizes 1,4,16] [--choice-size 4]
       [--layout NAME|fastest] [--repeat 3] [--gallery 50000] [--dir DIR]
       [--v2t-sizes 1,4,16] [--only-v2t]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as hb

#: name -> (synth chunk options, codec)
LAYOUTS = {
    "rows 64 MiB": (["--chunk-mb", "64"], "none"),
    "rows 64 MiB lz4": (["--chunk-mb", "64"], "lz4"),
    "2-D 1280 x 12500": (["--chunk-rows", "1280", "--chunk-cols", "12500"], "none"),
    "2-D 1280 x 12500 lz4": (["--chunk-rows", "1280", "--chunk-cols", "12500"], "lz4"),
}

READ = """\
import sys, time
import dask, dask.array as da
url = sys.argv[1]
start = time.perf_counter()
arrays = [da.from_zarr(url, component=name) for name in ("bank", "test")]
dask.compute(*[a.sum(dtype="float64") for a in arrays])
print(f"time: {time.perf_counter() - start:.2f} s")
"""


def make(folder: Path, name: str, size_gb: float, gallery: int,
         layout: tuple[list[str], str]) -> Path:
    """A synth store of ``size_gb`` GB in ``layout``."""
    n_bank, n_test = hb.sims_rows(size_gb, gallery)
    options, codec = layout
    return hb.synth_store(folder / f"{name}.zarr", "--kind", "sims", "--bank", str(n_bank),
                          "--test", str(n_test), "--gallery", str(gallery), *options,
                          "--codec", codec)


def measure(store: Path, repeat: int) -> tuple[dict[str, hb.Figure], hb.Bench]:
    bench = hb.Bench(repeat)
    bench.add("read floor", hb.read_floor(hb.chunk_files(store)))
    bench.add("read", hb.process([hb.PYTHON, "-c", READ, store], hb.MALLOC_ENV))
    bench.add("run", hb.process([*hb.qbscale_command(), "run", store, "--beta", "20", "--quiet"]))
    return bench.run(), bench


def both(fig: hb.Figure) -> str:
    """Process wall (the time the process reported), medians; LOADED if any sample was."""
    return (f"{fig.median():.2f} ({fig.median('reported'):.2f})"
            + (" LOADED" if fig.loaded else ""))


def choose_layout(folder: Path, size_gb: float, gallery: int, repeat: int
                  ) -> tuple[str, str]:
    rows, best = [], None
    for name, layout in LAYOUTS.items():
        store = make(folder, "choice", size_gb, gallery, layout)
        raw = sum(_nbytes(store, a) for a in ("bank", "test"))
        runs, bench = measure(store, repeat)
        floor, run = runs["read floor"].median(), runs["run"].median()
        rows.append([name, f"{raw / 1e9:.2f}", f"{raw / hb.disk_bytes(store):.3f}",
                     f"{floor:.2f}", both(runs["read"]), both(runs["run"]),
                     f"{run / runs['read'].median():.2f}", f"{run / floor:.2f}",
                     f"{runs['run'].rss:.2f}"])
        if best is None or run < best[1]:
            best = (name, run)
        shutil.rmtree(store)
        print(f"layout {name}: done ({hb.footer(bench)})", file=sys.stderr, flush=True)
    text = hb.table(["layout", "GB", "compression", "floor s", "read s", "run s", "run/read",
                     "run/floor", "run GiB"], rows)
    assert best is not None
    return text, best[0]


def _nbytes(store: Path, name: str) -> int:
    import zarr

    return int(zarr.open_array(str(store), path=name, mode="r").nbytes)


def size_table(folder: Path, sizes: list[float], gallery: int, layout: str, repeat: int) -> str:
    rows = []
    for size in sizes:
        n_bank, n_test = hb.sims_rows(size, gallery)
        store = make(folder, f"size{size:g}", size, gallery, LAYOUTS[layout])
        raw = (n_bank + n_test) * gallery * 4
        runs, bench = measure(store, repeat)
        floor, read, run = (runs[k].median() for k in ("read floor", "read", "run"))
        rows.append([f"{raw / 1e9:.1f}", f"{n_bank} + {n_test}", f"{floor:.2f}",
                     both(runs["read"]), f"{raw / 1e9 / read:.2f}", both(runs["run"]),
                     f"{raw / 1e9 / run:.2f}", f"{run / read:.2f}", f"{run / floor:.2f}",
                     f"{runs['read'].rss:.2f}", f"{runs['run'].rss:.2f}"])
        shutil.rmtree(store)
        print(f"size {size:g} GB: done ({hb.footer(bench)})", file=sys.stderr, flush=True)
    return hb.table(["GB", f"bank + test rows (x {gallery})", "floor s", "read s", "read GB/s",
                     "run s", "run GB/s", "run/read", "run/floor", "read GiB", "run GiB"], rows)


def v2t_table(folder: Path, sizes: list[float], repeat: int) -> str:
    """t2v and v2t baselines of stores of 20 captions per video, with peak RSS."""
    rows = []
    for size in sizes:
        videos = max(2, round((size * 1e9 / (20 * 4)) ** 0.5))
        store = hb.synth_store(folder / f"v2t{size:g}.zarr", "--kind", "sims", "--bank", "1000",
                               "--test", str(20 * videos), "--gallery", str(videos),
                               "--queries-per-item", "20")
        bench = hb.Bench(repeat)
        bench.add("read floor", hb.read_floor(hb.chunk_files(store)))
        for d in ("t2v", "v2t"):
            bench.add(d, hb.process([*hb.qbscale_command(), "run", store, "--method", "none",
                                     "--direction", d, "--quiet"]))
        runs = bench.run()
        raw = 20 * videos * videos * 4
        rows.append([f"{raw / 1e9:.2f}", f"{20 * videos} x {videos}",
                     f"{runs['read floor'].median():.2f}", both(runs["t2v"]), both(runs["v2t"]),
                     f"{runs['t2v'].rss:.2f}", f"{runs['v2t'].rss:.2f}"])
        shutil.rmtree(store)
        print(f"v2t {size:g} GB: done ({hb.footer(bench)})", file=sys.stderr, flush=True)
    return hb.table(["test GB", "captions x videos", "floor s", "t2v s", "v2t s", "t2v GiB",
                     "v2t GiB"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,16", help="bank + test GB, comma-separated")
    parser.add_argument("--choice-size", type=float, default=4.0)
    parser.add_argument("--layout", default="rows 64 MiB",
                        choices=[*LAYOUTS, "fastest"], help="layout of the size table")
    parser.add_argument("--gallery", type=int, default=50000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="scratch directory (default: temp)")
    parser.add_argument("--v2t-sizes", default="1,4,16",
                        help="test GB of the 20-captions-per-video stores, comma-separated")
    parser.add_argument("--only-v2t", action="store_true", help="the v2t table alone")
    args = parser.parse_args()
    folder = hb.workdir(args.dir, "qbscale-bench-memory")
    print(hb.machine())
    if not args.only_v2t:
        t2v_tables(folder, args)
    v2t_sizes = [float(s) for s in args.v2t_sizes.split(",")]
    print(f"\nt2v and v2t (20 captions per video, baseline); medians of {args.repeat}: "
          "process wall (pass alone); GiB = peak RSS")
    print(v2t_table(folder, v2t_sizes, args.repeat))
    shutil.rmtree(folder, ignore_errors=True)


def t2v_tables(folder: Path, args: argparse.Namespace) -> None:
    """The layout table, then the size table."""
    choice, layout = choose_layout(folder, args.choice_size, args.gallery, args.repeat)
    print(f"\nlayouts at {args.choice_size:g} GB (bank + test, float32); medians of "
          f"{args.repeat}: process wall (pass alone); compression = raw / on-disk bytes")
    print(choice)
    print(f"fastest: {layout}")
    if args.layout != "fastest":
        layout = args.layout
    sizes = [float(s) for s in args.sizes.split(",")]
    text = size_table(folder, sizes, args.gallery, layout, args.repeat)
    print(f"\nsizes, layout {layout}; medians of {args.repeat}: process wall (pass alone); "
          f"GiB = peak RSS")
    print(text)


if __name__ == "__main__":
    main()
