"""Every file a command writes: checked before work, written beside and renamed.

A failed write (full disk, read-only directory) is one ``Error:`` line naming
the file, leaves the earlier file (and a store's earlier results) byte for byte
as they were and nothing beside them; a rerun on a working disk succeeds.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from click.testing import CliRunner, Result

import qbscale
from qbscale.cli import cli

from .test_safety import assert_one_line_error, read_only_dir

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=True)


def one_error(res: Result, *needles: str) -> None:
    """One ``Error:`` line on stderr naming every needle, exit 1, no traceback."""
    assert_one_line_error(res, *needles)
    assert len(res.stderr.splitlines()) == 1, res.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A store of embedding similarities, its normaliser, and the files they came from."""
    rng = np.random.default_rng(17)
    root = tmp_path_factory.mktemp("world")
    gallery = rng.standard_normal((40, 8)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = gallery + 0.3 * rng.standard_normal((40, 8)).astype(np.float32)
    bank = gallery[rng.integers(0, 40, 120)] + 0.3 * rng.standard_normal((120, 8))
    np.save(root / "g.npy", gallery)
    np.save(root / "b.npy", (bank @ gallery.T).astype(np.float32))
    np.save(root / "t.npy", queries @ gallery.T)
    store = qbscale.ingest(root / "exp.zarr", np.load(root / "b.npy"), np.load(root / "t.npy"),
                           progress=False)
    assert invoke("fit", store, "-o", root / "norm.zarr").exit_code == 0
    return {"root": root, "store": Path(store), "norm": root / "norm.zarr"}


def _mount(path: Path, options: str) -> bool:
    path.mkdir()
    return os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True).returncode == 0


class Disk:
    """A small tmpfs that can be filled up and emptied again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        with open(self.filler, "wb", buffering=0) as fh:
            for size in (65536, 1):  # big blocks, then the last few bytes
                with contextlib.suppress(OSError):
                    while True:
                        fh.write(b"\0" * size)

    def empty(self) -> None:
        self.filler.unlink()

    def listing(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p != self.filler)


@pytest.fixture()
def disk(tmp_path: Path) -> Iterator[Disk]:
    path = tmp_path / "disk"
    if not _mount(path, "size=4m"):
        pytest.skip("no tmpfs here (needs root and mount)")
    try:
        yield Disk(path)
    finally:
        subprocess.run(["umount", str(path)], check=True)


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or ``path`` itself) by relative name, with its bytes."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


Args = Callable[[dict[str, Path], Path], list[object]]


def _store_args(command: str, *rest: str) -> Args:
    return lambda w, out: [command, w["store"], *rest, out]


#: (case id, target file name, the command line writing the target)
CASES: list[tuple[str, str, Args]] = [
    ("run-json", "m.json", _store_args("run", "--json")),
    ("eval-json", "m.json", _store_args("eval", "--json")),
    ("hubness-json", "m.json", _store_args("hubness", "--json")),
    ("diagnose-json", "m.json", _store_args("diagnose", "--json")),
    ("sweep-json", "m.json", _store_args("sweep", "--bank-sizes", "60,all", "--repeats", "1",
                                         "--json")),
    ("sweep-plot", "m.png", _store_args("sweep", "--bank-sizes", "60,all", "--repeats", "1",
                                        "--plot")),
    ("fit-json", "m.json", lambda w, out: ["fit", w["store"], "-o", w["root"] / "n2.zarr",
                                           "--overwrite", "--json", out]),
    ("ingest-json", "m.json", lambda w, out: [
        "ingest", "--bank", w["root"] / "b.npy", "--test", w["root"] / "t.npy", "-o",
        w["root"] / "i.zarr", "--overwrite", "--json", out]),
    ("synth-json", "m.json", lambda w, out: [
        "synth", w["root"] / "s.zarr", "--bank", "30", "--test", "10", "--gallery", "10",
        "--dim", "4", "--overwrite", "--json", out]),
    *((f"run-hits{suffix}", f"h{suffix}", _store_args("run", "--topk", "3", "--hits"))
      for suffix in (".tsv", ".trec", ".parquet", ".npz")),
    *((f"search-hits{suffix}", f"h{suffix}", lambda w, out: [
        "search", w["norm"], "--sims", w["root"] / "t.npy", "--topk", "3", "--hits", out])
      for suffix in (".tsv", ".trec", ".parquet", ".npz")),
    ("index", "i.faiss", lambda w, out: ["index", w["norm"], "--gallery-emb",
                                         w["root"] / "g.npy", "--overwrite", "-o", out]),
    ("report", "rep", lambda w, out: ["report", w["store"], "--method", "dis",
                                      "--no-diagnose", "--overwrite", "-o", out]),
]


@pytest.mark.parametrize(("name", "args"), [(c[1], c[2]) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_full_disk_keeps_the_earlier_file(world, disk, name, args):
    if name == "i.faiss":
        pytest.importorskip("faiss")
    target = disk.path / name
    argv = args(world, target)
    res = invoke(*argv)
    assert res.exit_code == 0, res.output
    before = snapshot(target)
    disk.fill()
    res = invoke(*argv)
    one_error(res, str(target))
    assert snapshot(target) == before
    assert disk.listing() == [name]  # no partial sibling
    if target.is_dir():
        assert sorted(snapshot(target)) == sorted(before)  # no staging folder inside
    disk.empty()
    res = invoke(*argv)
    assert res.exit_code == 0, res.output
    assert disk.listing() == [name]


def test_a_full_disk_for_a_new_report_leaves_nothing(world, disk):
    disk.fill()
    res = invoke("report", world["store"], "--method", "dis", "--no-diagnose", "-o",
                 disk.path / "rep")
    one_error(res, str(disk.path / "rep"))
    assert disk.listing() == []


# --- a run's hits and --json are written before its results are published ------------------

def _published(store: Path) -> dict[str, bytes]:
    """The store's results: its root zarr.json and its runs/ (the lock aside)."""
    files = snapshot(store)
    return {k: v for k, v in files.items() if k == "zarr.json" or k.startswith("runs/")}


