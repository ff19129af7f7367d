"""The normaliser family (csls, nnn, dual-is, --dynamic) against the dense oracle,
over random chunkings of the test matrix, the querybank and the gallery bank."""

from __future__ import annotations

import json

import dask
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import qbscale
from qbscale.api import run
from qbscale.config import RunConfig
from qbscale.engine import bankstats, kernels, methods
from qbscale.engine.plan import build
from qbscale.engine.reductions import column_topk
from qbscale.errors import ConfigError, IncompleteStoreError, InputError, StoreExistsError
from qbscale.storage.stores.gallery_bank import add_gallery_bank
from qbscale.storage.stores.store import in_memory
from qbscale.types import Experiment

from . import reference as ref
from .strategies import Draws, Problem, problems
from .test_engine import Exploding, chunked, experiment

SETTINGS = settings()  # the profile of tests/conftest.py

#: per method: values of its swept parameter, and its other parameters
CASES = {
    "csls": ([1.0, 3.0, 20.0], {}),
    "nnn": ([0.0, 0.75, 1.5], {"nnn_k": 3.0}),
    "dual-is": ([1.0, 20.0], {"gallery_beta": 5.0}),
    "is": ([0.5, 20.0], {}),
}


def gallery_bank_for(p, rng) -> np.ndarray:
    """A gallery bank whose columns repeat where the querybank's do (exact ties)."""
    gb = (rng.standard_normal((int(rng.integers(1, 9)), p.bank.shape[1])) * 3).astype(
        p.bank.dtype)
    for b in range(p.bank.shape[1]):
        same = np.flatnonzero((p.bank == p.bank[:, [b]]).all(axis=0))
        gb[:, b] = gb[:, same[0]]
    return gb


#: equal columns 0 and 2 in bank column chunks of widths 2 and 1: their
#: logZ once differed in the last bit and broke their exact tie
TIED_ACROSS_CHUNKS = Problem(
    bank=np.array([[1.921268, -0.3963146, 1.921268], [1.0847852, -1.6070081, 1.0847852],
                   [-2.1112058, 2.8412428, -2.1112058], [0.12397794, -1.8698233, 0.12397794],
                   [-3.737733, -0.656375, -3.737733], [-0.94890046, -1.632777, -0.94890046],
                   [-0.385604, 3.12754, -0.385604], [1.0545303, -1.995584, 1.0545303],
                   [-2.2304978, 0.2820369, -2.2304978]], dtype=np.float32),
    test=np.array([[0.0, 1.5, 0.0], [1.5, 1.5, 1.5], [1.5, 1.5, 1.5]], dtype=np.float32),
    mask=None, gt=np.array([0, 1, 2]), beta=0.5, k=1)


@SETTINGS
@given(p=problems(), method=st.sampled_from(sorted(CASES)), dynamic=st.booleans(),
       nnn_k=st.sampled_from([1.0, 3.0, 128.0]), data=st.data())
@example(p=TIED_ACROSS_CHUNKS, method="is", dynamic=False, nnn_k=1.0,
         data=Draws(0, 9, 2, 1, 1))  # seed, bank rows/cols chunk, test rows/cols chunk
def test_ranks_equal_oracle(p, method, dynamic, nnn_k, data):
    values, params = CASES[method]
    params = {**params, "nnn_k": nnn_k} if method == "nnn" else params
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    gb = gallery_bank_for(p, rng) if method == "dual-is" else None
    extra = {}
    if gb is not None:
        extra["gallery_bank"] = chunked(gb, data.draw(st.integers(1, len(gb))),
                                        data.draw(st.integers(1, gb.shape[1])))
    name = methods.get(method).variant.name
    res = run(experiment(p, data), k=p.k, method=method, dynamic=dynamic,
              scheduler="synchronous", **{name: values}, **params, **extra)
    for value in values:
        want = ref.ranks(ref.method_scores(p.test, p.bank, method, value, params, p.k, dynamic,
                                           gb), p.gt)
        np.testing.assert_array_equal(res.ranks[value], want)
        assert res.after[value] == pytest.approx(ref.metrics(want, p.mask))
    rows = ref.normalised_rows(p.test, p.bank, "dis" if dynamic else "is", p.k)
    np.testing.assert_array_equal(res.normalised, rows)


@SETTINGS
@given(p=problems(), method=st.sampled_from(["csls", "nnn"]), topk=st.integers(1, 4),
       data=st.data())
def test_topk_equals_argsort_oracle(p, method, topk, data):
    values, params = CASES[method]
    name = methods.get(method).variant.name
    res = run(experiment(p, data), method=method, topk=topk, scheduler="synchronous",
              **{name: values}, **params)
    k = min(topk, p.test.shape[1])
    for b, value in enumerate(values):
        idx, _ = ref.topk(ref.method_scores(p.test, p.bank, method, value, params), k)
        np.testing.assert_array_equal(res.topk_index[b], idx)
    np.testing.assert_array_equal(res.base_topk_index, ref.topk(p.test.astype(float), k)[0])


