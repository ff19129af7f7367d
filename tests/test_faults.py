"""Every writing command against every fault: the matrix command x fault.

After each fault: (1) the work directory (inputs and every command's previous
output) is intact byte for byte, (2) nothing new looks complete, (3) the exit
code is non-zero (143 after SIGTERM, -9 after SIGKILL) and stderr is one
``Error:`` line, (4) the same command, run again on a working disk, succeeds
and writes valid outputs.  Each case's seed is in its id; ``QBSCALE_FAULT_SEED=N``
shifts every seed to explore other write offsets.  How faults are injected:
see ``tests/_fault_matrix.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from qbscale.cli import COMMANDS, cli
from qbscale.cli.options import Command, InputPath, OutputPath, UpdatedPath

from ._fault_matrix import (
    LONG,
    LONG_SPEC,
    MOMENTS,
    PAGE,
    SPEC,
    SPECS,
    TERM_BUDGET,
    Diff,
    Long,
    Runner,
    Snapshot,
    Spec,
    assert_one_line_error,
    build_shim,
    copy_tree,
    diff,
    remount,
    seed_of,
    snapshot,
    stderr_lines,
    terminate_at,
    tmpfs,
    used_bytes,
    written_bytes,
)


@dataclass(frozen=True)
class Template:
    """A work directory holding every input and every command's previous output."""

    root: Path
    written: dict[str, tuple[int, int]]  # per command: bytes and pages it wrote there


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    here = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(here)


def invoke(*argv: str) -> object:
    res = CliRunner().invoke(cli, list(argv))
    assert res.exit_code == 0 and res.exception is None, \
        f"qbscale {' '.join(argv)} exited {res.exit_code}: {res.output}{res.exception!r}"
    return res


@pytest.fixture(scope="session")
def shim(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler for the fault-injection shim")
    return build_shim(tmp_path_factory.mktemp("shim"))


@pytest.fixture(scope="session")
def runner(shim, tmp_path_factory) -> Iterator[Runner]:
    runner = Runner(shim, tmp_path_factory.mktemp("outputs"))
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def template(tmp_path_factory) -> Template:
    import zarr

    root = tmp_path_factory.mktemp("template")
    rng = np.random.default_rng(0)
    np.save(root / "b.npy", rng.standard_normal((60, 20)).astype(np.float32))
    np.save(root / "t.npy", rng.standard_normal((20, 20)).astype(np.float32))
    np.save(root / "q.npy", rng.standard_normal((20, 16)).astype(np.float32))
    (root / "notes.txt").write_text("a user's notes\n")
    (root / "site").mkdir()  # a user's web page
    (root / "site" / "index.html").write_text("<html>a user's page</html>\n")
    (root / "q.txt").write_text("".join(f"query-{i}\n" for i in range(20)))
    (root / "g.txt").write_text("".join(f"item-{i}\n" for i in range(20)))
    (root / "userdir").mkdir()
    (root / "userdir" / "notes.txt").write_text("a user's notes\n")
    zarr.create_group(str(root / "group.zarr"))
    (root / "group.zarr" / "notes.txt").write_text("a user's notes\n")
    written = {}
    with chdir(root):
        invoke("-q", "synth", "--bank", "60", "--test", "20", "--gallery", "20",
               "--chunk-rows", "10", "exp.zarr")
        invoke("-q", "synth", "--kind", "embeddings", "--bank", "60", "--test", "20",
               "--gallery", "20", "--dim", "16", "emb.zarr")
        invoke("-q", "fit", "emb.zarr", "-o", "norm.zarr")
        os.symlink("exp.zarr", "link.zarr")  # another name of a store
        invoke("-q", "fit", "emb.zarr", "-o", "live.zarr", "--updatable")
        invoke("-q", "index", "live.zarr", "-o", "live.faiss")
        invoke("-q", "fit", "emb.zarr", "-o", "inplace.zarr", "--updatable")
        np.save(root / "nb.npy", rng.standard_normal((8, 16)).astype(np.float32))
        np.save(root / "ni.npy", rng.standard_normal((4, 16)).astype(np.float32))
        _shard(root)
        for spec in SPECS:  # each command's previous output
            before = snapshot(root)
            invoke(*spec.command())
            written[spec.name] = written_bytes(root, diff(before, snapshot(root)))
            assert written[spec.name][0] > 0, spec.name
    return Template(root, written)


def _shard(root: Path) -> None:
    """An updatable normaliser of other bank rows (nb.npy) over emb.zarr's gallery."""
    from qbscale.retrieval.normaliser import Normaliser

    Normaliser.fit(bank_emb=str(root / "nb.npy"), gallery_emb=str(root / "emb.zarr" /
                   "gallery_emb"), updatable=True).save(root / "shard.zarr")


# --- the checks -----------------------------------------------------------------------------

def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in Path(rel).parts)