@pytest.mark.parametrize("option", ["--hits", "--json"])
def test_a_failed_run_output_keeps_the_saved_results(world, disk, option):
    store = world["store"]
    out = disk.path / ("h.tsv" if option == "--hits" else "m.json")
    res = invoke("run", store, "--topk", "3", "--save-ranks", option, out)
    assert res.exit_code == 0, res.output
    saved, written = _published(store), out.read_bytes()
    assert "zarr.json" in saved and any(k.startswith("runs/") for k in saved)
    disk.fill()
    res = invoke("run", store, "--topk", "4", "--save-ranks", "--beta", "30", option, out)
    one_error(res, str(out), "No space left on device")
    assert _published(store) == saved
    assert out.read_bytes() == written
    assert disk.listing() == [out.name]
    disk.empty()
    res = invoke("run", store, "--topk", "4", "--save-ranks", "--beta", "30", option, out)
    assert res.exit_code == 0, res.output
    assert _published(store) != saved


def test_a_read_only_hits_directory_fails_before_work(world, tmp_path):
    store = world["store"]
    assert invoke("run", store, "--topk", "3").exit_code == 0
    saved = _published(store)
    with read_only_dir(tmp_path / "ro") as ro, \
            mock.patch("qbscale.engine.plan.build", side_effect=AssertionError("work started")):
        res = invoke("run", store, "--topk", "3", "--beta", "30", "--hits", ro / "h.tsv")
        one_error(res, str(ro / "h.tsv"))
    assert _published(store) == saved


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC])
def test_a_failing_publish_removes_the_held_outputs(world, tmp_path, err):
    """The store's publication fails after the hits were written: no hits file either."""
    from qbscale.storage.durability import publish

    store, out = world["store"], tmp_path / "h.tsv"
    assert invoke("run", store, "--topk", "3", "--hits", out).exit_code == 0
    saved, written = _published(store), out.read_bytes()
    with mock.patch.object(publish, "replace_root_attrs",
                           side_effect=OSError(err, os.strerror(err))):
        res = invoke("run", store, "--topk", "4", "--hits", out)
    assert res.exit_code == 1, res.output
    now = _published(store)
    assert {k: now.get(k) for k in saved} == saved and out.read_bytes() == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.tsv"]


# --- non-regular targets ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["directory", "fifo"])
@pytest.mark.parametrize(("name", "args"), [(c[1], c[2]) for c in CASES if c[0] != "report"],
                         ids=[c[0] for c in CASES if c[0] != "report"])
def test_a_non_regular_target_is_one_line_before_work(world, tmp_path, kind, name, args):
    target = tmp_path / name
    if kind == "directory":
        target.mkdir()
    else:
        os.mkfifo(target)
    with mock.patch("qbscale.engine.plan.build", side_effect=AssertionError("work started")), \
            mock.patch("qbscale.retrieval.normaliser.Normaliser.load",
                       side_effect=AssertionError("work started")):
        res = invoke(*args(world, target))
    one_error(res, str(target))
    assert target.is_dir() if kind == "directory" else target.is_fifo()


def test_a_report_into_a_fifo_is_one_line(world, tmp_path):
    os.mkfifo(tmp_path / "rep")
    res = invoke("report", world["store"], "--method", "dis", "-o", tmp_path / "rep")
    one_error(res, str(tmp_path / "rep"), "not a directory")


# --- report --items -----------------------------------------------------------------------

def _gz_damaged(path: Path) -> None:
    with gzip.open(path, "wt") as fh:
        fh.writelines(f'{{"id": "item{j}"}}\n' for j in range(2000))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(("file_name", "content", "needle"), [
    ("items.jsonl", '{"id": "a"}\n{"id": "b"\n', "line 2: not JSON"),
    ("items.jsonl", '{"id": "a"}\n\n[1, 2]\n', "line 3: expected a JSON object"),
    ("items.jsonl", '{"id": "a"}\n{"name": "b"}\n', "line 2: no code, text"),
    ("items.jsonl", b'{"id": "a"}\n{"id": "\xff"}\n', "line 2: not UTF-8"),
    ("items.jsonl.gz", None, "cannot read"),
])
def test_bad_items_are_one_line_and_leave_nothing(world, tmp_path, file_name, content, needle):
    items = tmp_path / file_name
    if content is None:
        _gz_damaged(items)
    elif isinstance(content, bytes):
        items.write_bytes(content)
    else:
        items.write_text(content)
    out = tmp_path / "out"
    out.mkdir()
    with mock.patch("qbscale.analysis.compare.compare",
                    side_effect=AssertionError("work started")):
        res = invoke("report", world["store"], "--items", items, "-o", out / "rep")
    one_error(res, str(items), needle)
    assert list(out.iterdir()) == []
