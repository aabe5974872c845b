"""The renderer from a real store: aggregates equal numpy's, the report's files and page, bad
input, and bounded memory."""

from __future__ import annotations

import json
import re
import tracemalloc

import numpy as np
import pytest
import torch
from _fixtures import FailsAt, digits_run, tiny_cnn

import actextract
from actextract.cli.commands import main
from actextract.errors import LayerNotFoundError, OptionError, OutputExistsError, StoreError
from actextract.model.zoo import DigitsCNN
from actextract.report.rebuild import RebuildError, open_inputs
from actextract.stats.aggregate import layer_stats, predictions
from actextract.store import create_store, open_store
from actextract.store.layout import ArraySpec, StoreOptions


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """16 rows in blocks of 4, labels i % 3, row 5 skipped (NaN, label -1)."""
    return actextract.extract(
        tiny_cnn(),
        FailsAt(5),
        layers=["conv1", "block", "fc"],
        out=tmp_path_factory.mktemp("tiny") / "run.zarr",
        batch_size=4,
        chunk_rows=4,
        on_bad_sample="skip",
        dtype="float32",
        device="cpu",
    )


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory):
    """digits-cnn from a checkpoint on the first 60 digits: inputs and filters can be rebuilt."""
    return digits_run(tmp_path_factory.mktemp("digits"), "conv1,pool2,flatten,fc1", 60)


# -- aggregates ------------------------------------------------------------------------------
def test_per_class_averages_equal_numpy(tiny_store):
    data = tiny_store["conv1"][:].astype(np.float64)
    labels = tiny_store.labels[:]
    stats = layer_stats(tiny_store, "conv1")
    assert list(stats.classes) == [0, 1, 2]  # the skipped row (label -1, NaN) is left out
    assert stats.rows_missing == 1
    for k, cls in enumerate(stats.classes):
        rows = data[labels == cls]
        assert stats.counts[k] == len(rows)
        np.testing.assert_allclose(stats.means[k], rows.mean(axis=0), rtol=1e-12)
    assert "16" not in stats.source and "15 stored rows" in stats.source


def test_channel_means_per_row_equal_numpy(tiny_store):
    stats = layer_stats(tiny_store, "conv1", max_channels=3)
    data = tiny_store["conv1"][:].astype(np.float64)
    keep = tiny_store.labels[:] >= 0
    np.testing.assert_allclose(stats.channel_means, data[keep, :3].mean(axis=(2, 3)))
    np.testing.assert_array_equal(stats.labels, tiny_store.labels[:][keep])
    vector = layer_stats(tiny_store, "fc")
    np.testing.assert_allclose(vector.channel_means, tiny_store["fc"][:][keep])


def test_predictions_are_the_argmax_of_labelled_rows(tiny_store):
    true, pred = predictions(tiny_store, "fc")
    labels = tiny_store.labels[:]
    keep = labels >= 0
    np.testing.assert_array_equal(true, labels[keep])
    np.testing.assert_array_equal(pred, tiny_store["fc"][:][keep].argmax(axis=1))


