"""A gallery bank for ``dual-is``: adding one to a store, and finding it for a run.

A *gallery bank* is a set of extra items of the gallery's modality (training
videos for text->video retrieval, say); ``dual-is`` normalises with their
similarities to the gallery items (:mod:`qbscale.engine.methods`).  A store keeps it
beside the querybank::

    gallery_bank      (gallery_bank_item, gallery)  similarities, in a sims store
    gallery_bank_emb  (gallery_bank_item, dim)      embeddings, in an embeddings
                                                    store (similarities to
                                                    gallery_emb computed per block)

:func:`add_gallery_bank` writes it block by block into an existing complete
store, checking every value, and records it in the store's ``qbscale``
attribute (``gallery_bank``: file, sha256, dtype, shape) only once it is
fully written: an array without that record (an interrupted write) is refused.
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from qbscale.engine.methods import GALLERY_BANK
from qbscale.errors import ConfigError, IncompleteStoreError, InputError, StoreExistsError
from qbscale.storage import layout

if TYPE_CHECKING:
    from qbscale.config import RunConfig
    from qbscale.types import Experiment, MatrixSource

#: store arrays of a gallery bank (their dimension names: :data:`layout.DIMS`)
SIMS = GALLERY_BANK
EMBEDDINGS = layout.GALLERY_BANK_EMB
DIMS = {SIMS: layout.DIMS[SIMS], EMBEDDINGS: layout.DIMS[EMBEDDINGS]}
#: the record in the store's ``qbscale`` attribute
RECORD = layout.GALLERY_BANK_RECORD


def _open_store(url: str, options: dict[str, Any] | None) -> Any:
    import zarr

    from qbscale.storage.stores.store import open_experiment

    experiment = open_experiment(url, options)  # refuses missing / incomplete stores
    group = zarr.open_group(url, mode="r+", storage_options=options)
    return experiment, group


def _target(experiment: Experiment, group: Any, src: Any) -> tuple[str, int]:
    """``(array name, expected columns)`` for a gallery bank in this kind of store."""
    name = src.label("gallery bank")
    if src.ndim != 2 or 0 in src.shape:
        raise InputError(f"{name} must be a non-empty 2-D matrix, got shape {src.shape}")
    if (experiment.attrs or {}).get("kind") == layout.KIND_EMBEDDINGS:
        dim = int(group[layout.GALLERY_EMB].shape[1])
        if src.shape[1] != dim:
            raise InputError(f"{name} has dimension {src.shape[1]}, gallery_emb has {dim}")
        return EMBEDDINGS, dim
    if src.shape[1] != experiment.n_gallery:
        raise InputError(f"{name} has {src.shape[1]} gallery columns, "
                         f"test has {experiment.n_gallery}")
    return SIMS, experiment.n_gallery


def _write(group: Any, name: str, src: Any, dtype: np.dtype, chunk_bytes: int, codec: str,
           progress: bool, unit: bool) -> None:
    """Write the gallery bank through the ingest's block writer (checks included)."""
    from tqdm import tqdm

    from qbscale.storage.stores.ingest import chunk_shape
    from qbscale.storage.stores.writer import Target, unit_rows, write_matrix

    label = src.label("gallery bank")
    chunks = chunk_shape(src.shape[0], src.shape[1], dtype.itemsize, chunk_bytes)
    target = Target(name, src, dtype, chunks, unit_rows(label) if unit else None, label)
    with tqdm(total=src.shape[0], unit="row", file=sys.stderr, disable=not progress,
              desc="gallery bank", dynamic_ncols=True) as bar:
        write_matrix(group, target, codec, bar)


def _set_record(group: Any, record: dict[str, Any] | None,
                digests: dict[str, str] | None = None, url: str = "") -> None:
    """Set (or drop) the record and the bank's manifest digests (``digests``), and
    seal the store's attributes again, through a fresh handle: a group opened
    before the last consolidation would write its stale consolidated metadata back.

    Raises
    ------
    DamagedStoreError
        The store's attributes were edited since it was sealed (sealing them
        again would pass the edit off as the store's).
    """
    import zarr

    from qbscale.errors import DamagedStoreError
    from qbscale.storage.durability import seal

    group = zarr.open_group(group.store, mode="r+")
    attrs = dict(group.attrs[layout.ATTR])
    refused = seal.refusal(url or str(group.store), attrs)
    if refused is not None:
        raise DamagedStoreError(refused)
    attrs.pop(RECORD, None)
    sealed = {name: digest for name, digest in dict(attrs[seal.MANIFESTS]).items()
              if name not in (SIMS, EMBEDDINGS)}
    if record is not None:
        attrs[RECORD] = record
        sealed.update(digests or {})
    group.attrs[layout.ATTR] = seal.sealed({**attrs, seal.MANIFESTS: sealed})
    from qbscale.storage.durability.integrity import forget

    forget()  # this process's copy of the root is the old one


