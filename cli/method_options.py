"""Options of the normaliser family (:mod:`qbscale.engine.methods`), shared by the
commands that run methods: one option per method parameter, ``--dynamic`` and
``--gallery-bank``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from qbscale.engine.methods import REGISTRY, all_params

from .options import InputPath

F = TypeVar("F", bound=Callable[..., Any])


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _owners(name: str) -> str:
    return ", ".join(m.name for m in REGISTRY.values()
                     if name in (m.variant.name, *(p.name for p in m.params)))


def method_options(func: F) -> F:
    """Add ``--dynamic``, ``--gallery-bank`` and every method parameter but beta."""
    for name, param in reversed(list(all_params().items())):
        if name == "beta":
            continue
        swept = any(m.variant.name == name for m in REGISTRY.values())
        more = " Several, comma-separated, run in one pass." if swept else ""
        func = click.option(_flag(name), name, default=None, metavar="N,..." if swept else "N",
                            help=f"{param.help.rstrip('.')} ({_owners(name)}; default "
                                 f"{param.default:g}).{more}")(func)
    func = click.option("--gallery-bank", "gallery_bank", metavar="PATH",
                        type=InputPath(exists=True),
                        help="Gallery-bank x gallery similarities for dual-is (default: "
                             "the store's gallery bank).")(func)
    return click.option("--dynamic", is_flag=True,
                        help="Rescore only rows whose top-1 is in the activation set "
                             "(is --dynamic is dis).")(func)


def method_kwargs(method: str, opts: dict[str, Any]) -> dict[str, Any]:
    """The method parameters given on the command line, for :func:`qbscale.api.run`.

    Pops every parameter option from ``opts``; refuses one the method lacks.
    """
    from qbscale.config import parse_values

    out: dict[str, Any] = {}
    for name in all_params():
        if name == "beta":
            continue
        text = opts.pop(name, None)
        if text is None:
            continue
        owner = REGISTRY.get(method)
        if owner is None or name not in (owner.variant.name, *(p.name for p in owner.params)):
            raise click.UsageError(f"{_flag(name)} applies to {_owners(name)}, not {method}")
        values = parse_values(text, _flag(name))
        if owner.variant.name == name:
            out[name] = values
        elif len(values) != 1:
            raise click.UsageError(f"{_flag(name)} takes one number, got {text!r}")
        else:
            out[name] = values[0]
    return out
