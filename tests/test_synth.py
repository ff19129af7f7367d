"""`qbscale synth`: complete stores, reproducible data, hubness, retrieval that works."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from qbscale.api import run
from qbscale.errors import ConfigError
from qbscale.storage import layout
from qbscale.storage.stores.store import in_memory, open_experiment
from qbscale.synth import GEN_ROWS, SynthSpec, gallery_rows, query_rows, synth


@pytest.fixture()
def invoke(cli_invoke):
    """``qbscale synth ARGS --quiet``, expected to succeed: its output."""
    return lambda *args: cli_invoke("synth", *args, "--quiet").output


def arrays(path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return {name: group[name][...] for name in group.array_keys()}


def test_cli_writes_a_complete_store(tmp_path, invoke):
    out = tmp_path / "s.zarr"
    text = invoke(str(out), "--bank", "300", "--test", "100", "--gallery", "50", "--dim", "32",
                  "--queries-per-item", "2", "--chunk-rows", "37", "--seed", "3")
    assert "bank 300 x 50 float32 in chunks of 37 x 50" in text
    exp = open_experiment(out)
    assert exp.bank.shape == (300, 50) and exp.test.shape == (100, 50)
    np.testing.assert_array_equal(exp.gt, np.arange(100) // 2)
    attrs = zarr.open_group(str(out), mode="r").attrs[layout.ATTR]
    assert attrs["complete"] is True and attrs["kind"] == "sims"
    assert attrs["synth"]["seed"] == 3 and attrs["synth"]["n_gallery"] == 50
    res = run(exp, beta=20)
    assert res.before["R1"] > 10  # far above chance (2%)


def test_data_do_not_depend_on_chunking(tmp_path):
    spec = SynthSpec(n_bank=230, n_test=60, n_gallery=70, dim=24, seed=5)
    a = synth(tmp_path / "a.zarr", spec, progress=False)
    b = synth(tmp_path / "b.zarr", spec, chunk_rows=13, chunk_cols=9, codec="lz4",
              progress=False)
    got_a, got_b = arrays(a), arrays(b)
    assert zarr.open_array(f"{b}/bank", mode="r").chunks == (13, 9)
    for name in (layout.BANK, layout.TEST):
        np.testing.assert_array_equal(got_a[name], got_b[name])
    other = arrays(synth(tmp_path / "c.zarr", SynthSpec(230, 60, 70, 24, seed=6),
                         progress=False))
    assert not np.array_equal(got_a[layout.BANK], other[layout.BANK])


def test_rows_are_the_same_whatever_range_is_asked():
    spec = SynthSpec(n_bank=GEN_ROWS + 50, n_test=40, n_gallery=GEN_ROWS + 100, dim=8)
    whole = gallery_rows(spec, 0, spec.n_gallery)
    np.testing.assert_array_equal(gallery_rows(spec, GEN_ROWS - 7, GEN_ROWS + 9),
                                  whole[GEN_ROWS - 7:GEN_ROWS + 9])
    bank = query_rows(spec, "bank", 0, spec.n_bank)
    np.testing.assert_array_equal(query_rows(spec, "bank", GEN_ROWS - 1, GEN_ROWS + 2),
                                  bank[GEN_ROWS - 1:GEN_ROWS + 2])
    np.testing.assert_allclose(np.linalg.norm(bank, axis=1), 1, atol=1e-5)


def test_embeddings_kind_holds_the_vectors_of_the_sims_kind(tmp_path):
    spec = SynthSpec(n_bank=120, n_test=40, n_gallery=40, dim=16, seed=1)
    sims = arrays(synth(tmp_path / "s.zarr", spec, "sims", progress=False))
    emb = arrays(synth(tmp_path / "e.zarr", spec, "embeddings", chunk_rows=25,
                       progress=False))
    for name in (layout.BANK_EMB, layout.TEST_EMB, layout.GALLERY_EMB):
        np.testing.assert_allclose(np.linalg.norm(emb[name], axis=1), 1, atol=1e-5)
    gallery = emb[layout.GALLERY_EMB]
    np.testing.assert_allclose(emb[layout.BANK_EMB] @ gallery.T, sims[layout.BANK], atol=1e-5)
    np.testing.assert_allclose(emb[layout.TEST_EMB] @ gallery.T, sims[layout.TEST], atol=1e-5)
    attrs = zarr.open_group(str(tmp_path / "e.zarr"), mode="r").attrs[layout.ATTR]
    assert attrs["kind"] == "embeddings" and attrs["similarity"] == "cosine"


def test_data_are_hubness_prone_and_querybank_normalisation_helps():
    spec = SynthSpec(n_bank=4000, n_test=1000, n_gallery=1000, seed=2)
    gallery = gallery_rows(spec, 0, spec.n_gallery)
    test = query_rows(spec, "test", 0, spec.n_test) @ gallery.T
    bank = query_rows(spec, "bank", 0, spec.n_bank) @ gallery.T
    # k-occurrence: how often each item is in some query's top 10
    n10 = np.bincount(np.argpartition(-test, 10, axis=1)[:, :10].ravel(), minlength=1000)
    centred = n10 - n10.mean()
    skewness = (centred**3).mean() / (centred**2).mean() ** 1.5
    assert skewness > 2 and n10.max() > 8 * n10.mean()
    res = run(in_memory(bank, test), beta=20, method="dis")
    assert 20 < res.before["R1"] < 90  # findable, not trivial
    assert res.after[20.0]["R1"] > res.before["R1"] + 3
    assert res.after[20.0]["MeanR"] < res.before["MeanR"]


@pytest.mark.parametrize(("args", "message"), [
    (["--bank", "10", "--test", "30", "--gallery", "20"], "need 30 gallery items"),
    (["--bank", "10", "--test", "7", "--gallery", "20", "--queries-per-item", "2"],
     "not a multiple"),
    (["--bank", "10", "--test", "10", "--gallery", "20", "--kind", "embeddings",
      "--chunk-cols", "4"], "chunk_cols applies to similarities only"),
])
def test_bad_settings_are_refused_with_the_values(tmp_path, args, message, cli_invoke):
    res = cli_invoke("synth", tmp_path / "x.zarr", *args, "--quiet", exit_code=1)
    assert message in res.output
    assert not (tmp_path / "x.zarr").exists()


def test_existing_store_needs_overwrite(tmp_path, cli_invoke, invoke):
    out = tmp_path / "s.zarr"
    invoke(str(out), "--bank", "20", "--test", "10", "--gallery", "10", "--dim", "8")
    res = cli_invoke("synth", out, "--bank", "20", "--test", "10", "--gallery", "10", "--quiet",
                     exit_code=1)
    assert f"Error: {out} exists: pass --overwrite" in res.output
    invoke(str(out), "--bank", "20", "--test", "10", "--gallery", "12", "--dim", "8",
           "--overwrite")
    assert open_experiment(out).n_gallery == 12


def test_spec_validation():
    with pytest.raises(ConfigError, match="n_gallery must be at least 1"):
        SynthSpec(10, 10, 0)


def test_cli_data_parameters_reach_the_store(tmp_path, invoke):
    out = tmp_path / "p.zarr"
    invoke(str(out), "--bank", "60", "--test", "40", "--gallery", "40", "--dim", "16",
           "--query-noise", "2", "--hub-share", "0.5", "--query-lean", "0.7", "--seed", "2")
    attrs = zarr.open_group(str(out), mode="r").attrs[layout.ATTR]["synth"]
    assert (attrs["query_noise"], attrs["hub_share"], attrs["query_lean"]) == (2.0, 0.5, 0.7)
    spec = SynthSpec(n_bank=60, n_test=40, n_gallery=40, dim=16, seed=2, query_noise=2.0,
                     hub_share=0.5, query_lean=0.7)
    want = query_rows(spec, "test", 0, 40) @ gallery_rows(spec, 0, 40).T
    np.testing.assert_allclose(arrays(out)["test"], want, rtol=1e-6, atol=1e-6)
