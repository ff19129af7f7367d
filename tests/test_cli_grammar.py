"""The CLI's shared grammar: -q anywhere, --scheduler/--workers on every command that
computes, --depth vs --k, ranges, --json's kind and version, choices from the
library, and the console script's malloc tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

import qbscale
from qbscale.cli import COMMANDS
from qbscale.storage import layout

COMPUTING = ("run", "eval", "hubness", "report", "diagnose", "fit")
BAR = "row/s"  # what the ingest/synth progress bars print


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("grammar") / "exp.zarr"
    return qbscale.ingest(path, rng.standard_normal((30, 10)), rng.standard_normal((20, 10)),
                          chunk_rows=7, progress=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(6)
    np.save(folder / "bank.npy", rng.standard_normal((30, 10)).astype("f4"))
    np.save(folder / "test.npy", rng.standard_normal((20, 10)).astype("f4"))
    return folder


def _command(name):
    from qbscale.cli import cli

    return cli.get_command(None, name)


# ---------------------------------------------------------------- -q / --quiet


@pytest.fixture
def terminal(monkeypatch):
    """stderr taken for a terminal (bars are drawn only on one)."""
    monkeypatch.setattr("qbscale.cli.options._stderr_is_terminal", lambda: True)


@pytest.mark.parametrize("where", ["group", "command", "neither"])
def test_quiet_on_the_group_or_on_ingest(where, inputs, tmp_path, cli_invoke, terminal):
    args = ["ingest", "--bank", inputs / "bank.npy", "--test", inputs / "test.npy",
            "--queries-per-item", "2", "-o", tmp_path / "x.zarr"]
    args = {"group": ["-q", *args], "command": [*args, "-q"], "neither": args}[where]
    res = cli_invoke(*args)
    assert (BAR in res.stderr) is (where == "neither"), res.stderr
    assert qbscale.storage.stores.store.open_experiment(tmp_path / "x.zarr").n_gallery == 10


@pytest.mark.parametrize("where", ["group", "command", "neither"])
def test_quiet_on_the_group_or_on_synth(where, tmp_path, cli_invoke, terminal):
    args = ["synth", tmp_path / "s.zarr", "--bank", "12", "--test", "6", "--gallery", "6",
            "--dim", "4"]
    args = {"group": ["-q", *args], "command": [*args, "-q"], "neither": args}[where]
    res = cli_invoke(*args)
    assert (BAR in res.stderr) is (where == "neither"), res.stderr
    assert zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["test"].shape == (6, 6)


@pytest.mark.parametrize("where", ["group", "command", "neither"])
def test_quiet_on_the_group_or_on_run(where, store, cli_invoke, terminal):
    args = {"group": ["-q", "run", store], "command": ["run", store, "-q"],
            "neither": ["run", store]}[where]
    res = cli_invoke(*args)
    assert ("qbscale:" in res.stderr) is (where == "neither"), res.stderr  # the task bar
    assert res.stdout.splitlines()[0].split()[:2] == ["method", "beta"]


def test_no_bar_when_stderr_is_not_a_terminal(store, cli_invoke, monkeypatch):
    """A bar's carriage returns would land between the results in a shared pipe or log."""
    monkeypatch.delenv("QBSCALE_PROGRESS", raising=False)
    res = cli_invoke("run", store)
    assert "qbscale:" not in res.stderr and "\r" not in res.stderr, res.stderr
    assert res.stdout.splitlines()[0].split()[:2] == ["method", "beta"]
    monkeypatch.setenv("QBSCALE_PROGRESS", "1")  # asked for: drawn into the pipe anyway
    assert "qbscale:" in cli_invoke("run", store).stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_takes_q(name):
    names = {opt for p in _command(name).params for opt in p.opts}
    assert {"-q", "--quiet"} <= names


# ---------------------------------------------------------------- computing options


@pytest.mark.parametrize("name", COMPUTING)
def test_computing_commands_share_scheduler_and_workers(name):
    from qbscale.cli.options import scheduler_option, workers_option

    params = {p.name: p for p in _command(name).params}
    for option in (scheduler_option, workers_option):
        template = option(lambda: None).__click_params__[0]
        got = params[template.name]
        assert (got.opts, got.help, got.default, repr(got.type)) == \
            (template.opts, template.help, template.default, repr(template.type))


