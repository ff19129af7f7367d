"""The benchmark harness every script uses: timed commands, the machine's floor, tables.

A measured figure means little on a shared 2-core machine unless it is set
against what the machine can do *in the same run*.  So a :class:`Bench`
interleaves, repeat after repeat, the commands it measures with *floor*
measurements taken in this process (a raw 2-thread ``np.fromfile`` read of the
same chunk files, numpy's ``exp`` and matmul rates on the same block shapes),
and :func:`report` prints every figure as a ratio to its floor: the median of
the interleaved repeats, their min and max, the load average before and after
the table, and ``LOADED`` on any figure taken while the load average exceeded
the core count (such a figure is not a measurement).

* :func:`process` - a command in a fresh subprocess: whole-process wall time,
  the time the command reported itself (``time: 1.23 s``), and its peak RSS
  (``ru_maxrss`` of that child, from ``os.wait4``).
* :func:`call` - a function in this process (wall and this thread's CPU time).
* :func:`read_floor`, :func:`exp_rate`, :func:`matmul_rate` - the floors;
  :func:`projected` makes a floor item from a rate (a unit's time, scaled).
* :class:`Bench` - named items measured round-robin ``repeat`` times after a
  warm-up; :class:`Figure` holds one item's samples.
* :func:`machine` - cores, CPU model, numpy and its BLAS (threadpoolctl).

Typical use::

    bench = Bench(repeat=5)
    bench.add("read floor", read_floor(chunk_files(store)))
    bench.add("run", process([*qbscale_command(), "run", store, "--quiet"]))
    figures = bench.run()
    print(report("run against the read floor", figures, floor="read floor"))
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qbscale.executors import MALLOC_ENV as MALLOC_ENV
from qbscale.executors import tune_malloc

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
GIB = 2**30
#: what a command prints about its own duration: ``time: 1.23 s`` (run, sweep)
#: or ``Wrote OUT in 1.2 s: ...`` (fit)
REPORTED = (r"^time: ([0-9.]+) s$", r"^Wrote .* in ([0-9.]+) s")

# the floors read chunk files as the qbscale command does: with its malloc settings
tune_malloc()


# ------------------------------------------------------------------ the machine


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1


def load() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def loaded(value: float | None = None) -> bool:
    """True when the load average exceeds the core count: no figure is trusted."""
    return (load() if value is None else value) > cores()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def machine() -> str:
    """Cores, CPU, numpy and its BLAS, and the load average: a header for every table."""
    from threadpoolctl import threadpool_info

    blas = ", ".join(f"{p.get('internal_api')} {p.get('version')} "
                     f"({p.get('num_threads')} threads, {p.get('architecture')})"
                     for p in threadpool_info() if p.get("user_api") == "blas") or "no BLAS found"
    one, five, fifteen = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (f"machine: {cores()} cores, {cpu_model()}; numpy {np.__version__}, BLAS {blas}\n"
            f"load average {one:.2f} {five:.2f} {fifteen:.2f}"
            + ("  LOADED: above the core count, figures are not measurements"
               if loaded(one) else ""))


# ------------------------------------------------------------------ samples


@dataclass
class Sample:
    """One timing: wall seconds, CPU seconds (user + system of a process, or this
    thread's for a call), the seconds the command reported, peak RSS, minor faults."""

    wall: float
    load: float
    cpu: float | None = None
    reported: float | None = None
    rss: int = 0
    faults: int = 0
    stdout: str = ""
    stderr: str = ""


def _reported(text: str) -> float | None:
    for pattern in REPORTED:
        found = re.findall(pattern, text, re.M)
        if found:
            return float(found[-1])
    return None


def run_command(cmd: Sequence[object], env: dict[str, str] | None = None,
                cwd: str | Path | None = None) -> Sample:
    """Run ``cmd`` in a fresh process; raise with its output if it fails.

    Peak RSS is the child's own ``ru_maxrss`` (``os.wait4``), so it is that
    command's, not the largest of every child so far.
    """
    before = load()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], env={**os.environ, **(env or {})},
                                cwd=cwd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                           f"{stdout[-2000:]}\n{stderr[-4000:]}")
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return Sample(wall, max(before, load()), cpu=usage.ru_utime + usage.ru_stime,
                  reported=_reported(stdout), rss=rss, faults=usage.ru_minflt,
                  stdout=stdout, stderr=stderr)


