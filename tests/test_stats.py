"""On-device statistics (--stats): equal to numpy on the stored rows, the same whatever the
processes, refused when asked wrongly. (Kills and resumes: test_resume; torchrun and shard
processes: test_shards — their runs all keep statistics, see tests/_runner.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _fixtures import FailsAt, SeededImages, tiny_cnn
from _runner import same_stats
from click.testing import CliRunner

import actextract
from actextract.cli.commands import main
from actextract.errors import LayerNotFoundError, OptionError, StoreError
from actextract.stats.accumulate import parse_stats
from actextract.stats.parts import read_stats, summed_blocks

N = 60  # rows: 5 blocks of 12, batches of 8 (straddling blocks), labels i % 3
RUN = dict(batch_size=8, chunk_rows=12, device="cpu", dtype="float32", progress=False)
STATS = "conv1=class-mean,class-std,channel-hist,channel-mean;fc=class-mean,class-std"


def _extract(out, data=None, **kw):
    kw = {"layers": "conv1,fc", "stats": STATS, **RUN, **kw}
    return actextract.extract(tiny_cnn(), data or SeededImages(N), out=out, **kw)


def _numpy_stats(data: np.ndarray, labels: np.ndarray, edges: np.ndarray | None):
    """Per class: mean and std (float64), and the histogram of each channel's values with a
    bin below the first edge and one at or above the last."""
    out = {}
    for c in np.unique(labels):
        rows = data[labels == c].astype(np.float64)
        entry = {"n": len(rows), "mean": rows.mean(0), "std": rows.std(0)}
        if edges is not None:
            per_channel = rows.reshape(len(rows), rows.shape[1], -1).transpose(1, 0, 2)
            bins = np.searchsorted(edges, per_channel.reshape(rows.shape[1], -1), side="right")
            entry["hist"] = np.stack([np.bincount(b, minlength=len(edges) + 1) for b in bins])
        out[int(c)] = entry
    return out


@pytest.fixture(scope="module")
def stats_store(tmp_path_factory):
    return _extract(tmp_path_factory.mktemp("stats") / "s.zarr")


def test_statistics_equal_numpy_on_the_stored_rows(stats_store):
    store = stats_store
    assert store.complete
    labels = store.labels[:]
    for layer, hist in (("conv1", True), ("fc", False)):
        got = read_stats(store, layer)
        edges = got.edges if hist else None
        want = _numpy_stats(store[layer][:], labels, edges)
        assert got.classes.tolist() == sorted(want) == [0, 1, 2]
        assert got.counts.tolist() == [want[c]["n"] for c in got.classes]
        for j, c in enumerate(got.classes.tolist()):
            np.testing.assert_allclose(got.mean[j], want[c]["mean"], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(got.std[j], want[c]["std"], rtol=1e-9, atol=1e-9)
            if hist:
                assert np.array_equal(got.hist[j], want[c]["hist"])
        assert (got.hist is None) == (not hist)
    # each sample's mean per channel: a row array beside the layers
    means = store.row_array("stats/conv1/channel_means")[:]
    np.testing.assert_allclose(means, store["conv1"][:].mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    assert store.row_keys == ["conv1", "fc", "stats/conv1/channel_means"]


def test_histogram_edges_cover_the_probe_and_count_every_value(stats_store):
    got = read_stats(stats_store, "conv1")
    edges = got.edges
    assert len(edges) == 65 and np.all(np.diff(edges) > 0)
    conv1 = stats_store["conv1"][:]
    assert got.hist.sum() == conv1.size  # below and above the range included
    assert np.array_equal(edges, edges.astype(np.float32))  # compared in float32 on a device


def test_given_histogram_range_and_bins(tmp_path):
    store = _extract(tmp_path / "s.zarr", hist_bins=4, hist_range=(-1.0, 1.0))
    got = read_stats(store, "conv1")
    assert got.edges.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    conv1 = store["conv1"][:]
    below = (conv1 < -1).sum(axis=(0, 2, 3))
    assert got.hist.shape == (3, 4, 6) and got.hist[:, :, 0].sum(0).tolist() == below.tolist()


def test_two_shards_give_the_statistics_of_one_process(tmp_path, stats_store):
    out = tmp_path / "s.zarr"
    for shard in ("1/2", "0/2"):
        store = _extract(out, shard=shard)
    assert store.complete and summed_blocks(store).all()
    same_stats(store, stats_store)


def test_statistics_only_layers_store_no_maps(tmp_path, stats_store):
    store = _extract(tmp_path / "s.zarr", store_layers="fc")
    assert store.complete and store.layers == ["fc"]
    assert "acts/conv1" not in store.group and read_stats(store, "conv1") is not None
    same_stats(store, stats_store)
    none = _extract(tmp_path / "none.zarr", store_layers="none", stats="class-mean")
    assert none.complete and none.layers == [] and read_stats(none, "fc") is not None


def test_skipped_samples_are_left_out_and_still_complete_their_block(tmp_path):
    store = _extract(tmp_path / "s.zarr", data=FailsAt(7, n=N), on_bad_sample="skip")
    assert store.complete
    got = read_stats(store, "fc")
    assert got.counts.sum() == N - 1 and got.counts[got.classes.tolist().index(1)] == 19
    fc, labels = store["fc"][:], store.labels[:]
    np.testing.assert_allclose(got.mean[1], fc[labels == 1].astype(np.float64).mean(0))


def test_unlabelled_rows_are_their_own_class(tmp_path):
    data = [torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(10)]
    store = _extract(tmp_path / "s.zarr", data=data, stats="fc=class-mean", layers="fc")
    got = read_stats(store, "fc")
    assert got.classes.tolist() == [-1] and got.counts.tolist() == [10]


def test_resume_with_other_statistics_is_refused(tmp_path):
    out = tmp_path / "s.zarr"
    _extract(out, limit=24)
    with pytest.raises(StoreError, match=r"statistics \(--stats\)"):
        _extract(out, limit=24, stats="fc=class-mean", resume=True)


@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(stats="conv1=class-median"), OptionError, "'class-median' is not one of"),
        (dict(stats="layer9=class-mean"), LayerNotFoundError, "matches none of the captured"),
        (dict(stats="fc=channel-mean"), OptionError, "layout vector, with no spatial axes"),
        (dict(stats="fc=class-mean", store_layers="fc"), OptionError, "conv1 would be computed"),
        (dict(hist_range=(1.0, 1.0)), OptionError, "LO < HI"),
    ],
)
def test_bad_statistics_options_are_refused_before_writing(tmp_path, kw, error, match):
    with pytest.raises(error, match=match):
        _extract(tmp_path / "s.zarr", **kw)
    assert not (tmp_path / "s.zarr").exists()


def test_labels_that_are_not_class_indices_are_refused(tmp_path):
    data = [(torch.zeros(3, 8, 8), 10**9) for _ in range(4)]
    with pytest.raises(OptionError, match="has label 1000000000, not a class index"):
        _extract(tmp_path / "s.zarr", data=data, stats="fc=class-mean", layers="fc")


def test_stats_spec_groups_and_implied_mean():
    layers = ["conv1", "layer1", "layer2", "fc"]
    plan = parse_stats("layer*=class-std;fc=channel-hist, class-mean", layers)
    assert plan == {
        "layer1": ("class-mean", "class-std"),
        "layer2": ("class-mean", "class-std"),
        "fc": ("class-mean", "channel-hist"),
    }
    assert parse_stats("class-mean", ["a", "b"]) == {"a": ("class-mean",), "b": ("class-mean",)}
    assert parse_stats(None, layers) == {}


def test_cli_stats_and_store_options(tmp_path):
    out = tmp_path / "s.zarr"
    args = ["extract", "--model", "python:tests/_fixtures.py:tiny_cnn"]
    args += ["--dataset", "python:tests/_fixtures.py:seeded_images", "--layers", "conv1"]
    args += ["--store", "fc", "--stats", "conv1=class-mean", "--stats", "conv1=channel-hist"]
    args += ["--hist-range", "-2,2", "--hist-bins", "8", "--device", "cpu", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "statistics of conv1 (class-mean, channel-hist)" in result.output
    store = actextract.open_store(out)
    assert store.layers == ["fc"] and read_stats(store, "conv1").edges[[0, -1]].tolist() == [-2, 2]
    bad = CliRunner().invoke(main, [*args[:-2], "--hist-range", "1", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "give LO,HI" in bad.output


def test_the_report_draws_statistics_only_layers_and_names_the_source(tmp_path):
    store = _extract(tmp_path / "s.zarr", store_layers="fc")
    report = actextract.render(store, tmp_path / "report")
    captions = {(p.kind, p.layer, p.path): p.caption for p in report.pictures}
    averages = captions[("averages", "conv1", "conv1.averages.png")]
    assert "on-device float64 sums over 60 rows (stats/conv1)" in averages
    hist = captions[("histograms", "conv1", "conv1.histograms.png")]
    assert "stats/conv1/channel_means" in hist
    assert ("histograms", "conv1", "conv1.values.png") in captions
    assert "per-class standard deviations" in captions[("averages", "conv1", "conv1.stds.png")]
    assert not any(kind == "grids" and layer == "conv1" for kind, layer, _ in captions)
    assert "not stored in full (--store): statistics only." in report.notes["conv1"]
    from actextract.stats.aggregate import summarize

    summary = summarize(store, "conv1")
    np.testing.assert_allclose(summary.means, read_stats(store, "conv1").mean)
    assert summary.channel_means.shape == (N, 4)
    page = (tmp_path / "report" / "index.html").read_text()
    assert "class-mean, class-std, channel-mean, channel-hist" in page


def test_verify_finds_damaged_statistics_and_repair_lets_resume_redo_them(tmp_path, stats_store):
    from actextract.check.verification import format_verify, verify
    from actextract.stats.parts import PARTS

    out = tmp_path / "s.zarr"
    store = _extract(out)
    assert verify(store).ok
    part = next(p for p in (out / PARTS).iterdir() if p.is_dir())
    sums = sorted((part / "a" / "conv1" / "sum" / "c").rglob("*"))
    chunk = next(p for p in sums if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[10] ^= 0xFF  # one flipped bit pattern in a committed sum
    chunk.write_bytes(bytes(data))
    (out / "stats" / "fc" / "mean" / "c" / "1" / "0").unlink()  # a lost chunk of the totals
    store = actextract.open_store(out, mode="r+")
    report = verify(store)
    assert report.state == "damaged"
    paths = [p for p, _ in report.stats_problems]
    assert f"{PARTS}/{part.name}/a/conv1/sum" in paths and "stats/fc/mean" in paths
    assert "not in the store" in dict(report.stats_problems)["stats/fc/mean"]
    assert "damaged statistics" in format_verify(report)
    repaired = verify(store, repair=True)
    assert f"{PARTS}/{part.name}" in repaired.stats_dropped
    store = actextract.open_store(out)
    assert store.status == "incomplete" and not summed_blocks(store).any()
    assert read_stats(store, "conv1") is None
    resumed = _extract(out, resume=True)  # the rows are done: only the sums are redone
    assert resumed.complete and verify(resumed).ok
    same_stats(resumed, stats_store)


def test_histogram_bins_below_above_and_nan_and_block_accounting():
    from actextract.stats.accumulate import Accumulator, LayerStatsSpec

    spec = LayerStatsSpec("x", ("class-mean", "channel-hist"), (1, 3), (0.0, 1.0, 2.0))
    acc = Accumulator([spec], torch.device("cpu"), chunk_rows=2, n=3, blocks=[0, 1])
    values = torch.tensor([[[-1.0, 0.0, 0.5]], [[1.0, 2.0, float("nan")]]])
    acc.add({"x": values}, np.array([0, 1]), np.array([4, -1]))
    assert acc.summed == [0] and not acc.partial
    acc.add({"x": values[:0]}, np.zeros(0, np.int64), np.zeros(0, np.int64), bad=[2])
    assert acc.summed == [0, 1]  # a block of one skipped sample is complete too
    state = acc.state()
    hist = state["x"]["hist"]  # slots: label + 1 (0: unlabelled)
    assert hist[5, 0].tolist() == [1, 2, 0, 0] and hist[0, 0].tolist() == [0, 0, 1, 2]
    assert state[""]["count"].tolist() == [1, 0, 0, 0, 0, 1]
    assert state["x"]["sum"][5].tolist() == [[-1.0, 0.0, 0.5]]


def test_every_chunk_of_the_sums_is_written_whatever_zarr_global_config_says(tmp_path, monkeypatch):
    """Another thread may restore zarr's global config at any moment (it is process-wide), so
    no array may depend on it: here it never takes effect, and the all-zero sums of class
    slot 0 (no unlabelled rows) must still be written, or verify would call them missing."""
    import contextlib

    import zarr

    from actextract.check.verification import verify

    monkeypatch.setattr(zarr.config, "set", lambda *a, **k: contextlib.nullcontext())
    store = _extract(tmp_path / "s.zarr", stats_every=0)
    assert verify(store).ok
