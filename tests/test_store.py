"""The store schema (golden, for a tiny model), the reader, and the completion records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from _fixtures import SeededImages, tiny_cnn

import actextract
from actextract.store import ArraySpec, StoreOptions, choose_chunk_rows, create_store

GOLDEN_ATTRS = {
    "format_version": 7,
    "id_width": 256,
    "n_samples": 16,
    "chunk_rows": 8,
    "dtype": "float16",
    "codec": {"name": "none", "level": None},
    "precision": "fp32",
    "device": "cpu",
    "batch_size": 4,
    "status": "complete",
    "model": {
        "spec": "python-object:TinyCNN",
        "weights": None,
        "weights_sha256": None,
        "weights_format": None,
        "capture": "fx",
    },
    "dataset": {
        "spec": "python-object:_fixtures.SeededImages",
        "transform": "as given by the dataset",
        "n": 16,
        "classes": None,
        "preprocess": None,
        "decode": "cpu",
    },
    "layers": [
        {
            "name": "conv1",
            "kind": "Conv2d",
            "shape": [4, 8, 8],
            "output_shape": [4, 8, 8],
            "reduce": "none",
            "layout": "nchw",
            "clone": None,
            "batch_axis": 0,
            "model_output": False,
            "array": "acts/conv1",
            "rows": "sample",
        },
        {
            "name": "block",
            "kind": "Sequential",
            "shape": [8],
            "output_shape": [8, 8, 8],
            "reduce": "mean",
            "layout": "nchw",
            "clone": None,
            "batch_axis": 0,
            "model_output": False,
            "array": "acts/block",
            "rows": "sample",
        },
        {
            "name": "fc",
            "kind": "Linear",
            "shape": [5],
            "output_shape": [5],
            "reduce": "none",
            "layout": "vector",
            "clone": None,
            "batch_axis": 0,
            "model_output": True,
            "array": "acts/fc",
            "rows": "sample",
        },
    ],
    "row_arrays": ["acts/conv1", "acts/block", "acts/fc"],
    "stats": {},
    "skipped": [],
    "skipped_count": 0,
    "nonfinite": {"conv1": 0, "block": 0, "fc": 0},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("golden") / "run.zarr"
    return actextract.extract(
        tiny_cnn(),
        SeededImages(),
        layers=["fc", "conv1", "block"],
        reduce={"block": "mean"},
        out=out,
        batch_size=4,
        chunk_rows=8,
        device="cpu",
    )


def test_root_attributes(store):
    attrs = store.attrs
    volatile = {"created", "finished", "software", "summary"}
    assert len(attrs["model"].pop("state_sha256")) == 64  # the weights' fingerprint
    assert {k: v for k, v in attrs.items() if k not in volatile} == GOLDEN_ATTRS
    assert set(attrs["software"]) == {
        "actextract",
        "torch",
        "torchvision",
        "zarr",
        "numpy",
        "python",
    }
    assert set(attrs["summary"]) == {
        "images",
        "skipped",
        "seconds",
        "images_per_s",
        "bytes_written",
        "held_bytes",
        "mb_per_s",
        "data_wait_s",
        "compute_s",
        "d2h_s",
        "write_wait_s",
        "write_cpu_s",
        "nonfinite",
        "shard",
    }
    assert attrs["summary"]["images"] == 16
    assert attrs["summary"]["bytes_written"] == 16 * (4 * 8 * 8 + 8 + 5) * 2


def test_arrays_chunks_and_dimension_names(store):
    root = zarr.open_group(store.path, mode="r")
    assert sorted(root.group_keys()) == ["acts", "progress"]
    assert sorted(root.array_keys()) == ["ids", "labels"]
    assert sorted(root["acts"].array_keys()) == ["block", "conv1", "fc"]
    expect = {
        "conv1": ((16, 4, 8, 8), ("sample", "channel", "y", "x")),
        "block": ((16, 8), ("sample", "channel")),
        "fc": ((16, 5), ("sample", "feature")),
    }
    for name, (shape, dims) in expect.items():
        arr = root[f"acts/{name}"]
        assert arr.shape == shape and arr.chunks == (8, *shape[1:])
        assert arr.dtype == np.float16 and arr.metadata.dimension_names == dims
        assert np.isnan(arr.metadata.fill_value)
        meta = json.loads((store.path / "acts" / name / "zarr.json").read_text())
        # stored as they are by default: no compressor, only the checksum after the bytes
        assert [c["name"] for c in meta["codecs"]] == ["bytes", "crc32c"]
    assert root["labels"].dtype == np.int64 and root["labels"].chunks == (8,)
    # strings as fixed-width UTF-8 (format 7): 256 bytes per id, a block's JSON record in
    # chunk_rows × (256 + 256) bytes; NUL-padded, in one chunk per row block
    ids, skipped = root["ids"], root["progress/skipped"]
    assert ids.shape == (16, 256) and ids.chunks == (8, 256) and ids.dtype == np.uint8
    assert ids.metadata.dimension_names == ("sample", "id_byte")
    assert dict(ids.attrs) == {"encoding": "utf-8", "width": 256, "padding": "nul"}
    assert bytes(ids[3]).rstrip(b"\0") == b"3"
    assert skipped.shape == (2, 4096) and skipped.chunks == (1, 4096)
    assert bytes(skipped[1]).rstrip(b"\0") == b"[]"
    done = root["progress/done"]
    assert done.shape == (2,) and done.chunks == (1,) and done.dtype == np.uint8
    assert done[:].tolist() == [1, 1]
    assert root["progress/nonfinite"].shape == (2, 3)


def test_reader_is_lazy_and_chunk_wise(store):
    reopened = actextract.open_store(store.path)
    assert reopened.layers == ["conv1", "block", "fc"]
    assert list(reopened) == reopened.layers and "fc" in reopened
    assert isinstance(reopened["conv1"], zarr.Array)
    assert reopened["conv1"][:3].shape == (3, 4, 8, 8)
    assert reopened.complete and reopened.block_range(1) == range(8, 16)
    with pytest.raises(actextract.StoreError, match="layer 'nope' is not in"):
        reopened["nope"]


def test_open_store_refuses_what_is_not_a_store(tmp_path):
    with pytest.raises(actextract.StoreError, match=r"no zarr\.json"):
        actextract.open_store(tmp_path)
    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    with pytest.raises(actextract.StoreError, match="not an actextract store"):
        actextract.open_store(tmp_path / "plain.zarr")


def test_a_block_is_done_only_after_its_data(tmp_path):
    store = create_store(
        tmp_path / "s.zarr",
        n=10,
        arrays=[ArraySpec("a", (3,))],
        options=StoreOptions(),
        chunk_rows=4,
        attrs={},
    )
    assert store.n_blocks == 3 and store.status == "incomplete"
    store.write_block(2, {"a": np.ones((2, 3), np.float16)}, np.array([1, 2]), ["x", "y"])
    assert store.done().tolist() == [False, False, True]
    assert np.isnan(store["a"][:8]).all() and (store["a"][8:] == 1).all()
    store.seal()
    assert store.status == "incomplete" and not store.complete


@pytest.mark.parametrize("codec", ["zstd", "lz4", "blosc-zstd", "blosc-lz4", "none"])
def test_every_codec_round_trips(tmp_path, codec):
    store = actextract.extract(
        tiny_cnn(),
        SeededImages(),
        layers=["conv1"],
        codec=codec,
        out=tmp_path / f"{codec}.zarr",
        device="cpu",
    )
    again = actextract.open_store(store.path)
    assert again.attrs["codec"]["name"] == codec
    assert np.isfinite(again["conv1"][:]).all()


def test_bad_store_options_are_refused():
    with pytest.raises(actextract.StoreError, match="bfloat16"):
        StoreOptions(dtype="bfloat16")
    with pytest.raises(actextract.StoreError, match="--level has no meaning"):
        StoreOptions(codec="lz4", level=3)
    with pytest.raises(actextract.StoreError, match="--codec 'gzip'"):
        StoreOptions(codec="gzip")


def test_chunk_rows_are_a_multiple_of_the_batch_and_near_32_mb():
    assert choose_chunk_rows(64, 1024, 64 * 512 * 4) == 64 * 512  # 32 MiB of 1 KiB samples
    assert choose_chunk_rows(64, 1024, 100) == 128  # no larger than the dataset needs
    # the digits demo: 768 rows would leave the third block 2/3 padding; 640 splits evenly
    assert choose_chunk_rows(64, 43_264, 1797) == 640
    for n in (10**6, 12_345, 1_000_001):
        rows = choose_chunk_rows(64, 1024, n)
        blocks = -(-n // rows)
        assert rows % 64 == 0 and rows <= 64 * 512 and blocks * rows - n < 64 * blocks
    assert choose_chunk_rows(128, 1_605_632, 10**6) == 32  # a batch of conv1 maps is too big
    rows = choose_chunk_rows(100, 200_000, 10**6)
    assert rows % 100 == 0 and 16e6 <= rows * 200_000 <= 64e6
