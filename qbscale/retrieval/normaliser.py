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

    Made by :meth:`fit` or :meth:`load` rather than constructed by hand.

    Parameters
    ----------
    config : RunConfig
        The method, its swept ``values``, ``k``, parameters and ``dynamic``.
    shift : numpy.ndarray or None
        (n_values, n_gallery) float64 per-gallery shifts (``logZ`` for
        inverted softmax).
    activation : numpy.ndarray
        (n_gallery,) bool, the union of the bank rows' top-k items.
    fingerprint : dict
        ``n_gallery``, ``bank_checksum`` and, when fitted from gallery
        embeddings, ``gallery_sha256`` (:mod:`qbscale.engine.fingerprint`).
    gallery : numpy.ndarray, str or None
        The gallery embeddings it was fitted with (an array, or the absolute
        path or URL of a ``.npy`` file or Zarr array), for :meth:`search`;
        None otherwise.
    origin : str or None
        The path it was loaded from (:meth:`load`), for messages.
    state : BankState or None
        The mergeable bank statistics of an updatable normaliser
        (:class:`qbscale.engine.living.BankState`), None otherwise.
    record : Record or None
        What an updatable normaliser was fitted on and its history
        (:class:`qbscale.retrieval.living.Record`), None otherwise.

    Attributes
    ----------
    shifts : xarray.DataArray
        ``shift`` with dims ``(<param>, "gallery")``, ``<param>`` the swept
        parameter (beta, alpha or kc) with its values.
    core : GalleryStatistics
        The engine record alone (no gallery reference): what task graphs carry.

    Examples
    --------
    >>> import numpy as np
    >>> from qbscale import Normaliser
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
        bank : array-like, str, os.PathLike or Experiment, optional
            Querybank x gallery similarities (a numpy or dask array or an
            :class:`xarray.DataArray`), the path or URL of a store from ``qbscale
            ingest``, or an opened :class:`~qbscale.types.Experiment` (only the
            bank is read).  Give ``bank_emb`` and ``gallery_emb`` instead to fit
            from embeddings.
        beta : float or sequence of float, optional
            Inverse temperature(s) (is, dis, dual-is); several values are fitted
            in one pass.  Default: the method's (20).
        k : int, default 1
            Top-k columns per bank row forming the activation set.
        method : {"dis", "is", "csls", "nnn", "dual-is"}, default "dis"
            The method (:mod:`qbscale.engine.methods`).
        dynamic : bool, default False
            Normalise only rows whose top-1 is in the activation set.
        bank_emb, gallery_emb : array-like or str, optional
            Querybank and gallery embeddings (arrays, or ``.npy`` / Zarr array
            paths); the similarities ``bank_emb @ gallery_emb.T`` are computed
            block by block, never whole.
        gallery_bank : array-like or str, optional
            Gallery-bank x gallery similarities for ``dual-is`` (an array or a
            file; a store's own gallery bank by default).
        scheduler : str or distributed.Client, default "threads"
            Where the bank stage runs, as in :func:`qbscale.run`.
        num_workers : int, optional
            Threads or processes of a local scheduler.
        storage_options : dict, optional
            The fsspec options of a store URL.
        progress : bool, default False
            Show a progress bar on stderr.
        bank_sample : int, float or str, optional
            Fit on the bank rows
            ``numpy.random.default_rng(seed).permutation(n_bank)[:N]`` only (``N``
            a count, a fraction in (0, 1] or "all"), as ``qbscale.run(...,
            bank_sample=, seed=)``; the fitted config keeps the sample as its row
            count.
        seed : int, default 0
            Seed of the ``bank_sample`` permutation.
        updatable : bool, default False
            Keep what :meth:`partial_fit`, :meth:`add_items`,
            :meth:`remove_items` and :meth:`merge` need (each bank row's top-k,
            each item's top-K bank similarities for csls and nnn) and a record of
            the inputs (:mod:`qbscale.retrieval.living`); not for dual-is or a
            bank sample.  Computed in this process, a thread per core
            (``scheduler`` and ``progress`` are not used).
        **params
            The method's other parameters, and its swept one when it is not beta
            (``alpha=[0.5, 0.75]``, ``nnn_k=128``, ``kc=10``, ``gallery_beta=20``).

        Returns
        -------
        Normaliser
            The fitted normaliser.
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
        """``shift`` as an :class:`xarray.DataArray`.

        Its dims are ``(<param>, "gallery")``, ``<param>`` the swept parameter
        (beta, alpha or kc) with its values.
        """
        import xarray as xr

        name = self.config.variant_name
        return xr.DataArray(self.shift, dims=(name, "gallery"),
                            coords={name: list(self.values)}, name="shift",
                            attrs={"method": self.config.label})

    def check_gallery_emb(self, gallery_emb: Any, what: str = "the gallery embeddings"
                          ) -> None:
        """Check that ``gallery_emb`` is the gallery this normaliser was fitted on.

        Parameters
        ----------
        gallery_emb : array-like
            The gallery embeddings: their size, and their checksum when the
            normaliser was fitted from gallery embeddings, must match.
        what : str, default "the gallery embeddings"
            How the error message names them.

        Raises
        ------
        InputError
            They are not the gallery fitted on.
        """
        from qbscale.engine import fingerprint as fp

        given: dict[str, Any] = {"n_gallery": int(gallery_emb.shape[0])}
        fp.check(self.fingerprint, given, what)
        if self.fingerprint.get("gallery_sha256"):
            given["gallery_sha256"] = fp.checksum(gallery_emb)
            fp.check(self.fingerprint, given, what)

    def transform(self, sims: Any, col0: int = 0, flags: np.ndarray | None = None) -> Any:
        """Normalised scores of any block of test rows, in the kind given.

        numpy in, numpy out; a dask array gives a lazy dask array (nothing is
        computed); an :class:`xarray.DataArray` gives one with the same dims and
        coords.

        Parameters
        ----------
        sims : array-like
            (rows, n_gallery) test similarities; rows span the whole gallery.
        col0 : int, default 0
            With ``flags``, the first column of a block of columns: this is then
            the engine's block transform.
        flags : numpy.ndarray, optional
            (rows,) bool, the rows to normalise (the engine's block transform).

        Returns
        -------
        numpy.ndarray, dask.array.Array or xarray.DataArray
            ``(rows, gallery)`` with one value of the swept parameter, else
            ``(n_values, rows, gallery)``; given ``col0`` or ``flags``,
            ``(n_values, rows, cols)``.

        Raises
        ------
        InputError
            ``sims`` is not a non-empty 2-D array of floats (integers, bool,
            complex, object and strings are refused), has another number of
            gallery columns, or holds NaN or inf (named by row and column; for a
            dask array, raised by the task computing that block).
        """
        from qbscale.retrieval import transform

        if col0 or flags is not None:
            return super().transform(sims, col0, flags)
        return transform.transform(self.core, sims)

    # ------------------------------------------------------------ files

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False,
             storage_options: dict[str, Any] | None = None) -> str:
        """Write to a small Zarr v3 group, atomically.

        The gallery embeddings are referenced by path only (an in-memory gallery
        is not saved: pass it to :meth:`search` after :meth:`load`).

        Parameters
        ----------
        path : str or os.PathLike
            Where to write (a local path or a URL).
        overwrite : bool, default False
            Replace a normaliser already at ``path``.
        storage_options : dict, optional
            The fsspec options of a URL.

        Returns
        -------
        str
            The path written.
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
        """Read a normaliser written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
            A local path or a URL.
        storage_options : dict, optional
            The fsspec options of a URL.

        Returns
        -------
        Normaliser
            The normaliser saved there.

        Raises
        ------
        InputError
            ``path`` holds no normaliser, or a damaged one.
        """
        from qbscale.storage.outputs.normaliser_store import load

        saved = load(path, storage_options)
        state, record = (None, None) if saved.living is None else \
            _living.from_saved(saved.config, saved.shift, saved.living, saved.arrays)
        gallery = saved.gallery if record is None else _living.gallery_ref(record)
        return cls(saved.config, saved.shift, saved.activation, saved.fingerprint,
                   gallery=gallery, origin=os.fspath(path), state=state, record=record)

    # ------------------------------------------------------------ search

    def fitted_gallery(self, remedy: str = "pass gallery=") -> Any:
        """The gallery fitted with, checked to be still there.

        Parameters
        ----------
        remedy : str, default "pass gallery="
            How to give the gallery instead, for the error message.

        Returns
        -------
        numpy.ndarray or str
            :attr:`gallery`.

        Raises
        ------
        InputError
            It is a local path that no longer exists.
        """
        from qbscale.storage.layout import is_url

        gallery = self.gallery
        if gallery is None and self.record is not None and self.record.kind == _living.EMBEDDINGS:
            return _living.gallery(self.record)  # after updates: the parts' rows kept
        if isinstance(gallery, str) and not is_url(gallery) and not os.path.exists(gallery):
            source = f" recorded by normaliser {self.origin}" if self.origin else ""
            raise InputError(f"gallery embeddings {gallery}{source} not found; {remedy}")
        return gallery

    def search(self, queries: Any, top_k: int, gallery: Any = None, **kw: Any) -> Any:
        """The top ``top_k`` gallery items of each query after normalisation.

        Parameters
        ----------
        queries : array-like
            (n_queries, dim) query embeddings.
        top_k : int
            How many items per query.
        gallery : array-like or str, optional
            The gallery embeddings; by default those fitted on.
        **kw
            Passed to :func:`qbscale.retrieval.search.search`.

        Returns
        -------
        scores, indices : numpy.ndarray
            (n_queries, top_k) normalised scores and gallery indices, best first.
        """
        from qbscale.retrieval.search import search

        return search(self, queries, top_k, self.fitted_gallery() if gallery is None else gallery,
                      **kw)

    def to_faiss(self, gallery_emb: Any, factory: str = "Flat") -> Any:
        """A FAISS index that ranks ``gallery_emb`` as this normaliser does.

        Parameters
        ----------
        gallery_emb : array-like
            The gallery embeddings fitted on.
        factory : str, default "Flat"
            The faiss index factory string.

        Returns
        -------
        FaissSearch
            See :func:`qbscale.retrieval.search.to_faiss`.
        """
        from qbscale.retrieval.search import to_faiss

        return to_faiss(self, gallery_emb, factory)


def normalise(test: Any, bank: Any, beta: float | Iterable[float] | None = None, k: int = 1,
              method: str = "dis", **params: Any) -> Any:
    """Querybank-normalise ``test`` with a normaliser fitted on ``bank``.

    A normalised row holds ``beta * s - logZ`` (other methods: ``scale * s -
    shift``), the logarithm of the reference code's ``exp(beta * s) / Z``, so
    every row orders the gallery exactly as the reference output does; rows
    that are not normalised (``dis``: raw top-1 outside the activation set)
    keep their raw scores.  As in the paper, scores are comparable within a
    row only, not across rows.

    Parameters
    ----------
    test : array-like
        (rows, gallery) test similarities: a numpy or dask array or an
        :class:`xarray.DataArray`.
    bank : array-like, str or Experiment
        What :meth:`Normaliser.fit` takes (an array or a store path).
    beta : float or sequence of float, optional
        Inverse temperature(s); default 20.  Methods that sweep another
        parameter take it in ``params`` (``alpha=`` for nnn, ``kc=`` for csls).
    k : int, default 1
        Top-k columns per bank row forming the activation set.
    method : {"dis", "is", "csls", "nnn", "dual-is"}, default "dis"
        The method, as in :meth:`Normaliser.fit`.
    **params
        As :meth:`Normaliser.fit` (``scheduler=`` too).

    Returns
    -------
    numpy.ndarray, dask.array.Array or xarray.DataArray
        The normalised scores, float64, in ``test``'s kind (a dask array stays
        lazy): ``(rows, gallery)``, or ``(n_values, rows, gallery)`` for
        several values.

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
    >>> import numpy as np
    >>> from qbscale import normalise
    >>> bank = np.array([[0.0, 1.0], [0.0, 3.0]])
    >>> np.round(normalise(np.array([[0.5, 0.1]]), bank, beta=1, method="is"), 4)
    array([[-0.1931, -3.0269]])
    """
    return Normaliser.fit(bank, beta=beta, k=k, method=method, **params).transform(test)
