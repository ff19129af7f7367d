"""Hubness measures against a dense oracle written from their definitions, and
``qbscale hubness`` through CliRunner."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qbscale
from qbscale.analysis import hubness as hub
from qbscale.analysis.compare import compare
from qbscale.api import run
from qbscale.errors import ConfigError
from qbscale.storage.stores.store import in_memory

from . import reference as ref
from .strategies import problems
from .test_engine import experiment

SETTINGS = settings()  # the profile of tests/conftest.py


# ---------------------------------------------------------------- the oracle


def oracle_occurrence(scores: np.ndarray, k: int, mask=None) -> np.ndarray:
    """N_k by a full stable sort of every (kept) row and a Counter."""
    rows = range(len(scores)) if mask is None else np.flatnonzero(mask)
    counts = Counter()
    for i in rows:
        counts.update(np.argsort(-scores[i], kind="stable")[:k].tolist())
    return np.array([counts[j] for j in range(scores.shape[1])])


def oracle_measures(nk: np.ndarray) -> dict[str, float]:
    """Skewness, Robin Hood, hub occupation and antihub rate, term by term."""
    n = len(nk)
    mean = sum(nk) / n
    var = sum((x - mean) ** 2 for x in nk) / n
    skew = 0.0 if var == 0 else (sum((x - mean) ** 3 for x in nk) / n) / var**1.5
    total = sum(nk)
    ranked = sorted(range(n), key=lambda j: (-nk[j], j))[:max(1, -(-n // 100))]
    return {
        "skewness": skew,
        "robin_hood": 0.0 if total == 0 else sum(abs(x - mean) for x in nk) / (2 * total),
        "hub_occupation": 0.0 if total == 0 else sum(nk[j] for j in ranked) / total,
        "antihub_rate": sum(1 for x in nk if x == 0) / n,
    }


@SETTINGS
@given(p=problems(max_gallery=30), method=st.sampled_from(["dis", "is", "nnn", "csls"]),
       k=st.integers(1, 6), data=st.data())
def test_occurrence_from_engine_topk_equals_dense_oracle(p, method, k, data):
    k = min(k, p.test.shape[1])
    res = run(experiment(p, data), k=p.k, method=method, topk=k, scheduler="synchronous",
              nnn_k=2) if method == "nnn" else \
        run(experiment(p, data), k=p.k, method=method, topk=k, scheduler="synchronous")
    nks = hub.occurrences(res, k)
    np.testing.assert_array_equal(nks["before"],
                                  oracle_occurrence(p.test.astype(float), k, p.mask))
    value = res.config.values[0]
    params = {"nnn_k": 2.0} if method == "nnn" else {}
    scored = ref.method_scores(p.test, p.bank, method, value, params, p.k)
    np.testing.assert_array_equal(nks[value], oracle_occurrence(scored, k, p.mask))
    for nk in nks.values():
        got = hub.Hubness.of(nk, k).to_dict()
        for name, want in oracle_measures(nk.tolist()).items():
            assert got[name] == pytest.approx(want, abs=1e-12)
        assert nk.sum() == k * (len(p.test) if p.mask is None else p.mask.sum())


@pytest.mark.parametrize(("nk", "skew", "robin", "occupation", "antihubs"), [
    ([5, 5, 5, 5], 0.0, 0.0, 0.25, 0.0),
    ([20, 0, 0, 0], 1.1547005383792515, 0.75, 1.0, 0.75),
    ([0, 0, 0], 0.0, 0.0, 0.0, 1.0),
])
def test_measures_on_known_distributions(nk, skew, robin, occupation, antihubs):
    h = hub.Hubness.of(np.array(nk), 1)
    assert (h.skewness, h.robin_hood, h.hub_occupation, h.antihub_rate) == pytest.approx(
        (skew, robin, occupation, antihubs))


def test_hubs_and_lost_hubs():
    before = np.array([0, 9, 3, 9, 1] + [1] * 195)  # 200 items: the top 1% is 2 items
    after = np.array([0, 2, 8, 9, 1] + [1] * 195)
    np.testing.assert_array_equal(hub.hubs(before), [1, 3])
    np.testing.assert_array_equal(hub.lost_hubs(before, after), [1])


def test_bad_inputs_name_the_value():
    with pytest.raises(ConfigError, match="k must be between 1 and the 3 items per list, got 4"):
        hub.k_occurrence(np.zeros((2, 3), int), 5, 4)
    res = run(in_memory(np.eye(3), np.eye(3)), method="is")
    with pytest.raises(ConfigError, match="run with topk=K"):
        hub.occurrences(res)


# ---------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(3)
    gallery = rng.standard_normal((30, 6))
    hubby = np.abs(gallery[:3]).sum(axis=1)  # a few items close to everything
    bank = rng.standard_normal((120, 6)) @ gallery.T
    test = rng.standard_normal((60, 6)) @ gallery.T
    test[:, :3] += hubby
    test[np.arange(60), np.arange(60) // 2] += 2
    path = tmp_path_factory.mktemp("hub") / "exp.zarr"
    return qbscale.ingest(path, bank, test, chunk_rows=25, progress=False), bank, test


def test_cli_hubness_matches_the_oracle(store, tmp_path, cli_invoke):
    path, bank, test = store
    out = tmp_path / "hub.json"
    res = cli_invoke("hubness", path, "--depth", "5", "--method", "is", "--method", "csls",
                     "--json", out, "--quiet")
    lines = res.output.splitlines()
    assert lines[0] == "N_k at depth 5 over 60 test queries and 30 gallery items"
    assert [line.split()[0] for line in lines[2:]] == ["none", "is", "csls"]
    rows = json.loads(out.read_text())["rows"]
    nk_before = oracle_occurrence(test, 5)
    assert rows[0]["hub_skewness"] == pytest.approx(oracle_measures(nk_before)["skewness"])
    scored = ref.method_scores(test, bank, "csls", 10.0, {})
    want = oracle_measures(oracle_occurrence(scored, 5))
    assert rows[2]["hub_robin_hood"] == pytest.approx(want["robin_hood"])
    assert rows[2]["R1"] == pytest.approx(ref.metrics(ref.ranks(scored, np.arange(60) // 2))["R1"])


def test_hubness_reads_without_writing(store, cli_invoke):
    import zarr

    path, _, _ = store
    before = sorted(zarr.open_group(path, mode="r").array_keys())
    result = compare(path, ["nnn"], k=3)
    assert sorted(zarr.open_group(path, mode="r").array_keys()) == before
    assert [r.label for r in result.runs] == ["nnn"]
    res = cli_invoke("hubness", path, "--method", "dual-is", "--quiet", exit_code=1)
    assert res.output.startswith(f"Error: dual-is needs a gallery bank and {path} has none")
