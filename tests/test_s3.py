"""Stores on object storage: an S3-compatible server (moto) on loopback.

Credentials and the endpoint reach s3fs through the environment only
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``), as on
a real deployment; cluster workers inherit the same environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from qbscale.api import run
from qbscale.storage.stores.results import open_result
from qbscale.storage.stores.store import open_experiment

from .cluster_fixtures import dask_cluster, make_store, moto_s3, problem, qbscale_cli
from .test_resume import FailingMatrix

pytest.importorskip("s3fs")

SAVED = ("ranks", "ranks_baseline", "topk_index", "topk_score")
FLAGS = ["--beta", "10,20", "--k", "2", "--topk", "5", "--save-ranks"]


@pytest.fixture(scope="module")
def s3():
    with moto_s3("qbscale") as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def data():
    return problem(n_bank=600, n_gallery=200)


@pytest.fixture(scope="module")
def local(data, tmp_path_factory, cli_invoke):
    """The same experiment on local disk, run with the same flags."""
    store = make_store(str(tmp_path_factory.mktemp("local") / "exp.zarr"), *data, chunk_rows=50)
    cli_invoke("run", store, *FLAGS, "--save-scores", "-q")
    return {name: open_result(store, name)[...] for name in (*SAVED, "scores")}


def assert_same(url: str, local: dict[str, np.ndarray], names: tuple[str, ...] = SAVED) -> None:
    for name in names:
        np.testing.assert_array_equal(open_result(url, name)[...], local[name], err_msg=name)
    group = zarr.open_group(url, mode="r", use_consolidated=False)
    assert list(group["runs"].group_keys()) == [open_result(url, "ranks").path.split("/")[1]]
    assert "manifest" not in group["runs"][next(iter(group["runs"].group_keys()))]


def test_ingest_and_run_on_s3_match_the_local_store(s3, data, local, cli_invoke):
    url = make_store("s3://qbscale/exp.zarr", *data, chunk_rows=50)
    cli_invoke("run", url, *FLAGS, "--save-scores", "-q")
    assert_same(url, local, (*SAVED, "scores"))


def test_s3_store_on_a_cluster(s3, data, local, tmp_path):
    """Workers find the credentials in the environment they were started with."""
    url = make_store("s3://qbscale/cluster.zarr", *data, chunk_rows=50)
    with dask_cluster(tmp_path / "cluster", n_workers=2) as cluster:
        assert cluster.env["AWS_ENDPOINT_URL"] == s3
        proc = qbscale_cli("run", url, *FLAGS, "--scheduler", cluster.address)
        out, err = (s.decode() for s in proc.communicate(timeout=120))
        assert proc.returncode == 0, err
        logs = "".join(p.read_text() for p in Path(cluster.logs).glob("*.log"))
    assert_same(url, local)
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert secret not in out + err + logs


def test_resume_on_s3(s3, data, local):
    url = make_store("s3://qbscale/resume.zarr", *data, chunk_rows=50)
    experiment = open_experiment(url)
    experiment.test = FailingMatrix(experiment.test, fail_at=3)
    with pytest.raises(RuntimeError, match="block 3"):
        run(experiment, beta=[10, 20], k=2, topk=5, save_ranks=True, scheduler="synchronous",
            resume=True)
    runs = zarr.open_group(url, mode="r", use_consolidated=False)["runs"]
    [pending] = runs.group_keys()
    assert "manifest" in runs[pending]
    result = run(url, beta=[10, 20], k=2, topk=5, save_ranks=True, resume=True)
    resumed = result.extra["resume"]
    assert resumed["reused"] >= 1 and resumed["computed"] >= 1
    assert resumed["reused"] + resumed["computed"] == resumed["row_blocks"]
    assert_same(url, local)
