"""The other retrieval direction of a store: gallery items as queries.

A store holds test queries x gallery items (text -> video: captions x
videos).  :func:`reverse` turns an experiment around, video -> text, as the
reference code's ``v2t_metrics`` does with ``sims.T``:

* the test matrix is read transposed, block by block
  (:class:`~qbscale.storage.stores.sources.Transposed`): a row block of the
  reverse is a column block of the store, so no transposed copy exists;
* item ``j``'s positives are the queries whose ground truth holds ``j``
  (a video's captions; :class:`~qbscale.engine.positives.Positives`), and a
  query masked out (a missing caption) is no positive and no competitor;
* the querybank is the store's reverse bank (bank items x test queries:
  bank videos x test captions, ``ingest --reverse-bank``); without one, only
  the baseline can run.
"""

from __future__ import annotations

import numpy as np

from qbscale.engine.positives import Positives
from qbscale.errors import InputError
from qbscale.storage import layout
from qbscale.storage.stores.sources import NoMatrix, Transposed
from qbscale.types import Experiment, MatrixSource

#: the two directions: as stored (queries -> gallery), and the reverse
DIRECTIONS = ("t2v", "v2t")


def query_positives(experiment: Experiment) -> Positives:
    """The experiment's ground truth as :class:`Positives` (one per query for ``gt``)."""
    if experiment.positives is not None:
        return experiment.positives
    if experiment.gt is None:
        raise InputError(f"{experiment.url or 'this experiment'} has no ground truth: "
                         "the other direction has no right answers either")
    return Positives.single(experiment.gt, experiment.n_gallery)


def reverse(experiment: Experiment, bank: MatrixSource | None = None) -> Experiment:
    """Gallery items -> test queries, from the same matrix (see the module).

    ``bank`` is the reverse querybank (``(n_bank, n_queries)``); None: the
    store's, if it holds one, else none (a baseline-only experiment).
    """
    pos = query_positives(experiment)
    n_queries, n_gallery = experiment.n_queries, experiment.n_gallery
    keep = np.ones(len(pos.indices), bool)
    excluded = None
    if experiment.mask is not None:
        excluded = np.flatnonzero(~experiment.mask).astype(np.int64)
        keep = experiment.mask[pos.row_ids()]
    reversed_pos = Positives.from_pairs(pos.indices[keep], pos.row_ids()[keep], n_gallery,
                                        n_queries, "reversed ground truth")
    if bank is None:
        bank = stored_bank(experiment)
    if bank is None:
        bank = NoMatrix(n_queries)
    elif bank.shape[1] != n_queries:
        raise InputError(f"the reverse bank has {bank.shape[1]} columns; expected one per "
                         f"test query ({n_queries})")
    return Experiment(bank, Transposed(experiment.test), None, None, experiment.url,
                      experiment.attrs, experiment.storage_options, reversed_pos,
                      None if excluded is None or not excluded.size else excluded)


def stored_bank(experiment: Experiment) -> MatrixSource | None:
    """The store's reverse bank, or None (no store, or none in it)."""
    if experiment.url is None or not (experiment.attrs or {}).get(layout.REVERSE_BANK):
        return None
    from qbscale.storage.stores.sources import ZarrMatrix

    return ZarrMatrix.open(experiment.url, layout.REVERSE_BANK, experiment.storage_options)


def has_bank(experiment: Experiment) -> bool:
    """True when ``experiment`` (a :func:`reverse` one) has a querybank."""
    return experiment.bank.shape[0] > 0

