"""The examples in the package's docstrings run and print what they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import qbscale

MODULES = sorted(m.name for m in pkgutil.walk_packages(qbscale.__path__, "qbscale.")
                 if not m.name.startswith("qbscale.cli"))


def test_every_module_is_found():
    wanted = {"qbscale.retrieval.search", "qbscale.engine.topk", "qbscale.storage.outputs.hits"}
    assert wanted <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
