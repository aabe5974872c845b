"""Portable stores (issue 20): every array of a store opens in another Zarr v3 implementation
(tensorstore's zarr3 driver) and reads what zarr-python reads, strings included (fixed-width
UTF-8 from store format 7); actextract still reads them as strings, and stores of format 6
(zarr's variable-length strings) as they were written. A sealed store has consolidated
metadata, and no copy of it outlives a reopening for writing."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from _fixtures import FailsAt, SeededImages, tiny_cnn
from _stores import old_strings

import actextract
from actextract.check.verification import verify
from actextract.errors import StoreError
from actextract.store import ArraySpec, StoreOptions, create_store
from actextract.store.integrity import check

ts = pytest.importorskip("tensorstore")

SKIPPED = 5  # FailsAt's bad sample
RUN = dict(
    layers=["conv1", "block", "fc"],
    reduce={"block": "mean"},
    stats="conv1=channel-mean,class-mean",
    batch_size=4,
    chunk_rows=8,
    device="cpu",
    on_bad_sample="skip",
    progress=False,
)


def image_run(out: Path) -> actextract.Store:
    return actextract.extract(tiny_cnn(), FailsAt(SKIPPED), out=out, **RUN)


@pytest.fixture(scope="module")
def image_store(tmp_path_factory):
    return image_run(tmp_path_factory.mktemp("portable") / "run.zarr")


@pytest.fixture(scope="module")
def text_store(tmp_path_factory):
    """A GPT-2 text run: token rows (h.0), a pooled layer (h.1), tokens/ and progress/tokens;
    ids 'corpus.txt:<line>'."""
    pytest.importorskip("transformers")
    from tests import _hf

    root = tmp_path_factory.mktemp("portable-text")
    model = _hf.gpt2(root / "gpt2", "left")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(_hf.DOCS[:7]) + "\n")
    return actextract.extract(
        f"hf:{model}",
        f"text:{corpus}",
        layers="h.0,h.1",
        reduce="h.0=tokens,h.1=mean",
        max_length=16,
        batch_size=3,
        chunk_rows=3,
        device="cpu",
        out=root / "text.zarr",
        progress=False,
    )


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """A Recorder's store of two epochs (progress/records, growing arrays)."""
    rec = actextract.Recorder(
        tiny_cnn(),
        layers=["fc"],
        probe=SeededImages(),
        out=tmp_path_factory.mktemp("portable-rec") / "rec.zarr",
        device="cpu",
    )
    assert rec.capture(0) and rec.capture(1)
    return actextract.open_store(rec.location.local)


def arrays(path: Path) -> dict[str, zarr.Array]:
    """Every array of the store, by path, as zarr-python opens it (its own metadata)."""
    root = zarr.open_group(path, mode="r", use_consolidated=False)
    members = root.members(max_depth=None)
    return {name: node for name, node in members if isinstance(node, zarr.Array)}


def through_tensorstore(path: Path, name: str) -> np.ndarray:
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / name)}}
    return ts.open(spec, read=True).result().read().result()


@pytest.mark.parametrize("kind", ["image_store", "text_store", "recording"])
def test_tensorstore_reads_every_array_as_zarr_python_does(kind, request):
    store = request.getfixturevalue(kind)
    found = arrays(store.path)
    assert {"ids", "labels"} <= set(found)
    assert ("progress/records" if kind == "recording" else "progress/skipped") in found
    for name, arr in found.items():
        theirs, ours = through_tensorstore(store.path, name), arr[...]
        assert theirs.dtype == ours.dtype and theirs.shape == ours.shape, name
        np.testing.assert_array_equal(theirs, ours, err_msg=name)  # NaN equals NaN
    assert found["ids"].dtype == np.uint8 and found["ids"].attrs["encoding"] == "utf-8"


