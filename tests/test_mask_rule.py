"""One rule for query masks on every path that takes one.

``qbscale ingest --masks``, the seed's ``run --test_query_masks_path`` (in
memory, or through a temporary store for worker processes) and
``in_memory(mask=)`` accept a mask shaped ``(items, queries per item)`` as the
reference code stores it, or flat; a transposed one (``(20, 1000)`` for 1000
videos x 20 captions) has as many entries but would mask the wrong queries
once flattened, so every path refuses it with the same message.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from qbscale.errors import InputError
from qbscale.storage.stores.store import in_memory

N_GALLERY, QPI, N_BANK = 10, 3, 25
N_QUERIES = N_GALLERY * QPI
MESSAGE = (f"has shape ({QPI}, {N_GALLERY}); expected ({N_GALLERY}, {QPI}) or "
           f"({N_QUERIES},): one entry per test query ({N_QUERIES})")


@pytest.fixture
def seed_files(tmp_path):
    rng = np.random.default_rng(5)
    bank = rng.standard_normal((N_BANK, N_GALLERY)).astype(np.float32)
    test = rng.standard_normal((N_QUERIES, N_GALLERY)).astype(np.float32)
    for name, arr in (("bank.pkl", bank), ("test.pkl", test)):
        with open(tmp_path / name, "wb") as f:
            pickle.dump(arr, f)
    return tmp_path, bank, test


def _mask_file(folder, mask, name="masks.pkl"):
    with open(folder / name, "wb") as f:
        pickle.dump(mask, f)
    return folder / name


def _swapped(rng_seed=0):
    """A (queries per item, items) mask: the reference layout transposed."""
    mask = np.ones((N_GALLERY, QPI))
    mask[np.random.default_rng(rng_seed).random((N_GALLERY, QPI)) < 0.4] = 0
    return mask.T.copy()


def _seed_run(folder, masks, *extra):
    return ["run", "--sims_train_test_path", folder / "bank.pkl", "--sims_test_path",
            folder / "test.pkl", "--test_query_masks_path", masks, "--beta", "20", *extra]


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_a_transposed_mask_is_refused_alike_on_every_path(seed_files, cli_invoke, scheduler):
    folder, bank, test = seed_files
    masks = _mask_file(folder, _swapped())
    want = f"Error: query mask (masks.pkl) {MESSAGE}\n"
    res = cli_invoke("ingest", "--bank", folder / "bank.pkl", "--test", folder / "test.pkl",
                     "--masks", masks, "-o", folder / "exp.zarr", "-q", exit_code=1)
    assert res.output == want
    assert not (folder / "exp.zarr").exists()
    res = cli_invoke(*_seed_run(folder, masks, "--scheduler", scheduler, "-q"), exit_code=1)
    assert res.output == want
    with pytest.raises(InputError) as caught:
        in_memory(bank, test, mask=_swapped())
    assert str(caught.value) == f"query mask {MESSAGE}"
    # the reference layout drops the queries it names, on the seed's path and through
    # a store alike (baseline R@1 and R@5 against a dense oracle)
    mask = _swapped().T
    masks = _mask_file(folder, mask)
    flat = mask.ravel().astype(bool)
    gt = np.arange(N_QUERIES) // QPI
    beats = (test > test[np.arange(N_QUERIES), gt][:, None]).sum(axis=1)
    out = folder / "m.json"
    cli_invoke(*_seed_run(folder, masks, "--scheduler", scheduler, "--json", out, "-q"))
    before = json.loads(out.read_text())["before"]
    assert before["R1"] == pytest.approx(100 * np.mean(beats[flat] == 0))
    assert before["R5"] == pytest.approx(100 * np.mean(beats[flat] < 5))
    cli_invoke("ingest", "--bank", folder / "bank.pkl", "--test", folder / "test.pkl",
               "--masks", masks, "-o", folder / "exp.zarr", "-q")
    cli_invoke("run", folder / "exp.zarr", "--json", out, "-q")
    assert json.loads(out.read_text())["before"] == before
    np.testing.assert_array_equal(in_memory(bank, test, mask=mask).mask, flat)


def test_a_2d_mask_needs_the_grouping(seed_files):
    """Without queries grouped per item (a gt_index over queries that are not a
    multiple of the gallery) only a flat mask (or one row or column) says which
    query is which."""
    _, bank, test = seed_files
    n = N_QUERIES - 2  # 28 queries over 10 items
    gt = np.arange(n) % N_GALLERY
    got = in_memory(bank, test[:n], mask=np.ones((n, 1)), gt_index=gt).mask
    assert got.shape == (n,) and got.all()
    with pytest.raises(InputError, match=rf"^query mask has shape \(4, 7\); expected \({n},\)"):
        in_memory(bank, test[:n], mask=np.ones((4, 7)), gt_index=gt)
