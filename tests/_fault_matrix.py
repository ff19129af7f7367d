"""Fault injection for tests/test_faults.py: the commands, the faults, the checks.

Every writing command is a :class:`Spec`: its arguments (relative to a work
directory holding every input and every command's previous output) and the
checks that its outputs are valid.  The faults:

* ``enospc``: the work directory is a tmpfs whose free space, after the
  inputs and previous outputs are in, is a random number of pages below what
  the command writes (a real full disk: every write path, C++ ones included).
* ``eio``, ``sigterm``, ``sigkill``: ``tests/_faultshim.c``, preloaded into
  the command, counts the bytes written under the work directory and at a
  random byte N fails that write and every later one with EIO, sends SIGTERM
  once, or sends SIGKILL.
* ``readonly``: the work directory is a tmpfs remounted read-only.
* ``race``/``race-new``: two processes write the same output at once (the
  shim slows each write under the work directory so they overlap).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SHIM_SOURCE = Path(__file__).with_name("_faultshim.c")
FORKSERVER = Path(__file__).with_name("_forkserver.py")
QBSCALE = str(Path(sys.executable).with_name("qbscale"))
PAGE = 4096
TIMEOUT = 180
# no idle BLAS threads spinning in the subprocesses (the machine is shared)
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

Snapshot = dict[str, tuple[int, str | None]]


# --- the commands ---------------------------------------------------------------------------

Check = Callable[[Path], None]


@dataclass(frozen=True)
class Spec:
    """A writing command: ``argv`` run in the work directory (``-q`` is added)."""

    name: str
    argv: tuple[str, ...]
    outputs: tuple[str, ...]  # what it writes (relative paths)
    checks: tuple[Check, ...]
    replaces: bool = False  # takes --overwrite (and argv has it: the output exists)
    store: str | None = None  # a store it writes into (its runs/ may keep resume state)
    in_place: bool = False  # its output is its input: there is no free path to race into

    @property
    def stores(self) -> tuple[str, ...]:
        """The stores it writes (a killed writer may leave its lock in them)."""
        found = [rel for rel in self.outputs if rel.endswith(".zarr")]
        return tuple(dict.fromkeys([*found, *([self.store] if self.store else [])]))

    def command(self, overwrite: bool = True) -> list[str]:
        argv = list(self.argv)
        if not overwrite:
            argv.remove("--overwrite")
        return ["-q", *argv]

    def validate(self, work: Path) -> None:
        for check in self.checks:
            check(work)


def store_ok(rel: str) -> Check:
    def check(work: Path) -> None:
        from qbscale.storage.stores.check import check_store
        from qbscale.storage.stores.store import open_experiment

        report = check_store(work / rel)
        assert not report.bad, f"{rel}: bad chunks {report.bad}"
        open_experiment(work / rel)
    return check


def result_ok(rel: str, name: str) -> Check:
    def check(work: Path) -> None:
        from qbscale.storage.stores.results import open_result

        arr = open_result(str(work / rel), name)
        assert arr.shape[-1] > 0, (rel, name, arr.shape)
    return check


def normaliser_ok(rel: str) -> Check:
    def check(work: Path) -> None:
        from qbscale.retrieval.normaliser import Normaliser

        Normaliser.load(work / rel)
    return check


def json_ok(rel: str, kind: str | None) -> Check:
    def check(work: Path) -> None:
        data = json.loads((work / rel).read_text())
        assert isinstance(data, dict), rel
        if kind:
            assert data.get("kind") == kind, (rel, data.get("kind"))
    return check


def hits_ok(rel: str) -> Check:
    def check(work: Path) -> None:
        from qbscale.storage.outputs.hits import read_hits

        cols = read_hits(work / rel)
        assert len(cols["query"]) == 20 * 3, (rel, len(cols["query"]))  # 20 queries, top 3
    return check


def ids_ok(rel: str) -> Check:
    def check(work: Path) -> None:
        from qbscale.storage.stores.ids import experiment_ids
        from qbscale.storage.stores.store import open_experiment

        queries, gallery = experiment_ids(open_experiment(work / rel))
        assert queries is not None and gallery is not None, rel
        assert queries.tolist() == (work / "q.txt").read_text().split(), rel
        assert gallery.tolist() == (work / "g.txt").read_text().split(), rel
    return check


def qrels_ok(rel: str) -> Check:
    def check(work: Path) -> None:
        lines = (work / rel).read_text().splitlines()
        assert len(lines) == 20 and all(len(line.split()) == 4 for line in lines), rel
    return check


def png_ok(rel: str) -> Check:
    def check(work: Path) -> None:
        data = (work / rel).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82"), rel
    return check


def html_ok(rel: str) -> Check:
    def check(work: Path) -> None:
        text = (work / rel).read_text()
        assert text.rstrip().endswith("</html>"), rel
    return check


def report_marker_ok(rel: str) -> Check:
    def check(work: Path) -> None:
        from qbscale.storage.durability.paths import REPORT_MARKER

        assert json.loads((work / rel / REPORT_MARKER).read_text())["kind"] == "report", rel
    return check


def faiss_ok(rel: str, items: int = 20) -> Check:
    def check(work: Path) -> None:
        import faiss

        assert faiss.read_index(str(work / rel)).ntotal == items, rel
    return check


def followed_ok(rel: str, norm: str) -> Check:
    def check(work: Path) -> None:
        from qbscale.retrieval.faiss_index import FaissSearch
        from qbscale.retrieval.normaliser import Normaliser

        FaissSearch.load(work / rel, Normaliser.load(work / norm))  # its ids checked
    return check


def _hits_spec(ext: str) -> Spec:
    return Spec(f"hits{ext}", ("run", "exp.zarr", "--topk", "3", "--hits", f"hits{ext}"),
                ("exp.zarr", f"hits{ext}"),
                (store_ok("exp.zarr"), result_ok("exp.zarr", "topk_index"), hits_ok(f"hits{ext}")),
                store="exp.zarr")


SPECS = (
    Spec("ingest", ("ingest", "--bank", "b.npy", "--test", "t.npy", "--chunk-rows", "10",
                    "-o", "out.zarr", "--json", "ingest.json", "--overwrite"),
         ("out.zarr", "ingest.json"), (store_ok("out.zarr"), json_ok("ingest.json", "ingest")),
         replaces=True),
    Spec("synth", ("synth", "--bank", "60", "--test", "20", "--gallery", "20", "--chunk-rows",
                   "10", "--json", "synth.json", "--overwrite", "syn.zarr"),
         ("syn.zarr", "synth.json"), (store_ok("syn.zarr"), json_ok("synth.json", "synth")),
         replaces=True),
    Spec("run-scores", ("run", "exp.zarr", "--save-scores", "--json", "run.json"),
         ("exp.zarr", "run.json"),
         (store_ok("exp.zarr"), result_ok("exp.zarr", "scores"), json_ok("run.json", "run")),
         store="exp.zarr"),
    Spec("run-ranks", ("run", "exp.zarr", "--save-ranks"), ("exp.zarr",),
         (store_ok("exp.zarr"), result_ok("exp.zarr", "ranks")), store="exp.zarr"),
    *(_hits_spec(ext) for ext in (".tsv", ".trec", ".parquet", ".npz")),
    Spec("ids", ("ids", "exp.zarr", "--queries", "q.txt", "--gallery", "g.txt", "--overwrite"),
         ("exp.zarr",), (store_ok("exp.zarr"), ids_ok("exp.zarr")), store="exp.zarr"),
    Spec("qrels", ("qrels", "exp.zarr", "-o", "truth.qrels"), ("truth.qrels",),
         (qrels_ok("truth.qrels"),)),
    Spec("fit", ("fit", "exp.zarr", "-o", "fit.zarr", "--json", "fit.json", "--overwrite"),
         ("fit.zarr", "fit.json"), (normaliser_ok("fit.zarr"), json_ok("fit.json", "fit")),
         replaces=True),
    Spec("fit-update", ("fit", "nb.npy", "--update", "live.zarr", "-o", "grown.zarr",
                        "--overwrite"),
         ("grown.zarr",), (normaliser_ok("grown.zarr"),), replaces=True),
    Spec("fit-update-in-place", ("fit", "nb.npy", "--update", "inplace.zarr", "-o",
                                 "inplace.zarr", "--overwrite"),
         ("inplace.zarr",), (normaliser_ok("inplace.zarr"),), replaces=True, in_place=True),
    Spec("items", ("items", "live.zarr", "--add", "ni.npy", "--remove", "1,3", "-o",
                   "items.zarr", "--overwrite", "--json", "items.json"),
         ("items.zarr", "items.json"), (normaliser_ok("items.zarr"),
                                        json_ok("items.json", None)), replaces=True),
    Spec("index-follow", ("index", "items.zarr", "--follow", "live.faiss", "-o",
                          "followed.faiss", "--overwrite"),
         ("followed.faiss",), (faiss_ok("followed.faiss", 22),
                               followed_ok("followed.faiss", "items.zarr")), replaces=True),
    Spec("merge", ("merge", "live.zarr", "shard.zarr", "-o", "merged.zarr", "--overwrite",
                   "--json", "merged.json"),
         ("merged.zarr", "merged.json"), (normaliser_ok("merged.zarr"),
                                          json_ok("merged.json", None)), replaces=True),
    Spec("info", ("info", "live.zarr", "--json", "info.json"), ("info.json",),
         (json_ok("info.json", None),)),
    Spec("index", ("index", "norm.zarr", "-o", "idx.faiss", "--overwrite"), ("idx.faiss",),
         (faiss_ok("idx.faiss"),), replaces=True),
    Spec("run-normaliser", ("run", "emb.zarr", "--normaliser", "norm.zarr", "--json",
                            "runn.json"), ("runn.json",), (json_ok("runn.json", "run"),)),
    Spec("search", ("search", "norm.zarr", "--queries", "q.npy", "--topk", "3", "--hits",
                    "found.tsv"), ("found.tsv",), (hits_ok("found.tsv"),)),
    Spec("report", ("report", "exp.zarr", "-o", "rep", "--method", "dis", "--no-diagnose",
                    "--overwrite"),
         ("rep",), (html_ok("rep/index.html"), report_marker_ok("rep")), replaces=True),
    Spec("sweep", ("sweep", "exp.zarr", "--bank-sizes", "30,all", "--repeats", "1",
                   "--plot", "sweep.png", "--json", "sweep.json"),
         ("sweep.png", "sweep.json"), (png_ok("sweep.png"), json_ok("sweep.json", None))),
    Spec("hubness-json", ("hubness", "exp.zarr", "--json", "hub.json"), ("hub.json",),
         (json_ok("hub.json", "hubness"),)),
    Spec("eval-json", ("eval", "exp.zarr", "--json", "eval.json"), ("eval.json",),
         (json_ok("eval.json", "eval"),)),
    Spec("diagnose-json", ("diagnose", "exp.zarr", "--json", "diag.json"), ("diag.json",),
         (json_ok("diag.json", "diagnose"),)),
)
SPEC = {spec.name: spec for spec in SPECS}


def seed_of(*parts: str) -> int:
    """A case's seed: stable across runs, shifted by $QBSCALE_FAULT_SEED to explore others."""
    base = int(os.environ.get("QBSCALE_FAULT_SEED", "0"))
    return (zlib.crc32("-".join(parts).encode()) + base) % 100_000