def _resume_state(spec: Spec, rel: str) -> bool:
    """An unpublished run's prefix inside the store it writes (kept for --resume)."""
    return spec.store is not None and rel.startswith(f"{spec.store}/runs/") \
        and rel.count("/") >= 2


def _allowed(spec: Spec, fault: str, rel: str) -> bool:
    """A new path the fault may leave (an interrupted run's resume state, a killed
    process's hidden partial files and lock)."""
    if fault == "sigterm":  # cleaned up: only a --resume run keeps its state
        return "--resume" in spec.argv and _resume_state(spec, rel)
    if fault == "sigkill":
        return _resume_state(spec, rel) or _leftover(rel) \
            or rel in {f"{store}/qbscale.lock" for store in spec.stores}
    return False


def _leftover(rel: str) -> bool:
    """A killed writer's partial file: hidden beside an output, or inside one (a store)."""
    return "partial" in rel and (_hidden(rel) or "/" in rel)


def _looks_complete(path: Path) -> str | None:
    """What ``path`` opens as, if it opens as a complete qbscale store."""
    from qbscale.retrieval.normaliser import Normaliser
    from qbscale.storage.stores.store import open_experiment

    if not path.is_dir():
        return None
    for what, opener in (("experiment store", open_experiment), ("normaliser", Normaliser.load)):
        try:
            opener(path)
        except Exception:
            continue
        return what
    return None


def left_behind(spec: Spec, fault: str, work: Path, before: Snapshot,
                after: Snapshot) -> list[str]:
    """(1) the previous contents intact, (2) nothing new that looks complete."""
    problems = []
    d = diff(before, after)
    bad = Diff(added=[p for p in d.added if not _allowed(spec, fault, p)],
               removed=d.removed, changed=d.changed)
    if bad:
        problems.append(f"work directory changed: {bad}")
    for top in sorted({Path(p).parts[0] for p in d.added} - set(before)):
        what = _looks_complete(work / top)
        if what:
            problems.append(f"new {top!r} opens as a complete {what}")
    return problems


def exit_status(fault: str, code: int, err: str) -> list[str]:
    """(3) the exit code, and stderr one ``Error:`` line (no traceback)."""
    problems = []
    if fault == "sigkill":
        if code != -9:
            problems.append(f"exit {code} after SIGKILL, expected -9 (the fault did not land)")
        if "Traceback" in err:
            problems.append(f"a traceback on stderr:\n{err}")
        return problems
    if fault == "sigterm" and code != 143:
        problems.append(f"exit {code} after SIGTERM, expected 143")
    elif code == 0 and fault == "enospc":
        problems.append("exit 0 on a disk with fewer free pages than its outputs take: an "
                        "output was rewritten in place, or a failed write went unnoticed")
    elif code <= 0 and fault != "sigterm":
        problems.append(f"exit {code} under {fault}, expected an error exit (> 0)")
    try:
        assert_one_line_error(code, err, fault)
    except AssertionError as exc:
        problems.append(str(exc))
    return problems


