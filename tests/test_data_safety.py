"""Data safety of every store qbscale writes: --overwrite replaces only its own
kind and never an input, two writers never lose a store, SIGTERM and SIGKILL,
full disks and EIO leave the previous output byte for byte, FIFOs never hang."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from click.testing import CliRunner

from qbscale.cli import cli
from qbscale.storage.durability import stage
from qbscale.storage.durability.lock import read_lock
from qbscale.storage.stores.results import open_result
from qbscale.storage.stores.store import open_experiment

from ._faults import QBSCALE, leftovers, qbscale, signalled, slowed, snapshot, tmpfs, wait_for
from .cluster_fixtures import problem


def invoke(*args: object) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(res: object, *needles: str) -> str:
    """The single ``Error:`` line of a failed command, naming every needle."""
    output = res.output  # type: ignore[attr-defined]
    assert res.exit_code == 1, (res.exit_code, output, res.exception)  # type: ignore[attr-defined]
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # type: ignore[attr-defined]
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    bank, test = problem(n_bank=200, n_gallery=50)
    np.save(tmp_path / "b.npy", bank)
    np.save(tmp_path / "t.npy", test)
    return tmp_path / "b.npy", tmp_path / "t.npy"


def ingest_args(inputs: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    return ["ingest", "--bank", str(inputs[0]), "--test", str(inputs[1]), "-o", str(out),
            "-q", "--chunk-rows", "20", *extra]


@pytest.fixture()
def store(tmp_path: Path, inputs: tuple[Path, Path]) -> Path:
    out = tmp_path / "exp.zarr"
    res = invoke(*ingest_args(inputs, out))
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    return out


@pytest.fixture()
def norm(tmp_path: Path, store: Path) -> Path:
    out = tmp_path / "norm.zarr"
    res = invoke("fit", store, "-o", out, "-q")
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    return out


# ---------------------------------------------------- 1. --overwrite replaces its own kind


def test_fit_overwrite_never_replaces_an_experiment_store(store, tmp_path):
    before = snapshot(store)
    res = invoke("fit", store, "-o", store, "--overwrite", "-q")
    one_line_error(res, str(store), "the input")
    other = tmp_path / "other.zarr"
    res = invoke(*ingest_args((tmp_path / "b.npy", tmp_path / "t.npy"), other))
    other_before = snapshot(other)
    res = invoke("fit", store, "-o", other, "--overwrite", "-q")
    one_line_error(res, str(other), "qbscale experiment store, not a normaliser")
    assert snapshot(store) == before and snapshot(other) == other_before


@pytest.mark.parametrize("kind", ["file", "directory", "zarr group", "normaliser"])
def test_overwrite_refuses_what_is_not_of_its_kind(store, norm, tmp_path, inputs, kind):
    import zarr

    target = tmp_path / "target"
    if kind == "file":
        target.write_text("precious")
        needle = "a file"
    elif kind == "directory":
        target.mkdir()
        (target / "notes.txt").write_text("precious")
        needle = "a directory that is not a qbscale store"
    elif kind == "zarr group":
        zarr.create_group(str(target), attributes={"mine": 1})
        needle = "a Zarr group that is not a qbscale store"
    else:
        target = norm
        needle = "a qbscale normaliser, not an experiment store"
    before = snapshot(target) if target.is_dir() else target.read_bytes()
    res = invoke(*ingest_args(inputs, target, "--overwrite"))
    one_line_error(res, str(target), needle)
    res = invoke("synth", target, "--overwrite", "-q", "--bank", "20", "--test", "10",
                 "--gallery", "10", "--dim", "4")
    one_line_error(res, str(target), needle)
    if kind != "normaliser":
        res = invoke("fit", store, "-o", target, "--overwrite", "-q")
        one_line_error(res, str(target), needle.replace("experiment store", "normaliser"))
    assert (snapshot(target) if target.is_dir() else target.read_bytes()) == before
    assert leftovers(tmp_path) == []


def test_overwrite_replaces_its_own_kind(store, norm, inputs):
    assert invoke(*ingest_args(inputs, store, "--overwrite")).exit_code == 0
    assert invoke("fit", store, "-o", norm, "--overwrite", "-q").exit_code == 0
    assert leftovers(store.parent) == []


def test_an_output_is_never_an_input(store, tmp_path, inputs):
    bank = inputs[0]
    before = bank.read_bytes()
    res = invoke("ingest", "--bank", bank, "--test", inputs[1], "-o", bank, "--overwrite", "-q")
    one_line_error(res, str(bank))
    assert bank.read_bytes() == before
    # an input inside the store it would replace
    res = invoke("ingest", "--bank", f"{store}/bank", "--test", inputs[1], "-o", store,
                 "--overwrite", "-q")
    one_line_error(res, str(store), "holds the input")
    # an output inside an input
    res = invoke("fit", store, "-o", store / "norm.zarr", "-q")
    one_line_error(res, "lies inside the input")
    assert not (store / "norm.zarr").exists()


@pytest.mark.parametrize("kind", ["JSON file", "hits file", "plot", "faiss index",
                                  "experiment store", "normaliser", "report"])
def test_check_output_refuses_any_place_inside_a_store_or_normaliser(store, norm, tmp_path,
                                                                       kind):
    """Not an input of the command, still refused: the root, an array's folder, a
    chunk, a manifest, a new path deep inside, reached through a symlink or ``..``;
    beside a store, or in a folder named like one that is no store, is fine."""
    from qbscale.errors import ConfigError
    from qbscale.storage.durability.paths import check_output, enclosing_store

    (tmp_path / "link").symlink_to(store)
    (tmp_path / "plain.zarr").mkdir()
    inside = [store / "zarr.json", store / "bank", store / "bank" / "c" / "0" / "0",
              store / "bank" / "qbscale_chunks.json", store / "new" / "deep" / "x",
              norm / "zarr.json", norm / "new", tmp_path / "link" / "x",
              tmp_path / "plain.zarr" / ".." / "exp.zarr" / "x"]
    for path in inside:
        assert enclosing_store(path) is not None, path
        with pytest.raises(ConfigError, match="lies inside the qbscale"):
            check_output(path, kind)
    for path in (tmp_path / "beside.out", tmp_path / "plain.zarr" / "x.out"):
        assert enclosing_store(path) is None
        check_output(path, kind)


def test_index_overwrite_replaces_only_a_faiss_index(tmp_path):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((40, 8)).astype(np.float32)
    np.save(tmp_path / "g.npy", gallery)
    bank = rng.standard_normal((60, 8)).astype(np.float32)
    np.save(tmp_path / "q.npy", bank)
    assert invoke("ingest", "--bank-emb", tmp_path / "q.npy", "--test-emb", tmp_path / "q.npy",
                  "--gallery-emb", tmp_path / "g.npy", "-o", tmp_path / "e.zarr",
                  "--no-ground-truth", "-q").exit_code == 0
    assert invoke("fit", tmp_path / "e.zarr", "-o", tmp_path / "n.zarr", "-q").exit_code == 0
    gal = tmp_path / "g.npy"
    before = gal.read_bytes()
    res = invoke("index", tmp_path / "n.zarr", "--gallery-emb", gal, "-o", gal, "--overwrite")
    one_line_error(res, str(gal), "the input")
    other = tmp_path / "other.bin"
    other.write_bytes(b"precious")
    res = invoke("index", tmp_path / "n.zarr", "--gallery-emb", gal, "-o", other, "--overwrite")
    one_line_error(res, str(other), "not a faiss index")
    assert gal.read_bytes() == before and other.read_bytes() == b"precious"
    index = tmp_path / "ix.faiss"
    for _ in range(2):
        res = invoke("index", tmp_path / "n.zarr", "--gallery-emb", gal, "-o", index,
                     "--overwrite")
        assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    assert stat.S_IMODE(index.stat().st_mode) == 0o666 & ~_umask()
    assert leftovers(tmp_path) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------- 2. two writers of one new path


@pytest.fixture(params=["renameat2", "fallback"])
def renames(request):
    """Publishing through renameat2, or (where it is missing) the flock fallback."""
    if request.param == "renameat2":
        yield request.param
        return
    from qbscale.storage.durability import rename

    with mock.patch.object(rename, "_renameat2", lambda: None):
        yield request.param


def _racing_commit(competitor: list[str]):
    """A LocalStage.commit that first lets ``qbscale COMPETITOR`` finish in full."""
    real = stage.LocalStage.commit

    def commit(self):
        done = qbscale(*competitor)
        assert done.returncode == 0, done.stderr
        commit.competitor_snapshot = snapshot(self.path)  # type: ignore[attr-defined]
        return real(self)

    return commit


def test_two_ingests_to_one_new_path_the_second_is_refused(tmp_path, inputs, renames):
    out = tmp_path / "exp.zarr"
    commit = _racing_commit(ingest_args(inputs, out))
    with mock.patch.object(stage.LocalStage, "commit", commit):
        res = invoke(*ingest_args(inputs, out))
    one_line_error(res, str(out), "appeared while")
    assert snapshot(out) == commit.competitor_snapshot  # type: ignore[attr-defined]
    assert leftovers(tmp_path) == []
    open_experiment(out)


def test_two_overwriting_ingests_leave_one_whole_store(tmp_path, inputs, renames):
    out = tmp_path / "exp.zarr"
    commit = _racing_commit(ingest_args(inputs, out, "--overwrite"))
    with mock.patch.object(stage.LocalStage, "commit", commit):
        res = invoke(*ingest_args(inputs, out, "--overwrite"))
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    assert leftovers(tmp_path) == []
    mine = json.loads((out / "zarr.json").read_bytes())["attributes"]["qbscale"]
    theirs = json.loads(commit.competitor_snapshot["zarr.json"][1])  # type: ignore[attr-defined]
    assert mine["complete"] and mine["store_id"] != theirs["attributes"]["qbscale"]["store_id"]
    open_experiment(out)


def test_two_fits_to_one_new_path_the_second_is_refused(store, tmp_path, renames):
    out = tmp_path / "n.zarr"
    commit = _racing_commit(["fit", str(store), "-o", str(out), "-q"])
    with mock.patch.object(stage.LocalStage, "commit", commit):
        res = invoke("fit", store, "-o", out, "-q")
    one_line_error(res, str(out), "appeared while")
    assert snapshot(out) == commit.competitor_snapshot  # type: ignore[attr-defined]
    assert leftovers(tmp_path) == []


def test_two_concurrent_ingest_processes(tmp_path, inputs):
    out = tmp_path / "exp.zarr"
    procs = [subprocess.Popen([str(QBSCALE), *ingest_args(inputs, out)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert sorted(code for code, _, _ in results) == [0, 1], results
    loser = next(err for code, _, err in results if code == 1)
    assert len(loser.strip().splitlines()) == 1 and str(out) in loser, loser
    assert leftovers(tmp_path) == []
    open_experiment(out)


# ----------------------------------------------------- 3. modes of published files


def test_a_saving_run_keeps_the_mode_of_the_root_zarr_json(store):
    root = store / "zarr.json"
    assert stat.S_IMODE(root.stat().st_mode) == 0o666 & ~_umask()
    old = os.umask(0o022)
    try:
        assert invoke("run", store, "--save-ranks", "-q").exit_code == 0
        assert stat.S_IMODE(root.stat().st_mode) == 0o644
        root.chmod(0o664)
        assert invoke("run", store, "--save-ranks", "-q").exit_code == 0
        assert stat.S_IMODE(root.stat().st_mode) == 0o664
    finally:
        os.umask(old)
    assert leftovers(store) == []


# --------------------------------------------------------------- 4. SIGTERM, SIGKILL


def test_sigterm_during_ingest_cleans_up_and_keeps_the_old_store(store, tmp_path, inputs):
    before = snapshot(store)
    ready = tmp_path / "ready"
    proc = slowed("qbscale.storage.stores.writer.write_matrix", ready,
                  *ingest_args(inputs, store, "--overwrite"))
    wait_for(ready, proc)
    assert any(name.startswith(".exp.zarr.partial-") for name in leftovers(tmp_path))
    code, out, err = signalled(proc)
    assert code == 143, (code, out, err)
    assert err.strip().splitlines() == ["Error: terminated (SIGTERM); nothing was written"]
    assert leftovers(tmp_path) == [] and snapshot(store) == before
    assert read_lock(str(store)) is None
    assert invoke(*ingest_args(inputs, store, "--overwrite")).exit_code == 0


def test_sigterm_during_a_saving_run_releases_the_lock(store, tmp_path):
    """Without --resume an interrupted run leaves the store byte for byte as it was."""
    assert invoke("run", store, "--save-ranks", "-q").exit_code == 0
    before = snapshot(store)
    ready = tmp_path / "ready"
    proc = slowed("qbscale.storage.stores.results:ScoresWriter.write", ready, "run", str(store),
                  "--save-scores", "-q", "--workers", "1", sleep=1.0)
    wait_for(ready, proc)
    code, out, err = signalled(proc)
    assert code == 143, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: terminated (SIGTERM)"), err
    assert "partial arrays were removed" in lines[0]
    assert read_lock(str(store)) is None and leftovers(store) == []
    assert snapshot(store) == before
    res = invoke("run", store, "--save-scores", "-q")
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]


def test_sigterm_during_a_resumable_run_keeps_its_finished_blocks(store, tmp_path):
    """With --resume the finished row blocks stay (unpublished) for the next --resume."""
    assert invoke("run", store, "--save-ranks", "-q").exit_code == 0
    before = snapshot(store)
    ready = tmp_path / "ready"
    proc = slowed("qbscale.storage.stores.results:ScoresWriter.write", ready, "run", str(store),
                  "--save-scores", "--resume", "-q", "--workers", "1", sleep=1.0)
    wait_for(ready, proc)
    code, out, err = signalled(proc)
    assert code == 143, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "rerun with --resume" in lines[0], err
    assert read_lock(str(store)) is None and leftovers(store) == []
    # the published results are untouched; the run's own prefix holds its manifest
    assert {k: v for k, v in snapshot(store).items() if k in before} == before
    published = json.loads(before["zarr.json"][1])["attributes"]["qbscale"]["last_run"]
    extra = {k.split("/")[1] for k in snapshot(store) if k not in before and k.count("/") >= 1}
    assert len(extra) == 1 and published["prefix"].split("/")[1] not in extra
    res = invoke("run", store, "--save-scores", "--resume", "-q")
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    runs = sorted(p.name for p in (store / "runs").iterdir() if p.is_dir())
    assert len(runs) == 1


def test_sigkill_leftovers_are_recognised_by_the_next_run(store, tmp_path, inputs):
    before = snapshot(store)
    ready = tmp_path / "ready"
    proc = slowed("qbscale.storage.stores.writer.write_matrix", ready,
                  *ingest_args(inputs, store, "--overwrite"))
    wait_for(ready, proc)
    signalled(proc, signal.SIGKILL)
    assert len(leftovers(tmp_path)) == 1 and snapshot(store) != before  # a lock, a stage
    res = invoke(*ingest_args(inputs, store, "--overwrite"))
    one_line_error(res, "no longer running", "qbscale unlock")
    assert invoke("unlock", store).exit_code == 0
    assert invoke(*ingest_args(inputs, store, "--overwrite")).exit_code == 0
    assert leftovers(tmp_path) == []  # the killed stage is gone
    # a saving run killed: its lock is named as stale, then broken, then all is well
    ready.unlink()
    proc = slowed("qbscale.storage.stores.results:ScoresWriter.write", ready, "run", str(store),
                  "--save-scores", "-q", "--workers", "1")
    wait_for(ready, proc)
    signalled(proc, signal.SIGKILL)
    res = invoke("run", store, "--save-scores", "-q")
    one_line_error(res, "no longer running", f"qbscale unlock {store}")
    assert invoke("unlock", store).exit_code == 0
    assert invoke("run", store, "--save-scores", "-q").exit_code == 0
    assert len([p for p in (store / "runs").iterdir() if p.is_dir()]) == 1


def _killed_saving_run(store: Path, tmp_path: Path, hook: str) -> str:
    """SIGKILL a saving run of ``store`` paused after ``hook``; the run prefix no root
    points at that it left (its own, or the previous run's)."""
    assert invoke("run", store, "--save-ranks", "-q").exit_code == 0
    ready = tmp_path / "ready"
    proc = slowed(hook, ready, "run", str(store), "--save-scores", "-q", "--workers", "1")
    wait_for(ready, proc)
    signalled(proc, signal.SIGKILL)
    published = json.loads((store / "zarr.json").read_text())["attributes"]["qbscale"][
        "last_run"]["prefix"]
    left = [f"runs/{p.name}" for p in (store / "runs").iterdir()
            if p.is_dir() and f"runs/{p.name}" != published]
    assert len(left) == 1, left
    return left[0]


def _check_lines(store: Path, code: int = 0) -> list[str]:
    res = invoke("check", store, "-q")
    assert res.exit_code == code, res.output  # type: ignore[attr-defined]
    return res.output.strip().splitlines()  # type: ignore[attr-defined]


def test_check_after_a_run_killed_while_computing(store, tmp_path):
    """The half-written arrays of a run killed while it computed are no damage: check
    says what they are and exits 0; unlock keeps them for --resume, and a run
    without --resume removes them."""
    prefix = _killed_saving_run(store, tmp_path,
                                "qbscale.storage.stores.results:ScoresWriter.write")
    lines = _check_lines(store)
    assert f"{prefix}: an interrupted run's unpublished results (not damage): `qbscale run " \
           f"{store} --resume` with its options reuses its finished row blocks, a run " \
           "without --resume removes them" in lines, lines
    assert lines[-1].endswith(", 0 bad") and not any("missing" in x for x in lines), lines
    res = invoke("unlock", store)
    assert res.exit_code == 0 and f"kept {prefix}: " in res.output, res.output  # type: ignore[attr-defined]
    assert read_lock(str(store)) is None and (store / prefix / "manifest").is_dir()
    assert invoke("run", store, "--save-scores", "-q").exit_code == 0
    assert not (store / prefix).exists()
    assert not any("interrupted" in x for x in _check_lines(store))


def test_check_after_a_run_killed_while_publishing(store, tmp_path):
    """Killed between publishing its results and deleting the previous run's: those
    are named as unpublished results, not damage, and unlock removes them."""
    prefix = _killed_saving_run(store, tmp_path,
                                "qbscale.storage.durability.publish.replace_root_attrs")
    lines = _check_lines(store)
    assert f"{prefix}: an interrupted run's unpublished results (not damage): " \
           f"`qbscale unlock {store}` removes them" in lines, lines
    res = invoke("unlock", store)
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    assert f"removed {prefix}: an interrupted run's unpublished results" in \
        res.output.splitlines(), res.output  # type: ignore[attr-defined]
    assert read_lock(str(store)) is None and not (store / prefix).exists()
    assert not any("interrupted" in x for x in _check_lines(store))
    assert open_result(str(store), "scores").shape[0] == 1


def test_check_still_finds_damage_beside_an_interrupted_run(store, tmp_path):
    prefix = _killed_saving_run(store, tmp_path,
                                "qbscale.storage.stores.results:ScoresWriter.write")
    (store / "test" / "c" / "1" / "0").unlink()
    lines = _check_lines(store, code=1)
    assert "test/c/1/0: missing" in lines and lines[-1].endswith(", 1 bad"), lines
    assert any(x.startswith(f"{prefix}: an interrupted run's") for x in lines), lines


@pytest.mark.parametrize(("hook", "flags"), [
    ("qbscale.storage.stores.results:ScoresWriter.write", ("--save-scores",)),
    ("qbscale.storage.stores.results:ScoresWriter.write", ("--save-scores", "--resume")),
    ("qbscale.storage.stores.store.check_unchanged", ("--save-ranks",)),
    ("qbscale.storage.stores.store.check_unchanged", ("--topk", "3")),
], ids=["while-computing", "while-computing-resumable", "before-saving-ranks",
        "before-saving-topk"])
def test_a_store_deleted_under_a_saving_run_is_not_made_again(store, tmp_path, hook, flags):
    """The run stops with one line naming the deletion, and nothing appears at the
    deleted path: no chunk directories made again by writes in flight, no bare
    group, no results published into one."""
    ready = tmp_path / "ready"
    proc = slowed(hook, ready, "run", str(store), *flags, "-q", "--workers", "1", sleep=1.0)
    wait_for(ready, proc)
    shutil.rmtree(store)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, (proc.returncode, out, err)
    assert err.strip().splitlines() == [
        f"Error: store {store} was deleted while this run used it: nothing was reported or "
        "saved, and nothing was written in its place"], err
    assert not os.path.lexists(store), sorted(str(p) for p in store.rglob("*"))[:10]
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ 5. a full disk


def test_a_full_disk_during_a_large_ingest_is_one_line(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "b.npy", rng.random((10000, 1000), dtype=np.float32))  # 40 MB
    np.save(tmp_path / "t.npy", rng.random((1000, 1000), dtype=np.float32))
    with tmpfs(tmp_path / "disk", "20m") as disk:
        done = qbscale("ingest", "--bank", str(tmp_path / "b.npy"), "--test",
                       str(tmp_path / "t.npy"), "-o", str(disk / "exp.zarr"), "--chunk-mb", "1",
                       "-q")
        assert done.returncode == 1, done
        assert done.stderr.splitlines() == [
            f"Error: cannot write {disk / 'exp.zarr'}: No space left on device"], done.stderr
        assert sorted(os.listdir(disk)) == []


# ----------------------------------------------------------- 6. FIFOs never hang


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging) when the block takes more than ``seconds``."""
    def expired(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _fifo_commands(tmp, store, norm, fifo, kind):
    q = str(tmp / "b.npy")
    return {
        "ingest --bank": ["ingest", "--bank", fifo, "--test", str(tmp / "t.npy"), "-o",
                          str(tmp / "x.zarr"), "-q"],
        "ingest --test-emb": ["ingest", "--bank-emb", q, "--test-emb", fifo, "--gallery-emb", q,
                              "-o", str(tmp / "x.zarr"), "-q"],
        "run --sims_train_test_path": ["run", "--sims_train_test_path", fifo,
                                       "--sims_test_path", str(tmp / "t.npy"), "-q"],
        "fit --gallery-bank": ["fit", str(store), "-o", str(tmp / "n2.zarr"), "--method",
                               "dual-is", "--gallery-bank", fifo, "-q"],
        "search --queries": ["search", str(norm), "--queries", fifo, "--topk", "1", "--hits",
                             str(tmp / "h.tsv"), "--gallery-emb", q, "-q"],
        "search --sims": ["search", str(norm), "--sims", fifo, "--topk", "1", "--hits",
                          str(tmp / "h.tsv"), "-q"],
        "report --items": ["report", str(store), "--items", fifo, "-o", str(tmp / "rep"), "-q"],
    }[kind]


@pytest.mark.parametrize("kind", ["ingest --bank", "ingest --test-emb",
                                  "run --sims_train_test_path", "fit --gallery-bank",
                                  "search --queries", "search --sims", "report --items"])
@pytest.mark.parametrize("special", ["FIFO", "character device"])
def test_a_fifo_or_device_input_is_refused_at_once(store, norm, tmp_path, kind, special):
    if special == "FIFO":
        fifo = tmp_path / "in.pkl"
        os.mkfifo(fifo)
        what = "a FIFO"
    else:
        fifo, what = Path("/dev/zero"), "a character device"
    args = _fifo_commands(tmp_path, store, norm, str(fifo), kind)
    with deadline(60):
        res = invoke(*args)
    if kind == "report --items" and "matplotlib" in res.output:  # type: ignore[attr-defined]
        pytest.skip("no matplotlib")
    one_line_error(res, f"input {fifo} is not a regular file ({what})")


# ------------------------------------------------- 7. EIO / ENOSPC at a random write


@contextlib.contextmanager
def failing_chunk_write(nth: int, err: int) -> Iterator[None]:
    """zarr's ``nth`` write to local storage (this process) fails with ``err``."""
    from zarr.storage import LocalStore

    real, calls = LocalStore.set, {"n": 0}

    async def failing(self, key, value):
        calls["n"] += 1
        if calls["n"] == nth:
            raise OSError(err, os.strerror(err))
        return await real(self, key, value)

    with mock.patch.object(LocalStore, "set", failing):
        yield


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("nth", [1, 3, 5, 8])
def test_write_errors_during_fit_keep_the_previous_normaliser(store, norm, tmp_path, err, nth):
    before = snapshot(norm)
    with failing_chunk_write(nth, err):
        res = invoke("fit", store, "-o", norm, "--overwrite", "--beta", "5", "-q")
    one_line_error(res, str(norm), os.strerror(err))
    assert snapshot(norm) == before and leftovers(tmp_path) == []
    assert invoke("fit", store, "-o", norm, "--overwrite", "--beta", "5", "-q").exit_code == 0


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("nth", [1, 4, 9])
def test_write_errors_during_ingest_keep_the_previous_store(store, tmp_path, inputs, err, nth):
    before = snapshot(store)
    with failing_chunk_write(nth, err):
        res = invoke(*ingest_args(inputs, store, "--overwrite"))
    one_line_error(res, str(store), os.strerror(err))
    assert snapshot(store) == before and leftovers(tmp_path) == []
    assert invoke(*ingest_args(inputs, store, "--overwrite")).exit_code == 0