# --- snapshots ------------------------------------------------------------------------------

def snapshot(root: Path) -> Snapshot:
    """``{relative path: (mode, sha256 or None for a directory)}`` of everything under root."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                out[rel] = (st.st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                out[rel] = (st.st_mode, None if stat.S_ISDIR(st.st_mode) else os.readlink(path))
    return out


@dataclass
class Diff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def __str__(self) -> str:
        return (f"added {sorted(self.added)[:12]}, removed {sorted(self.removed)[:12]}, "
                f"changed {sorted(self.changed)[:12]}")


def diff(before: Snapshot, after: Snapshot) -> Diff:
    return Diff(added=[p for p in after if p not in before],
                removed=[p for p in before if p not in after],
                changed=[p for p in before if p in after and before[p] != after[p]])


def written_bytes(root: Path, d: Diff) -> tuple[int, int]:
    """Bytes and tmpfs pages of the files ``d`` adds or changes under root."""
    size = pages = 0
    for rel in d.added + d.changed:
        path = root / rel
        if path.is_file() and not path.is_symlink():
            n = path.stat().st_size
            size += n
            pages += -(-n // PAGE)
    return size, pages


# --- processes ------------------------------------------------------------------------------

def build_shim(directory: Path) -> Path:
    lib = directory / "faultshim.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(SHIM_SOURCE), "-ldl"],
                   check=True, capture_output=True)
    return lib


def shim_env(lib: Path, work: Path, fault: dict[str, object]) -> dict[str, str]:
    env = {**os.environ, "LD_PRELOAD": str(lib), "QBF_DIR": os.path.realpath(work), **ONE_THREAD}
    names = {"mode": "QBF_MODE", "at": "QBF_AT", "sleep_us": "QBF_SLEEP_US",
             "slow_writes": "QBF_SLOW_WRITES"}
    env.update({names[key]: str(value) for key, value in fault.items()})
    return env


@dataclass
class Handle:
    work: Path
    pid: int = 0
    out: Path | None = None
    err: Path | None = None
    proc: subprocess.Popen | None = None


class Runner:
    """Runs ``qbscale ARGV`` in a work directory, the shim set to ``fault``.

    By default each command is a child forked from a server that imported the
    command line once (``tests/_forkserver.py``); ``QBSCALE_FAULT_EXEC=1`` runs
    each as a fresh ``qbscale`` process instead (slower, the same cases).
    """

    def __init__(self, shim: Path, scratch: Path) -> None:
        self.shim, self.scratch, self.n = shim, scratch, 0
        self.server: subprocess.Popen | None = None
        if os.environ.get("QBSCALE_FAULT_EXEC") != "1":
            env = {**os.environ, **ONE_THREAD, "LD_PRELOAD": str(shim)}
            self.server = subprocess.Popen([sys.executable, str(FORKSERVER), str(shim)],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           text=True, env=env)

    def _ask(self, **request: object) -> dict:
        assert self.server is not None and self.server.stdin and self.server.stdout
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        line = self.server.stdout.readline()
        assert line, "the fork server died"
        return json.loads(line)

    def start(self, argv: list[str], work: Path, fault: dict[str, object] | None) -> Handle:
        if self.server is None:
            env = shim_env(self.shim, work, fault) if fault else None
            return Handle(work, proc=subprocess.Popen(
                [QBSCALE, *argv], cwd=work, env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True))
        self.n += 1
        out, err = self.scratch / f"{self.n}.out", self.scratch / f"{self.n}.err"
        full = {"dir": os.path.realpath(work), **fault} if fault else None
        pid = self._ask(op="run", argv=argv, cwd=str(work), stdout=str(out), stderr=str(err),
                        fault=full)["pid"]
        return Handle(work, pid=pid, out=out, err=err)

    def finish(self, handle: Handle) -> tuple[int, str, str]:
        if handle.proc is not None:
            out, err = handle.proc.communicate(timeout=TIMEOUT)
            return handle.proc.returncode, out, err
        deadline = time.monotonic() + TIMEOUT
        while (code := self._ask(op="poll", pid=handle.pid)["code"]) is None:
            if time.monotonic() > deadline:
                os.kill(handle.pid, signal.SIGKILL)
            time.sleep(0.01)
        assert handle.out and handle.err
        return code, handle.out.read_text(), handle.err.read_text()

    def run(self, argv: list[str], work: Path,
            fault: dict[str, object] | None = None) -> tuple[int, str, str]:
        return self.finish(self.start(argv, work, fault))

    def close(self) -> None:
        if self.server is not None:
            assert self.server.stdin
            self.server.stdin.close()
            self.server.wait(timeout=TIMEOUT)


def stderr_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def assert_one_line_error(code: int, err: str, what: str) -> None:
    lines = stderr_lines(err)
    assert "Traceback" not in err, f"{what}: a traceback on stderr:\n{err}"
    assert len(lines) == 1 and lines[0].startswith("Error: "), \
        f"{what}: stderr is not one 'Error:' line (exit {code}):\n{err}"


# --- tmpfs ----------------------------------------------------------------------------------

def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "256m") -> Iterator[Path]:
    """A tmpfs at ``path`` (root only; else the test is skipped)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def remount(path: Path, options: str) -> None:
    res = _mount("-o", f"remount,{options}", str(path))
    assert res.returncode == 0, f"remount {options}: {res.stderr}"