def rerun(spec: Spec, work: Path, unlock: bool = False) -> list[str]:
    """(4) the same command on a working disk succeeds and its outputs are valid."""
    with chdir(work):
        for store in spec.stores if unlock else ():
            if (work / store / "qbscale.lock").exists():  # left by a killed writer
                CliRunner().invoke(cli, ["unlock", store])  # the documented recovery
        res = CliRunner().invoke(cli, spec.command())
        if res.exit_code != 0 or res.exception is not None:
            return [f"rerun on a working disk exited {res.exit_code}: "
                    f"{res.output.strip()} {res.exception!r}"]
        try:
            spec.validate(work)
        except Exception as exc:
            return [f"rerun's output is not valid: {exc!r}"]
    return []


def report(what: str, problems: list[str]) -> None:
    assert not problems, f"{what}:\n- " + "\n- ".join(problems)


# --- command x fault ------------------------------------------------------------------------

FAULTS = ("enospc", "eio", "readonly", "sigterm", "sigkill")
SHIM_MODE = {"eio": "eio", "sigterm": "term", "sigkill": "kill"}


def _cases() -> list[object]:
    cases = []
    for spec in SPECS:
        for fault in FAULTS:
            seed = seed_of(spec.name, fault)
            cases.append(pytest.param(spec.name, fault, seed,
                                      id=f"{spec.name}-{fault}-seed{seed}"))
    return cases


@pytest.mark.parametrize(("name", "fault", "seed"), _cases())
def test_fault(name, fault, seed, template, runner, tmp_path):
    spec = SPEC[name]
    rng = np.random.default_rng(seed)
    nbytes, pages = template.written[name]
    work = tmp_path / "work"
    argv = spec.command()
    with contextlib.ExitStack() as stack:
        if fault in ("enospc", "readonly"):
            stack.enter_context(tmpfs(work))
        copy_tree(template.root, work)
        before = snapshot(work)
        injected = None
        if fault == "enospc":  # room for a random number of pages, fewer than it writes
            free = int(rng.integers(0, pages)) * PAGE
            remount(work, f"size={used_bytes(work) + free}")
            where = f"{free} bytes free"
        elif fault == "readonly":
            remount(work, "ro")
            where = "read-only"
        else:
            at = int(rng.integers(0, nbytes))
            injected = {"mode": SHIM_MODE[fault], "at": at}
            where = f"at byte {at} of ~{nbytes}"
        code, _, err = runner.run(argv, work, injected)
        problems = exit_status(fault, code, err)
        problems += left_behind(spec, fault, work, before, snapshot(work))
        if fault == "enospc":
            remount(work, "size=256m")
        elif fault == "readonly":
            remount(work, "rw")
        problems += rerun(spec, work, unlock=fault == "sigkill")
    report(f"qbscale {' '.join(argv)}: {fault} ({where})", problems)


# --- two writers at once --------------------------------------------------------------------

def _race_cases() -> list[object]:
    cases = []
    for spec in SPECS:
        kinds = ("race", "race-new") if spec.replaces and not spec.in_place else ("race",)
        for kind in kinds:
            seed = seed_of(spec.name, kind)
            cases.append(pytest.param(spec.name, kind, seed, id=f"{spec.name}-{kind}-seed{seed}"))
    return cases