@pytest.mark.parametrize("command", ["ingest", "fit"])
def test_the_old_output_is_whole_until_the_last_rename(store, norm, tmp_path, inputs, command):
    from qbscale.storage.durability import rename

    target = store if command == "ingest" else norm
    before, seen = snapshot(target), []
    real = rename.exchange

    def exchange(src, dst):  # the old output, but for the lock replacing it holds
        seen.append({k: v for k, v in snapshot(Path(dst)).items() if k != "qbscale.lock"}
                    == before)
        return real(src, dst)

    def failing(src, dst):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(src))

    args = ingest_args(inputs, store, "--overwrite") if command == "ingest" else \
        ["fit", str(store), "-o", str(norm), "--overwrite", "-q"]
    with mock.patch.object(rename, "exchange", failing):
        one_line_error(invoke(*args), str(target), "Input/output error")
    assert snapshot(target) == before and leftovers(tmp_path) == []
    with mock.patch.object(rename, "exchange", exchange):
        assert invoke(*args).exit_code == 0
    assert seen == [True] and leftovers(tmp_path) == []


@pytest.mark.parametrize("command", ["ingest", "fit"])
def test_eio_at_the_publishing_rename_keeps_the_previous_output(store, norm, tmp_path, inputs,
                                                                 command):
    target = store if command == "ingest" else norm
    before = snapshot(target)
    real = os.rename

    def failing(src, dst, *args, **kwargs):  # the staged output cannot move into place
        if os.path.basename(src).startswith(f".{target.name}.partial-"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), os.fspath(src))
        return real(src, dst, *args, **kwargs)

    args = ingest_args(inputs, store, "--overwrite") if command == "ingest" else \
        ["fit", str(store), "-o", str(norm), "--overwrite", "-q"]
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(ImportError):
            from qbscale.storage.durability import rename  # renameat2 unavailable: os.rename

            stack.enter_context(mock.patch.object(rename, "_renameat2", lambda: None))
        stack.enter_context(mock.patch("os.rename", failing))
        one_line_error(invoke(*args), str(target), "Input/output error")
    assert snapshot(target) == before and leftovers(tmp_path) == []
    assert invoke(*args).exit_code == 0


def test_hits_never_replace_an_input(norm, tmp_path):
    sims = tmp_path / "q.npz"
    np.savez(sims, s=np.zeros((3, 50), np.float32))
    before = sims.read_bytes()
    res = invoke("search", norm, "--sims", sims, "--topk", "1", "--hits", sims, "-q")
    one_line_error(res, f"output {sims} is the input {sims}")
    assert sims.read_bytes() == before
