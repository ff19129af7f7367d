"""The ``qbscale`` command line: a click group whose subcommands live in one
small module each and are imported only when invoked (fast start-up)."""

from __future__ import annotations

import importlib
import os
import sys

import click

from qbscale.executors import MALLOC_ENV

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
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when it runs."""

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
def cli() -> None:
    """Querybank normalisation (QB-Norm) for retrieval matrices of any size."""


def _reexec_with_malloc_settings() -> None:
    if sys.platform != "linux" or os.environ.get("QBSCALE_NO_REEXEC"):
        return
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    env = {**os.environ, **MALLOC_ENV, "QBSCALE_NO_REEXEC": "1"}
    try:
        os.execve(sys.executable, [sys.executable, "-m", "qbscale.cli", *sys.argv[1:]], env)
    except OSError:
        return  # run with the default allocator rather than not at all


def main() -> None:
    """Console-script entry point."""
    _reexec_with_malloc_settings()
    cli(prog_name="qbscale")