# ---------------------------------------------------------------- statistics


@SETTINGS
@given(st.data())
def test_column_topk_kernel_and_merge(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    block = rng.integers(0, 5, (data.draw(st.integers(1, 25)), data.draw(st.integers(1, 9))))
    block = block.astype(data.draw(st.sampled_from([np.float16, np.float32, np.float64])))
    k = data.draw(st.integers(1, 30))
    want = np.sort(block, axis=0)[::-1][:k]
    np.testing.assert_array_equal(kernels.column_topk(block, k), want)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(block)), max_size=4))))
    parts = [kernels.column_topk(part, k) for part in np.split(block, cuts) if len(part)]
    order = data.draw(st.permutations(range(len(parts))))
    np.testing.assert_array_equal(column_topk(k).tree([parts[i] for i in order]), want)


@SETTINGS
@given(p=problems(), ks=st.lists(st.integers(1, 20), min_size=1, max_size=3, unique=True),
       segment=st.sampled_from([8, 64, 2**20]), data=st.data())
def test_bank_statistics_in_segments(p, ks, segment, data):
    """Column top-k in gallery segments of any width, bank chunked both ways."""
    nb, ng = p.bank.shape
    bank = chunked(p.bank, data.draw(st.integers(1, nb)), data.draw(st.integers(1, ng)))
    needs = methods.BankNeeds(betas=(p.beta,), column_means=tuple(sorted(ks)), activation_k=p.k)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bankstats, "SEGMENT_BYTES", segment * 8 * max(ks))
        stats = bankstats.summary(bank, needs, lambda *parts: "-".join(map(str, parts)))
        assert bankstats.segment_width(max(ks)) == segment
    got = dask.compute(stats, scheduler="synchronous")[0]
    for k in ks:
        np.testing.assert_array_equal(got.column_means[k], ref.top_mean(p.bank, k))
    np.testing.assert_allclose(got.log_z[0], ref.log_normaliser(p.bank, p.beta), rtol=1e-12)
    np.testing.assert_array_equal(got.activation, ref.activation_set(p.bank, p.k))


# ---------------------------------------------------------------- settings


def test_dis_is_is_with_dynamic_and_unchanged():
    rng = np.random.default_rng(5)
    exp = in_memory(rng.random((60, 9)), rng.random((18, 9)), rows_per_block=4)
    dis = run(exp, beta=[5, 20])
    assert run(exp, beta=[5, 20], method="is", dynamic=True).after == dis.after
    assert RunConfig.make(20, method="is", dynamic=True).method == "dis"
    for beta in (5.0, 20.0):
        want = ref.ranks(ref.scores(exp.test.array, exp.bank.array, beta), exp.gt)
        np.testing.assert_array_equal(dis.ranks[beta], want)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "nnn", "beta": 3}, "method nnn has no beta: it sweeps alpha"),
    ({"method": "csls", "kc": 0}, "kc must be an integer >= 1, got 0"),
    ({"method": "nnn", "alpha": -1}, "alpha must be a finite number >= 0, got -1"),
    ({"method": "nnn", "nnn_k": 2.5}, "nnn_k must be an integer >= 1, got 2.5"),
    ({"method": "is", "alpha": 1}, "method is has no parameter 'alpha'"),
    ({"method": "dual-is"}, "dual-is needs a gallery bank"),
    ({"method": "nnn", "gallery_bank": np.ones((2, 5))}, "nnn does not use a gallery bank"),
    ({"method": "dual-is", "gallery_bank": np.ones((2, 4))}, "gallery_bank has 4 gallery"),
    ({"method": "nope"}, "method must be one of dis, is, csls, nnn, dual-is, none"),
])
def test_bad_settings_name_the_value(kwargs, message):
    rng = np.random.default_rng(0)
    with pytest.raises((ConfigError, InputError), match=message):
        run(in_memory(rng.random((6, 5)), rng.random((5, 5))), **kwargs)


def test_every_method_has_an_oracle_and_defaults():
    p = {m.name: {q.name: q.default for q in m.params} for m in methods.REGISTRY.values()}
    bank, gb = np.eye(3), np.ones((2, 3))
    for name, method in methods.REGISTRY.items():
        scale, shift = ref.variant(name, method.variant.default, bank, p[name], gb)
        assert method.scales((method.variant.default,), p[name]) == pytest.approx([scale])
        assert shift.shape == (3,)
    assert methods.get("csls").variant.default == 10
    assert (methods.get("nnn").variant.default, p["nnn"]["nnn_k"]) == (0.75, 128)


