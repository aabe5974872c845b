"""The store opens in the ecosystem's tools: xarray and dask read a layer with its named
dimensions, and ``actextract.store.xarray.to_xarray`` adds the labels and ids (README:
"Opening a store with xarray or dask")."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from _fixtures import FailsAt, tiny_cnn

import actextract

xr = pytest.importorskip("xarray")
da = pytest.importorskip("dask.array")

from actextract.store.xarray import to_xarray  # noqa: E402

SKIPPED = 5  # FailsAt's bad sample: label -1, NaN in every layer


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three layers of three layouts whose 'channel' sizes differ (4 for conv1, 8 for block),
    and a per-sample statistic beside sums without a sample axis."""
    return actextract.extract(
        tiny_cnn(),
        FailsAt(SKIPPED),
        layers=["conv1", "block", "fc"],
        reduce={"block": "mean"},
        stats="conv1=channel-mean,class-mean",
        out=tmp_path_factory.mktemp("eco") / "run.zarr",
        batch_size=4,
        chunk_rows=8,
        device="cpu",
        on_bad_sample="skip",
        progress=False,
    )


def others(store, layer):
    return [name for name in store.layers if name != layer]


@pytest.mark.parametrize(
    "layer, dims, shape",
    [
        ("conv1", ("sample", "channel", "y", "x"), (16, 4, 8, 8)),
        ("block", ("sample", "channel"), (16, 8)),
        ("fc", ("sample", "feature"), (16, 5)),
    ],
)
def test_open_zarr_reads_one_layer_with_named_dimensions(store, layer, dims, shape):
    ds = xr.open_zarr(
        store.path, group="acts", drop_variables=others(store, layer), consolidated=False
    )
    acts = ds[layer]
    assert acts.dims == dims
    assert acts.shape == shape
    assert acts.dtype == np.float16
    np.testing.assert_array_equal(acts.values, store[layer][:])  # NaN rows equal too
    assert np.isnan(acts.values[SKIPPED]).all()


def test_open_zarr_at_the_root_reads_labels_and_ids_on_sample(store):
    root = xr.open_zarr(store.path, consolidated=False)
    assert root["labels"].dims == ("sample",)
    assert root["ids"].dims == ("sample", "id_byte")  # fixed-width UTF-8 (format 7)
    assert root.sizes["sample"] == store.n
    np.testing.assert_array_equal(root["labels"].values, store.labels[:])
    assert root["labels"].values[SKIPPED] == -1  # the fill value is not turned into NaN
    ids = [bytes(row).rstrip(b"\0").decode() for row in root["ids"].values]
    assert ids == [str(i) for i in range(16)]
    assert root.attrs["n_samples"] == 16  # the run's provenance comes along


def test_open_zarr_of_all_layers_fails_on_their_shared_dimension_names(store):
    """The README's caveat: one layer at a time."""
    with pytest.raises(ValueError, match="conflicting sizes for dimension 'channel'"):
        xr.open_zarr(store.path, group="acts", consolidated=False)


def test_dask_reads_a_layer(store):
    arr = da.from_zarr(str(store.path), component="acts/conv1")
    assert arr.chunks[0] == (8, 8)  # a dask chunk per row block
    np.testing.assert_array_equal(arr.compute(), store["conv1"][:])


@pytest.mark.parametrize(
    "layer, dims",
    [
        ("conv1", ("sample", "channel", "y", "x")),
        ("block", ("sample", "channel")),
        ("fc", ("sample", "feature")),
        ("stats/conv1/channel_means", ("sample", "channel")),
    ],
)
def test_to_xarray(store, layer, dims):
    acts = to_xarray(store.path, layer)
    expect = store.row_array(layer)[:]
    assert acts.dims == dims
    assert acts.name == layer
    assert isinstance(acts.data, da.Array)
    np.testing.assert_array_equal(acts.values, expect)
    np.testing.assert_array_equal(acts["labels"].values, store.labels[:])
    assert acts["ids"].values.tolist() == store.ids[:].tolist()
    # selections keep their rows: the samples of class 1, and the skipped one apart
    ones = acts.sel(sample=acts["labels"] == 1)
    assert ones["sample"].values.tolist() == [i for i in range(16) if i % 3 == 1]
    np.testing.assert_array_equal(ones.values, expect[[i % 3 == 1 for i in range(16)]])
    assert acts.sel(sample=acts["labels"] < 0)["sample"].values.tolist() == [SKIPPED]


def test_to_xarray_names_the_layers_of_an_unknown_one(store):
    with pytest.raises(actextract.StoreError, match="it holds: conv1, block, fc"):
        to_xarray(store, "conv2")


def test_to_xarray_without_xarray_says_what_to_install(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)  # import xarray fails
    with pytest.raises(ImportError, match="pip install xarray dask"):
        to_xarray(store, "fc")


def test_statistics_and_clusterings_open_as_datasets(store):
    """The per-class totals and a clustering result are groups of named arrays too."""
    stats = xr.open_zarr(store.path, group="stats/conv1", consolidated=False)
    assert stats["mean"].dims == ("class", "channel", "y", "x")
    assert stats["count"].dims == stats["classes"].dims == ("class",)
    assert stats["channel_means"].dims == ("sample", "channel")
    result = actextract.cluster(store.path, "block", 3, device="cpu", epochs=2)
    ds = xr.open_zarr(store.path, group=f"clusters/block/{result.name}", consolidated=False)
    assert ds["assignments"].dims == ("sample",) and ds.sizes["sample"] == store.n
    assert ds["centroids"].dims == ("cluster", "feature")
    assert ds["coords"].dims == ("sample", "pc")
    np.testing.assert_array_equal(ds["assignments"].values, result["assignments"])
