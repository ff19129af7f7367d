"""Every code block of README.md and docs/*.md runs, so no snippet rots.

A page's blocks run in order in one fresh directory that holds a link to the
repository's ``examples/`` (the shipped pycode data and the demo scripts):

* ```` ```python ```` blocks are executed in one namespace per page (a later
  block sees an earlier block's names; an undefined name fails the test);
* ```` ```bash ```` blocks run with ``bash -e -o pipefail``, ``qbscale`` and
  ``python`` being those of the interpreter running the tests;
* ```` ```console ```` blocks run their ``$ `` lines the same way;
* ```` ```text ```` blocks are output or file trees, shown and never run;
  MyST directives (```` ```{toctree} ````) are not code.

A block that cannot run here (it needs a cluster, S3 credentials, or installs
qbscale into a new environment) follows an HTML comment naming the reason,
``<!-- skip: needs a dask cluster -->``; :data:`MAX_SKIPPED` keeps that list
short, and :func:`test_skipped_blocks_are_few_and_named` prints it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = ("python", "bash", "console")
SHOWN = ("text",)
#: at most this many blocks may be skipped, over all pages
MAX_SKIPPED = 8

FENCE = re.compile(r"^(`{3,})(\S*)\s*$")
SKIP = re.compile(r"^<!--\s*skip:\s*(?P<reason>.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skip: str | None  # the reason, for a block marked to be skipped

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line} ({self.lang})"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, with their skip marks."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        ticks, lang = opening.groups()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == ticks), None)
        assert end is not None, f"{page}:{i + 1}: unclosed code block"
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = SKIP.match(before)
        found.append(Block(page, i + 1, lang, "\n".join(lines[i + 1:end]) + "\n",
                           mark["reason"] if mark else None))
        i = end + 1
    return found


ALL = [b for page in PAGES for b in blocks(page)]


def console_commands(code: str) -> str:
    """The ``$ `` lines of a console block (with their ``\\`` continuations)."""
    commands: list[str] = []
    continued = False
    for line in code.splitlines():
        if line.startswith("$ ") or continued:
            commands.append(line[2:] if line.startswith("$ ") and not continued else line)
            continued = line.endswith("\\")
    return "\n".join(commands) + "\n"


def test_pages_are_found():
    assert ROOT / "README.md" in PAGES and len(PAGES) >= 8
    assert sum(b.lang == "python" for b in ALL) >= 5 and sum(b.lang == "bash" for b in ALL) >= 10


def test_every_block_says_what_it_is():
    unmarked = [str(b) for b in ALL
                if b.lang not in RUN + SHOWN and not b.lang.startswith("{")]
    assert not unmarked, f"code blocks need a language ({', '.join(RUN + SHOWN)}): {unmarked}"


def test_skip_marks_precede_blocks():
    """A ``<!-- skip: ... -->`` comment not directly before a block is a typo."""
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if SKIP.match(line.strip()):
                following = next((x for x in lines[n + 1:] if x.strip()), "")
                assert FENCE.match(following), f"{page}:{n + 1}: skip mark before no block"


def test_skipped_blocks_are_few_and_named():
    skipped = [b for b in ALL if b.skip is not None]
    listing = "\n".join(f"  {b}: {b.skip}" for b in skipped)
    print(f"skipped blocks:\n{listing}")
    assert all(len(b.skip.split()) >= 3 for b in skipped), listing
    assert all(b.lang in RUN for b in skipped), listing
    assert len(skipped) <= MAX_SKIPPED, f"too many skipped blocks:\n{listing}"


def test_api_reference_lists_every_public_name():
    import qbscale

    listed = set(re.findall(r"^   (\S+)$", (ROOT / "docs" / "api.rst").read_text(), re.M))
    missing = [n for n in qbscale.__all__ if n != "__version__" and n not in listed]
    assert not missing, f"docs/api.rst lacks {missing}"
    assert ".. click:: qbscale.cli:cli" in (ROOT / "docs" / "cli.rst").read_text()


def test_readme_is_short_and_tests_as_ci_does():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert len(readme.splitlines()) < 200
    install = re.search(r'pip install --quiet (-e "\.\[[a-z,]+\]")', ci)
    pytest_line = re.search(r"^(python -m pytest .*)$", ci, re.M)
    assert install and pytest_line, "the install or test line of .ci/run moved"
    assert f"pip install {install[1]} && {pytest_line[1]}" in readme


def _run_shell(block: Block, code: str, cwd: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"{block} exited with {proc.returncode}:\n{code}\n--- stdout\n"
                    f"{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")


def _run_python(block: Block, namespace: dict[str, object]) -> None:
    try:
        exec(compile(block.code, str(block), "exec"), namespace)
    except Exception as exc:
        pytest.fail(f"{block} raised {type(exc).__name__}: {exc}\n{block.code}")


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES
                                  if any(b.lang in RUN and b.skip is None for b in blocks(p))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_page_runs(page, tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__snippet__"}
    for block in blocks(page):
        if block.skip is not None or block.lang not in RUN:
            continue
        if block.lang == "python":
            _run_python(block, namespace)
        else:
            code = console_commands(block.code) if block.lang == "console" else block.code
            _run_shell(block, code, tmp_path)
