"""Sphinx configuration of the qbscale documentation.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (the
figures are drawn first from the shipped glosses and pycode data, see
``_ext/figures.py``) and ``sphinx-build -W -b doctest docs docs/_build/doctest``.
Both validate the public docstrings with numpydoc and need no network (the
intersphinx inventories are written by ``_ext/inventories.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import qbscale

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

import inventories  # docs/_ext, put on the path above

project = "qbscale"
author = "the qbscale authors"
copyright = "the qbscale authors, MIT licence"
release = version = qbscale.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
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
# the types of the parameters link to their documentation: qbscale's own, and
# numpy's, dask's, xarray's and zarr's through inventories written locally
# (_ext/inventories.py: the build needs no network)
numpydoc_xref_param_type = True
numpydoc_xref_ignore = "all"
numpydoc_xref_aliases = {
    **{name: f":{role[3:].replace('function', 'func')}:`{name}`"
       for _, (_, entries) in inventories.TARGETS.items()
       for name, role, _ in entries if role.startswith("py:") and "." in name},
    "Experiment": "qbscale.types.Experiment",
    "RunResult": "qbscale.RunResult",
    "RunPlan": "qbscale.RunPlan",
    "Normaliser": "qbscale.Normaliser",
    "FaissSearch": "qbscale.retrieval.faiss_index.FaissSearch",
    "HitsWriter": "qbscale.storage.outputs.hits.HitsWriter",
}
intersphinx_mapping = inventories.write(Path(__file__).parent / "_build" / "intersphinx")
# every public docstring is checked as it renders (as pandas and scikit-learn
# do): each parameter and return value needs a type before its colon and a
# description indented below it, capitalised and ending with a period.  Left
# out: where the summary line starts (GL01, GL02), extended summaries, "See
# Also" and examples on every name (ES01, SA01, EX01), the verb form of the
# summary (SS05), a return type's description for a single return (RT02) and
# the Yields section (YD01)
numpydoc_validation_checks = {"all", "GL01", "GL02", "ES01", "SA01", "EX01", "SS05", "RT02",
                              "YD01"}

# the doctest builder runs every `>>>` example of the rendered docstrings, in a
# namespace with nothing imported: each example carries its own imports, so it
# runs as copied into a fresh interpreter
doctest_global_setup = ""

html_theme = "pydata_sphinx_theme"
html_title = f"qbscale {version}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    # the four sections in the top bar, as the pydata sites do, none under "More"
    "header_links_before_dropdown": 5,
    "navbar_align": "left",
    "show_nav_level": 2,
}
html_static_path = ["_static"]
html_css_files = ["qbscale.css"]


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