def test_averages_stream_with_memory_bounded_by_a_few_chunks(tmp_path):
    """A 50 MB layer in 1.6 MB chunks: the pass holds a few chunks (the block, its compressed
    bytes, a class's rows), never the layer (reading it whole peaks at over 120 MB)."""
    n, shape, chunk_rows = 2048, (12, 32, 32), 32
    chunk_bytes = chunk_rows * int(np.prod(shape)) * 4
    store = create_store(
        tmp_path / "big.zarr",
        n=n,
        arrays=[ArraySpec("maps", shape)],
        options=StoreOptions(dtype="float32", codec="zstd", level=1),
        chunk_rows=chunk_rows,
        attrs={"dataset": {"classes": ["a", "b", "c", "d"]}},
    )
    rng = np.random.default_rng(0)
    sums = np.zeros((4, *shape))
    for block in range(store.n_blocks):
        data = rng.random((chunk_rows, *shape), dtype=np.float32)
        labels = (np.arange(chunk_rows) + block) % 4
        np.add.at(sums, labels, data.astype(np.float64))
        store.write_block(block, {"maps": data}, labels, [str(i) for i in range(chunk_rows)])
    assert n * int(np.prod(shape)) * 4 > 30 * chunk_bytes
    reopened = open_store(store.path)
    tracemalloc.start()
    try:
        stats = layer_stats(reopened, "maps")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    accumulators = stats.sums.nbytes + stats.channel_means.nbytes
    assert peak < 6 * chunk_bytes + 2 * accumulators, (peak, chunk_bytes)
    np.testing.assert_allclose(stats.sums, sums, rtol=1e-12)
    assert list(stats.counts) == [n // 4] * 4


# -- the report ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_report(digits_store, tmp_path_factory):
    return actextract.render(digits_store, tmp_path_factory.mktemp("report") / "report")


def test_report_files_and_page(digits_report, digits_store):
    html = digits_report.index.read_text()
    sources = re.findall(r"src='([^']+)'", html)
    assert sources and all((digits_report.out / s).is_file() for s in sources)
    assert not re.search(r"(src|href)=['\"](https?:|//|/)", html)  # relative links only
    drawn = {(p.layer, p.kind) for p in digits_report.pictures}
    for layer in ("conv1", "pool2"):
        assert {(layer, "grids"), (layer, "averages"), (layer, "histograms")} <= drawn
    assert ("conv1", "filters") in drawn  # rebuilt from the checkpoint the store names
    assert ("flatten", "grids") in drawn  # 1-D: drawn as a strip
    assert (digits_report.out / "flatten.strip.png").is_file()
    assert ("fc1", "confusion") in drawn
    assert "digits-cnn" in html and "float16" in html and "complete" in html
    manifest = json.loads((digits_report.out / "report.json").read_text())
    assert set(manifest["files"]) >= {p.path for p in digits_report.pictures}


def test_report_samples_are_the_first_of_each_class_with_inputs(digits_report, digits_store):
    labels = digits_store.labels[:]
    grids = sorted(
        int(p.path.split(".")[-2])
        for p in digits_report.pictures
        if p.kind == "grid" and p.layer == "conv1"
    )
    assert grids == sorted(int(np.argmax(labels == c)) for c in np.unique(labels))
    assert "inputs not shown" not in json.dumps(digits_report.notes)
    from PIL import Image

    # input beside the maps: wider than the maps alone
    with Image.open(digits_report.out / f"conv1.grid.{grids[0]}.png") as im:
        assert im.width > im.height


def test_confusion_matrix_and_accuracy(digits_report, digits_store):
    logits = digits_store["fc1"][:].astype(np.float32)
    labels = digits_store.labels[:]
    expected = float((logits.argmax(axis=1) == labels).mean())
    assert digits_report.accuracy["fc1"] == pytest.approx(expected)
    matrix = np.array(digits_report.confusion["fc1"])
    assert matrix.shape == (10, 10) and matrix.sum() == (labels >= 0).sum()
    for t, p in [(labels[i], logits[i].argmax()) for i in (0, 7, 33)]:
        assert matrix[t, p] >= 1
    assert f"{expected:.2%}" in digits_report.index.read_text()


def test_only_and_layers_and_explicit_samples(digits_store, tmp_path):
    report = actextract.render(
        digits_store, tmp_path / "r", layers="conv*", only="averages", samples=[3, 4]
    )
    assert {(p.layer, p.kind) for p in report.pictures} == {("conv1", "averages")}
    report = actextract.render(digits_store, tmp_path / "r", only=["grids"], samples=[3, 7])
    grids = {p.path for p in report.pictures if p.kind == "grid" and p.layer == "conv1"}
    assert grids == {"conv1.grid.3.png", "conv1.grid.7.png"}
    assert not (tmp_path / "r" / "conv1.averages.png").exists()  # the earlier report's files go


def test_filters_are_skipped_with_a_reason_when_the_checkpoint_changed(digits_store, tmp_path):
    torch.save(DigitsCNN().state_dict(), digits_store.attrs["model"]["weights"] + ".new")
    import shutil

    weights = digits_store.attrs["model"]["weights"]
    shutil.copy(weights, tmp_path / "saved.pt")
    shutil.copy(weights + ".new", weights)
    try:
        report = actextract.render(digits_store, tmp_path / "r", only="filters")
    finally:
        shutil.copy(tmp_path / "saved.pt", weights)
    assert not report.pictures
    assert "sha256 differs" in report.notes["conv1"][0]


def test_incomplete_store_renders_the_done_rows_and_says_so(tiny_store, tmp_path):
    import shutil

    path = tmp_path / "partial.zarr"
    shutil.copytree(tiny_store.path, path)
    store = open_store(path, mode="r+")
    store._node("progress/done")[2] = 0
    store.update_attrs(status="incomplete")
    report = actextract.render(open_store(path), tmp_path / "r", only="averages")
    assert "2 of 4" not in report.notes[""][0] and "3 of 4 row blocks" in report.notes[""][0]
    assert "incomplete" in report.index.read_text()
    assert layer_stats(open_store(path), "conv1").rows_missing == 1 + 4


def test_a_layer_without_spatial_axes_asked_for_grids_is_a_strip(tiny_store, tmp_path):
    report = actextract.render(tiny_store, tmp_path / "r", layers="fc", only="grids")
    assert [p.path for p in report.pictures] == ["fc.strip.png"]


def test_a_store_without_provenance_still_renders(tmp_path):
    store = create_store(
        tmp_path / "bare.zarr",
        n=8,
        arrays=[ArraySpec("maps", (2, 3, 3))],
        options=StoreOptions(dtype="float32", codec="zstd"),
        chunk_rows=4,
        attrs={},
    )
    for block in range(2):
        store.write_block(block, {"maps": np.ones((4, 2, 3, 3), np.float32)}, np.zeros(4), "abcd")
    report = actextract.render(store, tmp_path / "r")
    assert {p.kind for p in report.pictures} >= {"grids", "averages", "histograms"}
    assert "inputs not shown" in report.notes[""][-1]


def test_bad_input(tiny_store, tmp_path):
    with pytest.raises(StoreError, match="not a Zarr store"):
        actextract.render(tmp_path, tmp_path / "r")
    with pytest.raises(LayerNotFoundError, match="Close matches: conv1"):
        actextract.render(tiny_store, tmp_path / "r", layers="conv2")
    assert not (tmp_path / "r").exists()  # refused before anything is written
    with pytest.raises(OptionError, match="unknown picture kind"):
        actextract.render(tiny_store, tmp_path / "r", only="pictures")
    with pytest.raises(OptionError, match="rows 0 to 15"):
        actextract.render(tiny_store, tmp_path / "r", samples=[99])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(OutputExistsError, match="no earlier report"):
        actextract.render(tiny_store, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_cli_render(runner, tiny_store, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(
        main, ["render", str(tiny_store.path), "--out", str(out), "--max-channels", "2"]
    )
    assert result.exit_code == 0, result.output
    assert f"open {(out / 'index.html').resolve()}" in result.output
    assert "inputs not shown" in result.output  # a Dataset object cannot be reopened
    result = runner.invoke(
        main, ["render", str(tiny_store.path), "--out", str(out), "--layers", "fx"]
    )
    assert result.exit_code == 2 and "Close matches: fc" in result.output
    result = runner.invoke(
        main, ["render", str(tiny_store.path), "--out", str(out), "--samples", "x"]
    )
    assert result.exit_code == 2 and "per-class" in result.output


def test_rgb_inputs_and_filters_from_a_folder_and_a_python_model(
    image_folder, fixtures_file, tmp_path
):
    store = actextract.extract(
        f"python:{fixtures_file}:tiny_cnn",
        f"folder:{image_folder}",
        layers="conv1,fc",
        out=tmp_path / "run.zarr",
        preprocess=actextract.Preprocess(resize=8, crop=8),
        batch_size=2,
        device="cpu",
    )
    report = actextract.render(store, tmp_path / "r")
    assert report.notes.get("", []) == []  # inputs reopened, ids matched
    assert ("conv1", "filters") in {(p.layer, p.kind) for p in report.pictures}
    assert "colour tiles" in next(p.caption for p in report.pictures if p.kind == "filters")
    image = open_inputs(store.attrs, store.ids).image(0)
    assert image.shape == (8, 8, 3) and image.min() >= 0.0 and image.max() <= 1.0
    assert sorted(report.confusion) == []  # tiny_cnn has 5 outputs, the folder 2 classes
    assert "2" in report.notes["fc"][0] and "5" in report.notes["fc"][0]
    (image_folder / "cat" / "0.png").rename(image_folder / "cat" / "9.png")
    with pytest.raises(RebuildError, match=r"no longer matches the store: row 0 is 'cat/1\.png'"):
        open_inputs(store.attrs, store.ids).image(0)