def process(cmd: Sequence[object], env: dict[str, str] | None = None,
            cwd: str | Path | None = None) -> Callable[[], Sample]:
    """A :class:`Bench` item: ``cmd`` in a fresh process (:func:`run_command`)."""
    return lambda: run_command(cmd, env, cwd)


def call(fn: Callable[[], object]) -> Callable[[], Sample]:
    """A :class:`Bench` item: ``fn()`` in this process (wall and this thread's CPU time)."""
    def item() -> Sample:
        before = load()
        start, cpu = time.perf_counter(), time.thread_time()
        fn()
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - start
        return Sample(wall, max(before, load()), cpu=cpu)

    return item


# ------------------------------------------------------------------ floors


def chunk_files(store: str | Path, arrays: Sequence[str] = ("bank", "test")) -> list[Path]:
    """Every chunk file of ``arrays`` in a local Zarr v3 store."""
    return sorted(f for a in arrays for f in (Path(store) / a / "c").rglob("*") if f.is_file())


def read_files(files: Sequence[Path], threads: int = 2) -> int:
    """Read every file with ``np.fromfile`` on ``threads`` threads; the bytes read."""
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(lambda f: np.fromfile(f, dtype=np.uint8).nbytes, files))


def read_floor(files: Sequence[Path], threads: int = 2) -> Callable[[], Sample]:
    """A :class:`Bench` item: the raw threaded read of ``files`` (page cache warm
    after the warm-up), the floor of any pass over them."""
    return call(lambda: read_files(files, threads))


def exp_seconds(shape: tuple[int, int], dtype: str = "float64", repeat: int = 3) -> float:
    """Seconds of one thread's ``np.exp`` over a ``shape`` block, a row at a time
    into one cache-sized buffer (as the kernels do); the fastest of ``repeat``."""
    rng = np.random.default_rng(0)
    rows = -rng.random(shape, dtype=np.float32).astype(dtype) * 20
    out = np.empty(shape[1], dtype)
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        for row in rows:
            np.exp(row, out=out)
        best = min(best, time.thread_time() - start)
    return best


def exp_rate(shape: tuple[int, int], dtype: str = "float64") -> float:
    """Elements per second of one thread's ``np.exp`` (:func:`exp_seconds`)."""
    return shape[0] * shape[1] / exp_seconds(shape, dtype)


