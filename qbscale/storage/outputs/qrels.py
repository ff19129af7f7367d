"""A store's ground truth as TREC qrels: what IR evaluation tools read beside a run.

One line per relevant (query, item) pair::

    qid 0 item 1

with the store's ids when it has them (:mod:`qbscale.storage.stores.ids`),
else 0-based indices, exactly as hits files name queries and items
(:mod:`qbscale.storage.outputs.hits`).  Masked queries are left out, as the
metrics leave them out.  With the hits of a run (``--topk K --hits
run.trec``), ``ir_measures``, ``ranx`` or ``trec_eval`` then give qbscale's
figures: ``Success@K`` is R@K and ``RR`` the mean reciprocal rank (of the
ground-truth item within the top K).

The relevant items come from :func:`qbscale.storage.stores.store.positives`
only; the file is written beside and renamed into place.

Examples
--------
>>> import tempfile, os
>>> from qbscale.types import Experiment
>>> path = os.path.join(tempfile.mkdtemp(), "truth.qrels")
>>> exp = Experiment(None, None, np.array([1, 0]), None)
>>> _ = write_qrels(path, exp)
>>> print(open(path).read(), end="")
0 0 1 1
1 0 0 1
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qbscale.errors import ConfigError, OutputError
from qbscale.storage.durability.atomic import check_writable, partial_path, publish_file
from qbscale.storage.stores.ids import experiment_ids
from qbscale.storage.stores.store import positives

if TYPE_CHECKING:
    from qbscale.types import Experiment

__all__ = ["check_qrels_path", "write_qrels"]


def check_qrels_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path after checking it can be written (call before any work)."""
    out = Path(path)
    if not out.parent.is_dir():
        raise ConfigError(f"qrels file {out}: no such directory {out.parent}")
    if out.is_dir():
        raise ConfigError(f"qrels file {out} is a directory")
    check_writable(out)
    return out


def write_qrels(path: str | os.PathLike[str], experiment: Experiment) -> Path:
    """Write the ground truth of ``experiment`` to ``path`` as TREC qrels.

    Parameters
    ----------
    path : path
        The file to write (replaced if it exists, once the new one is complete).
    experiment : Experiment
        With a ground truth; its store's ids label the lines.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ConfigError
        The experiment has no ground truth.
    OutputError
        The file cannot be written (nothing is left behind).
    """
    out = check_qrels_path(path)
    query_ids, item_ids = experiment_ids(experiment)
    partial = partial_path(out)
    try:
        with open(partial, "w", encoding="utf-8") as f:
            for rows, items in positives(experiment):
                qids = rows if query_ids is None else query_ids[rows]
                lines: list[str] = []
                for qid, relevant in zip(qids.tolist(), items, strict=True):
                    names = relevant if item_ids is None else item_ids[relevant]
                    lines.extend(f"{qid} 0 {item} 1\n" for item in np.asarray(names).tolist())
                f.writelines(lines)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(f"could not write {out}: {exc.strerror or exc}") from exc
        raise
    publish_file(partial, out)
    return out