def add_gallery_bank(store: str | os.PathLike[str], source: str | os.PathLike[str] | np.ndarray,
                     *, chunk_bytes: int = layout.DEFAULT_CHUNK_BYTES, dtype: str | None = None,
                     codec: str = "none", overwrite: bool = False, progress: bool = True,
                     storage_options: dict[str, Any] | None = None) -> str:
    """Write a gallery bank into an existing store (for ``method="dual-is"``).

    Parameters
    ----------
    store : str or os.PathLike
        The path or URL of a complete store from :func:`qbscale.ingest`.
    source : str, os.PathLike or numpy.ndarray
        Gallery-bank x gallery similarities (similarity store) or gallery-bank
        embeddings (embeddings store; scaled to unit length when the store's
        are): ``.pkl``, ``.npy``, ``.npz``, ``.zarr`` or an array.
    chunk_bytes : int, default 64 MiB
        Target bytes per stored chunk, as for :func:`qbscale.ingest`.
    dtype : str, optional
        Stored float type, as for :func:`qbscale.ingest`.
    codec : {"none", "lz4", "zstd"}, default "none"
        Chunk compression.
    overwrite : bool, default False
        Replace a gallery bank already in the store.
    progress : bool, default True
        Show a progress bar on stderr.
    storage_options : dict, optional
        The fsspec options of a URL.

    Returns
    -------
    str
        The store.

    Raises
    ------
    InputError
        Not a 2-D float matrix, the wrong number of gallery columns (or
        embedding dimension), NaN or inf values.
    StoreExistsError
        The store has a gallery bank and ``overwrite`` is False.
    """
    from qbscale.storage.inputs.readers import open_matrix
    from qbscale.storage.stores.writer import check_options, stored_dtype

    given = check_options(codec, dtype)
    url = os.fspath(store)
    experiment, group = _open_store(url, storage_options)
    src = open_matrix(source, "array")
    name, _ = _target(experiment, group, src)
    stored = stored_dtype(src, src.label("gallery bank"), given)
    if (name in set(group.array_keys()) or RECORD in (experiment.attrs or {})) and not overwrite:
        raise StoreExistsError(f"{url} already has a gallery bank: pass overwrite=True "
                               "(--overwrite) to replace it")
    from qbscale.storage.durability.integrity import record_manifests
    from qbscale.storage.durability.lock import StoreLock
    from qbscale.storage.stores.writer import consolidate

    with StoreLock.acquire(url, storage_options, "adding a gallery bank"):
        _set_record(group, None, url=url)  # from here until the end, the bank counts as unfinished
        unit = (experiment.attrs or {}).get("similarity") == "cosine"
        _write(group, name, src, stored, chunk_bytes, codec, progress, unit)
        digests = record_manifests(url, storage_options, name,
                                   store=str((experiment.attrs or {}).get("store_id")))
        consolidate(group.store)
        # a fresh id: a reader that sees the record change knows the bank was
        # replaced under it (storage.stores.store.check_unchanged)
        record = {"array": name, "id": uuid.uuid4().hex,
                  "file": None if src.path is None else src.name,
                  "sha256": src.sha256(), "dtype": str(stored), "shape": list(src.shape)}
        _set_record(group, record, digests, url)
    return url


# ---------------------------------------------------------------- reading


def open_gallery_bank(experiment: Experiment) -> MatrixSource:
    """The gallery bank of a store experiment, as a block source.

    Raises
    ------
    ConfigError
        The experiment has no store, or its store no gallery bank.
    IncompleteStoreError
        A gallery bank whose write was interrupted.
    """
    from qbscale.storage.stores.sources import EmbeddingMatrix, ZarrMatrix

    url = experiment.url
    if url is None:
        raise ConfigError("dual-is needs a gallery bank: pass gallery_bank= (an array or a "
                          "file of gallery-bank x gallery similarities)")
    record = (experiment.attrs or {}).get(RECORD)
    if record is None:
        if _has_array(experiment):
            raise IncompleteStoreError(f"the gallery bank in {url} was not completely written: "
                                       "add it again with overwrite")
        raise ConfigError(f"dual-is needs a gallery bank and {url} has none: add one with "
                          "qbscale.storage.stores.gallery_bank.add_gallery_bank, "
                          "or pass gallery_bank=")
    options = experiment.storage_options
    if record["array"] == EMBEDDINGS:
        queries = ZarrMatrix.open(url, EMBEDDINGS, options, 8192)
        return EmbeddingMatrix.build(queries, experiment.test.gallery)  # type: ignore[attr-defined]
    return ZarrMatrix.open(url, SIMS, options)


def _has_array(experiment: Experiment) -> bool:
    import zarr

    group = zarr.open_group(experiment.url, mode="r", use_consolidated=False,
                            storage_options=experiment.storage_options)
    return bool({SIMS, EMBEDDINGS} & set(group.array_keys()))


def as_source(given: Any, rows_per_block: int | None = None) -> MatrixSource:
    """A gallery bank given directly: an array, a file (read whole) or a source."""
    from qbscale.storage.inputs.readers import read_array
    from qbscale.storage.stores.sources import NumpyMatrix
    from qbscale.storage.stores.store import check_matrix

    if hasattr(given, "read") and hasattr(given, "row_chunks"):
        return given  # type: ignore[no-any-return]
    array = given if isinstance(given, np.ndarray) else read_array(given, "gallery_bank")
    check_matrix("gallery bank", array)
    return NumpyMatrix.wrap(array, rows_per_block or max(1, 2**24 // array.shape[1]))


def resolve(experiment: Experiment, config: RunConfig, given: Any = None
            ) -> dict[str, MatrixSource]:
    """The extra banks ``config``'s method reads: ``{"gallery_bank": source}`` or ``{}``."""
    from qbscale.engine.methods import get

    if not config.normalises or GALLERY_BANK not in get(config.method).banks:
        if given is not None:
            raise ConfigError(f"method {config.method} does not use a gallery bank")
        return {}
    source = as_source(given) if given is not None else open_gallery_bank(experiment)
    return {GALLERY_BANK: source}