def matmul_rate(m: int, k: int, n: int, dtype: str = "float32", repeat: int = 3,
                callers: int = 1) -> float:
    """FLOP/s of numpy's ``(m, k) @ (k, n)``, the fastest of ``repeat``: one caller
    with BLAS's own threads, or ``callers`` threads of one BLAS thread each (as
    qbscale's local schedulers run products)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((m, k), dtype=np.float32).astype(dtype), \
        rng.random((k, n), dtype=np.float32).astype(dtype)
    best = float("inf")
    if callers == 1:
        for _ in range(repeat):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        return 2 * m * k * n / best
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(callers) as pool:
        for _ in range(repeat):
            start = time.perf_counter()
            list(pool.map(lambda _: a @ b, range(callers)))
            best = min(best, time.perf_counter() - start)
    return 2 * m * k * n * callers / best


def projected(seconds_per_unit: Callable[[], float], units: float) -> Callable[[], Sample]:
    """A :class:`Bench` item for a floor too long to run whole: ``units`` times the
    seconds one unit takes now (e.g. every product of a run at numpy's matmul rate)."""
    def item() -> Sample:
        before = load()
        return Sample(seconds_per_unit() * units, max(before, load()))

    return item


# ------------------------------------------------------------------ interleaving


@dataclass
class Figure:
    """The samples of one measured item."""

    name: str
    samples: list[Sample] = field(default_factory=list)

    def _values(self, what: str) -> list[float]:
        values = [getattr(s, what) for s in self.samples]
        return [v for v in values if v is not None]

    def median(self, what: str = "wall") -> float:
        values = self._values(what)
        return statistics.median(values) if values else float("nan")

    def spread(self, what: str = "wall") -> tuple[float, float]:
        values = self._values(what) or [float("nan")]
        return min(values), max(values)

    @property
    def rss(self) -> float:
        """Largest peak RSS of the samples, GiB."""
        return max((s.rss for s in self.samples), default=0) / GIB

    @property
    def loaded(self) -> int:
        """Samples taken while the load average exceeded the core count."""
        return sum(loaded(s.load) for s in self.samples)


class Bench:
    """Items measured round-robin: every repeat runs each item once, in order, so
    a noisy neighbour slows them all alike.  One untimed warm-up round first
    (page cache, imports)."""

    def __init__(self, repeat: int = 3, warmup: bool = True) -> None:
        self.repeat, self.warmup = repeat, warmup
        self.items: dict[str, Callable[[], Sample]] = {}
        self.load_before = self.load_after = float("nan")

    def add(self, name: str, item: Callable[[], Sample]) -> None:
        self.items[name] = item

    def run(self) -> dict[str, Figure]:
        self.load_before = load()
        if self.warmup:
            for item in self.items.values():
                item()
        figures = {name: Figure(name) for name in self.items}
        for _ in range(self.repeat):
            for name, item in self.items.items():
                figures[name].samples.append(item())
        self.load_after = load()
        return figures


# ------------------------------------------------------------------ tables


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A fixed-width text table (markdown-compatible)."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def seconds(fig: Figure, what: str = "wall") -> str:
    """``median (min-max)``, and ``LOADED`` when any sample was."""
    lo, hi = fig.spread(what)
    text = f"{fmt(fig.median(what))} ({fmt(lo)}-{fmt(hi)})"
    return text + (" LOADED" if fig.loaded else "")


def ratio(value: float, floor: float) -> str:
    usable = value == value and floor == floor and floor > 0
    return f"{value / floor:.2f}x" if usable else "-"


def report(title: str, figures: dict[str, Figure], floor: str, bench: Bench | None = None,
           gb: float | None = None) -> str:
    """The standard table: every figure's median (min-max) wall seconds, its
    ratio to ``figures[floor]``'s median, the seconds the command reported
    itself and that ratio, peak RSS; then the load average before and after."""
    base = figures[floor].median()
    rows = []
    for fig in figures.values():
        inner = fig.median("reported")
        rows.append([fig.name, seconds(fig), ratio(fig.median(), base),
                     fmt(inner) if inner == inner else "-", ratio(inner, base),
                     f"{gb / fig.median():.2f}" if gb else "-",
                     f"{fig.rss:.2f}" if fig.rss else "-"])
    text = table(["figure", "wall s, median (min-max)", f"x {floor}", "reported s",
                  f"reported x {floor}", "GB/s", "peak RSS GiB"], rows)
    repeats = max(len(f.samples) for f in figures.values())
    return "\n".join([f"\n{title} (medians of {repeats} interleaved repeats)",
                      footer(bench), text])


def footer(bench: Bench | None) -> str:
    if bench is None:
        return f"load average {load():.2f}"
    flag = "  LOADED" if loaded(max(bench.load_before, bench.load_after)) else ""
    return f"load average {bench.load_before:.2f} before, {bench.load_after:.2f} after{flag}"


# ------------------------------------------------------------------ stores and files


def qbscale_command() -> list[str]:
    """The console script beside this interpreter (it applies MALLOC_ENV through mallopt)."""
    script = Path(PYTHON).with_name("qbscale")
    return [str(script)] if script.exists() else [PYTHON, "-m", "qbscale.cli"]


def workdir(base: str | None, name: str) -> Path:
    """A fresh scratch directory under ``base`` (default: the system temp dir)."""
    root = Path(base or tempfile.gettempdir()) / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


def disk_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def synth_store(out: Path, *args: str) -> Path:
    """``qbscale synth OUT ARGS`` (quiet), returning OUT."""
    run_command([*qbscale_command(), "synth", str(out), *args, "--quiet", "--overwrite"])
    return out


def sims_rows(size_gb: float, gallery: int = 50000) -> tuple[int, int]:
    """Bank and test rows (3:1) making ``size_gb`` GB of float32 over ``gallery`` items."""
    rows = max(4, round(size_gb * 1e9 / (4 * gallery)))
    test = max(1, min(gallery, rows // 4))
    return rows - test, test


def sims_store(folder: Path, name: str, size_gb: float, gallery: int = 50000,
               *options: str) -> Path:
    """A ``qbscale synth --kind sims`` store of ``size_gb`` GB (bank:test 3:1)."""
    n_bank, n_test = sims_rows(size_gb, gallery)
    return synth_store(folder / f"{name}.zarr", "--kind", "sims", "--bank", str(n_bank),
                       "--test", str(n_test), "--gallery", str(gallery), *options)