def test_building_the_graph_computes_nothing(no_compute):
    rng = np.random.default_rng(0)
    bank = Exploding(rng.random((20, 6)), (10, 10), (3, 3))
    test = Exploding(rng.random((12, 6)), (6, 6), (6,))
    gb = Exploding(rng.random((7, 6)), (4, 3), (6,))
    exp = Experiment(bank, test, np.arange(12) // 2, None)
    for method in ("csls", "nnn", "dual-is"):
        config = RunConfig.make(method=method, dynamic=True)
        with no_compute():
            plan = build(exp, config, banks={"gallery_bank": gb})
        assert len(plan.rows) == 2


# ---------------------------------------------------------------- stores and CLI


@pytest.fixture()
def store(tmp_path):
    rng = np.random.default_rng(11)
    bank = rng.standard_normal((90, 24)).astype(np.float32)
    test = rng.standard_normal((48, 24)).astype(np.float32)
    test[np.arange(48), np.arange(48) // 2] += 1.0
    gb = rng.standard_normal((30, 24)).astype(np.float32)
    path = qbscale.ingest(tmp_path / "exp.zarr", bank, test, chunk_rows=16, progress=False)
    return path, bank, test, gb


@pytest.fixture()
def invoke(cli_invoke):
    """The CLI, quiet, expected to succeed: its output."""
    return lambda *args: cli_invoke(*args, "--quiet").output


def test_cli_methods_on_a_store(store, tmp_path, cli_invoke, invoke):
    path, bank, test, _ = store
    gt = np.arange(48) // 2
    out = tmp_path / "nnn.json"
    text = invoke("run", path, "--method", "nnn", "--alpha", "0.5,1", "--nnn-k", "5",
                  "--dynamic", "--json", str(out))
    assert text.splitlines()[0].split()[:2] == ["method", "alpha"]
    assert "nnn+dyn" in text
    got = json.loads(out.read_text())
    for alpha in (0.5, 1.0):
        want = ref.ranks(ref.method_scores(test, bank, "nnn", alpha, {"nnn_k": 5}, 1, True), gt)
        assert got["after"][str(alpha)] == pytest.approx(ref.metrics(want))
    res = cli_invoke("run", path, "--method", "is", "--alpha", "1", "--quiet", exit_code=2)
    assert "Error: --alpha applies to nnn, not is\n" in res.output
    res = cli_invoke("run", path, "--method", "dual-is", "--quiet", exit_code=1)
    assert res.output.startswith(f"Error: dual-is needs a gallery bank and {path} has none")


def test_gallery_bank_in_a_store(store, tmp_path, invoke):
    path, bank, test, gb = store
    np.save(tmp_path / "gb.npy", gb)
    add_gallery_bank(path, tmp_path / "gb.npy", chunk_bytes=800, progress=False)
    with pytest.raises(StoreExistsError, match="already has a gallery bank"):
        add_gallery_bank(path, gb, progress=False)
    out = tmp_path / "dual.json"
    invoke("run", path, "--method", "dual-is", "--beta", "10", "--gallery-beta", "3",
           "--json", str(out))
    want = ref.ranks(ref.method_scores(test, bank, "dual-is", 10.0, {"gallery_beta": 3.0},
                                       gallery_bank=gb), np.arange(48) // 2)
    assert json.loads(out.read_text())["after"]["10.0"] == pytest.approx(ref.metrics(want))
    with pytest.raises(InputError, match=r"^gallery bank has 23 gallery columns, test has 24"):
        add_gallery_bank(path, gb[:, :23], overwrite=True, progress=False)
    assert run(path, method="dual-is", beta=10, gallery_beta=3).after[10.0]["R1"] == \
        pytest.approx(ref.metrics(want)["R1"])  # refused before writing: the bank stands
    gb[3, 5] = np.nan
    with pytest.raises(InputError, match=r"1 non-finite values .* row 3, column 5"):
        add_gallery_bank(path, gb, overwrite=True, progress=False)
    with pytest.raises(IncompleteStoreError, match="not completely written"):
        run(path, method="dual-is")  # the failed overwrite left no finished bank


@pytest.mark.parametrize("normalise", [False, True])
def test_gallery_bank_of_an_embeddings_store(tmp_path, normalise):
    from qbscale.storage.stores.ingest import ingest_embeddings

    rng = np.random.default_rng(2)
    emb = {name: rng.standard_normal((n, 8)).astype(np.float32)
           for name, n in (("bank", 40), ("test", 20), ("gallery", 10), ("gb", 15))}
    path = ingest_embeddings(tmp_path / "emb.zarr", emb["bank"], emb["test"], emb["gallery"],
                             normalise=normalise, progress=False)
    add_gallery_bank(path, emb["gb"], progress=False)
    if normalise:  # the store holds unit vectors: the gallery bank is scaled the same way
        emb = {n: e / np.linalg.norm(e, axis=1, keepdims=True) for n, e in emb.items()}
    res = run(path, method="dual-is", beta=2.0, gallery_beta=4.0)
    sims = {n: emb[n] @ emb["gallery"].T for n in ("bank", "test", "gb")}
    want = ref.ranks(ref.method_scores(sims["test"], sims["bank"], "dual-is", 2.0,
                                       {"gallery_beta": 4.0}, gallery_bank=sims["gb"]),
                     np.arange(20) // 2)
    np.testing.assert_array_equal(res.ranks[2.0], want)
