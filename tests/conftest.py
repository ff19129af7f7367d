"""Shared test infrastructure.

* Hypothesis profiles: ``default`` (fast, every run) and ``thorough`` (many more
  examples), picked with ``HYPOTHESIS_PROFILE=thorough python -m pytest``.
* ``cli_invoke``: run the ``qbscale`` CLI through click's CliRunner and fail,
  with its output and traceback, on an unexpected exit code.
* ``no_compute``: a context manager inside which any dask computation raises
  (a scheduler that counts the attempt and refuses it), for the tests that
  prove building a graph computes nothing.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


class CliInvoker:
    """``invoke(*args, exit_code=0)``: the CLI's result, its exit code checked.

    An exception escaping the command (CliRunner reports it as exit code 1, like
    a clean ``Error: ...``) always fails the test.  ``exit_code=None`` accepts
    any exit code the command chose (for tests that check it themselves).
    """

    def __call__(self, *args: Any, exit_code: int | None = 0, **kwargs: Any) -> Any:
        from click.testing import CliRunner

        from qbscale.cli import cli

        result = CliRunner().invoke(cli, [str(a) for a in args], **kwargs)
        crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
        if crashed or (exit_code is not None and result.exit_code != exit_code):
            trace = "".join(traceback.format_exception(*result.exc_info)) if crashed else ""
            pytest.fail(f"qbscale {' '.join(map(str, args))} exited {result.exit_code}, "
                        f"expected {exit_code}:\n{result.output}{trace}", pytrace=False)
        return result


@pytest.fixture(scope="session")
def cli_invoke() -> CliInvoker:
    return CliInvoker()


@pytest.fixture
def no_compute() -> Callable[[], Any]:
    """``with no_compute() as attempts:`` - dask computing inside raises (and is counted)."""
    import dask

    attempts: list[Any] = []

    def refuse(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        attempts.append(keys)
        raise AssertionError(f"dask computed {keys!r} while a graph was being built")

    @contextmanager
    def guard() -> Iterator[list[Any]]:
        with dask.config.set(scheduler=refuse):
            yield attempts
        assert attempts == [], f"{len(attempts)} computation(s) attempted"

    return guard
