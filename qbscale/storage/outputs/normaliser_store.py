"""A fitted normaliser on disk: a small Zarr v3 group, labelled for xarray.

Layout (``xarray.open_zarr(path)`` reads it as a Dataset)::

    shift       (<param>, gallery)  float64  one row per value of the swept
                                             parameter (beta, alpha or kc)
    <param>     (<param>,)          float64  those values (the coordinate)
    activation  (gallery,)          bool     the activation set

The group attribute ``qbscale_normaliser`` holds ``format``, ``method``,
``values``, ``variant``, ``k``, ``params``, ``dynamic``, ``fingerprint``
(gallery size and checksums, :mod:`qbscale.engine.fingerprint`), ``gallery`` (the
absolute path or URL of the gallery embeddings, when fitted from a file or a
store; :func:`recorded_gallery` reads older, relative ones),
``version`` and ``complete``.  A local group is written under a hidden
staging name and renamed into place when complete
(:func:`qbscale.storage.durability.stage.staging`); a remote one gets ``complete``
last.  :func:`load` refuses anything else with a message naming the path.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from qbscale.config import RunConfig
from qbscale.errors import (
    ConfigError,
    DamagedStoreError,
    IncompleteStoreError,
    InputError,
    StoreNotFoundError,
)
from qbscale.storage.durability import seal

if TYPE_CHECKING:
    from qbscale.types import Experiment

ATTR = "qbscale_normaliser"
FORMAT = 1
SHIFT = "shift"
ACTIVATION = "activation"
LIVING = "living"
#: an updatable normaliser's arrays and their dimensions
STATE_DIMS = {"row_values": ("bank_row", "rank"), "row_items": ("bank_row", "rank"),
              "column_top": ("column_rank", "gallery"), "item_ids": ("gallery",)}


@dataclass
class Saved:
    """What :func:`load` read: the parts of a fitted normaliser."""

    config: RunConfig
    shift: np.ndarray
    activation: np.ndarray
    fingerprint: dict[str, Any]
    gallery: str | None
    #: an updatable normaliser's ``living`` attribute and state arrays (else None, {})
    living: dict[str, Any] | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _attrs(config: RunConfig, fingerprint: dict[str, Any], gallery: str | None
           ) -> dict[str, Any]:
    from qbscale import __version__

    return {"format": FORMAT, "method": config.method, "values": list(config.values),
            "variant": config.variant_name, "k": config.k, "params": config.param_dict,
            "dynamic": config.dynamic, "bank_sample": config.bank_sample,
            "seed": config.seed, "fingerprint": dict(fingerprint),
            "bank_checksum": fingerprint.get("bank_checksum"),
            "gallery_sha256": fingerprint.get("gallery_sha256"),
            "gallery": gallery, "version": __version__,
            # a fresh id per write: every array's chunk manifest names it
            seal.ID: uuid.uuid4().hex, "complete": False}


def save(out: str | os.PathLike[str], config: RunConfig, shift: np.ndarray,
         activation: np.ndarray, fingerprint: dict[str, Any], gallery: str | None = None, *,
         overwrite: bool = False, storage_options: dict[str, Any] | None = None,
         living: dict[str, Any] | None = None,
         state: dict[str, np.ndarray] | None = None) -> str:
    """Write a fitted normaliser to ``out`` (a path or fsspec URL); returns ``out``.

    An updatable normaliser adds its ``living`` record (an attribute: kind,
    parts, ``n_ids``, history) and its ``state`` arrays (:data:`STATE_DIMS`).

    Raises
    ------
    StoreExistsError
        ``out`` exists and ``overwrite`` is False (or it is not a Zarr group).
    """
    import zarr

    from qbscale.storage.durability.integrity import create_array, record_manifests
    from qbscale.storage.durability.stage import staging
    from qbscale.storage.stores.writer import consolidate

    attrs = _attrs(config, fingerprint, gallery)
    if living is not None:
        attrs[LIVING] = living
    name = config.variant_name
    arrays = {SHIFT: (shift, (name, "gallery")),
              name: (np.asarray(config.values, np.float64), (name,)),
              ACTIVATION: (activation, ("gallery",))}
    arrays.update({key: (value, STATE_DIMS[key]) for key, value in (state or {}).items()})
    with staging(os.fspath(out), overwrite, storage_options, kind="normaliser",
                 inputs=(gallery,)) as stage:
        group = stage.create_group({ATTR: attrs})
        for key, (value, dims) in arrays.items():
            arr = create_array(group.store, key, shape=value.shape, dtype=value.dtype,
                               chunks=value.shape, dimension_names=dims)
            arr[...] = value
        digests = record_manifests(os.fspath(stage.target), storage_options,
                                   store=attrs[seal.ID])
        consolidate(group.store)
        zarr.open_group(group.store, mode="r+").attrs.update(
            {ATTR: seal.sealed({**attrs, seal.MANIFESTS: digests, "complete": True})})
    return stage.final


def _group(url: str, storage_options: dict[str, Any] | None) -> Any:
    import zarr

    from qbscale.storage.durability.integrity import open_group

    try:  # every chunk read verified: a missing one is an error, not its fill value
        return open_group(url, storage_options, use_consolidated=False)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError) as exc:
        raise StoreNotFoundError(f"no normaliser at {url}") from exc
    except (ValueError, TypeError, OSError) as exc:  # unreadable metadata
        raise InputError(f"{url} is not a readable Zarr group: {exc}") from exc


def _meta(url: str, group: Any) -> dict[str, Any]:
    attrs = dict(group.attrs.get(ATTR) or {})
    if not attrs:
        if group.attrs.get("qbscale"):
            raise InputError(f"{url} is a qbscale experiment store, not a normaliser: "
                             "fit one with `qbscale fit` (qbscale.Normaliser.fit)")
        raise InputError(f"{url} is a Zarr group but not a qbscale normaliser")
    if not attrs.get("complete"):
        raise IncompleteStoreError(f"the normaliser {url} is incomplete (its write was "
                                   "interrupted): fit it again")
    if attrs.get("format") != FORMAT:
        raise InputError(f"{url} is a normaliser of format {attrs.get('format')!r}; this "
                         f"qbscale reads format {FORMAT}")
    return attrs


def _array(url: str, group: Any, name: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
    try:
        value = np.asarray(group[name][...])
    except DamagedStoreError:  # a missing or misplaced chunk: named by the store
        raise
    except Exception as exc:  # a missing or corrupt array: say which
        raise InputError(f"the normaliser {url} is damaged: its {name!r} array cannot be "
                         f"read ({type(exc).__name__}: {exc})") from exc
    if value.shape != shape or value.dtype.kind != kind:
        raise InputError(f"the normaliser {url} is damaged: {name!r} has shape {value.shape} "
                         f"and dtype {value.dtype}, expected {shape} of kind {kind!r}")
    return value


def load(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> Saved:
    """Read a normaliser written by :func:`save`.

    Raises
    ------
    StoreNotFoundError
        Nothing at ``url``.
    IncompleteStoreError
        An interrupted write.
    InputError
        Not a normaliser (an experiment store, another Zarr group), another
        format, or damaged: missing arrays, wrong shapes, non-finite shifts,
        settings that do not validate.
    DamagedStoreError
        A missing or misplaced chunk, or settings edited after the fit.
    """
    from qbscale.storage.durability.integrity import check_metadata, forget

    url = os.fspath(url)
    forget()  # the normaliser may have been rewritten since this process last read it
    group = _group(url, storage_options)
    attrs = _meta(url, group)
    try:
        config = RunConfig(tuple(attrs["values"]), int(attrs["k"]), str(attrs["method"]), 0,
                           bool(attrs["dynamic"]), tuple(sorted(dict(attrs["params"]).items())),
                           attrs.get("bank_sample"), int(attrs.get("seed", 0)))
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"the normaliser {url} has invalid settings: {exc}") from exc
    refused = seal.refusal(url, attrs, "normaliser")  # valid settings, but not the fitted ones?
    if refused is not None:
        raise DamagedStoreError(refused)
    fingerprint = dict(attrs.get("fingerprint") or {})
    n_gallery = fingerprint.get("n_gallery")
    if not isinstance(n_gallery, int) or n_gallery < 1:
        raise InputError(f"the normaliser {url} is damaged: no gallery size in its fingerprint")
    n_values = len(config.values)
    state_names = list(STATE_DIMS) if attrs.get(LIVING) else []
    check_metadata(url, storage_options, [SHIFT, ACTIVATION, config.variant_name,
                                          *state_names],
                   required=False,  # a missing array: named by _array
                   root=attrs)  # each array's manifest: this normaliser's, as sealed
    shift = _array(url, group, SHIFT, (n_values, n_gallery), "f")
    activation = _array(url, group, ACTIVATION, (n_gallery,), "b")
    values = _array(url, group, config.variant_name, (n_values,), "f")
    if tuple(values.tolist()) != config.values:
        raise InputError(f"the normaliser {url} is damaged: its {config.variant_name} "
                         f"coordinate {values.tolist()} differs from its settings "
                         f"{list(config.values)}")
    if not np.all(np.isfinite(shift)):
        raise InputError(f"the normaliser {url} is damaged: its shift holds "
                         f"{int(np.count_nonzero(~np.isfinite(shift)))} non-finite values")
    living = attrs.get(LIVING)
    arrays = {} if living is None else _state(url, group, living, n_gallery)
    return Saved(config, shift.astype(np.float64, copy=False), activation, fingerprint,
                 recorded_gallery(attrs.get("gallery"), url), living, arrays)


def _state(url: str, group: Any, living: dict[str, Any], n_gallery: int
           ) -> dict[str, np.ndarray]:
    """The state arrays of an updatable normaliser, shapes checked."""
    try:
        n_bank, k, column = (int(living[key]) for key in ("n_bank", "k", "column_rows"))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"the normaliser {url} is damaged: its living record lacks "
                         f"{exc}") from exc
    want = {"row_values": ((n_bank, k), "f"), "row_items": ((n_bank, k), "i"),
            "item_ids": ((n_gallery,), "i")}
    if column:
        want["column_top"] = ((column, n_gallery), "f")
    return {key: _array(url, group, key, shape, kind) for key, (shape, kind) in want.items()}


def recorded_gallery(gallery: str | None, url: str) -> str | None:
    """The gallery path a normaliser at ``url`` recorded, as a path that works
    from any directory.

    Normalisers record it absolute (or as a URL); older ones recorded it as
    typed, relative to where they were fitted: it is looked for beside the
    normaliser (in the directory holding it), then in the working directory,
    and kept as recorded when in neither.
    """
    from qbscale.storage import layout

    if gallery is None or layout.is_url(gallery) or os.path.isabs(gallery):
        return gallery
    places = [] if layout.is_url(url) else [os.path.dirname(os.path.abspath(
        layout.local_path(url).rstrip("/")))]
    for place in [*places, os.getcwd()]:
        candidate = os.path.abspath(os.path.join(place, gallery))
        if os.path.exists(candidate):
            return candidate
    return gallery


# ---------------------------------------------------------------- inputs of a fit


def store_fingerprint(experiment: Experiment) -> tuple[dict[str, Any], str | None]:
    """``(fingerprint, gallery)`` of a store experiment, reading no similarity.

    The bank checksum is the sha256 ingest recorded of the bank's file; for an
    embeddings store the gallery embeddings are hashed (:func:`qbscale.engine.fingerprint.checksum`)
    and ``gallery`` is the path of the ``gallery_emb`` array.
    """
    from qbscale.engine.fingerprint import checksum
    from qbscale.storage import layout

    attrs = experiment.attrs or {}
    sources = attrs.get("sources") or {}
    embeddings = attrs.get("kind") == layout.KIND_EMBEDDINGS
    role = "bank_emb" if embeddings else "bank"
    digest = (sources.get(role) or {}).get("sha256")
    out: dict[str, Any] = {"n_gallery": experiment.n_gallery,
                           "bank_checksum": f"file-sha256:{digest}" if digest else None}
    if not embeddings:
        return out, None
    gallery = _store_array(experiment, layout.GALLERY_EMB)
    out["gallery_sha256"] = checksum(gallery)
    url = str(experiment.url).rstrip("/")
    url = url if layout.is_url(url) else os.path.abspath(url)  # found from anywhere
    return out, f"{url}/{layout.GALLERY_EMB}"


def _store_array(experiment: Experiment, name: str) -> Any:
    import dask.array as da

    from qbscale.storage.durability.integrity import open_group

    group = open_group(str(experiment.url), experiment.storage_options)  # chunks verified
    return da.from_zarr(group[name])


def open_embeddings(path: str, name: str) -> Any:
    """Embeddings in a file: a ``.npy`` (memory-mapped) or a Zarr array (as dask)."""
    from qbscale.storage.durability.paths import check_regular

    check_regular(path, dir_ok=True)
    if os.path.isfile(path) and path.endswith(".npy"):
        from qbscale.storage.inputs.readers import NpyInput

        try:  # header checked first: empty, truncated, lying, object
            return NpyInput(path).memmap()
        except InputError as exc:
            raise InputError(f"{name} ({path}) is not a readable .npy file: {exc}") from exc
    import dask.array as da

    from qbscale.storage.durability.integrity import open_array

    try:  # every chunk read verified: a missing one is an error, not its fill value
        return da.from_zarr(open_array(path))
    except (FileNotFoundError, KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{name} ({path}) is neither a .npy file nor a Zarr array: "
                         f"{exc}") from exc


def check_store(fitted: dict[str, Any], store: str | os.PathLike[str] | None, name: str,
                storage_options: dict[str, Any] | None = None) -> None:
    """Refuse to apply the normaliser ``name`` (fingerprint ``fitted``) to a
    store of another gallery: its size, and for an embeddings store fitted
    from gallery embeddings, their checksum."""
    from qbscale.engine.fingerprint import check
    from qbscale.storage.stores.store import open_experiment

    if store is None:
        return
    experiment = open_experiment(store, storage_options)
    given: dict[str, Any] = {"n_gallery": experiment.n_gallery}
    check(fitted, given, f"{os.fspath(store)} (for the normaliser {name})")
    if fitted.get("gallery_sha256"):
        given = store_fingerprint(experiment)[0]
        check(fitted, given, f"{os.fspath(store)} (for the normaliser {name})")
