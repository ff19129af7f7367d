"""Every hint names an option of the command it is printed by (or of the command
it names: `qbscale ingest ... --gt-index FILE`).

A message tells the user what to type next; naming an option the command then
refuses (``run`` told to pass ``--gt-index``) is a defect.  Options in a message
belong to the last ``qbscale CMD`` named before them, else to the command
printing it.  :func:`test_every_hint_names_an_option_of_its_command` collects
every message in the code that names an option (raised errors, printed lines,
``*HINT*`` constants, ``*notice*``/``*message*``/``*hint*`` functions' return
values); a library module's unattributed options must be listed in
:data:`REACHED_BY` with the commands that reach its messages.  The tests after
it run the cases the static scan cannot see through.
"""

from __future__ import annotations

import ast
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]")
COMMAND = re.compile(r"\bqbscale (\w+)")

#: library modules whose messages name options without naming the command, and the
#: commands whose code paths raise or print those messages
REACHED_BY = {
    "qbscale/api.py": ["run"],
    "qbscale/storage/stores/store.py": ["ingest"],
    "qbscale/storage/stores/ingest.py": ["ingest"],
    "qbscale/storage/stores/ids.py": ["ids"],
    "qbscale/storage/stores/gallery_bank.py": ["ingest"],
    "qbscale/storage/durability/stage.py": ["ingest", "fit", "synth"],
    "qbscale/storage/durability/atomic.py": ["index"],
    "qbscale/storage/outputs/hits.py": ["run"],
    "cli/__init__.py": ["run"],
    "qbscale/analysis/report.py": ["report"],
    # check_output's "pass --overwrite" is reached through folder outputs only
    "qbscale/storage/durability/paths.py": ["ingest", "synth", "fit", "report"],
}


def command_options(name: str) -> set[str]:
    """Every option string of ``qbscale NAME`` (``--topk``, ``--sims_test_path``, ...)."""
    from qbscale.cli import cli

    command = cli.get_command(None, name)  # type: ignore[arg-type]
    assert command is not None, f"no command qbscale {name}"
    return {opt for param in command.params
            for opt in (*param.opts, *getattr(param, "secondary_opts", ()))
            if opt.startswith("--")}


def named_options(message: str, command: str | None) -> list[tuple[str | None, str]]:
    """``(command, option)`` for every option named in ``message``: the option belongs
    to the last ``qbscale CMD`` named before it, else to ``command``."""
    out = []
    for found in OPTION.finditer(message):
        before = list(COMMAND.finditer(message, 0, found.start()))
        out.append((before[-1].group(1) if before else command, found.group()))
    return out


def _text(node: ast.AST) -> str:
    """The literal text of an expression, in order: its string constants, ``{}`` for
    each value an f-string fills in, parts of other expressions joined by a space."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else ""
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.FormattedValue):
        return "{}"
    return " ".join(t for t in map(_text, ast.iter_child_nodes(node)) if t)


def _messages(path: Path) -> list[tuple[int, str, str]]:
    """``(line, text, top-level function)`` of the messages of one module that name
    an option (see the module docstring)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str, str]] = []

    def message(child: ast.AST, function: str) -> ast.AST | None:
        """The message expression of ``child``, if it is a raise, a printed or
        appended line, a ``*HINT*`` constant or a notice function's return value."""
        if isinstance(child, ast.Raise):
            return child.exc
        if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute) \
                and child.func.attr in ("echo", "warn", "append"):
            return child
        hint = isinstance(child, ast.Assign) and any(
            isinstance(t, ast.Name) and "HINT" in t.id for t in child.targets)
        notice = isinstance(child, ast.Return) and any(
            w in function for w in ("notice", "message", "hint"))
        return child.value if hint or notice else None  # type: ignore[attr-defined]

    def visit(node: ast.AST, function: str = "", top: str = "") -> None:
        for child in ast.iter_child_nodes(node):
            named = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            name = child.name if named else function  # type: ignore[union-attr]
            outer = (top or name) if named else top
            expr = message(child, function)
            if expr is not None:
                found.append((child.lineno, _text(expr), outer))  # type: ignore[attr-defined]
            visit(child, name, outer)

    visit(tree)
    return [(line, text, top) for line, text, top in found if OPTION.search(text)]


def _cli_owners(module: str, function: str) -> list[str]:
    """The commands printing a message of ``cli/MODULE.py`` from its top-level
    ``function``: the command that function is; else the module's commands; else
    (a helper module) the commands of the modules that import ``function`` from it."""
    from qbscale.cli import COMMANDS

    defined: dict[str, dict[str, str]] = {}
    for name, target in COMMANDS.items():
        where, attr = target.split(":")
        defined.setdefault(where, {})[attr] = name
    if module in defined:
        own = defined[module]
        return [own[function]] if function in own else list(own.values())
    users = []
    for other, cmds in defined.items():
        source = (ROOT / "cli" / f"{other}.py").read_text(encoding="utf-8")
        imports = re.findall(rf"from \.{module} import (\([^)]*\)|[^\n]*)", source)
        if not any(re.search(rf"\b{function}\b", names) for names in imports):
            continue
        calling = [cmds[node.name] for node in ast.parse(source).body
                   if isinstance(node, ast.FunctionDef) and node.name in cmds and any(
                       isinstance(n, ast.Name) and n.id == function for n in ast.walk(node))]
        # the commands of that module calling it, else (called by a helper) all of them
        users.extend(calling or cmds.values())
    return users


