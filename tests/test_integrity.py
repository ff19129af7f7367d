"""Chunk integrity: checksums on every array written, verified by every read;
a missing or damaged chunk stops run, eval and hubness with its key; the
direct chunk-file reads agree with zarr's own and fall back where they must;
``qbscale check`` finds every bad chunk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import qbscale.storage.durability.integrity as integrity
from qbscale.cli import cli
from qbscale.errors import DamagedStoreError
from qbscale.storage.durability.integrity import has_checksums
from qbscale.storage.stores.check import check_store
from qbscale.storage.stores.results import open_result
from qbscale.storage.stores.sources import DIRECT_READS_MAX_ZARR, ZarrMatrix, _raw_chunk
from qbscale.storage.stores.store import open_experiment

from .cluster_fixtures import problem

COMMANDS = {"run": ["run", "--beta", "20"], "eval": ["eval"], "hubness": ["hubness"]}


def invoke(*args: str):
    return CliRunner().invoke(cli, [*args, "-q"])


def ingest(path: Path, codec: str = "none", chunk_rows: int = 50, **kw) -> str:
    bank, test = problem(n_bank=300, n_gallery=100)
    import qbscale

    return str(qbscale.ingest(path, bank, test, chunk_rows=chunk_rows, codec=codec,
                              progress=False, **kw))


@pytest.fixture(params=["none", "lz4"])
def store(request, tmp_path):
    return ingest(tmp_path / "exp.zarr", request.param)


def flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_every_array_written_carries_crc32c(store):
    res = invoke("run", store, "--topk", "3", "--save-scores", "--save-ranks")
    assert res.exit_code == 0, res.output
    group = zarr.open_group(store, mode="r", use_consolidated=False)
    arrays = [a for _, a in group.members(max_depth=None) if isinstance(a, zarr.Array)]
    assert len(arrays) == 7  # bank, test + scores, ranks, ranks_baseline, topk x2
    assert all(has_checksums(a) for a in arrays)
    assert np.isnan(group["test"].fill_value)


def test_a_synth_store_and_a_gallery_bank_carry_crc32c(tmp_path):
    from qbscale.storage.stores.gallery_bank import add_gallery_bank

    res = CliRunner().invoke(cli, ["synth", str(tmp_path / "s.zarr"), "--bank", "40",
                                   "--test", "20", "--gallery", "20", "--quiet"])
    assert res.exit_code == 0, res.output
    add_gallery_bank(tmp_path / "s.zarr", np.random.default_rng(0).random((30, 20)),
                     progress=False)
    group = zarr.open_group(tmp_path / "s.zarr", mode="r")
    assert all(has_checksums(group[n]) for n in ("bank", "test", "gallery_bank"))


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("direct", ["1", "0"])
def test_a_deleted_chunk_stops_every_command(store, command, direct, monkeypatch):
    monkeypatch.setenv("QBSCALE_DIRECT_READS", direct)
    (Path(store) / "test" / "c" / "2" / "0").unlink()
    name, *flags = COMMANDS[command]
    res = invoke(name, store, *flags)
    assert res.exit_code == 1
    assert res.output.strip() == (f"Error: store {store}: chunk test/c/2/0 is missing: "
                                  "re-ingest or restore it")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_damaged_chunk_stops_every_command(store, command):
    flip_byte(Path(store) / "bank" / "c" / "3" / "0")
    name, *flags = COMMANDS[command]
    res = invoke(name, store, *flags)
    if command == "eval":  # eval reads the test matrix only
        assert res.exit_code == 0, res.output
        flip_byte(Path(store) / "test" / "c" / "1" / "0")
        res = invoke(name, store, *flags)
    assert res.exit_code == 1, res.output
    assert "is damaged (its crc32c checksum does not match): re-ingest or restore it" \
        in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("size", [0, 5, 4000])
def test_a_truncated_chunk_is_reported_not_a_traceback(store, size):
    path = Path(store) / "test" / "c" / "1" / "0"
    path.write_bytes(path.read_bytes()[:size])
    res = invoke("run", store)
    assert res.exit_code == 1
    assert "Error: store" in res.output and "chunk test/c/1/0 is damaged" in res.output


def test_a_missing_saved_scores_chunk_stops_eval(tmp_path):
    store = ingest(tmp_path / "exp.zarr")
    assert invoke("run", store, "--save-scores").exit_code == 0
    prefix = open_result(store, "scores").path.rsplit("/", 1)[0]
    (Path(store) / prefix / "scores" / "c" / "0" / "1" / "0").unlink()
    res = invoke("eval", store, "--array", "scores")
    assert res.exit_code == 1
    assert f"chunk {prefix}/scores/c/0/1/0 is missing: run again" in res.output


def test_a_damaged_ground_truth_is_refused(tmp_path):
    bank, test = problem(n_bank=300, n_gallery=100)
    gt = np.arange(200) // 2
    import qbscale

    store = str(qbscale.ingest(tmp_path / "e.zarr", bank, test, gt_index=gt, chunk_rows=50,
                               progress=False))
    flip_byte(Path(store) / "gt_index" / "c" / "0", 8)
    with pytest.raises(DamagedStoreError, match="chunk gt_index/c/0 is damaged"):
        open_experiment(store)


# ------------------------------------------------------------------ direct reads vs zarr


def zarr_blocks(source: ZarrMatrix) -> list[np.ndarray]:
    arr = zarr.open_array(source.url, path=source.name, mode="r")
    out, r0 = [], 0
    for rows in source.row_chunks:
        c0 = 0
        for cols in source.col_chunks:
            out.append(np.asarray(arr[(*source.index, slice(r0, r0 + rows),
                                       slice(c0, c0 + cols))]))
            c0 += cols
        r0 += rows
    return out


def all_blocks(source: ZarrMatrix) -> list[np.ndarray]:
    return [source.read(i, c) for i in range(len(source.row_chunks))
            for c in range(len(source.col_chunks))]


@pytest.mark.parametrize(("rows", "cols"), [(7, 100), (50, 30), (13, 33)])
def test_direct_reads_equal_zarr_reads_on_edge_chunks(tmp_path, rows, cols):
    bank, test = problem(n_bank=300, n_gallery=100)
    import qbscale

    url = str(qbscale.ingest(tmp_path / "e.zarr", bank, test, chunk_rows=rows, chunk_cols=cols,
                             progress=False))
    source = ZarrMatrix.open(url, "test")
    arr = zarr.open_array(url, path="test", mode="r")
    assert _raw_chunk(url, "test", arr, (), 0, 0, rows, cols) is not None  # the fast path
    for got, want in zip(all_blocks(source), zarr_blocks(source), strict=True):
        np.testing.assert_array_equal(got, want)


def write_array(url: str, data: np.ndarray, **kw) -> ZarrMatrix:
    zarr.create_group(url, overwrite=True)
    arr = zarr.create_array(url, name="m", shape=data.shape, dtype=data.dtype, **kw)
    arr[...] = data
    return ZarrMatrix.open(url, "m")


CODECS = {
    "sharded": {"chunks": (10, 40), "shards": (20, 40)},
    "compressed": {"chunks": (10, 40), "compressors": zarr.codecs.ZstdCodec()},
    "big-endian": {"chunks": (10, 40), "serializer": zarr.codecs.BytesCodec(endian="big"),
                   "compressors": None},
    "crc32c then zstd": {"chunks": (10, 40), "compressors": [zarr.codecs.Crc32cCodec(),
                                                              zarr.codecs.ZstdCodec()]},
}


@pytest.mark.parametrize("layout", sorted(CODECS))
def test_stores_the_fast_path_cannot_read_fall_back_to_zarr(tmp_path, layout):
    data = np.random.default_rng(1).random((45, 40)).astype(np.float32)
    source = write_array(str(tmp_path / "m.zarr"), data, **CODECS[layout])
    arr = zarr.open_array(source.url, path="m", mode="r")
    assert _raw_chunk(source.url, "m", arr, (), 0, 0, 10, 40) is None
    np.testing.assert_array_equal(np.concatenate(all_blocks(source)), data)


def test_the_fast_path_switches_off(tmp_path, monkeypatch):
    url = ingest(tmp_path / "e.zarr")
    arr = zarr.open_array(url, path="test", mode="r")
    assert _raw_chunk(url, "test", arr, (), 0, 0, 50, 100) is not None
    monkeypatch.setenv("QBSCALE_DIRECT_READS", "0")
    assert _raw_chunk(url, "test", arr, (), 0, 0, 50, 100) is None
    monkeypatch.delenv("QBSCALE_DIRECT_READS")
    newer = f"{DIRECT_READS_MAX_ZARR[0]}.{DIRECT_READS_MAX_ZARR[1] + 1}.0"
    monkeypatch.setattr(zarr, "__version__", newer)
    assert _raw_chunk(url, "test", arr, (), 0, 0, 50, 100) is None


def test_the_installed_zarr_is_within_the_checked_versions():
    """Raise DIRECT_READS_MAX_ZARR only after these tests pass on the newer zarr."""
    installed = tuple(int(p) for p in zarr.__version__.split(".")[:2])
    assert installed <= DIRECT_READS_MAX_ZARR


# ------------------------------------------------------------------ check, older stores


def test_check_finds_every_bad_chunk(tmp_path):
    store = ingest(tmp_path / "exp.zarr", "lz4")
    assert invoke("run", store, "--save-ranks", "--topk", "2").exit_code == 0
    clean = CliRunner().invoke(cli, ["check", store, "-q"])
    assert clean.exit_code == 0, clean.output
    assert "0 bad" in clean.output
    (Path(store) / "test" / "c" / "2" / "0").unlink()
    flip_byte(Path(store) / "bank" / "c" / "1" / "0", 40)
    ranks = open_result(store, "ranks").path
    flip_byte(next(p for p in (Path(store) / ranks / "c").rglob("*") if p.is_file()), 3)
    res = CliRunner().invoke(cli, ["check", store, "--repair-hint", "-q"])
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert "test/c/2/0: missing" in lines
    assert "bank/c/1/0: damaged (crc32c mismatch)" in lines
    assert any(line.startswith(f"{ranks}/c/") for line in lines)
    assert "3 bad" in res.output
    assert any(line.startswith("hint: test: input data") for line in lines)
    assert any(line.startswith(f"hint: {ranks}: saved results of the last run") for line in lines)


def test_check_reads_one_chunk_at_a_time(tmp_path, monkeypatch):
    store = ingest(tmp_path / "exp.zarr")
    sizes = []
    real = integrity.crc32c
    monkeypatch.setattr(integrity, "crc32c", lambda data: sizes.append(len(data)) or real(data))
    report = check_store(store)
    assert report.ok and report.chunks == 10
    assert max(sizes) == 50 * 100 * 4  # one chunk's bytes, never more


def plain_store(path: Path, monkeypatch) -> str:
    """A store as written before checksums: no crc32c, fill value 0."""
    def plain(store, name, *, shape, dtype, chunks, compressor=None, fill_value=None, **kw):
        return zarr.create_array(store, name=name, shape=shape, dtype=dtype, chunks=chunks,
                                 compressors=compressor, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(integrity, "create_array", plain)
        return ingest(path)


def test_a_store_written_before_checksums_is_refused(tmp_path, monkeypatch):
    """Arrays without checksums have no chunk manifest, so the store's seal cannot
    cover them: refused (run, check) instead of read unchecked."""
    store = plain_store(tmp_path / "old.zarr", monkeypatch)
    assert not has_checksums(zarr.open_array(store, path="test", mode="r"))
    res = CliRunner().invoke(cli, ["run", store, "-q"])
    assert res.exit_code == 1
    assert res.output == (f"Error: store {store}: array bank: it is not sealed by the store's "
                          "zarr.json (copied in from elsewhere, or written before chunk "
                          "checksums): restore it or ingest again\n")
    report = check_store(store)
    assert sorted(report.bad) == ["bank", "test"]
