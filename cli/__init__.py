"""The ``qbscale`` command line: a click group whose subcommands live in one
small module each and are imported only when invoked (fast start-up)."""

from __future__ import annotations

import importlib
import signal
import sys
from types import FrameType
from typing import Any

import click

from qbscale.engine import interrupt
from qbscale.executors import tune_malloc

from .options import QUIET_KEY

#: command name -> "module:attribute" (modules relative to this package)
COMMANDS = {
    "ingest": "ingest:ingest",
    "run": "run:run",
    "eval": "evaluate:evaluate",
    "synth": "synth:synth",
    "hubness": "hubness:hubness",
    "report": "report:report",
    "diagnose": "diagnose:diagnose",
    "fit": "fit:fit",
    "items": "living:items",
    "merge": "living:merge",
    "info": "living:info",
    "sweep": "sweep:sweep",
    "search": "search:search",
    "index": "search:index",
    "check": "check:check",
    "unlock": "unlock:unlock",
    "ids": "ids:ids",
    "qrels": "qrels:qrels",
}


def _one_line(exc: click.UsageError) -> click.UsageError:
    """``exc`` without its context, so click prints only ``Error: ...`` (one line,
    like every other refusal) instead of the usage and a hint; errors that print
    something else (the help of a bare ``qbscale``) are left alone."""
    if type(exc).show is click.UsageError.show:
        exc.ctx = None
    return exc


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when it runs; a usage
    error (unknown option, bad value) is one ``Error: ...`` line, exit status 2."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        module = importlib.import_module(f"{__name__}.{module_name}")
        command: click.Command = getattr(module, attr)
        return command


@click.group(cls=LazyGroup)
@click.version_option(package_name="qbscale")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars (for every command).")
@click.pass_context
def cli(ctx: click.Context, quiet: bool) -> None:
    """Querybank normalisation (QB-Norm) for retrieval matrices of any size."""
    ctx.meta[QUIET_KEY] = quiet


def _computes(args: list[str]) -> bool:
    """False for what only prints text: a bare ``qbscale``, ``--help``, ``--version``."""
    return bool(args) and not {"--help", "--version"} & set(args)


class Terminated(BaseException):
    """SIGTERM arrived (SLURM, Kubernetes, dask-jobqueue stopping the job).

    Raised in the main thread by the handler :func:`main` installs, and, like
    KeyboardInterrupt, no ``except Exception`` catches it: every cleanup path
    (staging directories, locks, partial files) runs as the stack unwinds."""


#: exit status of a process ended by SIGTERM (128 + 15), as shells report it
TERMINATED_EXIT = 128 + signal.SIGTERM
#: the flags of ``qbscale run`` that make it write into its store
_SAVING = ("--save-scores", "--save-ranks", "--topk", "--resume")


def _stop_work() -> None:
    """Tell the work still running in other threads to stop: the pending-interruption
    flag their loops check between units (:mod:`qbscale.engine.interrupt`), and the
    cancellation of zarr's reads and writes in flight."""
    interrupt.request()
    if "zarr" in sys.modules:  # nothing of zarr's to cancel before it is imported
        from qbscale.storage.durability.stage import cancel_zarr_work

        cancel_zarr_work()


def _terminate(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second one must not cut cleanup
    _stop_work()
    raise Terminated(signum)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C: what Python does (KeyboardInterrupt), once the other threads are told."""
    _stop_work()
    raise KeyboardInterrupt


def terminated_message(args: list[str]) -> str:
    """The one line printed when SIGTERM stopped ``qbscale ARGS``."""
    command = next((a for a in args if a in COMMANDS), None)
    if command != "run":
        return "Error: terminated (SIGTERM); nothing was written"
    if "--resume" in args:
        return ("Error: terminated (SIGTERM); nothing was published and the store's lock was "
                "released: rerun with --resume to reuse the finished row blocks")
    if any(a.split("=")[0] in _SAVING for a in args):
        return ("Error: terminated (SIGTERM); nothing was published, the run's partial arrays "
                "were removed and the store's lock was released (run with --resume to keep "
                "finished row blocks across an interruption)")
    return "Error: terminated (SIGTERM); nothing was written"


def main(args: list[str] | None = None) -> None:
    """Console-script entry point: tune malloc, then run the click group.

    zarr reads each chunk into a fresh buffer, and with glibc's default malloc
    every one of them faults in its pages anew; the settings of
    :data:`qbscale.executors.MALLOC_ENV` (one arena, a 1 GiB mmap threshold, a
    large trim threshold) made whole runs ~2x faster (PERF_NOTES, pitfall 1).
    So before a command runs, :func:`qbscale.executors.tune_malloc` applies them
    to this process through ``mallopt(3)``: the same settings without re-executing
    the interpreter (``benchmarks/bench_malloc.py`` compares the two).  Nothing is
    tuned for ``--help``, ``--version`` or a bare ``qbscale``; library users who
    want the settings call ``tune_malloc()`` themselves.

    SIGTERM is handled like Ctrl-C (:class:`Terminated`): the command's cleanup
    runs, one ``Error: terminated (SIGTERM); ...`` line is printed and the exit
    status is 143.
    """
    args = sys.argv[1:] if args is None else list(args)
    if _computes(args):
        tune_malloc()
    signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)
    try:
        cli(args=args, prog_name="qbscale")
    except Terminated:
        click.echo(terminated_message(args), err=True)
        _quiet_shutdown()
        sys.exit(TERMINATED_EXIT)
    except SystemExit as exc:
        if exc.code not in (0, None):
            _quiet_shutdown()
        raise


def _quiet_shutdown() -> None:
    """Keep a failed or stopped command at its one ``Error:`` line: zarr reads or
    writes cut short leave asyncio tasks pending, and their "Task was destroyed
    but it is pending!" and "coroutine ... was never awaited" reports would
    follow it on stderr at interpreter exit."""
    import logging
    import warnings

    logging.getLogger("asyncio").disabled = True
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited",
                            category=RuntimeWarning)
