"""``qbscale fit --update``, ``qbscale items``, ``qbscale merge`` and ``qbscale info``:
an updatable normaliser follows its bank and gallery without a refit.

Each writing command loads the normaliser(s), applies one library call and
writes the result as a new version (staged beside and renamed into place: a
failed update leaves what was there byte for byte).
"""

from __future__ import annotations

import os
import time
from typing import Any

import click

from .options import (
    Command,
    InputPath,
    OutputPath,
    UpdatedPath,
    check_json_output,
    library_errors,
    quiet_option,
    write_json,
)


def _write(norm: Any, output: str, overwrite: bool, inputs: tuple[str | None, ...],
           json_path: str | None, what: str, t0: float) -> None:
    from .fit import _refuse_existing, describe

    _refuse_existing(output, overwrite, inputs)
    out = norm.save(output, overwrite=overwrite)
    seconds = time.perf_counter() - t0
    summary = {**describe(norm, out, seconds), "n_bank": norm.state.n_rows,
               "history": norm.history}
    click.echo(f"Wrote {out} in {seconds:.1f} s: {what}; {norm.state.n_rows} bank rows, "
               f"{norm.n_gallery} gallery items, activation set "
               f"{int(norm.activation.sum())}")
    if json_path:
        write_json(json_path, "fit", summary)


def _others(output: str, paths: tuple[str | None, ...]) -> tuple[str | None, ...]:
    """The inputs an output may not be: all but a normaliser replaced by its update."""
    same = os.path.abspath(output)
    return tuple(p for p in paths if p is None or os.path.abspath(p) != same)


def bank_rows(path: str) -> str:
    """A path of new bank rows: an embeddings store gives its ``bank_emb``."""
    from qbscale.storage import layout

    inner = os.path.join(path, layout.BANK_EMB)
    return inner if os.path.isdir(path) and os.path.exists(inner) else path


def refuse_settings(ctx: click.Context, names: tuple[str, ...]) -> None:
    """A usage error for a fit setting given with --update (the normaliser's own apply)."""
    from click.core import ParameterSource

    for name in names:
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None):
            option = "--" + name.removesuffix("_text").replace("_", "-")
            raise click.UsageError(f"{option} cannot be given with qbscale fit --update: the "
                                   "settings are the updated normaliser's")


def grow(ctx: click.Context, store: str, update: str, output: str, overwrite: bool,
         json_path: str | None) -> None:
    """``qbscale fit NEW --update OLD.zarr``: ``Normaliser.partial_fit``."""
    from qbscale.retrieval.living import EMBEDDINGS
    from qbscale.retrieval.normaliser import Normaliser

    t0 = time.perf_counter()
    old = Normaliser.load(update)
    if old.record is not None and old.record.kind == EMBEDDINGS:
        norm = old.partial_fit(bank_emb=bank_rows(store))
    else:
        norm = old.partial_fit(store)
    rows = norm.history[-1]["bank_rows"] if norm.history else 0
    _write(norm, output, overwrite, _others(output, (store, update)), json_path,
           f"{rows} bank rows added to {update}", t0)


def parse_ids(text: str) -> Any:
    """Gallery item ids: ``3,5,9``, or a ``.npy`` file, or a text file of one per line."""
    import numpy as np

    from qbscale.errors import InputError

    try:
        if os.path.isfile(text):
            from qbscale.storage.inputs.readers import NpyInput

            values = NpyInput(text).memmap() if text.endswith(".npy") else \
                np.loadtxt(text, dtype=np.int64, ndmin=1)
            ids = np.asarray(values)
        else:
            ids = np.asarray([int(v) for v in text.split(",") if v.strip()], dtype=np.int64)
    except ValueError as exc:
        raise InputError(f"qbscale items --remove {text}: not a list of integer ids "
                         f"({exc})") from exc
    if ids.dtype.kind not in "iu" or ids.ndim != 1 or not ids.size:
        raise InputError(f"qbscale items --remove {text}: expected a 1-D list of integer "
                         f"ids, got "
                         f"{ids.dtype} of shape {ids.shape}")
    return ids


@click.command(cls=Command)
@click.argument("norm", metavar="NORM.zarr", type=UpdatedPath())
@click.option("-o", "--output", required=True, metavar="OUT.zarr", type=OutputPath("normaliser"),
              help="Where to write the updated normaliser (NORM.zarr itself with --overwrite).")
@click.option("--add", "add", metavar="NEW.npy", default=None, type=InputPath(),
              help="Embeddings of new gallery items (a .npy or Zarr array), appended.")