@pytest.mark.parametrize(("name", "kind", "seed"), _race_cases())
def test_two_writers(name, kind, seed, template, runner, tmp_path):
    """Two processes write the same output at once: ``race`` over a previous output
    (with --overwrite where the command takes it), ``race-new`` into a free path
    without --overwrite (exactly one may win)."""
    spec = SPEC[name]
    rng = np.random.default_rng(seed)
    work = tmp_path / "work"
    copy_tree(template.root, work)
    overwrite = kind == "race"
    if not overwrite:
        for rel in spec.outputs:
            path = work / rel
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    before = snapshot(work)
    argv = spec.command(overwrite=overwrite)
    sleeps = rng.integers(4_000, 12_000, size=2)  # per write (the first 40): they overlap
    handles = [runner.start(argv, work, {"mode": "slow", "sleep_us": int(s)}) for s in sleeps]
    results = [runner.finish(h) for h in handles]
    problems = []
    codes = sorted(code for code, _, _ in results)
    for code, _, err in results:
        if code != 0:
            if code < 0:
                problems.append(f"a writer died of signal {-code}")
            try:
                assert_one_line_error(code, err, "the writer that lost")
            except AssertionError as exc:
                problems.append(str(exc))
        elif [line for line in stderr_lines(err) if not line.startswith("Note: ")]:
            problems.append(f"a writer that succeeded wrote to stderr: {err}")
    if codes[0] != 0:
        problems.append(f"neither writer succeeded: exits {codes}")
    if kind == "race-new" and codes == [0, 0]:
        problems.append("both writers succeeded into a new path without --overwrite: "
                        "one silently replaced the other")
    d = diff(before, snapshot(work))
    stray = [p for p in d.added if _hidden(p) or p.endswith("qbscale.lock")
             or Path(p).parts[0] not in spec.outputs]
    if stray:
        problems.append(f"left behind: {sorted(stray)[:12]}")
    unrelated = [p for p in d.removed + d.changed if Path(p).parts[0] not in spec.outputs]
    if unrelated:
        problems.append(f"changed outside its outputs: {sorted(unrelated)[:12]}")
    if codes[0] == 0:
        try:
            spec.validate(work)
        except Exception as exc:
            problems.append(f"the output after the race is not valid: {exc!r}")
    problems += rerun(spec, work)
    report(f"two of qbscale {' '.join(argv)} at once (exits {codes})", problems)


# --- where an output may go ---------------------------------------------------------------
#
# Every output path of every command (an OutputPath option or argument) is walked
# here: each spec's argv names where its outputs go, and each is pointed at places
# no output may go.  A command whose output option no spec writes fails
# test_every_output_path_is_checked_and_walked, so a new option cannot skip this.

#: parameters that are no path (so neither an InputPath nor an OutputPath)
NOT_A_PATH = {"alpha", "array", "bank_sample_text", "bank_sizes", "beta", "factory",
              "gallery_beta", "kc", "label", "nnn_k", "scheduler", "title"}
OUTPUT_NAME = re.compile(r"json|hits|plot|out|report|html|png|index|dest|write|save_to")


def _command(name: str) -> click.Command:
    command = cli.get_command(click.Context(cli), name)
    assert command is not None, name
    return command


def output_slots(spec: Spec) -> list[tuple[str, int]]:
    """``(parameter name, argv index)`` of every output path ``spec.argv`` gives."""
    command = _command(spec.argv[0])
    by_flag = {opt: p for p in command.params if isinstance(p, click.Option)
               for opt in (*p.opts, *p.secondary_opts)}
    positional = [p for p in command.params if isinstance(p, click.Argument)]
    slots, i = [], 1
    while i < len(spec.argv):
        option = by_flag.get(spec.argv[i])
        if option is not None:
            if option.is_flag:
                i += 1
                continue
            if isinstance(option.type, OutputPath):
                slots.append((option.name or "", i + 1))
            i += 2
            continue
        if len(positional) == 1 and isinstance(positional[0].type, OutputPath):
            slots.append((positional[0].name or "", i))
        i += 1
    return slots


SLOTS = [(spec, name, i) for spec in SPECS for name, i in output_slots(spec)]


def test_every_output_path_is_checked_and_walked():
    """Every command is a Command (its outputs checked before it runs); every
    parameter is a path read, a path written, or named here as no path; every
    output parameter is written by a spec of the matrix (so walked below)."""
    walked = {(spec.argv[0], name) for spec, name, _ in SLOTS}
    outputs = set()
    for command_name in COMMANDS:
        command = _command(command_name)
        assert isinstance(command, Command), f"{command_name} is not a qbscale Command"
        for param in command.params:
            name = param.name or ""
            if isinstance(param.type, OutputPath):
                outputs.add((command_name, name))
                assert (command_name, name) in walked, \
                    f"{command_name} {param.opts}: no spec of the fault matrix writes it"
            elif isinstance(param.type, InputPath) or \
                    (isinstance(param, click.Option) and param.is_flag):
                continue  # read (e.g. search --index, a faiss index), or a flag
            elif OUTPUT_NAME.search(name):
                raise AssertionError(f"{command_name} {param.opts} sounds like an output "
                                     "but is no OutputPath (so its path is never checked)")
            elif isinstance(param.type, click.Path | click.types.StringParamType):
                assert name in NOT_A_PATH, \
                    f"{command_name} {param.opts}: an InputPath, an OutputPath or no path?"
    assert outputs == walked