@pytest.mark.parametrize("name", COMPUTING)
def test_workers_below_one_is_a_usage_error(name, store, tmp_path, cli_invoke):
    extra = ["-o", tmp_path / "out"] if name in ("report", "fit") else []
    res = cli_invoke(name, store, *extra, "--workers", "0", exit_code=2)
    assert "Invalid value for '--workers': 0 is not in the range x>=1." in res.output


@pytest.mark.parametrize("name", COMPUTING)
def test_computing_commands_run_with_workers(name, store, tmp_path, cli_invoke):
    extra = {"report": ["-o", tmp_path / "rep", "--method", "is"],
             "hubness": ["--method", "is"], "fit": ["-o", tmp_path / "n.zarr"]}.get(name, [])
    cli_invoke(name, store, *extra, "--scheduler", "threads", "--workers", "1", "-q")
    if name == "report":
        assert (tmp_path / "rep" / "index.html").is_file()
    if name == "fit":
        assert qbscale.Normaliser.load(tmp_path / "n.zarr").config.method == "dis"


# ---------------------------------------------------------------- --depth and --k


def test_hubness_depth_and_activation_k_are_separate(store, tmp_path, cli_invoke):
    out = tmp_path / "h.json"
    res = cli_invoke("hubness", store, "--depth", "3", "--k", "2", "--method", "dis",
                     "--json", out, "-q")
    assert res.output.splitlines()[0] == "N_k at depth 3 over 20 test queries and 10 gallery items"
    got = json.loads(out.read_text())
    assert (got["depth"], got["k"]) == (3, 2)
    from qbscale.analysis.compare import compare

    want = compare(store, ["dis"], k=3, activation_k=2).rows()
    assert got["rows"] == json.loads(json.dumps(want))


@pytest.mark.parametrize("name", ["hubness", "report", "diagnose"])
def test_depth_and_k_must_be_positive(name, store, tmp_path, cli_invoke):
    extra = ["-o", tmp_path / "rep"] if name == "report" else []
    for flag in ("--depth", "--k"):
        res = cli_invoke(name, store, *extra, flag, "0", exit_code=2)
        assert f"Invalid value for '{flag}'" in res.output
        assert "0 is not in the range x>=1." in res.output


# ---------------------------------------------------------------- --json


def test_every_json_output_names_its_kind_and_version(store, inputs, tmp_path, cli_invoke):
    outputs = {
        "run": ["run", store, "--method", "is"],
        "eval": ["eval", store],
        "hubness": ["hubness", store, "--method", "is"],
        "diagnose": ["diagnose", store],
        "fit": ["fit", store, "-o", tmp_path / "n.zarr"],
        "ingest": ["ingest", "--bank", inputs / "bank.npy", "--test", inputs / "test.npy",
                   "--queries-per-item", "2", "-o", tmp_path / "i.zarr"],
        "synth": ["synth", tmp_path / "s.zarr", "--bank", "8", "--test", "4", "--gallery", "4",
                  "--dim", "4"],
    }
    for kind, args in outputs.items():
        path = tmp_path / f"{kind}.json"
        cli_invoke(*args, "--json", path, "-q")
        got = json.loads(path.read_text())
        assert (got["kind"], got["qbscale_version"]) == (kind, qbscale.__version__), kind
    ingested = json.loads((tmp_path / "ingest.json").read_text())
    assert ingested["arrays"]["bank"] == {"shape": [30, 10], "dtype": "float32",
                                          "chunks": [30, 10]}
    assert json.loads((tmp_path / "synth.json").read_text())["arrays"]["test"]["shape"] == [4, 4]


# ---------------------------------------------------------------- choices and errors


def test_synth_and_ingest_choices_come_from_the_library():
    for name in ("synth", "ingest"):
        params = {p.name: p for p in _command(name).params}
        assert tuple(params["codec"].type.choices) == layout.CODECS
        assert tuple(params["dtype"].type.choices) == layout.DTYPES
    assert tuple({p.name: p for p in _command("synth").params}["kind"].type.choices) == \
        layout.KINDS