def used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)


# --- SIGTERM latency ------------------------------------------------------------------------

#: seconds from SIGTERM to the process's exit, at most (on a loaded 2-core machine)
TERM_BUDGET = 2.0


@dataclass(frozen=True)
class Long:
    """A writing or long-running command over tiny chunks: seconds of work that
    SIGTERM must cut short.  ``outputs`` are the paths it writes (absent before)."""

    name: str
    argv: tuple[str, ...]
    outputs: tuple[str, ...] = ()


LONG = (
    Long("ingest", ("ingest", "--bank", "b.npy", "--test", "t.npy", "--chunk-rows", "1",
                    "-o", "out.zarr", "--json", "ingest.json"), ("out.zarr", "ingest.json")),
    Long("synth", ("synth", "--bank", "1500", "--test", "300", "--gallery", "300",
                   "--chunk-rows", "1", "--json", "synth.json", "syn.zarr"),
         ("syn.zarr", "synth.json")),
    Long("run", ("run", "slow.zarr")),
    Long("run-scores", ("run", "slow.zarr", "--save-scores", "--json", "run.json"),
         ("run.json",)),
    Long("run-topk-hits", ("run", "slow.zarr", "--topk", "3", "--hits", "hits.parquet"),
         ("hits.parquet",)),
    Long("run-resume", ("run", "slow.zarr", "--save-ranks", "--resume")),
    Long("fit", ("fit", "slow.zarr", "-o", "fit.zarr", "--json", "fit.json"),
         ("fit.zarr", "fit.json")),
    Long("index", ("index", "norm.zarr", "-o", "idx.faiss", "--factory", "HNSW32"),
         ("idx.faiss",)),
    Long("search", ("search", "norm.zarr", "--queries", "q.npy", "--topk", "3", "--hits",
                    "found.tsv", "--block-rows", "10"), ("found.tsv",)),
    Long("check", ("check", "slow.zarr")),
    Long("sweep", ("sweep", "slow.zarr", "--bank-sizes", "100,all", "--repeats", "2",
                   "--json", "sweep.json", "--plot", "sweep.png"), ("sweep.json", "sweep.png")),
    Long("hubness", ("hubness", "slow.zarr", "--json", "hub.json"), ("hub.json",)),
    Long("diagnose", ("diagnose", "slow.zarr", "--json", "diag.json"), ("diag.json",)),
    Long("report", ("report", "slow.zarr", "-o", "rep", "--method", "dis", "--no-diagnose"),
         ("rep",)),
    Long("evaluate", ("eval", "slow.zarr", "--json", "eval.json"), ("eval.json",)),
)
LONG_SPEC = {spec.name: spec for spec in LONG}
#: when SIGTERM is sent, as a share of the command's uninterrupted duration
MOMENTS = {"early": 0.25, "middle": 0.6}


def terminate_at(runner: Runner, argv: list[str], work: Path, delay: float
                 ) -> tuple[int | None, float, str]:
    """Start ``qbscale ARGV``, send SIGTERM ``delay`` seconds later; its exit code
    (None: it had ended before), the seconds from the signal to its exit, stderr."""
    handle = runner.start(argv, work, None)
    pid = handle.pid or (handle.proc.pid if handle.proc else 0)

    def poll() -> int | None:  # the exit code once it ended (reaped: ask once more never)
        if handle.proc is not None:
            return handle.proc.poll()
        return runner._ask(op="poll", pid=handle.pid)["code"]

    def stderr() -> str:
        if handle.proc is not None:
            return handle.proc.communicate(timeout=TIMEOUT)[1]
        assert handle.err
        return handle.err.read_text()

    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        if poll() is not None:
            stderr()
            return None, 0.0, ""
        time.sleep(0.01)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    while (code := poll()) is None:
        if time.monotonic() - t0 > TIMEOUT:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
    return code, time.monotonic() - t0, stderr()
