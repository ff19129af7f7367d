"""Checking the finished blocks of an interrupted run before a resume reuses them.

When a row block of a saving run is finished, :class:`~qbscale.storage.stores.resume.Manifest`
records, before its ``done`` marker, the CRC-32C that the crc32c codec stored
in each chunk the block wrote (its scores, one chunk per swept value, and its
row results) in ``manifest/crc`` (``(n_blocks, n_chunks)`` uint32, a chunk per
block).  A resume reuses a block only when every one of those chunks is
present, matches its own checksum and is the chunk recorded there; any other
block is computed again (a chunk deleted, damaged, or swapped with another
after the run stopped).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from qbscale.config import RunConfig
    from qbscale.engine.statistics import GalleryStatistics

#: the array of recorded chunk CRCs in a run's manifest group
CRC = "crc"


def templates(prefix: str, group: str, fields: dict[str, tuple[int, int]], n_scores: int
              ) -> tuple[str, ...]:
    """The keys of the chunks row block ``{i}`` writes, as format strings.

    ``fields`` maps each kept field to ``(ndim, query axis)``; ``n_scores`` is
    the number of swept values when scores are saved (else 0).

    >>> templates("runs/a", "runs/a/manifest", {"rank": (2, 1)}, 2)
    ('runs/a/scores/c/0/{i}/0', 'runs/a/scores/c/1/{i}/0', 'runs/a/manifest/rank/c/0/{i}')
    """
    keys = [f"{prefix}/scores/c/{b}/{{i}}/0" for b in range(n_scores)]
    for name, (ndim, axis) in fields.items():
        coords = ["{i}" if a == axis else "0" for a in range(ndim)]
        keys.append(f"{group}/{name}/c/{'/'.join(coords)}")
    return tuple(keys)


def block_keys(keys: tuple[str, ...], i: int) -> list[str]:
    """The chunk keys of row block ``i``."""
    return [key.format(i=i) for key in keys]


def block_crcs(url: str, options: dict[str, Any] | None, keys: list[str]) -> np.ndarray:
    """The CRC-32C stored in each chunk ``keys`` (read from its last 4 bytes).

    Raises
    ------
    DamagedStoreError
        A chunk is missing: every chunk a block writes is stored.
    """
    from qbscale.storage.durability.integrity import damaged
    from qbscale.storage.durability.manifest import read_tail
    from qbscale.storage.durability.regular import NotRegularError

    out = np.zeros(len(keys), np.uint32)
    for n, key in enumerate(keys):
        try:
            got = read_tail(url, options, key)
        except NotRegularError as exc:  # a FIFO or a device: never read
            raise damaged(url, key, exc.reason) from None
        if got is None:
            raise damaged(url, key)
        out[n] = got[0] & 0xFFFFFFFF
    return out


def intact(url: str, options: dict[str, Any] | None, keys: list[str],
           recorded: np.ndarray | None) -> bool:
    """True when every chunk ``keys`` is present, matches its checksum and (with
    ``recorded``, the CRCs of :func:`block_crcs` at the time) is the one written."""
    from qbscale.storage.durability.integrity import crc32c
    from qbscale.storage.durability.manifest import read_key, tail

    if recorded is not None and (recorded.shape != (len(keys),) or not recorded.any()):
        return False
    from qbscale.storage.durability.regular import NotRegularError

    for n, key in enumerate(keys):
        try:
            data = read_key(url, options, key)
        except NotRegularError:  # a FIFO or a device where a chunk was: not this block's
            return False
        if data is None or len(data) < 4:
            return False
        crc, _ = tail(data)
        if crc32c(memoryview(data)[:-4]) != crc or \
                (recorded is not None and int(recorded[n]) != crc):
            return False
    return True


def flags(group: Any, name: str) -> np.ndarray:
    """The ``done`` markers; one unreadable marker counts as not done."""
    arr = group[name]
    try:
        return np.asarray(arr[...])
    except (ValueError, RuntimeError, TypeError):
        out = np.zeros(arr.shape, arr.dtype)
        for i in range(arr.shape[0]):
            try:
                out[i] = arr[i]
            except (ValueError, RuntimeError, TypeError):
                out[i] = 0
        return out


def _recorded(group: Any, i: int) -> np.ndarray | None:
    """Block ``i``'s recorded CRCs (None: a manifest written before they were kept)."""
    if CRC not in set(group.array_keys()):
        return None
    try:
        return np.asarray(group[CRC][i])
    except (ValueError, RuntimeError, TypeError):
        return np.zeros(0, np.uint32)  # unreadable: nothing vouches for the block


def done_blocks(url: str, options: dict[str, Any] | None, group: Any, done: str,
                keys: tuple[str, ...]) -> tuple[list[int], list[int]]:
    """``(reusable, rejected)``: the finished row blocks of a manifest ``group``
    whose chunks are intact (:func:`intact`), and the others."""
    ok: list[int] = []
    rejected: list[int] = []
    for i in np.flatnonzero(flags(group, done)):
        good = intact(url, options, block_keys(keys, int(i)), _recorded(group, int(i)))
        (ok if good else rejected).append(int(i))
    return ok, rejected


def stored_normaliser(url: str, options: dict[str, Any] | None, path: str,
                      config: RunConfig) -> GalleryStatistics | None:
    """The normaliser a run stored in its manifest group ``path``, every chunk verified
    (a missing activation chunk is not "nothing activated"); None if it cannot be read."""
    from qbscale.engine.statistics import GalleryStatistics
    from qbscale.storage.durability.integrity import open_group

    try:
        stored = open_group(url, options, path=path, use_consolidated=False)
        return GalleryStatistics(config, np.asarray(stored["shift"][...]),
                          np.asarray(stored["activation"][...]))
    except (OSError, ValueError, RuntimeError, TypeError, KeyError):
        return None  # computed again
