"""Never a silent wrong answer: legacy pickles, degenerate settings, one-line errors.

Every failure here must end in one ``Error: ...`` line and exit code 1 (or a
clear QBScaleError from the library), never a traceback or a plausible
wrong figure.
"""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from click.testing import CliRunner

import qbscale
from qbscale.cli import cli
from qbscale.errors import InputError, QBScaleError, UnsafePickleError
from qbscale.storage.inputs import readers
from qbscale.storage.stores.store import in_memory

from ._faults import read_only_dir, tmpfs
from ._ingest_fixtures import MAKE_PICKLES, PYCODE, write_pickle


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(5)


def problem(rng: np.random.Generator, n: int = 40, scale: float = 1.0,
            dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    bank = (rng.standard_normal((3 * n, n)) * scale).astype(dtype)
    test = (rng.standard_normal((n, n)) * scale).astype(dtype)
    return bank, test


def invoke(*args: str) -> object:
    return CliRunner().invoke(cli, [*args], catch_exceptions=True)


def assert_one_line_error(res: object, *needles: str) -> None:
    """Exit code 1, one ``Error:`` line naming every needle, no traceback."""
    assert res.exit_code == 1, (res.exit_code, res.output, res.exception)  # type: ignore[attr-defined]
    # click turns ClickExceptions into SystemExit(1); anything else is a bug
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # type: ignore[attr-defined]
    lines = [line for line in res.output.splitlines() if line.startswith("Error:")]  # type: ignore[attr-defined]
    assert len(lines) == 1, res.output  # type: ignore[attr-defined]
    assert "Traceback" not in res.output  # type: ignore[attr-defined]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# --- 1. legacy pickles ----------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [0, 1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64", "bool", "int64"])
def test_protocol_0_to_2_pickles_load(tmp_path, rng, protocol, dtype):
    arr = rng.standard_normal((7, 5)).astype(dtype)
    if dtype == "bool":
        arr = rng.random(9) < 0.5  # a 1-D mask
    for legacy_name in (False, True):
        blob = pickle.dumps(arr, protocol=protocol)
        if legacy_name:  # as numpy 1.x named its module
            blob = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        path = tmp_path / "a.pkl"
        path.write_bytes(blob)
        got = readers.load_pickle(path)
        assert type(got) is np.ndarray and got.dtype == arr.dtype
        assert got.tobytes() == arr.tobytes() and got.shape == arr.shape


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_old_pickles_are_recognised_without_a_suffix(tmp_path, rng, protocol):
    arr = rng.standard_normal((3, 4)).astype(np.float32)
    path = tmp_path / "sims.bin"
    path.write_bytes(pickle.dumps(arr, protocol=protocol))
    assert readers.open_matrix(path).read().tobytes() == arr.tobytes()


def test_codecs_encode_admits_latin1_text_only(tmp_path):
    # _codecs.encode with another codec (or on bytes) could do anything a codec does
    evil = b"c_codecs\nencode\n(Vabc\nVrot13\ntR."
    path = tmp_path / "evil.pkl"
    path.write_bytes(evil)
    with pytest.raises(UnsafePickleError, match="rot13"):
        readers.load_pickle(path)
    other = b"c_codecs\ndecode\n(Vabc\nVlatin1\ntR."
    path.write_bytes(other)
    with pytest.raises(UnsafePickleError, match=r"_codecs\.decode"):
        readers.load_pickle(path)


def test_refused_pickle_names_the_path_as_given(tmp_path, monkeypatch):
    sub = tmp_path / "in" / "deep"
    sub.mkdir(parents=True)
    (sub / "evil.pkl").write_bytes(b"cposix\nsystem\n(Vtrue\ntR.")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafePickleError, match=r"in/deep/evil\.pkl: refusing to load global "
                                                r"posix\.system"):
        readers.load_pickle(os.path.join("in", "deep", "evil.pkl"))


