"""Helpers shared by the benchmark scripts: timed subprocesses, medians, tables.

Every measured command runs in its own process under ``/usr/bin/time -v``
(peak RSS) with its wall time taken around it; repetitions of the variants
being compared are interleaved, so a noisy neighbour slows all of them alike,
and the tables show medians.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# the console script's malloc settings, re-exported for the benchmarks
from qbscale.executors import MALLOC_ENV as MALLOC_ENV

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
GIB = 2**30


def qbscale_command() -> list[str]:
    """The console script beside this interpreter (it applies MALLOC_ENV through mallopt)."""
    script = Path(PYTHON).with_name("qbscale")
    return [str(script)] if script.exists() else [PYTHON, "-m", "qbscale.cli"]


@dataclass
class Measure:
    """One timed process: wall seconds, peak RSS bytes, its output."""

    wall: float
    rss: int
    stdout: str
    stderr: str

    def seconds(self, label: str = "time") -> float | None:
        """A ``time: 1.23 s`` figure the process printed, if any."""
        found = re.findall(rf"^{label}: ([0-9.]+) s$", self.stdout, re.M)
        return float(found[-1]) if found else None


def timed(cmd: Sequence[str], env: dict[str, str] | None = None,
          cwd: str | Path | None = None) -> Measure:
    """Run ``cmd`` under ``/usr/bin/time -v``; raise with its output if it fails."""
    full_env = {**os.environ, **(env or {})}
    prefix = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
    start = time.perf_counter()
    proc = subprocess.run([*prefix, *map(str, cmd)], env=full_env, cwd=cwd,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return Measure(wall, int(found.group(1)) * 1024 if found else 0, proc.stdout, proc.stderr)


def interleaved(commands: dict[str, tuple[list[str], dict[str, str] | None]], repeat: int,
                warmup: bool = True) -> dict[str, list[Measure]]:
    """Run every command ``repeat`` times, round-robin (after one untimed warm-up each)."""
    if warmup:
        for cmd, env in commands.values():
            timed(cmd, env)
    out: dict[str, list[Measure]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, (cmd, env) in commands.items():
            out[name].append(timed(cmd, env))
    return out


def median(values: Sequence[float | None]) -> float:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else float("nan")


def wall(runs: Sequence[Measure]) -> float:
    return median([m.wall for m in runs])


def peak(runs: Sequence[Measure]) -> float:
    """Largest peak RSS of the runs, GiB."""
    return max(m.rss for m in runs) / GIB


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A fixed-width text table (markdown-compatible)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def disk_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def workdir(base: str | None, name: str) -> Path:
    """A fresh scratch directory under ``base`` (default: the system temp dir)."""
    import tempfile

    root = Path(base or tempfile.gettempdir()) / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


def machine() -> str:
    """One line about the machine and the load on it."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (f"{os.cpu_count()} cores; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
            "(shared machine: figures are medians of interleaved runs)")


def synth_store(out: Path, *args: str) -> Path:
    """``qbscale synth OUT ARGS`` (quiet), returning OUT."""
    timed([*qbscale_command(), "synth", str(out), *args, "--quiet", "--overwrite"])
    return out
