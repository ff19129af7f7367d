"""qbscale.open_dataset: a store as a labelled xarray.Dataset."""

from __future__ import annotations

import numpy as np
import pytest

import qbscale
from qbscale.errors import StoreNotFoundError
from tests import reference as ref


def test_open_dataset_labels_inputs_and_results(tmp_path):
    rng = np.random.default_rng(7)
    bank = rng.random((60, 12), dtype=np.float32)
    test = rng.random((24, 12), dtype=np.float32)
    mask = np.ones(24, bool)
    mask[3] = False
    store = qbscale.ingest(tmp_path / "exp.zarr", bank, test, mask, chunk_rows=5,
                           progress=False)
    result = qbscale.run(store, beta=[10, 20], save_ranks=True, topk=3)
    ds = qbscale.open_dataset(store)

    assert ds.bank.dims == ("bank_query", "gallery") and ds.test.dims == ("query", "gallery")
    np.testing.assert_array_equal(ds.bank.values, bank)
    np.testing.assert_array_equal(ds.test.values, test)
    np.testing.assert_array_equal(ds.query_mask.values, mask)
    np.testing.assert_array_equal(ds.gt.values, ref.ground_truth(24, 12))
    np.testing.assert_array_equal(ds.gallery.values, np.arange(12))
    # the results' variant axis is labelled with the swept values
    (variant,) = set(ds.ranks.dims) - {"query"}
    np.testing.assert_array_equal(ds[variant].values, [10.0, 20.0])
    np.testing.assert_array_equal(ds.ranks.sel({variant: 20.0}).values, result.ranks[20.0])
    np.testing.assert_array_equal(ds.ranks_baseline.values, result.base_ranks)
    assert ds.topk_index.shape == (2, 24, 3)
    assert ds.attrs["kind"] == "sims" and ds.attrs["complete"] is True


def test_open_dataset_refuses_what_is_not_a_store(tmp_path):
    with pytest.raises(StoreNotFoundError, match="no qbscale store"):
        qbscale.open_dataset(tmp_path / "missing.zarr")
