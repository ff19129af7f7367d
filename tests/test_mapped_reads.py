"""Chunk files read by mapping them give the bytes a copy gives, checksums verified."""

from __future__ import annotations

import numpy as np
import pytest

import qbscale
import qbscale.storage.sources as sources
from qbscale.errors import DamagedStoreError
from qbscale.storage.sources import ZarrMatrix

from .cluster_fixtures import problem


def blocks(url: str, name: str) -> list[np.ndarray]:
    src = ZarrMatrix.open(url, name)
    return [src.read(i, c) for i in range(len(src.row_chunks))
            for c in range(len(src.col_chunks))]


@pytest.mark.parametrize(("rows", "cols"), [(50, None), (13, 33)])
def test_mapped_and_copied_reads_agree(tmp_path, monkeypatch, rows, cols):
    bank, test = problem(n_bank=300, n_gallery=100)
    url = str(qbscale.ingest(tmp_path / "m.zarr", bank, test, chunk_rows=rows,
                             chunk_cols=cols, progress=False))
    monkeypatch.setattr(sources, "MAP_BYTES", 1)  # map every chunk file
    mapped = blocks(url, "bank")
    assert not any(b.flags.writeable for b in mapped)  # the page cache's own pages
    monkeypatch.setenv("QBSCALE_MAP_READS", "0")
    copied = blocks(url, "bank")
    for a, b in zip(mapped, copied, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_mapped_chunk_is_still_checked(tmp_path, monkeypatch):
    bank, test = problem(n_bank=300, n_gallery=100)
    url = tmp_path / "m.zarr"
    qbscale.ingest(url, bank, test, chunk_rows=50, progress=False)
    chunk = url / "bank" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[10] ^= 1
    chunk.write_bytes(bytes(raw))
    monkeypatch.setattr(sources, "MAP_BYTES", 1)
    src = ZarrMatrix.open(str(url), "bank")
    src.read(0, 0)
    with pytest.raises(DamagedStoreError, match="crc32c"):
        src.read(1, 0)
