"""A pending interruption (SIGTERM, Ctrl-C) that long work checks between its units.

Python runs a signal handler in the main thread only, between bytecodes.  The
``qbscale`` command's handlers (:func:`qbscale.cli.main`) call :func:`request`
before they raise, so work that goes on elsewhere meanwhile (a dask worker
thread writing a block, a loop over chunks) stops at its next unit instead of
running to its end: it calls :func:`check` between units, which raises
:class:`Interrupted` once an interruption is pending.

>>> clear(); requested()
False
>>> request(); requested()
True
>>> clear()
"""

from __future__ import annotations

import threading

_PENDING = threading.Event()


class Interrupted(BaseException):
    """Work stopped because SIGTERM or Ctrl-C arrived.

    Like KeyboardInterrupt, no ``except Exception`` catches it, so every
    cleanup path runs as the stack unwinds."""


def request() -> None:
    """Mark an interruption as pending (from a signal handler: it only sets a flag)."""
    _PENDING.set()


def clear() -> None:
    """Forget a pending interruption (a library caller that goes on afterwards)."""
    _PENDING.clear()


def requested() -> bool:
    """True while an interruption is pending."""
    return _PENDING.is_set()


def check() -> None:
    """Raise :class:`Interrupted` if an interruption is pending: call it between units
    of long work (a block, a chunk, a batch), in any thread.

    Raises
    ------
    Interrupted
        SIGTERM or Ctrl-C arrived and this work must stop.
    """
    if _PENDING.is_set():
        raise Interrupted("interrupted")
