"""Synthetic, hubness-prone retrieval data of any size, written chunk by chunk.

The data model (all vectors L2-normalised, so dot products are cosines):

* **gallery item** ``j``: a cluster centre (clusters of unequal popularity),
  plus item-specific noise, plus a heavy-tailed share of one of a few
  *popular directions*.  Items with a large share lean towards a direction
  every query leans towards too: they are hubs, the nearest neighbours of far
  too many queries - what querybank normalisation corrects;
* **test query** ``q``: its ground-truth item's embedding plus query noise
  plus a small lean towards the popular directions (query ``q`` belongs to
  item ``q // queries_per_item``), so the ground truth is findable but hubs
  compete with it;
* **querybank query**: a query of the same kind about a fresh item drawn from
  the same clusters (a "training" caption), not tied to the test gallery.

Every row is generated from ``(seed, role, block of GEN_ROWS rows)`` alone, so
any row range can be regenerated without the rest: the data do not depend on
the chunking or on the order of writing, and no step needs more memory than a
few row blocks (the ``sims`` kind keeps the gallery embeddings in memory:
``n_gallery * dim * 4`` bytes).

Examples
--------
>>> spec = SynthSpec(n_bank=40, n_test=20, n_gallery=20, dim=16)
>>> g = gallery_rows(spec, 0, 20)
>>> g.shape, bool(np.allclose(np.linalg.norm(g, axis=1), 1, atol=1e-5))
((20, 16), True)
>>> bool(np.array_equal(gallery_rows(spec, 5, 9), g[5:9]))
True
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from qbscale import __version__
from qbscale.errors import ConfigError
from qbscale.storage import layout
from qbscale.storage.inputs.readers import InputMatrix

__all__ = ["GEN_ROWS", "KINDS", "SynthSpec", "gallery_rows", "query_rows", "synth"]

#: rows generated together from one random stream
GEN_ROWS = 4096
#: what ``synth`` can write
KINDS = layout.KINDS

_GALLERY, _TEST, _BANK, _FRESH = 1, 2, 3, 4


@dataclass(frozen=True)
class SynthSpec:
    """Sizes and shape parameters of a synthetic experiment.

    Parameters
    ----------
    n_bank, n_test, n_gallery : rows of the querybank, test queries, gallery
    dim : embedding dimension
    queries_per_item : test query ``q`` belongs to item ``q // queries_per_item``
    seed : everything is a function of it
    n_clusters : gallery clusters (popularity ~ 1 / rank)
    item_noise : item spread around its cluster centre (relative norm)
    query_noise : a query's distance from its item (relative norm)
    n_popular : popular directions (every query leans towards them)
    hub_share : scale of an item's heavy-tailed lean towards a popular direction
    query_lean : how much every query leans towards the popular directions
    """

    n_bank: int
    n_test: int
    n_gallery: int
    dim: int = 384
    queries_per_item: int = 1
    seed: int = 0
    n_clusters: int = 64
    item_noise: float = 1.0
    query_noise: float = 4.5
    n_popular: int = 4
    hub_share: float = 0.25
    query_lean: float = 1.0

    def __post_init__(self) -> None:
        for name in ("n_bank", "n_test", "n_gallery", "dim", "queries_per_item",
                     "n_clusters", "n_popular"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_test % self.queries_per_item:
            raise ConfigError(f"{self.n_test} test queries are not a multiple of "
                              f"queries_per_item={self.queries_per_item}")
        if self.n_test // self.queries_per_item > self.n_gallery:
            raise ConfigError(f"{self.n_test} test queries at {self.queries_per_item} per item "
                              f"need {self.n_test // self.queries_per_item} gallery items, "
                              f"the gallery has {self.n_gallery}")


@lru_cache(maxsize=8)
def _globals(seed: int, dim: int, n_clusters: int, n_popular: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster centres, cluster probabilities and popular directions of a seed."""
    rng = np.random.default_rng([seed, 0])
    centres = _unit(rng.standard_normal((n_clusters, dim), dtype=np.float32))
    weights = 1.0 / np.arange(1, n_clusters + 1)
    popular = _unit(rng.standard_normal((n_popular, dim), dtype=np.float32))
    return centres, weights / weights.sum(), popular


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _items(spec: SynthSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` fresh items: centre + noise + heavy-tailed lean to a popular direction."""
    centres, probs, popular = _globals(spec.seed, spec.dim, spec.n_clusters, spec.n_popular)
    cluster = rng.choice(len(probs), size=n, p=probs)
    x = rng.standard_normal((n, spec.dim), dtype=np.float32)
    x *= np.float32(spec.item_noise / np.sqrt(spec.dim))
    x += centres[cluster]
    lean = (spec.hub_share * rng.pareto(2.0, size=n)).astype(np.float32)
    x += lean[:, None] * popular[rng.integers(len(popular), size=n)]
    return _unit(x)


def _queries(spec: SynthSpec, rng: np.random.Generator, items: np.ndarray) -> np.ndarray:
    """Queries about ``items``: item + noise + a lean towards the popular directions."""
    _, _, popular = _globals(spec.seed, spec.dim, spec.n_clusters, spec.n_popular)
    x = rng.standard_normal(items.shape, dtype=np.float32)
    x *= np.float32(spec.query_noise / np.sqrt(spec.dim))
    x += items
    x += np.float32(spec.query_lean / np.sqrt(len(popular))) * popular.sum(axis=0)
    return _unit(x)


def _generated(spec: SynthSpec, role: int, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a role, assembled from whole generation blocks."""
    parts = []
    for b in range(start // GEN_ROWS, (stop - 1) // GEN_ROWS + 1 if stop > start else 0):
        lo, hi = b * GEN_ROWS, min((b + 1) * GEN_ROWS, _rows(spec, role))
        rng = np.random.default_rng([spec.seed, role, b])
        if role == _GALLERY:
            block = _items(spec, rng, hi - lo)
        elif role == _TEST:
            qpi = spec.queries_per_item
            first, last = lo // qpi, (hi - 1) // qpi + 1
            items = gallery_rows(spec, first, last)
            block = _queries(spec, rng, items[np.arange(lo, hi) // qpi - first])
        else:
            block = _queries(spec, rng, _items(spec, np.random.default_rng(
                [spec.seed, _FRESH, b]), hi - lo))
        parts.append(block[max(start, lo) - lo:min(stop, hi) - lo])
    if not parts:
        return np.empty((0, spec.dim), np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _rows(spec: SynthSpec, role: int) -> int:
    return {_GALLERY: spec.n_gallery, _TEST: spec.n_test, _BANK: spec.n_bank}[role]


def gallery_rows(spec: SynthSpec, start: int, stop: int) -> np.ndarray:
    """Gallery embeddings ``start:stop`` (float32, unit rows)."""
    return _generated(spec, _GALLERY, start, stop)


def query_rows(spec: SynthSpec, which: str, start: int, stop: int) -> np.ndarray:
    """Query embeddings ``start:stop`` of ``which`` = ``"bank"`` or ``"test"``."""
    return _generated(spec, _BANK if which == "bank" else _TEST, start, stop)


class SynthInput(InputMatrix):
    """A generated matrix read row block by row block, as ingest reads files.

    ``kind="embeddings"``: the embeddings of ``role`` (bank, test, gallery);
    ``kind="sims"``: ``queries(role) @ gallery.T`` (bank or test).
    """

    def __init__(self, spec: SynthSpec, role: str, kind: str, dtype: np.dtype) -> None:
        self.spec, self.role, self.kind = spec, role, kind
        n = {"bank": spec.n_bank, "test": spec.n_test, "gallery": spec.n_gallery}[role]
        name = f"synth:{role}{'' if kind == 'sims' else '_emb'}(seed={spec.seed})"
        self._init(name, None, (n, spec.n_gallery if kind == "sims" else spec.dim), dtype)
        self._gallery: np.ndarray | None = None

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self.role == "gallery":
            return gallery_rows(self.spec, start, stop)
        queries = query_rows(self.spec, self.role, start, stop)
        if self.kind == "embeddings":
            return queries
        if self._gallery is None:
            self._gallery = _whole_gallery(self.spec)
        return queries @ self._gallery.T

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        for r0 in range(0, self.shape[0], rows):
            yield r0, self.rows(r0, min(r0 + rows, self.shape[0])).astype(self.dtype, copy=False)

    def read(self) -> np.ndarray:
        return self.rows(0, self.shape[0]).astype(self.dtype, copy=False)


def _whole_gallery(spec: SynthSpec) -> np.ndarray:
    out = np.empty((spec.n_gallery, spec.dim), np.float32)
    for r0 in range(0, spec.n_gallery, GEN_ROWS):
        out[r0:r0 + GEN_ROWS] = gallery_rows(spec, r0, min(r0 + GEN_ROWS, spec.n_gallery))
    return out


def synth(out: str | os.PathLike[str], spec: SynthSpec, kind: str = "sims", *,
          dtype: str = "float32", chunk_bytes: int | None = None,
          chunk_rows: int | None = None, chunk_cols: int | None = None, codec: str = "none",
          overwrite: bool = False, progress: bool = True) -> str:
    """Write a complete synthetic experiment store, chunk by chunk.

    Parameters
    ----------
    out : path or URL of the store to create
    spec : sizes and data parameters
    kind : ``"sims"`` (bank and test similarity matrices) or ``"embeddings"``
        (bank, test and gallery embeddings, unit rows: cosine similarity)
    dtype : stored float type
    chunk_bytes : target bytes of a stored chunk; by default 64 MiB for
        similarities and 4 MiB for embeddings (a similarity block computed
        from them then reads whole chunks, see :func:`qbscale.storage.stores.store.embedding_grid`)
    chunk_rows, chunk_cols, codec, overwrite, progress
        As for :func:`qbscale.ingest` (``chunk_cols`` for ``sims`` only).

    Returns
    -------
    str
        The store written; the ``qbscale`` attribute records ``synth`` (the
        spec) and ``complete`` (set last).
    """
    from qbscale.storage.durability.stage import staging
    from qbscale.storage.stores.ingest import Target, chunk_shape
    from qbscale.storage.stores.writer import check_options, write_store

    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    dt = check_options(codec, dtype)
    if dt is None:
        raise ConfigError(f"synth needs a dtype: one of {', '.join(layout.DTYPES)}")
    if kind == "embeddings" and chunk_cols is not None:
        raise ConfigError("chunk_cols applies to similarities only: embedding chunks "
                          "span the whole dimension")
    if chunk_bytes is None:
        chunk_bytes = layout.DEFAULT_CHUNK_BYTES if kind == "sims" else layout.EMBEDDING_CHUNK_BYTES
    roles = (("bank", layout.BANK), ("test", layout.TEST)) if kind == "sims" else (
        ("bank", layout.BANK_EMB), ("test", layout.TEST_EMB), ("gallery", layout.GALLERY_EMB))
    targets = []
    for role, name in roles:
        src = SynthInput(spec, role, kind, dt)
        chunks = chunk_shape(src.shape[0], src.shape[1], dt.itemsize, chunk_bytes, chunk_rows,
                             chunk_cols if kind == "sims" else src.shape[1])
        targets.append(Target(name, src, dt, chunks))
    attrs: dict[str, Any] = {
        "version": __version__,
        "kind": layout.KIND_SIMS if kind == "sims" else layout.KIND_EMBEDDINGS,
        "queries_per_item": spec.queries_per_item,
        "codec": codec,
        "chunking": {"chunk_bytes": int(chunk_bytes), **{t.name: list(t.chunks) for t in targets}},
        "synth": asdict(spec),
    }
    if kind == "embeddings":
        attrs["similarity"] = "cosine"
    with staging(os.fspath(out), overwrite, None) as stage:
        inputs = {t.name: t.source for t in targets}
        write_store(stage, targets, {}, attrs, inputs, codec, progress)
    return stage.final
