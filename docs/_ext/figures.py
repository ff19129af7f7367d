"""Draw the documentation's figures from the shipped data at build time.

Before an HTML build reads its sources, this runs the commands a user would,
into ``docs/_build/figures``.  On the embeddings in ``examples/data/glosses``
(2000 definitions -> 2000 words, 5000 querybank definitions), where QB-Norm
helps:

* ``qbscale ingest --bank-emb ... -o glosses.zarr`` and ``qbscale sweep
  glosses.zarr ... --plot glosses-sweep.png`` (the landing page's figure).

On those in ``examples/data/pycode`` (4000 Python functions, 7951 querybank
queries), where it does not:

* ``qbscale ingest --bank-emb ... --test-emb ... --gallery-emb ...``
* ``qbscale sweep ... --json sweep.json --plot sweep.png`` (R@1 against
  querybank size)
* ``qbscale report ... --sweep sweep.json`` (the HTML report; its PNGs are the
  hubness, parameter-sweep and diagnostics figures the pages show)

``performance.png`` plots the seconds measured by ``benchmarks/bench_floor.py``
(the figures of docs/performance.md, in :data:`FLOOR` below) against store size.

The pages include the PNGs as ``/_build/figures/...``; the report is copied to
``report/`` in the HTML output.  The figures are drawn again only when the
qbscale sources, the data or this file changed (a stamp of their contents);
it takes about 40 s on 2 cores.  ``QBSCALE_DOCS_FIGURES=0`` skips them (the
pages then warn about missing images).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sphinx.util import logging

LOG = logging.getLogger(__name__)
DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
DATA = ROOT / "examples" / "data" / "pycode"
GLOSSES = ROOT / "examples" / "data" / "glosses"
OUT = DOCS / "_build" / "figures"
SOURCES = [ROOT / "qbscale", ROOT / "cli", DATA, GLOSSES, Path(__file__)]


def _stamp() -> str:
    digest = hashlib.sha256()
    for root in SOURCES:
        files = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in files:
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(ROOT)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def _qbscale(*args: str | Path) -> None:
    command = [sys.executable, "-m", "qbscale.cli", "-q", *map(str, args)]
    LOG.info("figures: qbscale %s", " ".join(map(str, args)))
    proc = subprocess.run(command, cwd=OUT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stdout}\n{proc.stderr}")


#: ``python benchmarks/bench_floor.py --sizes 1,4,16 --beta-size 4 --fit-size 16
#: --repeat 3`` on 2026-12-04 (docs/performance.md): store GB -> medians, seconds
FLOOR = {
    "run, DIS beta 20 (reported)": {1: 0.56, 4: 1.79, 16: 8.91},
    "read floor (np.fromfile, 2 threads)": {1: 0.065, 4: 0.269, 16: 1.28},
    "exp floor (float64 exp of the bank, 2 cores)": {1: 0.0938, 4: 0.41, 16: 1.68},
}
FIT_16GB = {"fit, DIS beta 20 (reported)": 8.4, "read floor of the bank": 1.21,
            "exp floor of the bank": 2.45}


def draw_performance() -> None:
    """Seconds against store size, with the floors, on log-log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for (label, points), style in zip(FLOOR.items(), ("o-", "s--", "^:"), strict=True):
        ax.plot(list(points), list(points.values()), style, label=label)
    ax.plot([16], [FIT_16GB["fit, DIS beta 20 (reported)"]], "D", color="black",
            label="fit, DIS beta 20, 16 GB bank (reported)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([1, 4, 16], labels=["1 GB", "4 GB", "16 GB"])
    ax.set_xlabel("store size (bank + test, float32)")
    ax.set_ylabel("seconds (median of 3)")
    ax.set_title("qbscale run against the machine's floors, 2 cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "performance.png")
    plt.close(fig)


def draw() -> None:
    """Run the commands above into :data:`OUT` (the store and report replaced)."""
    OUT.mkdir(parents=True, exist_ok=True)
    draw_performance()
    _qbscale("ingest", "--bank-emb", GLOSSES / "querybank.npy", "--test-emb",
             GLOSSES / "queries_test.npy", "--gallery-emb", GLOSSES / "gallery_test.npy",
             "-o", "glosses.zarr", "--overwrite")
    _qbscale("sweep", "glosses.zarr", "--bank-sizes", "250,1000,2500,all", "--repeats", "3",
             "--json", "glosses-sweep.json", "--plot", "glosses-sweep.png")
    _qbscale("ingest", "--bank-emb", DATA / "querybank.npy", "--test-emb",
             DATA / "queries_test.npy", "--gallery-emb", DATA / "gallery_test.npy",
             "-o", "pycode.zarr", "--overwrite")
    _qbscale("sweep", "pycode.zarr", "--bank-sizes", "250,1000,4000,all", "--repeats", "3",
             "--json", "sweep.json", "--plot", "sweep.png")
    shutil.rmtree(OUT / "report", ignore_errors=True)
    _qbscale("report", "pycode.zarr", "-o", "report", "--items",
             DATA / "items_test.jsonl.gz", "--sweep", "sweep.json",
             "--title", "qbscale report: pycode")
    for name in ("occurrence.png", "sweeps.png", "diagnostics.png"):
        shutil.copy(OUT / "report" / name, OUT / name)


def _on_init(app) -> None:
    if app.builder.format != "html" or os.environ.get("QBSCALE_DOCS_FIGURES") == "0":
        return
    stamp, stamp_file = _stamp(), OUT / "stamp"
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        LOG.info("figures: up to date in %s", OUT)
        return
    start = time.perf_counter()
    draw()
    stamp_file.write_text(stamp)
    LOG.info("figures: drawn in %.1f s", time.perf_counter() - start)


def _on_finished(app, exception) -> None:
    report = OUT / "report"
    if exception is None and app.builder.format == "html" and report.is_dir():
        shutil.copytree(report, Path(app.outdir) / "report", dirs_exist_ok=True)


def setup(app):
    app.connect("builder-inited", _on_init)
    app.connect("build-finished", _on_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