def test_the_reader_gives_the_ids_and_records_back_as_strings(image_store, text_store, recording):
    ids = image_store.ids
    assert ids[:].dtype == np.dtypes.StringDType() and ids.shape == (16,)
    assert ids[:].tolist() == [str(i) for i in range(16)]
    assert ids[3] == "3" and ids[2:4].tolist() == ["2", "3"]
    assert ids[[1, 9]].tolist() == ["1", "9"] and ids[range(8, 10)].tolist() == ["8", "9"]
    [skipped] = image_store.skipped()
    assert (skipped["index"], skipped["id"]) == (SKIPPED, str(SKIPPED))
    assert "corrupt record 5" in skipped["error"]
    assert image_store.attrs["skipped_count"] == 1
    lines = text_store.ids[:].tolist()
    assert lines == [f"corpus.txt:{i + 1}" for i in range(text_store.n)] and text_store.n > 3
    assert recording.ids[:].tolist() == [str(i) for i in range(recording.n)]
    records = recording.records()
    assert sorted(records) == [0, 1] and len(records[1]["state_sha256"]) == 64
    assert actextract.to_xarray(image_store.path, "fc")["ids"].values.tolist() == ids[:].tolist()


def test_an_id_longer_than_the_store_keeps_is_a_clear_error(tmp_path):
    store = create_store(
        tmp_path / "s.zarr",
        n=4,
        arrays=[ArraySpec("fc", (2,))],
        options=StoreOptions(),
        chunk_rows=2,
        attrs={"id_width": 4, "layers": []},
    )
    acts = {"fc": np.zeros((2, 2), np.float16)}
    store.write_block(0, acts, np.zeros(2, np.int64), ["abcd", "é.p"])  # 4 bytes each
    with pytest.raises(StoreError, match=r"'é.png' is 6 bytes in UTF-8; this store keeps each"):
        store.write_block(1, acts, np.zeros(2, np.int64), ["a", "é.png"])
    assert store.done().tolist() == [True, False]  # the block is not marked done
    assert store.ids[:].tolist() == ["abcd", "é.p", "", ""]


def test_a_block_of_many_skipped_samples_keeps_their_indexes_within_a_bounded_record(tmp_path):
    rows = 4096  # a record of rows × (id_width + 256) bytes would be 2 MB: capped at 1 MiB
    store = create_store(
        tmp_path / "s.zarr",
        n=rows,
        arrays=[ArraySpec("fc", (2,))],
        options=StoreOptions(),
        chunk_rows=rows,
        attrs={"layers": []},
    )
    assert store.group["progress/skipped"].shape == (1, 1 << 20)
    ids = [f"images/{'x' * 180}/{i}.png" for i in range(rows)]
    bad = [{"index": i, "id": ids[i], "error": "OSError: truncated " * 20} for i in range(rows)]
    acts = {"fc": np.full((rows, 2), np.nan, np.float16)}
    store.write_block(0, acts, np.full(rows, -1, np.int64), ids, skipped=bad)
    got = actextract.open_store(tmp_path / "s.zarr").skipped()
    assert [s["index"] for s in got] == list(range(rows))  # every one, in the record
    assert [s["id"] for s in got] == ids  # put back from ids
    assert {s["error"] for s in got} == {""}


def test_a_folder_of_long_paths_gets_an_id_width_that_holds_them(image_folder, tmp_path):
    deep = "a-folder-name-of-many-words-" * 9  # 252 bytes: with the class and file, past 256
    shutil.move(image_folder / "cat", tmp_path / "cat")
    shutil.move(tmp_path / "cat", image_folder / "cat" / deep)  # ImageFolder walks subfolders
    long = f"cat/{deep}"
    out = tmp_path / "long.zarr"
    actextract.extract(
        "python:tests/_fixtures.py:tiny_cnn",
        f"folder:{image_folder}",
        out=out,
        layers=["fc"],
        resize=8,
        crop=8,
        device="cpu",
        progress=False,
    )
    store = actextract.open_store(out)
    assert store.attrs["id_width"] == len(f"{long}/0.png") > 256
    assert store.ids[:].tolist()[:3] == [f"{long}/{i}.png" for i in range(3)]
    assert verify(out).ok


def test_a_store_of_format_6_reads_verifies_and_resumes_as_it_was_written(image_store, tmp_path):
    out = tmp_path / "v6.zarr"
    shutil.copytree(image_store.path, out)
    old_strings(out, 6)
    store = actextract.open_store(out)
    assert store.attrs["format_version"] == 6 and store.ids.width is None
    assert store.ids[:].tolist() == image_store.ids[:].tolist() and store.ids[7] == "7"
    assert store.skipped() == image_store.skipped()
    assert not check(store) and verify(out).ok
    # a block undone and resumed: written in the old form, and the store stays format 6
    zarr.open_array(out / "progress/done", mode="r+")[0] = 0
    again = actextract.extract(tiny_cnn(), FailsAt(SKIPPED), out=out, resume=True, **RUN)
    assert again.complete and again.attrs["format_version"] == 6
    assert again.ids[:].tolist() == image_store.ids[:].tolist()
    assert again.skipped() == image_store.skipped() and verify(out).ok


