"""One write path: ingest, ingest_embeddings, add_gallery_bank and synth share the
codec/dtype check, the block writer and the unit-row scaling, so the same input
gets the same answer (and the same message) from each."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from qbscale.errors import ConfigError, InputError
from qbscale.storage import layout
from qbscale.storage.stores.gallery_bank import add_gallery_bank
from qbscale.storage.stores.ingest import ingest, ingest_embeddings
from qbscale.synth import SynthSpec, synth


@pytest.fixture
def sims_store(tmp_path):
    rng = np.random.default_rng(0)
    return ingest(tmp_path / "s.zarr", rng.random((12, 6)), rng.random((6, 6)), progress=False)


@pytest.fixture
def emb_store(tmp_path):
    rng = np.random.default_rng(1)
    return ingest_embeddings(tmp_path / "e.zarr", rng.standard_normal((12, 4)),
                             rng.standard_normal((6, 4)), rng.standard_normal((6, 4)),
                             normalise=True, progress=False)


def _writers(tmp_path, sims_store):
    """Each writer, called with a 2-D float input and codec/dtype options."""
    rng = np.random.default_rng(2)
    test = rng.random((6, 6))
    return {
        "ingest": lambda arr, **kw: ingest(tmp_path / "i.zarr", arr, test, progress=False,
                                           overwrite=True, **kw),
        "gallery_bank": lambda arr, **kw: add_gallery_bank(sims_store, arr, progress=False,
                                                           overwrite=True, **kw),
    }


@pytest.mark.parametrize("writer", ["ingest", "gallery_bank"])
@pytest.mark.parametrize(("dtype", "stored"), [("f4", "float32"), ("float16", "float16"),
                                               (np.float64, "float64"), ("<f8", "float64")])
def test_every_numpy_spelling_of_a_store_dtype_is_accepted(tmp_path, sims_store, writer,
                                                           dtype, stored):
    arr = np.random.default_rng(3).random((5, 6))
    out = _writers(tmp_path, sims_store)[writer](arr, dtype=dtype)
    name = "bank" if writer == "ingest" else layout.GALLERY_BANK
    got = zarr.open_group(out, mode="r")[name]
    assert str(got.dtype) == stored
    np.testing.assert_array_equal(got[...], arr.astype(stored))


@pytest.mark.parametrize("writer", ["ingest", "gallery_bank", "synth"])
@pytest.mark.parametrize(("options", "message"), [
    ({"dtype": "int8"}, "unsupported dtype 'int8'; choose one of float16, float32, float64"),
    ({"dtype": "nonsense"}, "unsupported dtype 'nonsense'; choose one of float16"),
    ({"dtype": ">f4"}, "unsupported dtype '>f4'"),
    ({"codec": "gzip"}, "unknown codec 'gzip'; choose one of none, lz4, zstd"),
])
def test_bad_codec_or_dtype_same_error_everywhere(tmp_path, sims_store, writer, options,
                                                  message):
    arr = np.random.default_rng(4).random((5, 6))
    call = _writers(tmp_path, sims_store).get(writer) or (
        lambda arr, **kw: synth(tmp_path / "y.zarr", SynthSpec(4, 4, 4, 4), progress=False,
                                **kw))
    with pytest.raises(ConfigError, match=f"^{message}"):
        call(arr, **options)


@pytest.mark.parametrize("writer", ["ingest", "gallery_bank"])
def test_float_types_a_store_cannot_hold_are_refused_alike(tmp_path, sims_store, writer):
    arr = np.random.default_rng(5).random((5, 6)).astype(np.longdouble)
    if arr.dtype.itemsize in (2, 4, 8):
        pytest.skip("long double is float64 on this platform")
    with pytest.raises(InputError, match=r"holds float128; pass dtype= one of float16"):
        _writers(tmp_path, sims_store)[writer](arr)


@pytest.mark.parametrize("writer", ["ingest", "gallery_bank"])
def test_overflow_on_conversion_is_reported_alike(tmp_path, sims_store, writer):
    arr = np.random.default_rng(6).random((5, 6))
    arr[2, 3] = 1e6
    with pytest.raises(InputError, match=r"1 inf\) after conversion to float16; the first "
                                         r"is at row 2, column 3"):
        _writers(tmp_path, sims_store)[writer](arr, dtype="float16")


def test_zero_rows_are_refused_alike_when_scaling_to_unit_length(tmp_path, emb_store):
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((5, 4))
    vectors[3] = 0
    message = r"has a zero vector at row 3 \(1 in rows 0-4\): it cannot be normalised"
    with pytest.raises(InputError, match="^gallery bank " + message):
        add_gallery_bank(emb_store, vectors, progress=False)
    with pytest.raises(InputError, match="^bank_emb " + message):
        ingest_embeddings(tmp_path / "x.zarr", vectors, rng.standard_normal((6, 4)),
                          rng.standard_normal((6, 4)), normalise=True, progress=False)


def test_unit_rows_are_scaled_the_same_in_both_paths(tmp_path, emb_store):
    vectors = np.random.default_rng(8).standard_normal((7, 4)).astype(np.float32)
    add_gallery_bank(emb_store, vectors, progress=False)
    via_bank = zarr.open_group(emb_store, mode="r")[layout.GALLERY_BANK_EMB][...]
    out = ingest_embeddings(tmp_path / "u.zarr", vectors, vectors[:6], vectors[:6],
                            normalise=True, progress=False)
    via_ingest = zarr.open_group(out, mode="r")[layout.BANK_EMB][...]
    np.testing.assert_array_equal(via_bank, via_ingest)
    np.testing.assert_allclose(np.linalg.norm(via_bank, axis=1), 1, rtol=1e-6)
