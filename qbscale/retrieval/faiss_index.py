"""QB-Norm served by any faiss index (``pip install '.[faiss]'`` in a clone).

A normalised score is one inner product of augmented vectors: gallery item
``j`` is stored as ``[g_j, shift_1j, ..., shift_Vj]`` (one extra coordinate
per variant) and a query is searched as ``[scale_v q, 0, .., -1, .., 0]``
(``-1`` at variant ``v``'s coordinate), so::

    <[scale_v q, -e_v], [g_j, shift_j]> = scale_v q.g_j - shift_vj

and the raw score ``q.g_j`` is the same index searched with ``[q, 0, ..., 0]``.
Each variant's shifts are stored centred and scaled, ``(shift - c) / w``
(``c`` their mean, ``w`` making the coordinate at most :data:`EXTRA_SPAN`
in size), and queried with ``-w``; ``c`` is added back to the scores found.
Stored as they are, shifts would dominate every inner product of the
gallery's own vectors, and a graph index (HNSW) built on them loses its way
(on pycode, HNSW32's R@1 is 44.8 as the exact search's; 37.5 with shifts
centred but not scaled).
One index (Flat, HNSW, IVF, ...; any ``faiss.index_factory`` string with the
inner-product metric) thus serves the raw search that decides the dynamic
switch (each row's raw top-1) and every variant's normalised search.

An index built for an updatable normaliser (``Normaliser.fit(...,
updatable=True)``) holds its items under their ids (``faiss.IndexIDMap2``),
answers in gallery positions, and keeps the centring it was built with, so
that it can follow the normaliser's updates (:mod:`qbscale.retrieval.faiss_follow`).

faiss scores in float32: with ``Flat`` the results equal :func:`qbscale.retrieval.search.search`'s
except where two scores differ by less than float32 precision.

Examples
--------
>>> from qbscale.config import RunConfig
>>> from qbscale.engine.statistics import GalleryStatistics
>>> norm = GalleryStatistics(RunConfig.make(1.0, method="is"), np.array([[0.0, 2.0, 0.0]]),
...                          np.ones(3, bool))
>>> index = FaissSearch.build(norm, np.eye(3, dtype=np.float32))
>>> index.search(np.array([[0.0, 1.0, 0.9]], np.float32), 2)[1]
array([[2, 0]])
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np

from qbscale.engine.checks import check_finite
from qbscale.engine.statistics import GalleryStatistics
from qbscale.errors import ConfigError, InputError, OutputError, StoreExistsError
from qbscale.storage.inputs.gallery_rows import gallery_source

#: gallery rows added to the index at a time
ADD_ROWS = 65536
#: largest magnitude of a stored (centred, scaled) shift coordinate
EXTRA_SPAN = 0.05
#: training rows for indexes that need training (IVF, PQ)
TRAIN_ROWS = 100_000


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise ConfigError("faiss is not installed: pip install faiss-cpu (or, in a "
                          "qbscale clone, pip install '.[faiss]')") from exc
    return faiss


@dataclass
class FaissSearch:
    """A faiss index over augmented gallery vectors and the normaliser it serves.

    Made by :meth:`build` or :meth:`load` (or :func:`qbscale.retrieval.search.to_faiss`).

    Parameters
    ----------
    index : faiss.Index
        The index over the gallery vectors, each augmented by its shifts.
    norm : GalleryStatistics
        The fitted normaliser the index serves.
    dim : int
        The embeddings' dimension (without the augmentation).
    centring : tuple of numpy.ndarray, optional
        ``(centre, weight)``, each ``(n_values,)``: the mean shift removed from
        each variant's stored shifts and the divisor applied to them, fixed
        when an index of an updatable normaliser was built, so that it can
        follow the normaliser's updates (:mod:`qbscale.retrieval.faiss_follow`).
        None (the default) for an index of a fixed normaliser, whose centring
        is computed from ``norm``.
    bank_rows : int, optional
        The number of bank rows of the updatable normaliser the stored shifts
        came from (a grown or merged bank means the index is built again);
        None for an index of a fixed normaliser.
    factory : str, optional
        The faiss index factory string the index was built with
        (``"Flat"``, ``"HNSW32"``, ...), used when it is built again; None
        when not known.
    """

    index: Any
    norm: GalleryStatistics
    dim: int
    # an index that follows an updatable normaliser: the ``(centre, weight)``
    # it stores shifts with (fixed when built), and the bank rows they came from
    centring: tuple[np.ndarray, np.ndarray] | None = None
    bank_rows: int | None = None
    factory: str | None = None

    @property
    def centre(self) -> np.ndarray:
        """The mean shift of each variant (removed from the stored shifts)."""
        return _centre(self.norm)[0] if self.centring is None else self.centring[0]

    @property
    def weight(self) -> np.ndarray:
        """The divisor of each variant's stored shifts (the query's coordinate)."""
        return _centre(self.norm)[1] if self.centring is None else self.centring[1]

    @property
    def ids(self) -> np.ndarray | None:
        """The gallery item ids held (an index of an updatable normaliser), else None."""
        return None if self.centring is None else \
            _faiss().vector_to_array(self.index.id_map).astype(np.int64)

    @classmethod
    def build(cls, norm: GalleryStatistics, gallery_emb: Any, factory: str = "Flat",
              params: str | None = None) -> FaissSearch:
        """Index ``gallery_emb``, read block by block.

        The index is ``faiss.index_factory(dim + n_values, factory,
        METRIC_INNER_PRODUCT)``.

        Parameters
        ----------
        norm : GalleryStatistics
            The fitted normaliser.
        gallery_emb : array-like or str
            The gallery embeddings fitted on: an array or a path.
        factory : str, default "Flat"
            The faiss index factory string.
        params : str, optional
            The faiss search parameters (``"efSearch=128"``, ``"nprobe=16"``); by
            default ``efSearch=128`` for HNSW and ``nprobe=16`` for IVF indexes.

        Returns
        -------
        FaissSearch
            The index, ready to search.
        """
        faiss = _faiss()
        gal = gallery_source(gallery_emb, "the gallery embeddings")
        norm.check_gallery(gal.shape[0], "the gallery")
        n, dim = gal.shape
        n_values = len(norm.values)
        try:
            index = faiss.index_factory(dim + n_values, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ConfigError(f"faiss cannot build index {factory!r}: "
                              f"{str(exc).splitlines()[0]}") from exc
        blocks = gal.blocks(ADD_ROWS)
        record = getattr(norm, "record", None)
        centring = None if record is None else _centre(norm)
        if not index.is_trained:
            step = max(1, n // TRAIN_ROWS)
            sample = np.concatenate([_augment(np.asarray(blocks.read(i))[::step], norm, r0,
                                              centring)
                                     for i, r0 in enumerate(_starts(blocks.row_chunks))])
            index.train(np.ascontiguousarray(sample[:TRAIN_ROWS * 2]))
        if record is not None:  # ids: the items' own, so that updates can follow
            index = faiss.IndexIDMap2(index)
        for i, r0 in enumerate(_starts(blocks.row_chunks)):
            block = np.asarray(blocks.read(i), dtype=np.float32)
            check_finite(block, r0, "the gallery embeddings")
            vectors = _augment(block, norm, r0, centring)
            if record is None:
                index.add(vectors)
            else:
                index.add_with_ids(vectors, record.item_ids[r0:r0 + len(block)])
        if params is None:
            params = ",".join(p for p, key in (("efSearch=128", "HNSW"), ("nprobe=16", "IVF"))
                              if key in factory) or None
        if params:
            faiss.ParameterSpace().set_index_parameters(index, params)
        state = getattr(norm, "state", None)
        return cls(index, norm, dim, centring, None if state is None else state.n_rows,
                   factory)

    @classmethod
    def load(cls, path: str | os.PathLike[str], norm: GalleryStatistics) -> FaissSearch:
        """An index saved by :meth:`save`, checked against ``norm``.

        Parameters
        ----------
        path : str or os.PathLike
            The index file.
        norm : GalleryStatistics
            The normaliser it must serve.

        Returns
        -------
        FaissSearch
            The index, ready to search.
        """
        faiss = _faiss()
        path = os.fspath(path)
        if not os.path.exists(path):
            raise InputError(f"no such faiss index: {path}")
        from qbscale.storage.durability.paths import check_regular

        check_regular(path)
        try:
            index = faiss.read_index(path)
        except RuntimeError as exc:
            raise InputError(f"{path} is not a faiss index: "
                             f"{str(exc).splitlines()[0]}") from exc
        dim = index.d - len(norm.values)
        if index.ntotal != norm.n_gallery or dim < 1:
            raise InputError(f"{path} indexes {index.ntotal} items of dimension {index.d}; "
                             f"the normaliser has {norm.n_gallery} items and "
                             f"{len(norm.values)} values (dimension + {len(norm.values)})")
        from qbscale.retrieval.faiss_trailer import read_trailer

        centring, bank_rows, factory = read_trailer(path, len(norm.values))
        out = cls(index, norm, dim, centring, bank_rows, factory)
        if centring is not None:
            from qbscale.retrieval.faiss_trailer import check_ids

            check_ids(out, path)
        return out

    def save(self, path: str | os.PathLike[str], overwrite: bool = True) -> str:
        """Write the index beside ``path``, then rename it into place.

        The bytes of ``faiss.write_index`` go through Python's file object
        (faiss's own writer only warns when its close fails, so a full disk would
        leave a truncated index), and are renamed into place by
        :func:`qbscale.storage.durability.atomic.replacing`.

        Parameters
        ----------
        path : str or os.PathLike
            Where to write.
        overwrite : bool, default True
            With False, a file that appeared at ``path`` meanwhile (a second
            writer) is kept.

        Returns
        -------
        str
            The path written.

        Raises
        ------
        OutputError
            The index could not be written (full disk, ...); ``path`` is as it was.
        StoreExistsError
            ``overwrite=False`` and ``path`` appeared while the index was written.
        """
        from qbscale.storage.durability.atomic import replacing

        faiss = _faiss()
        path = os.fspath(path)
        try:
            with replacing(path, replace=overwrite) as fh:
                faiss.write_index(self.index, faiss.PyCallbackIOWriter(fh.write))
                if self.centring is not None:
                    from qbscale.retrieval.faiss_trailer import settings, trailer

                    fh.write(trailer(self.centring, self.bank_rows, self.factory,
                                     settings(self.norm)))
        except RuntimeError as exc:  # faiss's own report of a failed write
            raise OutputError(f"could not write {path}: "
                              f"{str(exc).strip().splitlines()[-1]}") from exc
        return path

    def _search(self, vectors: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's search; an index with item ids answers in gallery positions."""
        scores, found = self.index.search(vectors, top_k)
        if self.centring is not None:
            found = np.searchsorted(self.norm.record.item_ids,  # type: ignore[attr-defined]
                                    found)
        return scores, found

    def search(self, queries: Any, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top ``top_k`` gallery items of each query, as faiss finds them.

        Parameters
        ----------
        queries : array-like
            (n, dim) query embeddings.
        top_k : int
            Items per query.

        Returns
        -------
        scores, indices : numpy.ndarray
            As :func:`qbscale.retrieval.search.search` returns them (float32
            scores from faiss, cast to float64).
        """
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InputError(f"the queries have shape {q.shape}; the index expects "
                             f"(n, {self.dim})")
        check_finite(q, 0, "the queries")
        if int(top_k) != top_k or not 1 <= top_k <= self.index.ntotal:
            raise InputError(f"top_k must be between 1 and {self.index.ntotal}, got {top_k}")
        norm, n_values = self.norm, len(self.norm.values)
        extra = np.zeros((len(q), n_values), np.float32)
        raw = None
        if norm.rows != "all" or norm.shift is None:
            raw = self._search(np.hstack([q, extra]), top_k)
        if norm.shift is None or norm.rows == "none":
            assert raw is not None
            out = [raw] * n_values
        else:
            flags = norm.flags(raw[1][:, 0]) if raw is not None else None
            out = []
            for v, scale in enumerate(norm.scales):
                side = extra.copy()
                side[:, v] = -self.weight[v]
                found: Any = self._search(np.hstack([q * np.float32(scale), side]), top_k)
                found = (found[0].astype(np.float64) - self.centre[v], found[1])
                if flags is not None and raw is not None:
                    found = tuple(np.where(flags[:, None], f, r) for f, r in zip(found, raw,
                                                                                 strict=True))
                out.append(found)
        scores = np.stack([o[0] for o in out]).astype(np.float64)
        indices = np.stack([o[1] for o in out]).astype(np.int64)
        return (scores[0], indices[0]) if n_values == 1 else (scores, indices)


def check_replaceable(path: str | os.PathLike[str]) -> None:
    """Refuse to replace ``path`` unless it is a faiss index file (``--overwrite``).

    A faiss index begins with a four-letter code starting with ``I``
    (``IxF2``, ``IHNf``, ``IwFl``, ...); anything else, a directory or a
    FIFO included, is left alone.

    Raises
    ------
    StoreExistsError
        Naming ``path`` and what it is.
    """
    from qbscale.storage.durability.paths import file_type

    path = os.fspath(path)
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise StoreExistsError(f"{path} exists and is {file_type(mode)}, not a faiss index: "
                               "not replacing it")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if len(head) < 4 or head[:1] != b"I" or not head.isalnum():
        raise StoreExistsError(f"{path} exists and is not a faiss index: not replacing it")


def _starts(chunks: tuple[int, ...]) -> list[int]:
    return [int(x) for x in np.cumsum((0, *chunks[:-1]))]


def _centre(norm: GalleryStatistics) -> tuple[np.ndarray, np.ndarray]:
    """``(c, w)``: each variant's mean shift, and a divisor that brings
    ``shift - c`` within :data:`EXTRA_SPAN` (1 when it already is)."""
    if norm.shift is None:
        return np.zeros(len(norm.values)), np.ones(len(norm.values))
    centre = norm.shift.mean(axis=1)
    span = np.abs(norm.shift - centre[:, None]).max(axis=1)
    return centre, np.maximum(span / EXTRA_SPAN, 1.0)


def _augment(block: np.ndarray, norm: GalleryStatistics, r0: int,
             centring: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``[g_j, (shift_1j - c_1) / w_1, ..]`` (``centring``, by default
    :func:`_centre`; zeros when there is no shift), float32."""
    n_values = len(norm.values)
    side = np.zeros((len(block), n_values), np.float32)
    if norm.shift is not None:
        centre, weight = centring or _centre(norm)
        side[:] = ((norm.shift[:, r0:r0 + len(block)] - centre[:, None]) / weight[:, None]).T
    return np.ascontiguousarray(np.hstack([block.astype(np.float32), side]))
