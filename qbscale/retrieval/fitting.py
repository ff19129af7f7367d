"""What :meth:`qbscale.Normaliser.fit` reads: banks as block sources, and fingerprints.

Three kinds of input become an :class:`~qbscale.types.Experiment` whose bank
the engine's bank stage (:func:`qbscale.engine.plan.fit`) reads once, block
by block:

* an array: numpy (cut into row blocks), dask (its own chunks; each task
  computes its block) or an :class:`xarray.DataArray` of either;
* a store from ``qbscale ingest`` (only its bank is read);
* querybank and gallery embeddings: similarities ``bank_emb @ gallery_emb.T``
  computed block by block (:class:`~qbscale.storage.stores.sources.EmbeddingMatrix`),
  never the whole matrix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from qbscale.engine import fingerprint as fp
from qbscale.engine.checks import check_finite, check_not_masked, check_similarities
from qbscale.engine.grid import split
from qbscale.errors import InputError
from qbscale.storage.stores.sources import EmbeddingMatrix, NumpyMatrix
from qbscale.types import Experiment, MatrixSource

#: elements per row block of an in-memory bank (as :func:`~qbscale.storage.stores.store.in_memory`)
BLOCK_ELEMENTS = 2**24


@dataclass
class Inputs:
    """An experiment for the bank stage, its extra banks, and what identifies them."""

    experiment: Experiment
    banks: dict[str, MatrixSource]
    fingerprint: dict[str, Any]
    gallery: Any = None  # the gallery embeddings (array or path), for search


@dataclass(frozen=True)
class DaskMatrix:
    """A dask array as a block source: block ``(i, c)`` is its chunk, computed
    (synchronously, inside the task that reads it) and checked to be finite
    (a NaN or inf named by its row and column in the whole array)."""

    array: Any
    label: str = "bank"

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.array.shape[0]), int(self.array.shape[1]))

    @property
    def row_chunks(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.chunks[0])

    @property
    def col_chunks(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.chunks[1])

    def read(self, i: int, c: int) -> np.ndarray:
        from qbscale.engine.grid import offsets

        block = np.asarray(self.array.blocks[i, c].compute(scheduler="synchronous"))
        check_finite(block, offsets(self.row_chunks)[i], self.label, offsets(self.col_chunks)[c])
        return block


def unwrap(array: Any) -> Any:
    """The numpy or dask data of an array-like (an xarray.DataArray's ``.data``);
    a masked array is refused (:func:`qbscale.engine.checks.check_not_masked`)."""
    check_not_masked(array, "the array")
    if hasattr(array, "dims") and hasattr(array, "data"):
        return array.data
    if hasattr(array, "dask"):
        return array
    return np.asarray(array)


def is_dask(array: Any) -> bool:
    return hasattr(array, "dask") and hasattr(array, "chunks")


def check_known_sizes(data: Any, name: str) -> None:
    """Refuse a dask array of unknown chunk sizes (NaN, after indexing by a lazy mask)
    where it is cut into row blocks (a fit, a top-k search)."""
    if is_dask(data) and any(n != n for n in data.shape):
        from qbscale.errors import InputError

        raise InputError(f"{name} is a dask array of unknown chunk sizes (indexed by a lazy "
                         "mask): call .compute_chunk_sizes() on it first")


def matrix_source(name: str, array: Any, rows_per_block: int | None = None) -> MatrixSource:
    """A block source over a numpy, dask or xarray matrix (numpy: checked finite now)."""
    from qbscale.retrieval.transform import gallery_last
    from qbscale.storage.stores.store import check_matrix

    check_not_masked(array, name)
    if hasattr(array, "dims") and hasattr(array, "data"):  # the gallery axis by its name
        array = gallery_last(array, name)[0]
    data = unwrap(array)
    check_similarities(data, name)
    check_known_sizes(data, name)
    if is_dask(data):
        return DaskMatrix(data if rows_per_block is None
                          else data.rechunk((rows_per_block, -1)), name)
    check_matrix(name, data)
    step = rows_per_block or max(1, BLOCK_ELEMENTS // data.shape[1])
    return NumpyMatrix(data, split(data.shape[0], step), (data.shape[1],))


def _experiment(bank: MatrixSource) -> Experiment:
    """An experiment whose bank is ``bank`` (the bank stage reads nothing else;
    the bank stands in as the test matrix, which only gives the gallery size)."""
    return Experiment(bank, bank, np.zeros(0, np.int64), None)


def _extra_banks(config: Any, gallery_bank: Any) -> dict[str, MatrixSource]:
    from qbscale.engine.methods import GALLERY_BANK, get
    from qbscale.errors import ConfigError

    if GALLERY_BANK not in get(config.method).banks:
        if gallery_bank is not None:
            raise ConfigError(f"method {config.method} does not use a gallery bank")
        return {}
    if gallery_bank is None:
        raise ConfigError(f"method {config.method} needs a gallery bank: pass gallery_bank= "
                          "(gallery-bank x gallery similarities)")
    if isinstance(gallery_bank, str | os.PathLike):
        from qbscale.storage.stores.gallery_bank import as_source

        return {GALLERY_BANK: as_source(gallery_bank)}
    return {GALLERY_BANK: matrix_source("gallery bank", gallery_bank)}


def from_array(bank: Any, config: Any, gallery_bank: Any = None) -> Inputs:
    """Inputs of a bank given as a numpy, dask or xarray matrix."""
    from qbscale.retrieval.transform import gallery_last

    if hasattr(bank, "dims") and hasattr(bank, "data"):  # the gallery axis by its name
        bank = gallery_last(bank, "bank")[0]
    source = matrix_source("bank", bank)
    banks = _extra_banks(config, gallery_bank)
    return Inputs(_experiment(source), banks,
                  {"n_gallery": source.shape[1], "bank_checksum": fp.bank_checksum(unwrap(bank))})


def from_store(store: str | os.PathLike[str] | Experiment, config: Any,
               gallery_bank: Any = None, storage_options: dict[str, Any] | None = None
               ) -> Inputs:
    """Inputs of a store from ``qbscale ingest``, or of an opened experiment
    (e.g. :func:`~qbscale.storage.stores.store.in_memory`): only its bank is read by the fit."""
    from qbscale.storage.outputs.normaliser_store import store_fingerprint
    from qbscale.storage.stores.gallery_bank import resolve
    from qbscale.storage.stores.store import open_experiment

    experiment = store if isinstance(store, Experiment) else \
        open_experiment(store, storage_options)
    given = gallery_bank
    if given is not None and not isinstance(given, str | os.PathLike):
        given = matrix_source("gallery bank", given)
    banks = resolve(experiment, config, given)
    identity, gallery = store_fingerprint(experiment)
    return Inputs(experiment, banks, identity, gallery)


def _embeddings(name: str, array: Any) -> Any:
    if isinstance(array, str | os.PathLike):
        from qbscale.storage.outputs.normaliser_store import open_embeddings

        return open_embeddings(os.fspath(array), name)
    from qbscale.retrieval.transform import gallery_last

    check_not_masked(array, name)
    if hasattr(array, "dims") and hasattr(array, "data"):  # the gallery axis by its name
        array = gallery_last(array, name)[0]
    data = unwrap(array)
    check_similarities(data, name)
    return data


def from_embeddings(bank_emb: Any, gallery_emb: Any, config: Any,
                    gallery_bank: Any = None) -> Inputs:
    """Inputs of querybank and gallery embeddings (similarities computed per block)."""
    from qbscale.storage.stores.store import embedding_grid

    bank, gallery = _embeddings("bank_emb", bank_emb), _embeddings("gallery_emb", gallery_emb)
    if bank.shape[1] != gallery.shape[1]:
        raise InputError(f"bank_emb has dimension {bank.shape[1]}, gallery_emb has "
                         f"{gallery.shape[1]}")
    q_rows, g_rows = embedding_grid(bank.shape[0], gallery.shape[0])
    sources = [matrix_source(name, data, rows) for name, data, rows in
               (("bank_emb", bank, q_rows), ("gallery_emb", gallery, g_rows))]
    sims = EmbeddingMatrix.build(sources[0], sources[1])
    banks = _extra_banks(config, gallery_bank)
    identity = {"n_gallery": int(gallery.shape[0]), "gallery_sha256": fp.checksum(gallery),
              "bank_checksum": fp.bank_checksum(bank)}
    kept = absolute(os.fspath(gallery_emb)) if isinstance(gallery_emb, str | os.PathLike) \
        else unwrap(gallery_emb)
    return Inputs(_experiment(sims), banks, identity, kept)


def absolute(path: str) -> str:
    """A local path made absolute (against the working directory now), so a
    normaliser recording it is found from anywhere; URLs (``s3://``) unchanged.

    >>> absolute("s3://bucket/g.npy"), absolute("/data/g.npy")
    ('s3://bucket/g.npy', '/data/g.npy')
    """
    from qbscale.storage.layout import is_url, local_path

    return path if is_url(path) else os.path.abspath(local_path(path))


def fit_engine(inputs: Inputs, config: Any, scheduler: Any = "threads",
               num_workers: int | None = None, progress: bool = False) -> Any:
    """Run the bank stage over ``inputs``: the engine's fitted normaliser."""
    from qbscale.engine.plan import fit
    from qbscale.executors import get_executor

    lazy = fit(inputs.experiment, config, banks=inputs.banks)
    from qbscale.storage.stores.store import read_whole

    executor = get_executor(scheduler, num_workers)
    try:
        with read_whole(inputs.experiment):
            (norm,) = executor.compute([lazy], progress)
    finally:
        executor.close()
    return norm