def test_ingest_errors_go_through_the_shared_bridge(inputs, tmp_path, cli_invoke):
    res = cli_invoke("ingest", "--bank", inputs / "bank.npy", "--test", inputs / "test.npy",
                     "-o", tmp_path / "x.zarr", "--queries-per-item", "3", exit_code=1)
    assert res.output.startswith("Error: queries_per_item=3 does not fit 20 test queries")
    res = cli_invoke("ingest", "--bank", inputs / "bank.npy", "--test", inputs / "test.npy",
                     "-o", tmp_path / "x.zarr", "--queries-per-item", "0", exit_code=2)
    assert "Invalid value for '--queries-per-item': 0 is not in the range x>=1." in res.output


# ---------------------------------------------------------------- malloc tuning in main()


@pytest.fixture()
def tuned(monkeypatch):
    import qbscale.cli as entry

    calls = []
    monkeypatch.setattr(entry, "tune_malloc", lambda: calls.append(True) or True)
    return calls


@pytest.mark.parametrize("args", [["--help"], ["--version"], [], ["run", "--help"],
                                  ["synth", "--help"]])
def test_main_does_not_tune_malloc_for_help_or_version(tuned, args, capsys):
    from qbscale.cli import main

    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code in (0, None, 2)  # a bare `qbscale` prints usage
    assert tuned == []
    printed = capsys.readouterr()
    assert "qbscale" in printed.out + printed.err  # its help, usage or version


def test_main_tunes_malloc_before_a_command_runs(tuned, tmp_path):
    from qbscale.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["synth", str(tmp_path / "s.zarr"), "--bank", "4", "--test", "2", "--gallery",
              "2", "--dim", "2", "-q"])
    assert stop.value.code == 0 and tuned == [True]
    assert zarr.open_group(str(tmp_path / "s.zarr"), mode="r")["bank"].shape == (4, 2)


def test_main_never_reexecutes(monkeypatch, tmp_path):
    import os

    from qbscale.cli import main

    calls = []
    monkeypatch.setattr(os, "execve", lambda *a: calls.append(a))
    monkeypatch.setattr(os, "execv", lambda *a: calls.append(a))
    with pytest.raises(SystemExit):
        main(["synth", str(tmp_path / "s.zarr"), "--bank", "4", "--test", "2", "--gallery",
              "2", "--dim", "2", "-q"])
    assert calls == []


def test_tune_malloc_applies_the_settings_on_glibc():
    import ctypes.util
    import sys

    from qbscale.executors import tune_malloc

    if not sys.platform.startswith("linux") or "libc.so.6" not in (ctypes.util.find_library("c")
                                                                   or ""):
        pytest.skip("not glibc")
    assert tune_malloc() is True


def test_a_reader_that_leaves_early_is_no_error(store):
    """`qbscale run STORE | head -1`: no `Error: Broken pipe`, no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "qbscale.cli", "run", str(store), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader leaves, as `head -1` does
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert first.startswith(b"method")
    assert "Error" not in err and "Traceback" not in err


def test_unlock_of_a_missing_store_is_an_error(tmp_path, cli_invoke):
    res = cli_invoke("unlock", tmp_path / "missing.zarr", "-q", exit_code=1)
    missing = tmp_path / "missing.zarr"
    assert res.stderr.strip() == f"Error: no store at {missing}: nothing to unlock"


def test_topk_beyond_the_gallery_lists_every_item_with_a_notice(store, tmp_path, cli_invoke):
    """run --topk and search --topk treat K > gallery alike: every item, and a note."""
    res = cli_invoke("run", store, "--topk", "15", "--hits", tmp_path / "h.tsv")
    assert "Note: --topk 15 is more than the gallery's 10 items: each query lists all 10" \
        in res.stderr
    lines = (tmp_path / "h.tsv").read_text().splitlines()
    assert len(lines) == 1 + 20 * 10
    cli_invoke("fit", store, "-o", tmp_path / "n.zarr")
    res = cli_invoke("search", tmp_path / "n.zarr", "--sims", store, "--topk", "15",
                     "--hits", tmp_path / "s.tsv")
    assert "each query lists all 10" in res.stderr
    assert len((tmp_path / "s.tsv").read_text().splitlines()) == 1 + 20 * 10
