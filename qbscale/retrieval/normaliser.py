"""QB-Norm beyond evaluation: fit a normaliser once, apply it to any scores.

:class:`Normaliser` is the engine's bank-stage record
(:class:`qbscale.engine.statistics.GalleryStatistics`: one ``shift`` per gallery
item and variant, the activation set, the settings) with what a user needs
around it: :meth:`Normaliser.fit` from an array, a store or embeddings,
:meth:`~Normaliser.transform` for numpy, dask and xarray scores,
:meth:`~Normaliser.save` / :meth:`~Normaliser.load`, and labelled
:attr:`~Normaliser.shifts`.  Being an engine normaliser, it is accepted as it
is by ``qbscale.run(..., normaliser=...)``, which then skips the bank stage.

:func:`normalise` is fit-then-transform in one call.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from qbscale.engine import statistics as _engine
from qbscale.errors import ConfigError, InputError
from qbscale.retrieval import living as _living
from qbscale.retrieval.updating import Updatable
from qbscale.types import Experiment

if TYPE_CHECKING:
    from qbscale.engine.living import BankState


@dataclass(frozen=True, eq=False)
class Normaliser(_engine.GalleryStatistics, Updatable):
    """A fitted querybank normaliser.

    Attributes
    ----------
    config : the method, its swept ``values``, ``k``, parameters and ``dynamic``
    shift : (n_values, n_gallery) float64 (``logZ`` for inverted softmax)
    activation : (n_gallery,) bool, the union of the bank rows' top-k items
    fingerprint : ``n_gallery``, ``bank_checksum`` and, when fitted from
        gallery embeddings, ``gallery_sha256`` (:mod:`qbscale.engine.fingerprint`)
    gallery : the gallery embeddings it was fitted with (an array, or the
        absolute path or URL of a ``.npy`` file or Zarr array), for
        :meth:`search`; None otherwise
    origin : the path it was loaded from (:meth:`load`), for messages
    state : the mergeable bank statistics of an updatable normaliser
        (:class:`qbscale.engine.living.BankState`), None otherwise
    record : what an updatable normaliser was fitted on and its history
        (:class:`qbscale.retrieval.living.Record`), None otherwise

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> norm = Normaliser.fit(rng.random((50, 8)), beta=[10, 20])
    >>> norm.shifts.dims, norm.transform(rng.random((3, 8))).shape
    (('beta', 'gallery'), (2, 3, 8))
    """

    gallery: Any = field(default=None, repr=False)
    origin: str | None = field(default=None, repr=False)
    state: BankState | None = field(default=None, repr=False)
    record: _living.Record | None = field(default=None, repr=False)

    # ------------------------------------------------------------ fitting

    @classmethod
    def fit(cls, bank: Any = None, *, beta: float | Iterable[float] | None = None, k: int = 1,
            method: str = "dis", dynamic: bool = False, bank_emb: Any = None,
            gallery_emb: Any = None, gallery_bank: Any = None, scheduler: Any = "threads",
            num_workers: int | None = None, storage_options: dict[str, Any] | None = None,
            progress: bool = False, bank_sample: int | float | str | None = None,
            seed: int = 0, updatable: bool = False, **params: Any) -> Normaliser:
        """Fit on a querybank: every block of the bank is read once.

        Parameters
        ----------
        bank : numpy / dask array or xarray.DataArray of querybank x gallery
            similarities, the path/URL of a store from ``qbscale ingest``, or
            an opened :class:`~qbscale.types.Experiment` (only the bank is
            read).  Give ``bank_emb`` and ``gallery_emb`` instead to fit from
            embeddings.
        beta : inverse temperature(s) (is, dis, dual-is); several values are
            fitted in one pass.  Default: the method's (20).
        k : top-k columns per bank row forming the activation set
        method : ``"dis"``, ``"is"``, ``"csls"``, ``"nnn"`` or ``"dual-is"``
            (:mod:`qbscale.engine.methods`)
        dynamic : normalise only rows whose top-1 is in the activation set
        bank_emb, gallery_emb : querybank and gallery embeddings (arrays, or
            ``.npy`` / Zarr array paths); similarities ``bank_emb @
            gallery_emb.T`` are computed block by block, never whole
        gallery_bank : gallery-bank x gallery similarities for ``dual-is``
            (an array or a file; a store's own gallery bank by default)
        scheduler, num_workers : where the bank stage runs (as :func:`qbscale.run`)
        storage_options : fsspec options of a store URL
        progress : show a progress bar on stderr
        bank_sample, seed : fit on the bank rows
            ``numpy.random.default_rng(seed).permutation(n_bank)[:N]`` only
            (``N`` a count, a fraction in (0, 1] or "all"), as
            ``qbscale.run(..., bank_sample=, seed=)``; the fitted config keeps
            the sample as its row count
        **params : the method's other parameters, and its swept one when it
            is not beta (``alpha=[0.5, 0.75]``, ``nnn_k=128``, ``kc=10``,
            ``gallery_beta=20``)
        updatable : keep what :meth:`partial_fit`, :meth:`add_items`,
            :meth:`remove_items` and :meth:`merge` need (each bank row's
            top-k, each item's top-K bank similarities for csls and nnn) and
            a record of the inputs (:mod:`qbscale.retrieval.living`); not for
            dual-is or a bank sample.  Computed in this process, a thread
            per core (``scheduler`` and ``progress`` are not used)

        Returns
        -------
        Normaliser
        """
        from qbscale.config import RunConfig
        from qbscale.retrieval import fitting

        config = RunConfig.make(beta, k, method, 0, dynamic, params, bank_sample, seed)
        if not config.normalises:
            raise ConfigError("method none has nothing to fit: choose one of "
                              "dis, is, csls, nnn, dual-is")
        embeddings = bank_emb is not None or gallery_emb is not None
        if embeddings and (bank is not None or bank_emb is None or gallery_emb is None):
            raise ConfigError("give either bank, or both bank_emb and gallery_emb")
        if embeddings:
            inputs = fitting.from_embeddings(bank_emb, gallery_emb, config, gallery_bank)
        elif bank is None:
            raise ConfigError("give a bank (an array or a store) or bank_emb and gallery_emb")
        elif isinstance(bank, str | os.PathLike | Experiment):
            inputs = fitting.from_store(bank, config, gallery_bank, storage_options)
        else:
            inputs = fitting.from_array(bank, config, gallery_bank)
        if updatable:
            return cls._fit_updatable(inputs, config, bank_emb)
        norm = fitting.fit_engine(inputs, config, scheduler, num_workers, progress)
        return cls(norm.config, norm.shift, norm.activation, dict(inputs.fingerprint),
                   gallery=inputs.gallery)

    # ------------------------------------------------------------ reading

    @property
    def core(self) -> _engine.GalleryStatistics:
        """The engine record alone (no gallery reference): what task graphs carry."""
        return _engine.GalleryStatistics(self.config, self.shift, self.activation,
                                  dict(self.fingerprint))

    @property
    def shifts(self) -> Any:
        """``shift`` as an :class:`xarray.DataArray` with dims ``(<param>, "gallery")``,
        ``<param>`` the swept parameter (beta, alpha or kc) with its values."""
        import xarray as xr

        name = self.config.variant_name
        return xr.DataArray(self.shift, dims=(name, "gallery"),
                            coords={name: list(self.values)}, name="shift",
                            attrs={"method": self.config.label})

    def check_gallery_emb(self, gallery_emb: Any, what: str = "the gallery embeddings"
                          ) -> None:
        """A clear :class:`~qbscale.errors.InputError` unless ``gallery_emb`` (an
        array) is the gallery fitted on: its size, and its checksum when the
        normaliser was fitted from gallery embeddings."""
        from qbscale.engine import fingerprint as fp

        given: dict[str, Any] = {"n_gallery": int(gallery_emb.shape[0])}
        fp.check(self.fingerprint, given, what)
        if self.fingerprint.get("gallery_sha256"):
            given["gallery_sha256"] = fp.checksum(gallery_emb)
            fp.check(self.fingerprint, given, what)

    def transform(self, sims: Any, col0: int = 0, flags: np.ndarray | None = None) -> Any:
        """Normalised scores of any block of test rows, in the kind given.

        numpy in, numpy out; a dask array gives a lazy dask array (nothing is
        computed); an :class:`xarray.DataArray` gives one with the same dims
        and coords.  With one value of the swept parameter the result is
        ``(rows, gallery)``; with several, ``(n_values, rows, gallery)``.
        Rows span the whole gallery.  (Given ``col0`` or ``flags``, this is
        the engine's block transform: ``(n_values, rows, cols)`` of a block of
        columns starting at ``col0``.)

        Raises
        ------
        InputError
            ``sims`` is not a non-empty 2-D array of floats (integers, bool,
            complex, object and strings are refused), has another number of
            gallery columns, or holds NaN or inf (named by row and column;
            for a dask array, raised by the task computing that block).
        """
        from qbscale.retrieval import transform

        if col0 or flags is not None:
            return super().transform(sims, col0, flags)
        return transform.transform(self.core, sims)

    # ------------------------------------------------------------ files

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False,
             storage_options: dict[str, Any] | None = None) -> str:
        """Write to a small Zarr v3 group (atomically); returns its path.

        The gallery embeddings are referenced by path only (an in-memory
        gallery is not saved: pass it to :meth:`search` after :meth:`load`).
        """
        from qbscale.storage.outputs.normaliser_store import save

        if self.shift is None:
            raise ConfigError("a normaliser of method none has nothing to save")
        gallery = os.fspath(self.gallery) if isinstance(self.gallery, str | os.PathLike) \
            else None
        living, state = (None, None) if self.state is None or self.record is None else \
            _living.to_saved(self.state, self.record)
        return save(path, self.config, self.shift, self.activation, dict(self.fingerprint),
                    gallery, overwrite=overwrite, storage_options=storage_options,
                    living=living, state=state)

    @classmethod
    def load(cls, path: str | os.PathLike[str],
             storage_options: dict[str, Any] | None = None) -> Normaliser:
        """Read a normaliser written by :meth:`save` (clear errors for anything else)."""
        from qbscale.storage.outputs.normaliser_store import load

        saved = load(path, storage_options)
        state, record = (None, None) if saved.living is None else \
            _living.from_saved(saved.config, saved.shift, saved.living, saved.arrays)
        gallery = saved.gallery if record is None else _living.gallery_ref(record)
        return cls(saved.config, saved.shift, saved.activation, saved.fingerprint,
                   gallery=gallery, origin=os.fspath(path), state=state, record=record)

    # ------------------------------------------------------------ search

    def fitted_gallery(self, remedy: str = "pass gallery=") -> Any:
        """:attr:`gallery`, or a clear :class:`~qbscale.errors.InputError` when it
        is a local path that no longer exists (naming the normaliser that
        recorded it, and ``remedy``: how to give the gallery instead)."""
        from qbscale.storage.layout import is_url

        gallery = self.gallery
        if gallery is None and self.record is not None and self.record.kind == _living.EMBEDDINGS:
            return _living.gallery(self.record)  # after updates: the parts' rows kept
        if isinstance(gallery, str) and not is_url(gallery) and not os.path.exists(gallery):
            source = f" recorded by normaliser {self.origin}" if self.origin else ""
            raise InputError(f"gallery embeddings {gallery}{source} not found; {remedy}")
        return gallery

    def search(self, queries: Any, top_k: int, gallery: Any = None, **kw: Any) -> Any:
        """Top-``top_k`` gallery items of each query after normalisation:
        ``(scores, indices)`` (:func:`qbscale.retrieval.search.search`); ``gallery``
        defaults to the gallery embeddings fitted on."""
        from qbscale.retrieval.search import search

        return search(self, queries, top_k, self.fitted_gallery() if gallery is None else gallery,
                      **kw)

    def to_faiss(self, gallery_emb: Any, factory: str = "Flat") -> Any:
        """A FAISS index that ranks ``gallery_emb`` as this normaliser does
        (:func:`qbscale.retrieval.search.to_faiss`)."""
        from qbscale.retrieval.search import to_faiss

        return to_faiss(self, gallery_emb, factory)


def normalise(test: Any, bank: Any, beta: float | Iterable[float] | None = None, k: int = 1,
              method: str = "dis", **params: Any) -> Any:
    """Querybank-normalise ``test`` with a normaliser fitted on ``bank``.

    A normalised row holds ``beta * s - logZ`` (other methods: ``scale * s -
    shift``), the logarithm of the reference code's ``exp(beta * s) / Z``,
    so every row orders the gallery exactly as the reference output does;
    rows that are not normalised (``dis``: raw top-1 outside the activation
    set) keep their raw scores.  As in the paper, scores are comparable within
    a row only, not across rows.

    Parameters
    ----------
    test : (rows, gallery) numpy / dask array or xarray.DataArray
    bank : what :meth:`Normaliser.fit` takes (an array or a store path)
    beta : inverse temperature(s); default 20.  Methods that sweep another
        parameter take it in ``params`` (``alpha=`` for nnn, ``kc=`` for csls).
    k, method, **params : as :meth:`Normaliser.fit` (``scheduler=`` too)

    Returns
    -------
    The normalised scores, float64, in ``test``'s kind (a dask array stays
    lazy): ``(rows, gallery)``, or ``(n_values, rows, gallery)`` for several
    values.

    Raises
    ------
    InputError
        ``test`` or ``bank`` is not a non-empty 2-D array of floats, their
        gallery sizes differ, or either holds NaN or inf.
    ConfigError
        A setting is invalid (``beta <= 0``, ``k`` not an integer in
        ``[1, n_gallery]``, an unknown method).

    Examples
    --------
    >>> bank = np.array([[0.0, 1.0], [0.0, 3.0]])
    >>> np.round(normalise(np.array([[0.5, 0.1]]), bank, beta=1, method="is"), 4)
    array([[-0.1931, -3.0269]])
    """
    return Normaliser.fit(bank, beta=beta, k=k, method=method, **params).transform(test)