def _refusal(res: object, target: str) -> list[str]:
    """Problems unless ``res`` is one clean refusal naming ``target``."""
    problems = []
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        problems.append(f"crashed: {res.exception!r}")
    if res.exit_code not in (1, 2):
        problems.append(f"exit {res.exit_code}, expected a refusal; stdout: "
                        f"{res.stdout.strip()[:200]}")
        return problems
    errors = [line for line in stderr_lines(res.stderr) if line.startswith("Error: ")]
    if res.exit_code == 1:
        try:
            assert_one_line_error(res.exit_code, res.stderr, "the refusal")
        except AssertionError as exc:
            problems.append(str(exc))
    elif len(errors) != 1:
        problems.append(f"not one Error line: {res.stderr}")
    if errors and target not in errors[0]:
        problems.append(f"the error does not name {target}: {errors[0]}")
    return problems


def _aimed(spec: Spec, index: int, target: str, work: Path) -> list[str]:
    """``spec`` with its output at argv ``index`` aimed at ``target``: refused, and the
    work directory byte for byte as it was."""
    argv = spec.command()
    argv[index + 1] = target  # (command() puts -q first)
    before = snapshot(work)
    with chdir(work):
        res = CliRunner().invoke(cli, argv)
    problems = _refusal(res, target)
    d = diff(before, snapshot(work))
    if d:
        problems.append(f"work directory changed: {d}")
    return [f"qbscale {' '.join(argv)}: {p}" for p in problems]


#: places inside a store or a normaliser (an input of the command or not)
INSIDE = {
    "store-meta": "exp.zarr/zarr.json",
    "store-array-meta": "exp.zarr/test/zarr.json",
    "store-chunk": "exp.zarr/bank/c/0/0",
    "store-manifest": "exp.zarr/bank/qbscale_chunks.json",
    "store-new-file": "exp.zarr/new.out",
    "store-new-dir": "exp.zarr/bank/new.out",
    "normaliser-meta": "norm.zarr/zarr.json",
    "normaliser-chunk": "norm.zarr/beta/c/0",
    "normaliser-new-file": "norm.zarr/new.out",
    "other-store": "emb.zarr/zarr.json",
    "via-symlink": "link.zarr/zarr.json",
    "via-dotdot": "userdir/../exp.zarr/zarr.json",
    "holds-every-input": ".",
}


def _inputs_of(spec: Spec) -> list[str]:
    """The spec's InputPath values (its own inputs); of an input the command writes a
    new version of (an UpdatedPath: ``fit --update``, ``items``, ``index --follow``),
    a file inside it, since the path itself is where an in-place update goes
    (the ``*-in-place`` specs)."""
    command = _command(spec.argv[0])
    ctx = command.make_context(spec.argv[0], list(spec.argv[1:]), resilient_parsing=True)
    return [f"{v}/zarr.json" if isinstance(p.type, UpdatedPath) and v.endswith(".zarr") else v
            for p in command.params if isinstance(p.type, InputPath)
            for v in _flat(ctx.params.get(p.name or ""))
            if not (isinstance(p.type, UpdatedPath) and not v.endswith(".zarr"))]


def _flat(value: object) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, tuple | list) else [str(value)]


@pytest.mark.parametrize(("name", "param", "index"),
                         [pytest.param(s.name, p, i, id=f"{s.name}-{p}") for s, p, i in SLOTS])
