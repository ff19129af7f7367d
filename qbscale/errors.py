"""Exceptions raised by qbscale.

Every error subclasses :class:`QBScaleError` and the builtin a caller would
expect, so ``except ValueError`` keeps working for bad input.
"""

from __future__ import annotations

import pickle


class QBScaleError(Exception):
    """Base class of every qbscale error."""


class InputError(QBScaleError, ValueError):
    """An input file or array is malformed: wrong shape, NaN, bad mask, ..."""


class NotFiniteError(InputError):
    """Scores came out NaN or inf: ``beta * s`` beyond float64's range, or
    (``input_data``) similarities that are not finite themselves."""

    def __init__(self, message: str, *, input_data: bool = False) -> None:
        super().__init__(message)
        self.input_data = input_data


class UnsafePickleError(QBScaleError, pickle.UnpicklingError):
    """A pickle asked for something other than a plain numpy array."""


class StoreNotFoundError(QBScaleError, FileNotFoundError):
    """No qbscale store at the given path or URL."""


class IncompleteStoreError(QBScaleError, RuntimeError):
    """The store exists but was never marked complete (interrupted ingest)."""


class StoreExistsError(QBScaleError, FileExistsError):
    """The output store exists and ``overwrite`` was not given."""


class ConfigError(QBScaleError, ValueError):
    """An option has an invalid value (beta <= 0, k < 1, unknown method, ...)."""


class OutputError(QBScaleError, OSError):
    """Writing an output failed (disk full, read-only, missing directory, ...)."""


class GroundTruthWarning(UserWarning):
    """The ground truth leaves most of the gallery without a query."""


class DamagedStoreError(QBScaleError, OSError):
    """A chunk of a store is missing or fails its checksum."""


class StoreChangedError(DamagedStoreError):
    """The store was replaced (``ingest --overwrite``) while a run read it."""


class StoreLockedError(QBScaleError, RuntimeError):
    """Another run holds the store's writer lock."""


class StoreFullError(OutputError):
    """The store's filesystem ran out of space while a run wrote into it."""