@pytest.mark.skipif(not MAKE_PICKLES.is_file(), reason="shared data not here")
def test_protocol_2_pycode_pickles_match_the_legacy_ones(tmp_path):
    """The real seed pickles, written by make_pickles.py --legacy, re-pickled at protocol 2."""
    out = tmp_path / "legacy"
    subprocess.run(["python", str(MAKE_PICKLES), str(PYCODE), str(out), "--legacy"], check=True)
    legacy = readers.load_pickle(out / "sims_test.pkl")
    write_pickle(legacy, tmp_path / "p2.pkl", protocol=2)
    got = readers.load_pickle(tmp_path / "p2.pkl")
    assert got.dtype == np.float32 and got.tobytes() == legacy.tobytes()


# --- 2. scales beyond float64 ---------------------------------------------------------------

@pytest.mark.parametrize("rows_per_block", [None, 7])
def test_beta_overflowing_the_bank_is_refused(rng, rows_per_block):
    bank, test = problem(rng, scale=150.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an error, not RuntimeWarnings and a figure
        with pytest.raises(QBScaleError, match=r"beta=1e\+308.*float64"):
            qbscale.run(in_memory(bank, test, rows_per_block=rows_per_block), beta=1e308)


def test_beta_overflowing_the_test_rows_is_refused(rng):
    bank, test = problem(rng)
    test[3, 2] = 1e10  # the bank is fine at beta=1e300, this row is not
    with pytest.raises(QBScaleError, match=r"beta=1e\+300.*test.*float64"):
        qbscale.run(in_memory(bank, test), beta=1e300, method="is")


@pytest.mark.parametrize("method,opts", [("nnn", {"alpha": 1e308}), ("dual-is", {})])
def test_other_methods_overflowing_are_refused(rng, method, opts):
    bank, test = problem(rng, scale=1e307, dtype="float64")
    kwargs = {"gallery_bank": bank} if method == "dual-is" else {}
    with pytest.raises(QBScaleError, match="float64"):
        qbscale.run(in_memory(bank, test), method=method, beta=None if opts else 10.0,
                    **opts, **kwargs)


def test_cli_beta_1e308_is_one_error_line(rng, tmp_path):
    bank, test = problem(rng, scale=150.0)
    write_pickle(bank, tmp_path / "b.pkl")
    write_pickle(test, tmp_path / "t.pkl")
    res = invoke("run", "--sims_train_test_path", str(tmp_path / "b.pkl"),
                 "--sims_test_path", str(tmp_path / "t.pkl"), "--beta", "1e308", "--quiet")
    assert_one_line_error(res, "beta=1e+308")
    assert "R@5" not in res.output


def test_bank_logsumexp_must_be_finite(rng):
    from qbscale.config import RunConfig
    from qbscale.engine.statistics import GalleryStatistics

    config = RunConfig.make(20.0, method="is")
    with pytest.raises(InputError, match="gallery item 1"):
        GalleryStatistics(config, np.array([[0.0, np.inf, 1.0]]), np.zeros(3, bool))


# --- 3. degenerate inputs -------------------------------------------------------------------

def test_all_zero_mask_is_refused_at_ingest_and_in_memory(rng, tmp_path):
    bank, test = problem(rng)
    zeros = np.zeros(len(test), np.int64)
    with pytest.raises(InputError, match="masks every"):
        qbscale.ingest(tmp_path / "e.zarr", bank, test, zeros, progress=False)
    assert not any(tmp_path.iterdir())
    with pytest.raises(InputError, match="masks every"):
        in_memory(bank, test, zeros)
    res = invoke("ingest", "--bank", str(write_pickle(bank, tmp_path / "b.pkl")),
                 "--test", str(write_pickle(test, tmp_path / "t.pkl")),
                 "--masks", str(write_pickle(zeros, tmp_path / "m.pkl")),
                 "-o", str(tmp_path / "e.zarr"), "--quiet")
    assert_one_line_error(res, "m.pkl", "masks every one of the 40 test queries")
    res = invoke("run", "--sims_train_test_path", str(tmp_path / "b.pkl"),
                 "--sims_test_path", str(tmp_path / "t.pkl"),
                 "--test_query_masks_path", str(tmp_path / "m.pkl"), "--quiet")
    assert_one_line_error(res, "m.pkl", "masks every one of the 40 test queries")


def test_topk_on_the_seed_flags_is_refused(rng, tmp_path):
    bank, test = problem(rng)
    res = invoke("run", "--sims_train_test_path", str(write_pickle(bank, tmp_path / "b.pkl")),
                 "--sims_test_path", str(write_pickle(test, tmp_path / "t.pkl")),
                 "--topk", "5", "--quiet")
    assert res.exit_code != 0 and "--topk" in res.output and "R@1" not in res.output


def test_ground_truth_leaving_most_items_without_a_query_warns(rng, tmp_path):
    bank, _ = problem(rng, n=400)
    test = rng.standard_normal((400, 400)).astype(np.float32)
    with pytest.warns(qbscale.errors.GroundTruthWarning, match="20 of 400 gallery items"):
        qbscale.ingest(tmp_path / "a.zarr", bank, test, queries_per_item=20, progress=False)
    res = CliRunner().invoke(cli, ["ingest", "--bank", str(write_pickle(bank, tmp_path / "b.pkl")),
                                   "--test", str(write_pickle(test, tmp_path / "t.pkl")),
                                   "--queries-per-item", "20", "-o", str(tmp_path / "b.zarr"),
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    assert "Warning: 400 test queries map onto 20 of 400 gallery items (5.0%)" in res.output
    for command in ("run", "hubness"):
        res = CliRunner().invoke(cli, [command, str(tmp_path / "b.zarr"), "--quiet"])
        assert res.exit_code == 0, res.output
        assert "Warning: 400 test queries map onto 20 of 400" in res.output
        assert res.output.count("Warning:") == 1, res.output
    # an implicit mapping must cover the gallery; the low-level check refuses otherwise
    from qbscale.storage.stores.store import check_coverage

    with pytest.raises(InputError, match="20 of 400 gallery items"):
        check_coverage(np.arange(400) // 20, 400, explicit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_coverage(np.arange(400) // 2, 400, explicit=True)  # half: no word


def _ingest_args(rng, tmp_path: Path, out: Path) -> list[str]:
    bank, test = problem(rng)
    return ["ingest", "--bank", str(write_pickle(bank, tmp_path / "b.pkl")),
            "--test", str(write_pickle(test, tmp_path / "t.pkl")), "-o", str(out), "--quiet"]


def test_overwrite_refuses_a_zarr_group_that_is_not_a_qbscale_store(rng, tmp_path):
    import zarr

    other = tmp_path / "other.zarr"
    zarr.create_group(str(other))
    (other / "notes.txt").write_text("precious")
    res = invoke(*_ingest_args(rng, tmp_path, other), "--overwrite")
    assert_one_line_error(res, str(other), "not a qbscale store")
    assert (other / "notes.txt").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    res = invoke(*_ingest_args(rng, tmp_path, empty), "--overwrite")
    assert res.exit_code == 0, res.output
    qbscale.storage.stores.store.open_experiment(empty)
    # a qbscale store is replaced
    res = invoke(*_ingest_args(rng, tmp_path, empty), "--overwrite")
    assert res.exit_code == 0, res.output


def test_overwrite_onto_a_plain_file_is_a_clear_error(rng, tmp_path):
    target = tmp_path / "file.zarr"
    target.write_text("not a store")
    res = invoke(*_ingest_args(rng, tmp_path, target), "--overwrite")
    assert_one_line_error(res, str(target), "is a file")
    assert target.read_text() == "not a store"


# --- 4. the normalised share --------------------------------------------------------------

def test_normalised_rows_are_counted_over_evaluated_rows(rng, tmp_path):
    bank, test = problem(rng, n=40)
    mask = np.ones(40, bool)
    mask[:10] = False
    store = qbscale.ingest(tmp_path / "e.zarr", bank, test, mask, progress=False)
    res = CliRunner().invoke(cli, ["run", store, "--quiet"])
    assert res.exit_code == 0, res.output
    result = qbscale.run(store)
    share = 100 * result.normalised[mask].mean()
    assert f"normalised rows: {share:.1f}% of 30 evaluated (10 masked)" in res.output


# --- 5. one-line errors ---------------------------------------------------------------------

@pytest.fixture()
def store(rng, tmp_path):
    bank, test = problem(rng)
    return qbscale.ingest(tmp_path / "exp.zarr", bank, test, progress=False)


@pytest.mark.parametrize(("content", "needle"), [
    (b"{not json", "zarr.json"), (b"", "zarr.json"), (b"[1, 2]", "zarr.json"),
    (b'{"zarr_format": 3, "node_type": "array"}', "zarr.json"),
    (b'{"zarr_format": 3}', "not a qbscale store")])
def test_corrupt_zarr_json_is_one_line(store, content, needle):
    # (the arrays' own zarr.json are not read: the group's consolidated metadata is)
    (Path(store) / "zarr.json").write_bytes(content)
    for command in ("run", "eval", "hubness"):
        res = invoke(command, store, "--quiet")
        assert_one_line_error(res, store, needle)


def test_read_only_output_directory_is_one_line(rng, tmp_path, store):
    with read_only_dir(tmp_path / "ro") as ro:
        res = invoke(*_ingest_args(rng, tmp_path, ro / "exp.zarr"))
        assert_one_line_error(res, str(ro))
        res = invoke("run", store, "--quiet", "--json", str(ro / "m.json"))
        assert_one_line_error(res, str(ro))
        assert "R@1" not in res.output
        res = invoke("report", store, "-o", str(ro / "rep"), "--quiet", "--method", "dis")
        assert_one_line_error(res, str(ro))


@pytest.mark.parametrize("command", ["run", "eval", "hubness"])
def test_json_into_a_missing_directory_fails_before_work(store, tmp_path, command):
    target = tmp_path / "missing" / "m.json"
    with mock.patch("qbscale.engine.plan.build", side_effect=AssertionError("work started")):
        res = invoke(command, store, "--quiet", "--json", str(target))
    assert_one_line_error(res, str(target.parent))
    assert "R@1" not in res.output


def test_eval_of_a_missing_slice_is_one_line(store):
    res = invoke("run", store, "--save-scores", "--quiet")
    assert res.exit_code == 0, res.output
    assert invoke("eval", store, "--array", "scores[0]", "--quiet").exit_code == 0
    res = invoke("eval", store, "--array", "scores[1]", "--quiet")
    assert_one_line_error(res, "scores[1]", "1 slice")


def test_report_without_matplotlib_fails_before_work(store, tmp_path):
    with mock.patch.dict("sys.modules", {"matplotlib": None}), \
            mock.patch("qbscale.analysis.compare.compare",
                       side_effect=AssertionError("work started")):
        res = invoke("report", store, "-o", str(tmp_path / "rep"), "--quiet")
    assert_one_line_error(res, "matplotlib", "pip install '.[report]'")


def _ingest_big(rng, tmp_path: Path, out: Path):
    bank = rng.standard_normal((2000, 500)).astype(np.float32)
    test = rng.standard_normal((500, 500)).astype(np.float32)
    np.save(tmp_path / "b.npy", bank)
    np.save(tmp_path / "t.npy", test)
    return invoke("ingest", "--bank", str(tmp_path / "b.npy"), "--test", str(tmp_path / "t.npy"),
                  "-o", str(out), "--quiet", "--chunk-rows", "100")


def test_full_disk_during_ingest_is_one_line_and_leaves_nothing(rng, tmp_path):
    with tmpfs(tmp_path / "disk", "2m") as disk:  # (test_ingest_write_errors_... elsewhere)
        res = _ingest_big(rng, tmp_path, disk / "exp.zarr")
        assert_one_line_error(res, str(disk / "exp.zarr"), "No space left on device")
        assert list(disk.iterdir()) == []


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO, errno.EDQUOT])
def test_ingest_write_errors_are_one_line_and_leave_nothing(rng, tmp_path, err):
    from zarr.storage import LocalStore

    calls = {"n": 0}
    real = LocalStore.set

    async def failing(self, key, value):  # fails part-way through the chunks
        calls["n"] += 1
        if calls["n"] > 6:
            raise OSError(err, os.strerror(err))
        return await real(self, key, value)

    out = tmp_path / "out"
    out.mkdir()
    with mock.patch.object(LocalStore, "set", failing):
        res = _ingest_big(rng, tmp_path, out / "exp.zarr")
    assert_one_line_error(res, str(out / "exp.zarr"), os.strerror(err))
    assert list(out.iterdir()) == []
