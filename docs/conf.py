"""Sphinx configuration of the qbscale documentation.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (the
figures are drawn first from the shipped pycode data, see ``_ext/figures.py``)
and ``sphinx-build -W -b doctest docs docs/_build/doctest``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import qbscale

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "qbscale"
author = "the qbscale authors"
copyright = "the qbscale authors, MIT licence"
release = version = qbscale.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "numpydoc",
    "myst_parser",
    "sphinx_click",
    "figures",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
templates_path = ["_templates"]

# Markdown pages: heading anchors for [links](page.md#a-heading), ::: fences
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# API reference: one page per public name, members listed on class pages
autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "none"
autodoc_default_options = {"member-order": "bysource"}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# the doctest builder runs every `>>>` example of the rendered docstrings
doctest_global_setup = """
import numpy as np
from qbscale import Normaliser, normalise, run
from qbscale.analysis.tables import markdown, summarise
from qbscale.retrieval.search import search
from qbscale.storage.stores.store import in_memory
"""

html_theme = "pydata_sphinx_theme"
html_title = f"qbscale {version}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_static_path: list[str] = []


def _literal_help(app, ctx, lines):
    """Click help is plain text: keep ``*`` and ``|`` in it from meaning reST markup."""
    import re

    for i, line in enumerate(lines):
        if line.startswith("    ") and not line.lstrip().startswith(":"):
            line = re.sub(r"(?<!\*)\*(?!\*)", r"\\*", line)
            lines[i] = line.replace("|", r"\|")


def _command_names() -> None:
    """Name each command as the ``qbscale`` group does (``eval`` lives in a function
    named ``evaluate``): sphinx-click titles a command with its click name."""
    import click

    from qbscale.cli import COMMANDS, cli

    ctx = click.Context(cli, info_name="qbscale")
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None, name
        command.name = name


def setup(app):
    _command_names()
    for event in ("sphinx-click-process-description", "sphinx-click-process-options",
                  "sphinx-click-process-arguments", "sphinx-click-process-usage"):
        app.connect(event, _literal_help)