def test_output_never_inside_an_input_or_a_store(name, param, index, template, tmp_path):
    """An output onto or inside an input, a store or a normaliser (their metadata,
    chunks, manifests; through a symlink or ``..``), or a folder holding the
    inputs, is refused before anything is written."""
    spec = SPEC[name]
    work = tmp_path / "work"
    copy_tree(template.root, work)
    for rel in INSIDE.values():
        assert rel == "." or rel.endswith("new.out") or (work / rel).exists(), rel
    targets = {**INSIDE, **{f"own-input-{v}": v for v in _inputs_of(spec)}}
    problems = []
    for target in targets.values():
        problems += _aimed(spec, index, target, work)
    report(f"{name}: {param} aimed inside inputs and stores", problems)


KINDS = {
    "plain-file": "notes.txt",
    "experiment-store": "emb.zarr",
    "normaliser-store": "fit.zarr",
    "user-dir": "userdir",
    "user-site": "site",
    "faiss-index": "idx.faiss",
    "zarr-group": "group.zarr",
    "report-dir": "rep",
}
FILES = {"plain-file", "faiss-index"}
#: output kind -> the kind of path it may replace (with --overwrite)
LEGIT = {"experiment store": "experiment-store", "normaliser": "normaliser-store",
         "faiss index": "faiss-index", "report": "report-dir"}


def _kind_cases() -> list[object]:
    cases = []
    for spec, param, index in SLOTS:
        kind = _output_type(spec, param).kind
        if kind not in LEGIT and kind != "faiss index":  # a file: replaces files, no folder
            targets = [k for k in KINDS if k not in FILES]
        else:
            targets = [k for k in KINDS if k != LEGIT[kind]]
        cases += [pytest.param(spec.name, index, k, id=f"{spec.name}-{param}-onto-{k}")
                  for k in targets]
    return cases


def _output_type(spec: Spec, param: str) -> OutputPath:
    found = next(p for p in _command(spec.argv[0]).params if p.name == param)
    assert isinstance(found.type, OutputPath)
    return found.type


@pytest.mark.parametrize(("name", "index", "kind"), _kind_cases())
def test_overwrite_refuses_other_kinds(name, index, kind, template, tmp_path):
    """An output aimed (with --overwrite where the command takes it) at an existing
    path of another kind: a user's folder or web page, a store or a normaliser it
    does not write, a report folder, a Zarr group: refused, nothing changed."""
    work = tmp_path / "work"
    copy_tree(template.root, work)
    report(f"{name} onto a {kind}", _aimed(SPEC[name], index, KINDS[kind], work))


def test_report_replaces_only_its_own_report(template, tmp_path):
    """report -o: a new or empty folder is written; its own earlier report only with
    --overwrite; the user's page never, --overwrite or not."""
    work = tmp_path / "work"
    copy_tree(template.root, work)
    base = ["-q", "report", "exp.zarr", "--method", "dis", "--no-diagnose", "-o"]
    (work / "empty").mkdir()
    with chdir(work):
        for out in ("new", "empty"):
            res = CliRunner().invoke(cli, [*base, out])
            assert res.exit_code == 0, res.output
            assert (work / out / "index.html").is_file()
        again = _aimed(Spec("again", ("report", "exp.zarr", "-o", "new", "--method", "dis",
                                      "--no-diagnose"), ("new",), ()), 3, "new", work)
        assert again == [], again
        res = CliRunner().invoke(cli, [*base, "new", "--overwrite"])
        assert res.exit_code == 0, res.output
    for flags in ((), ("--overwrite",)):
        spec = Spec("site", ("report", "exp.zarr", "-o", "site", "--method", "dis",
                             "--no-diagnose", *flags), ("site",), ())
        assert _aimed(spec, 3, "site", work) == []
    assert (work / "site" / "index.html").read_text() == "<html>a user's page</html>\n"


