"""``qbscale fit``: fit a normaliser on a store's bank and save it; and the
``--normaliser`` option of ``qbscale run``."""

from __future__ import annotations

import time
from typing import Any

import click

from qbscale.config import METHODS

from .method_options import method_kwargs, method_options
from .options import (
    Command,
    InputPath,
    OutputPath,
    UpdatedPath,
    bank_sample,
    bank_sample_option,
    check_json_output,
    compute_options,
    k_option,
    library_errors,
    quiet_option,
    seed_option,
    write_json,
)

#: ``qbscale run`` options that a saved normaliser fixes
SETTINGS = ("beta", "k", "method", "dynamic", "bank_sample", "seed")
#: the command-line parameter of a setting, where it is named otherwise
PARAMETERS = {"bank_sample": "bank_sample_text"}


@click.command(cls=Command)
@click.argument("store", type=InputPath())
@click.option("-o", "--output", "output", required=True, metavar="NORM.zarr",
              type=OutputPath("normaliser"),
              help="Where to write the normaliser (a Zarr v3 group).")
@click.option("--beta", default=None,
              help="Inverse temperature (is, dis, dual-is; default 20); several as 10,20,30 "
                   "(one pass for all).")
@k_option
@click.option("--method", type=click.Choice([m for m in METHODS if m != "none"]),
              default="dis", show_default=True)
@bank_sample_option
@seed_option
@click.option("--overwrite", is_flag=True, help="Replace an existing NORM.zarr.")
@click.option("--json", "json_path", type=OutputPath("JSON file"),
              help="Write a summary of the normaliser as JSON.")
@click.option("--updatable", is_flag=True,
              help="Keep what updates need (each bank row's top-k; csls and nnn: each "
                   "item's top bank similarities): --update, qbscale items and merge.")
@click.option("--update", "update", metavar="OLD.zarr", default=None, type=UpdatedPath(),
              help="Grow the bank of the updatable normaliser OLD.zarr by STORE's bank rows "
                   "(a store, or a .npy/Zarr of bank embeddings), reading only them.")
@compute_options
@quiet_option
@method_options
@library_errors
def fit(store: str, output: str, beta: str | None, k: int, method: str,
        bank_sample_text: str | None, seed: int, overwrite: bool, json_path: str | None,
        updatable: bool, update: str | None, scheduler: str, workers: int | None, quiet: bool,
        dynamic: bool, gallery_bank: str | None, **method_opts: Any) -> None:
    """Fit a normaliser on the bank of STORE (read once) and write it to NORM.zarr.

    `qbscale run STORE --normaliser NORM.zarr` then skips the bank stage.
    With --update OLD.zarr, STORE holds new bank rows and the normaliser of
    the grown bank is written (OLD.zarr itself with -o OLD.zarr --overwrite).
    """
    from qbscale.config import parse_values
    from qbscale.retrieval.normaliser import Normaliser

    check_json_output(json_path, (store, gallery_bank, output, update))
    if update is not None:
        from .living import grow, refuse_settings

        ctx = click.get_current_context()
        refuse_settings(ctx, ("beta", "k", "method", "bank_sample_text", "seed", "updatable",
                              "dynamic", "gallery_bank", *method_opts))
        return grow(ctx, store, update, output, overwrite, json_path)
    _refuse_existing(output, overwrite, (store, gallery_bank))
    t0 = time.perf_counter()
    norm = Normaliser.fit(store, beta=None if beta is None else parse_values(beta), k=k,
                          method=method, dynamic=dynamic, gallery_bank=gallery_bank,
                          scheduler=scheduler, num_workers=workers, progress=not quiet,
                          bank_sample=bank_sample(bank_sample_text), seed=seed,
                          updatable=updatable, **method_kwargs(method, method_opts))
    out = norm.save(output, overwrite=overwrite)
    seconds = time.perf_counter() - t0
    summary = describe(norm, out, seconds)
    click.echo(f"Wrote {out} in {seconds:.1f} s: {summary['label']} "
               f"{summary['variant']}={','.join(f'{v:g}' for v in summary['values'])} "
               f"k={summary['k']}{_sample_text(norm.config)}; "
               f"activation set: {summary['activation_size']} of "
               f"{summary['n_gallery']} gallery items")
    if json_path:
        write_json(json_path, "fit", summary)


def _sample_text(config: Any) -> str:
    if config.bank_sample is None:
        return ""
    return f" bank_sample={config.bank_sample} seed={config.seed}"


def _refuse_existing(output: str, overwrite: bool, inputs: tuple[str | None, ...]) -> None:
    """Fail before fitting, not after, when the output exists (local paths) and may
    not be replaced, or is one of the inputs."""
    from pathlib import Path

    from qbscale.errors import StoreExistsError
    from qbscale.storage import layout
    from qbscale.storage.durability.paths import check_not_input, check_replaceable

    check_not_input(output, inputs)
    if layout.is_url(output):
        return
    path = Path(layout.local_path(output))
    if not (path.exists() or path.is_symlink()):
        return
    if not overwrite:
        raise StoreExistsError(f"{output} exists: pass --overwrite to replace it")
    check_replaceable(path, "normaliser", output)


def describe(norm: Any, path: str, seconds: float) -> dict[str, Any]:
    """JSON-ready summary of a fitted normaliser."""
    config = norm.config
    return {"path": path, "method": config.method, "label": config.label,
            "variant": config.variant_name, "values": list(config.values), "k": config.k,
            "params": config.param_dict, "dynamic": config.is_dynamic,
            "bank_sample": config.bank_sample, "seed": config.seed,
            "n_gallery": norm.n_gallery, "activation_size": int(norm.activation.sum()),
            "fingerprint": dict(norm.fingerprint), "seconds": seconds}


def run_settings(path: str, store: str | None, given: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The normaliser at ``path`` and the run settings it implies for ``store``.

    ``given`` holds the run's settings that were set on the command line
    (beta, k, method, dynamic, bank_sample, seed and method parameters); the
    others come from the normaliser, so ``qbscale run STORE --normaliser NORM.zarr`` needs no more.
    A given setting that differs from the normaliser's is refused by the run.
    """
    from qbscale.retrieval.normaliser import Normaliser
    from qbscale.storage.outputs.normaliser_store import check_store

    norm = Normaliser.load(path)
    check_store(norm.fingerprint, store, path)
    config = norm.config
    settings: dict[str, Any] = {"beta": list(config.values), "k": config.k,
                                "method": config.method, "dynamic": config.dynamic,
                                "bank_sample": config.bank_sample, "seed": config.seed,
                                **config.param_dict}
    if config.variant_name != "beta":
        settings[config.variant_name] = settings.pop("beta")
        settings["beta"] = None
    settings.update(given)
    return norm, settings


def given_settings(ctx: click.Context, settings: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``settings`` whose options were set on the command line
    (method parameters are present only when given)."""
    from click.core import ParameterSource

    out = {}
    for name, value in settings.items():
        source = ctx.get_parameter_source(PARAMETERS.get(name, name)) \
            if name in SETTINGS else None
        if name not in SETTINGS or source not in (ParameterSource.DEFAULT, None):
            out[name] = value
    return out
