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


def _api_names() -> list[str]:
    """Every name the API reference (docs/api.rst) documents."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "api.rst").read_text()
    return [f"qbscale.{n}" for n in re.findall(r"^   ([\w.]+)$", text, re.M)]


def _resolve(name: str):
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise LookupError(name)


@pytest.mark.parametrize("name", _api_names())
def test_public_examples_run_in_a_fresh_interpreter(name):
    """An example of the API reference runs as copied: its own imports, nothing else."""
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(_resolve(name), name, globs={}):
        test.globs = {}
        result = runner.run(test)
        assert result.failed == 0, f"{result.failed} of {result.attempted} failed in {test.name}"


def _numpydoc_checks() -> set[str]:
    """The checks docs/conf.py turns on (``"all"`` less the ones it names)."""
    import ast
    from pathlib import Path

    from numpydoc.validate import ERROR_MSGS

    tree = ast.parse((Path(__file__).resolve().parents[1] / "docs" / "conf.py").read_text())
    value = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and getattr(node.targets[0], "id", "") == "numpydoc_validation_checks")
    listed = ast.literal_eval(value)
    assert "all" in listed
    return set(ERROR_MSGS) - listed


@pytest.mark.parametrize("name", _api_names())
def test_public_docstrings_are_numpydoc(name):
    """Every parameter and return value has a type before its colon and a
    description below it, as the documentation build checks."""
    import inspect

    from numpydoc.validate import validate

    checks = _numpydoc_checks()
    obj = _resolve(name)
    names = [name]
    if inspect.isclass(obj):
        names += [f"{name}.{m}" for m, v in vars(obj).items()
                  if not m.startswith("_") and (inspect.isfunction(v)
                                                or isinstance(v, classmethod | staticmethod))]
    errors = [f"{n}: {code} {msg}" for n in names
              for code, msg in validate(n)["errors"] if code in checks]
    assert not errors, "\n".join(errors)