def _sites() -> list[tuple[str, int, str, list[str]]]:
    """Every message naming an option: ``(module path, line, text, its commands)``."""
    sites = []
    for path in sorted([*(ROOT / "cli").glob("*.py"), *(ROOT / "qbscale").rglob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        for line, text, function in _messages(path):
            owners = REACHED_BY.get(rel) or (_cli_owners(path.stem, function)
                                             if rel.startswith("cli/") else [])
            sites.append((rel, line, text, owners))
    return sites


def test_the_scan_sees_the_known_hints():
    """The scan finds the hints this test was written for (it cannot pass vacuously)."""
    texts = {(rel, text) for rel, _, text, _ in _sites()}
    assert any(rel == "cli/run.py" and "--gt-index" in text for rel, text in texts)
    assert any(rel == "qbscale/api.py" and "--save-scores" in text for rel, text in texts)
    assert any(rel == "qbscale/storage/stores/store.py" and "--queries-per-item" in text
               for rel, text in texts)
    message = ("no ground truth: ask for --topk K; to add one, `qbscale ingest ... --overwrite` "
               "with --gt-index FILE")
    assert named_options(message, "run") == [("run", "--topk"), ("ingest", "--overwrite"),
                                             ("ingest", "--gt-index")]


def test_every_hint_names_an_option_of_its_command():
    problems = []
    for rel, line, text, owners in _sites():
        for command, option in named_options(text, None):
            targets = [command] if command is not None else owners
            if not targets:
                problems.append(f"{rel}:{line}: {option} in a message of no known command "
                                f"(list the module in REACHED_BY): {text!r}")
            for target in targets:
                if option not in command_options(target):
                    problems.append(f"{rel}:{line}: qbscale {target} has no {option}: {text!r}")
    assert problems == []


# ------------------------------------------------------------ the cases, run


def _check_output(output: str, command: str) -> None:
    """Every option named in ``output`` exists on the command it belongs to."""
    named = named_options(output, command)
    for owner, option in named:
        assert option in command_options(owner), f"qbscale {owner} has no {option}: {output}"


def test_seed_pickles_that_are_no_multiple_of_the_gallery(tmp_path, cli_invoke):
    rng = np.random.default_rng(0)
    for name, shape in (("bank.pkl", (20, 8)), ("test.pkl", (12, 8))):
        with open(tmp_path / name, "wb") as f:
            pickle.dump(rng.standard_normal(shape).astype(np.float32), f)
    seed = ["run", "--sims_train_test_path", tmp_path / "bank.pkl", "--sims_test_path",
            tmp_path / "test.pkl", "--json", tmp_path / "m.json", "-q"]
    res = cli_invoke(*seed, exit_code=1)
    assert res.output == ("Error: test (test.pkl) has 12 queries, not a positive multiple of "
                          "its 8 gallery items: give --queries-per-item N (query i belongs to "
                          "item i // N) or --gt-index FILE (the ground-truth gallery index of "
                          "every query)\n")
    _check_output(res.output, "run")
    # and run takes what it hints at: the baseline R@1 against a dense oracle
    with open(tmp_path / "test.pkl", "rb") as f:
        test = pickle.load(f)
    gt = np.random.default_rng(2).integers(0, 8, 12)
    np.save(tmp_path / "gt.npy", gt)
    beats = (test > test[np.arange(12), gt][:, None]).sum(axis=1)
    for scheduler in ("threads", "processes"):
        cli_invoke(*seed, "--gt-index", tmp_path / "gt.npy", "--scheduler", scheduler)
        got = json.loads((tmp_path / "m.json").read_text())["before"]["R1"]
        assert got == pytest.approx(100 * np.mean(beats == 0))
    cli_invoke(*seed, "--queries-per-item", 2)  # query i -> item i // 2
    got = json.loads((tmp_path / "m.json").read_text())["before"]["R1"]
    own = np.arange(12) // 2
    assert got == pytest.approx(100 * np.mean((test > test[np.arange(12), own][:, None])
                                              .sum(axis=1) == 0))
    res = cli_invoke("run", tmp_path / "any.zarr", "--gt-index", tmp_path / "gt.npy",
                     exit_code=2)
    assert "--queries-per-item and --gt-index go with the published" in res.output


@pytest.mark.parametrize("args", [[], ["--save-ranks"], ["--topk", "3"]])
def test_run_on_a_store_without_ground_truth_says_how_to_add_one(tmp_path, cli_invoke, args):
    import qbscale

    rng = np.random.default_rng(1)
    store = qbscale.ingest(tmp_path / "new.zarr", rng.standard_normal((20, 8)),
                           rng.standard_normal((5, 8)), progress=False)
    res = cli_invoke("run", store, *args, exit_code=None)
    assert "to add one, ingest the store again (`qbscale ingest`) with --gt-index FILE or " \
           "--queries-per-item N" in res.output
    _check_output(res.output, "run")


@pytest.mark.parametrize("argv", [
    ["run", "s3://bucket/exp.zarr"],
    ["check", "s3://bucket/exp.zarr"],
    ["qrels", "s3://bucket/exp.zarr", "-o", "t.qrels"],
    ["ingest", "--bank", "b.npy", "--test", "b.npy", "-o", "s3://bucket/exp.zarr"],
])
def test_object_storage_without_s3fs_is_one_line(tmp_path, argv):
    """As every missing extra: one ``Error:`` line with the install command."""
    np.save(tmp_path / "b.npy", np.ones((4, 4), np.float32))
    code = ("import sys; sys.modules['s3fs'] = None\n"
            "from qbscale.cli import main\n"
            f"main({argv!r})")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == ("Error: s3://bucket/exp.zarr needs s3fs, which is not installed: "
                           "pip install s3fs (or, in a qbscale clone, pip install '.[s3]')\n")
