"""Options shared by several commands, the ``--json`` writer and the error bridge."""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


class InputPath(click.Path):
    """A path a command reads (a store, a normaliser, a matrix, embeddings...).

    Every output path of the command is checked against it
    (:func:`check_outputs`).  Without ``exists``, nothing is checked here (URLs
    pass; the reader names what is wrong)."""

    def __init__(self, exists: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("readable", exists)
        super().__init__(exists=exists, **kwargs)


class UpdatedPath(InputPath):
    """An input the command writes a new version of (a normaliser it updates, a
    faiss index it follows): the command's output of the same path replaces it, and
    only with ``--overwrite``; any other output is checked against it as against
    every input."""


class OutputPath(click.Path):
    """A path a command writes, of output ``kind`` (``"JSON file"``, ``"hits file"``,
    ``"plot"``, ``"faiss index"``, or a folder kind of
    :data:`qbscale.storage.durability.paths.FOLDER_KINDS`).

    Every command is a :class:`Command`, which sends each such path through
    :func:`qbscale.storage.durability.paths.check_output` before it runs."""

    def __init__(self, kind: str) -> None:
        super().__init__(readable=False)
        self.kind = kind


class Command(click.Command):
    """A qbscale command: its output paths are checked before its body runs
    (:func:`check_outputs`)."""

    def invoke(self, ctx: click.Context) -> Any:
        from qbscale.errors import QBScaleError

        try:
            check_outputs(ctx)
        except QBScaleError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:  # a folder on the way that cannot be read
            raise click.ClickException(os_error_message(exc)) from exc
        return super().invoke(ctx)


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, tuple | list):
        return [os.fspath(v) for v in value if v is not None]
    return [os.fspath(value)]


def check_outputs(ctx: click.Context) -> None:
    """Send every :class:`OutputPath` of ``ctx``'s command through
    :func:`qbscale.storage.durability.paths.check_output`, with every
    :class:`InputPath` as its inputs, the command's other outputs, and its
    ``--overwrite`` flag (if it has one)."""
    from qbscale.storage.durability.paths import check_output

    params = ctx.command.params
    inputs = [v for p in params if isinstance(p.type, InputPath)
              for v in _values(ctx.params.get(p.name or ""))]
    outputs = [(p, v) for p in params if isinstance(p.type, OutputPath)
               for v in _values(ctx.params.get(p.name or ""))]
    overwrite = bool(ctx.params.get("overwrite", False))
    updated = [v for p in params if isinstance(p.type, UpdatedPath)
               for v in _values(ctx.params.get(p.name or ""))]
    for param, value in outputs:
        assert isinstance(param.type, OutputPath)
        others = [v for p, v in outputs if p is not param]
        # a new version of an updated input may take its place (with --overwrite)
        own = [v for v in inputs if not (overwrite and v in updated and _same(v, value))]
        check_output(value, param.type.kind, own, overwrite, others)


def _same(a: str, b: str) -> bool:
    """The same local path once symlinks and ``..`` are resolved."""
    return os.path.realpath(a) == os.path.realpath(b)


#: where the group's ``-q`` is kept for its subcommands (``ctx.meta`` is shared)
QUIET_KEY = "qbscale.quiet"

scheduler_option = click.option(
    "--scheduler", default="threads", show_default=True, metavar="NAME|local:N|tcp://HOST:PORT",
    help="threads, processes, synchronous; local:N for a LocalCluster of N worker processes; "
         "or the address of a running dask scheduler.",
)
workers_option = click.option("--workers", type=click.IntRange(min=1), default=None,
                              help="Threads/processes for the local schedulers.")


def compute_options(func: F) -> F:
    """``--scheduler`` and ``--workers``: every command that computes takes both."""
    return scheduler_option(workers_option(func))