def consolidated(path: Path) -> dict | None:
    return json.loads((path / "zarr.json").read_text()).get("consolidated_metadata")


def test_a_sealed_store_has_consolidated_metadata_that_xarray_reads_without_a_word(image_store):
    xr = pytest.importorskip("xarray")
    copy = consolidated(image_store.path)
    assert copy is not None and {"ids", "acts/conv1", "progress/done"} <= set(copy["metadata"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Failed to open Zarr store with consolidated..."
        root = xr.open_zarr(image_store.path)
    assert root.attrs["status"] == "complete" and root["labels"].shape == (16,)
    assert zarr.open_group(image_store.path, mode="r").metadata.consolidated_metadata is not None


def test_reopening_a_sealed_store_for_writing_leaves_no_stale_copy(tmp_path, monkeypatch):
    """Sealed, then resumed with a block undone and the resume failing: zarr (its defaults),
    xarray and actextract all see the failed status, not the sealed copy; the next resume
    seals it and consolidates again."""
    xr = pytest.importorskip("xarray")
    from actextract.store.run import Store

    out = tmp_path / "run.zarr"
    image_run(out)
    assert consolidated(out) is not None
    zarr.open_array(out / "progress/done", mode="r+")[1] = 0
    finish = Store.finish_block

    def fails_on_block_1(self, block, *args, **kw):
        if block == 1:
            raise RuntimeError("the disk went away")
        return finish(self, block, *args, **kw)

    monkeypatch.setattr(Store, "finish_block", fails_on_block_1)
    with pytest.raises(RuntimeError, match="the disk went away"):
        actextract.extract(tiny_cnn(), FailsAt(SKIPPED), out=out, resume=True, **RUN)
    assert consolidated(out) is None
    root = zarr.open_group(out, mode="r")  # zarr's defaults: consolidated metadata if any
    assert root.attrs["status"] == "failed" and root.metadata.consolidated_metadata is None
    assert root["progress/done"][:].tolist() == [1, 0]
    with pytest.warns(RuntimeWarning, match="consolidated metadata"):
        assert xr.open_zarr(out).attrs["status"] == "failed"
    store = actextract.open_store(out)
    assert store.status == "failed" and not store.complete
    monkeypatch.undo()
    again = actextract.extract(tiny_cnn(), FailsAt(SKIPPED), out=out, resume=True, **RUN)
    assert again.complete and consolidated(out) is not None
    root = zarr.open_group(out, mode="r")
    assert root.attrs["status"] == "complete" and root.attrs.get("error") is None
    assert verify(out).ok


def test_clustering_a_sealed_store_leaves_no_stale_copy(tmp_path):
    out = tmp_path / "run.zarr"
    image_run(out)
    for _ in range(2):  # the second replaces the first: one result, in the copy too
        actextract.cluster(out, "fc", 2, epochs=1, n_init=1, nearest=2)
    root = zarr.open_group(out, mode="r")  # zarr's defaults
    [name] = list(root["clusters/fc"].group_keys())
    assert root[f"clusters/fc/{name}"].attrs["status"] == "complete"
    copy = consolidated(out)  # consolidated again with the result, as the seal left it
    assert copy is not None and f"clusters/fc/{name}/assignments" in copy["metadata"]
    assert {
        k.split("/")[2]
        for k in copy["metadata"]
        if k.count("/") >= 2 and k.startswith("clusters/fc/")
    } == {name}
    assert root.metadata.consolidated_metadata is not None


def test_a_recording_is_consolidated_after_each_capture(recording):
    """Two captures: the copy in the root holds the arrays as the second left them."""
    copy = consolidated(recording.path)
    assert copy is not None
    assert copy["metadata"]["acts/fc"]["shape"][0] == 2  # two epochs, not the first's one
    assert copy["metadata"]["progress/epochs"]["shape"] == [2]
    root = zarr.open_group(recording.path, mode="r")  # zarr's defaults: the copy
    assert root["progress/epochs"][:].tolist() == [1, 1]