@click.option("--remove", "remove", metavar="IDS", default=None, type=InputPath(),
              help="Ids of gallery items to remove: 3,5,9 or a .npy / text file of ids.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.zarr.")
@click.option("--json", "json_path", type=OutputPath("JSON file"),
              help="Write a summary as JSON.")
@quiet_option
@library_errors
def items(norm: str, output: str, add: str | None, remove: str | None, overwrite: bool,
          json_path: str | None, quiet: bool) -> None:
    """Add and remove gallery items of the updatable normaliser NORM.zarr (fitted
    from embeddings): removed first, then added; only the bank rows whose
    top-k held a removed item are computed again."""
    from qbscale.errors import ConfigError
    from qbscale.retrieval.normaliser import Normaliser

    if add is None and remove is None:
        raise ConfigError("give --add NEW.npy, --remove IDS or both")
    check_json_output(json_path, (norm, add, output))
    t0 = time.perf_counter()
    updated = Normaliser.load(norm)
    done = []
    if remove is not None:
        ids = parse_ids(remove)
        updated = updated.remove_items(ids)
        done.append(f"{len(set(ids.tolist()))} items removed")
    if add is not None:
        updated = updated.add_items(add)
        done.append(f"{updated.history[-1]['items']} items added "
                    f"(ids from {updated.history[-1]['first_id']})")
    _write(updated, output, overwrite, _others(output, (norm, add, remove)), json_path,
           ", ".join(done), t0)


@click.command(cls=Command)
@click.argument("norms", nargs=-1, required=True, metavar="NORM.zarr...", type=InputPath())
@click.option("-o", "--output", required=True, metavar="OUT.zarr", type=OutputPath("normaliser"),
              help="Where to write the merged normaliser.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT.zarr.")
@click.option("--json", "json_path", type=OutputPath("JSON file"),
              help="Write a summary as JSON.")
@quiet_option
@library_errors
def merge(norms: tuple[str, ...], output: str, overwrite: bool, json_path: str | None,
          quiet: bool) -> None:
    """Merge updatable normalisers fitted on disjoint shards of a bank over one
    gallery into the one a fit on the shards one after the other gives."""
    from qbscale.retrieval.normaliser import Normaliser

    check_json_output(json_path, (*norms, output))
    t0 = time.perf_counter()
    merged = Normaliser.merge([Normaliser.load(path) for path in norms])
    _write(merged, output, overwrite, norms, json_path, f"{len(norms)} normalisers merged",
           t0)


@click.command(cls=Command)
@click.argument("norm", metavar="NORM.zarr", type=InputPath())
@click.option("--json", "json_path", type=OutputPath("JSON file"),
              help="Write it as JSON too.")
@quiet_option
@library_errors
def info(norm: str, json_path: str | None, quiet: bool) -> None:
    """What the normaliser NORM.zarr was fitted with and on: settings, sizes and,
    for an updatable one, every update in order."""
    from qbscale.retrieval.normaliser import Normaliser

    from .fit import describe

    check_json_output(json_path, (norm,))
    loaded = Normaliser.load(norm)
    summary = describe(loaded, norm, 0.0)
    summary.pop("seconds")
    summary["updatable"] = loaded.state is not None
    summary["history"] = loaded.history
    click.echo(f"{norm}: {summary['label']} {summary['variant']}="
               f"{','.join(f'{v:g}' for v in summary['values'])} k={summary['k']}; "
               f"{summary['n_gallery']} gallery items, activation set "
               f"{summary['activation_size']}")
    if loaded.state is None:
        click.echo("not updatable (qbscale fit --updatable makes one that is)")
    for n, entry in enumerate(loaded.history):
        click.echo(f"  {n}. {describe_entry(entry)}")
    if json_path:
        write_json(json_path, "info", summary)


def describe_entry(entry: dict[str, Any]) -> str:
    """One line of a normaliser's history."""
    op = entry["op"]
    if op == "fit":
        return f"fit: {entry['bank_rows']} bank rows, {entry['items']} gallery items"
    if op == "partial_fit":
        return f"bank grown by {entry['bank_rows']} rows"
    if op == "add_items":
        first = entry["first_id"]
        return f"{entry['items']} items added (ids {first}..{first + entry['items'] - 1})"
    if op == "remove_items":
        ids = entry["ids"]
        shown = ",".join(str(i) for i in ids[:8]) + ("..." if len(ids) > 8 else "")
        return f"{len(ids)} items removed (ids {shown})"
    parts = " + ".join(str(r) for r in entry["bank_rows"])
    return f"merge of {len(entry['bank_rows'])} shards ({parts} bank rows)"