# --- SIGTERM latency ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def long_work(tmp_path_factory, runner) -> tuple[Path, dict[str, float]]:
    """A work directory of tiny-chunk inputs (every command over it lasts seconds),
    and each command's uninterrupted duration there."""
    root = tmp_path_factory.mktemp("long")
    rng = np.random.default_rng(1)
    np.save(root / "b.npy", rng.standard_normal((3000, 40)).astype(np.float32))
    np.save(root / "t.npy", rng.standard_normal((400, 40)).astype(np.float32))
    np.save(root / "q.npy", rng.standard_normal((120, 16)).astype(np.float32))
    with chdir(root):
        invoke("-q", "synth", "--bank", "1200", "--test", "300", "--gallery", "300",
               "--chunk-rows", "1", "slow.zarr")
        invoke("-q", "synth", "--kind", "embeddings", "--bank", "3000", "--test", "300",
               "--gallery", "3000", "--dim", "16", "--chunk-rows", "5", "emb.zarr")
        invoke("-q", "fit", "emb.zarr", "-o", "norm.zarr")
    durations = {}
    for spec in LONG:
        start = time.monotonic()
        code, _, err = runner.run(["-q", *spec.argv], root)
        durations[spec.name] = time.monotonic() - start
        assert code == 0, f"qbscale {' '.join(spec.argv)} exited {code}: {err}"
        _remove_outputs(root, spec)
    return root, durations


def _remove_outputs(root: Path, spec: Long) -> None:
    for rel in spec.outputs:
        path = root / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _store_state(root: Path) -> tuple[bytes, list[str]]:
    """The published state of slow.zarr: its root metadata and its run prefixes."""
    runs = root / "slow.zarr" / "runs"
    return ((root / "slow.zarr" / "zarr.json").read_bytes(),
            sorted(p.name for p in runs.iterdir()) if runs.is_dir() else [])


def _gone_soon(root: Path, before: set[str], seconds: float = 15.0) -> list[str]:
    """New entries of ``root`` still there after ``seconds`` (an interrupted writer
    may leave a hidden staging directory to a detached remover)."""
    deadline = time.monotonic() + seconds
    while (new := sorted(set(os.listdir(root)) - before)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return new


@pytest.mark.parametrize("moment", sorted(MOMENTS))
@pytest.mark.parametrize("name", [spec.name for spec in LONG])
def test_sigterm_stops_every_command_at_once(name, moment, long_work, runner):
    """SIGTERM early in or in the middle of every writing and long-running command
    (tiny chunks: seconds of work): the process exits within TERM_BUDGET seconds
    with exit code 143 and its one Error line, and nothing new looks complete."""
    root, durations = long_work
    spec = LONG_SPEC[name]
    before, store_before = set(os.listdir(root)), _store_state(root)
    delay = MOMENTS[moment] * durations[name]
    for _ in range(3):
        code, seconds, err = terminate_at(runner, ["-q", *spec.argv], root, delay)
        finished = code == -signal.SIGTERM and all(os.path.lexists(root / r)
                                                   for r in spec.outputs)
        if code is not None and not finished:
            break
        _remove_outputs(root, spec)  # it ended first (or was exiting): a quiet moment
        delay /= 2
    where = f"qbscale {' '.join(spec.argv)}: SIGTERM after {delay:.2f} s of ~{durations[name]:.2f}"
    problems = []
    if code is None:
        problems.append("it ended before SIGTERM was sent, three times")
    else:
        if code != 143:
            problems.append(f"exit {code} after SIGTERM, expected 143")
        if seconds > TERM_BUDGET:
            problems.append(f"exited {seconds:.2f} s after SIGTERM (budget {TERM_BUDGET} s)")
        try:
            assert_one_line_error(code, err, "sigterm")
        except AssertionError as exc:
            problems.append(str(exc))
    for rel in spec.outputs:
        if os.path.lexists(root / rel):
            problems.append(f"{rel} exists after SIGTERM")
    left = _gone_soon(root, before)
    if left:
        problems.append(f"left behind: {left}")
    state = _store_state(root)
    if state[0] != store_before[0]:
        problems.append("slow.zarr's published results changed")
    extra = set(state[1]) - set(store_before[1])
    if extra and "--resume" not in spec.argv:
        problems.append(f"slow.zarr keeps run prefixes {sorted(extra)}")
    _remove_outputs(root, spec)
    report(where, problems)