def _quiet(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """A subcommand is quiet when it, or the group (``qbscale -q CMD``), says so, and
    when stderr is not a terminal: a bar's carriage returns would otherwise land in a
    log or between the results when stdout and stderr share a pipe (as tqdm's own
    ``disable=None`` does).  ``QBSCALE_PROGRESS=1`` draws bars anyway, ``=0`` never."""
    return bool(value or ctx.meta.get(QUIET_KEY, False) or not _bars_wanted())


def _bars_wanted() -> bool:
    forced = os.environ.get("QBSCALE_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return _stderr_is_terminal()


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


quiet_option = click.option("--quiet", "-q", is_flag=True, callback=_quiet,
                            help="No progress bar.")
depth_option = click.option("--depth", type=click.IntRange(min=1), default=10,
                            show_default=True,
                            help="Depth of the top lists counted in N_k (N_k(j): the test "
                                 "queries with item j in their top DEPTH).")
_K_HELP = "Top-k bank columns per querybank row forming the activation set."
#: the activation set's k (the seed's flag), as parameter ``k``
k_option = click.option("--k", "k", type=click.IntRange(min=1), default=1, show_default=True,
                        help=_K_HELP)
#: the same, as parameter ``activation_k`` (commands whose library call has another k)
activation_k_option = click.option(
    "--k", "--activation-k", "activation_k", type=click.IntRange(min=1), default=1,
    show_default=True, help=_K_HELP)


def topk_notice(topk: int, n_gallery: int) -> None:
    """One line on stderr when ``--topk`` asks for more items than the gallery has."""
    if topk > n_gallery:
        click.echo(f"Note: --topk {topk} is more than the gallery's {n_gallery} items: "
                   f"each query lists all {n_gallery}", err=True)


def write_json(path: str | Path, kind: str, payload: dict[str, Any]) -> None:
    """Write a command's ``--json`` output: ``kind`` and ``qbscale_version`` first
    (beside and renamed, :func:`qbscale.storage.durability.atomic.write_text`)."""
    from qbscale import __version__
    from qbscale.storage.durability.atomic import write_text

    write_text(path, json.dumps({"kind": kind, "qbscale_version": __version__, **payload},
                                indent=2))

bank_sample_option = click.option(
    "--bank-sample", "bank_sample_text", metavar="N|FRACTION", default=None,
    help="Use only the querybank rows numpy.random.default_rng(SEED).permutation(n_bank)[:N]; "
         "N a row count, or a fraction in (0, 1] (N = round half up of fraction * n_bank).")
seed_option = click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                           help="Seed of the --bank-sample permutation.")


def bank_sample(text: str | None) -> int | float | str | None:
    """The ``--bank-sample`` value parsed (None when not given)."""
    from qbscale.engine.subsets import parse_sample

    return None if text is None else parse_sample(text)


def library_errors(func: F) -> F:
    """Turn qbscale errors and OSErrors into a clean ``Error: ...`` and exit code 1,
    and qbscale's warnings into ``Warning: ...`` lines on stderr."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from qbscale.errors import GroundTruthWarning, QBScaleError

        with warnings.catch_warnings():
            warnings.simplefilter("always", GroundTruthWarning)
            shown, seen = warnings.showwarning, set()

            def show(message: Any, category: Any, *rest: Any, **kw: Any) -> None:
                if issubclass(category, GroundTruthWarning):
                    if str(message) not in seen:  # once, however often the store is opened
                        seen.add(str(message))
                        click.echo(f"Warning: {message}", err=True)
                else:
                    shown(message, category, *rest, **kw)

            warnings.showwarning = show
            try:
                return func(*args, **kwargs)
            except QBScaleError as exc:
                raise click.ClickException(str(exc)) from exc
            except BrokenPipeError:  # stdout's reader left (`qbscale run ... | head`)
                _silence_stdout()
                sys.exit(1)
            except OSError as exc:
                raise click.ClickException(os_error_message(exc)) from exc
            except ImportError as exc:  # an optional package (s3fs, ...) met deep inside
                message = missing_package(exc)
                if message is None:
                    raise
                raise click.ClickException(message) from exc

    return wrapper  # type: ignore[return-value]


def missing_package(exc: ImportError) -> str | None:
    """One line for an ImportError of an optional package that storage needs (fsspec's
    ``Install s3fs to access S3``), with its install command; None for any other."""
    import re

    from qbscale.storage.durability.paths import FILESYSTEMS, install_hint

    found = re.match(r"Install (\S+) to access", str(exc))
    package = found.group(1) if found else exc.name
    extra = next((e for p, e in FILESYSTEMS.values() if p == package), None)
    if package is None or (found is None and package not in {p for p, _ in FILESYSTEMS.values()}):
        return None
    return f"{package} is not installed: {install_hint(package, extra)}"


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush cannot fail
    again (the recipe of Python's signal documentation)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def os_error_message(exc: OSError) -> str:
    """``path: cause`` of an OSError, on one line."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename else reason


def check_output_file(path: str | None) -> None:
    """Fail before any work when ``path`` (a file to write, e.g. ``--json``) cannot be
    written: no directory, a directory that refuses a new file, or a target that is
    not a regular file (:func:`qbscale.storage.durability.atomic.check_writable`).
    Where it may go is :func:`check_outputs`'s question."""
    if not path:
        return
    from qbscale.storage.durability.atomic import check_writable
    from qbscale.storage.durability.paths import check_output

    check_output(path, "file")
    check_writable(path)


def check_json_output(path: str | None, inputs: tuple[object, ...]) -> None:
    """:func:`check_output_file`, and refuse a ``--json`` file that is one of the
    command's inputs or outputs (a store, an input matrix) or lies inside one: the
    summary must never overwrite what it describes."""
    if not path:
        return
    from qbscale.storage.durability.paths import check_output

    check_output(path, "JSON file", inputs)
    check_output_file(path)


def check_output_dir(path: str, probe: str = "index.html") -> None:
    """Fail before any work when the folder ``path`` cannot be created, or (when it
    exists) its file ``probe`` cannot be written."""
    from qbscale.errors import OutputError
    from qbscale.storage.durability.atomic import check_writable

    if os.path.isdir(path):
        check_writable(os.path.join(path, probe))
        return
    if os.path.lexists(path):
        raise OutputError(f"cannot write into {path}: it exists and is not a directory")
    check_writable(path)
