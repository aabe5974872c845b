"""The renderer reads each layer's layout: channels-last maps are drawn as the channels-first
maps they equal, a token layer per feature, a layer in the ``other`` layout without
per-channel pictures, and a store from before layouts as it always was; also in the pictures
of clusterings and of recordings."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from _fixtures import SeededImages
from PIL import Image
from torch import nn

import actextract
from actextract.report import figures
from actextract.report.evolution import class_cells
from actextract.report.pictures import MIN_PIXELS, Drawer, RenderOptions, Report
from actextract.stats.aggregate import layer_stats, summarize
from actextract.stats.parts import read_stats
from actextract.store import open_store

N = 12  # rows, labels i % 3, blocks of 4


class SwinLike(nn.Module):
    """``norm``: channels-last maps (B, 4, 4, 6); ``back``: the same values channels first."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 2, stride=2)
        self.norm = nn.LayerNorm(6)
        self.back = nn.Identity()
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x).permute(0, 2, 3, 1))
        self.back(x.permute(0, 3, 1, 2))
        return self.head(x.mean((1, 2)))


class TokenModel(nn.Module):
    """A patch embedding to 4 tokens of 5 features: ``norm`` and ``mlp`` are (B, 4, 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 5, 4, stride=4)
        self.norm = nn.LayerNorm(5)
        self.mlp = nn.Linear(5, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(self.norm(self.embed(x).flatten(2).transpose(1, 2)))
        return self.head(x.mean(1))


class Mixed(nn.Module):
    """``reshape`` mixes the channels of ``conv`` (B, 6, 4, 4) into (B, 4, 6, 4): other."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 2, stride=2)
        self.head = nn.Linear(96, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.head(x.reshape(x.shape[0], 4, 6, 4).flatten(1))


def _extract(model: nn.Module, out, layers: list[str], **kw):
    torch.manual_seed(0)
    return actextract.extract(
        model.eval(),
        SeededImages(N),
        layers=layers,
        out=out,
        dtype="float32",
        device="cpu",
        progress=False,
        batch_size=4,
        **kw,
    )


@pytest.fixture(scope="module")
def swin_store(tmp_path_factory):
    return _extract(
        SwinLike(), tmp_path_factory.mktemp("swin") / "s.zarr", ["conv", "norm", "back"]
    )


@pytest.fixture(scope="module")
def token_store(tmp_path_factory):
    return _extract(
        TokenModel(),
        tmp_path_factory.mktemp("tokens") / "t.zarr",
        ["embed", "norm", "mlp"],
        stats="mlp=channel-hist,class-mean",
    )


@pytest.fixture
def spy(monkeypatch):
    """What the figure functions were given, by function name (the renderer calls them
    through the figures module)."""
    calls: dict[str, list] = {"feature_grid": [], "histogram_figure": []}
    for name in calls:
        real = getattr(figures, name)

        def record(*args, _real=real, _name=name, **kw):
            calls[_name].append((args, kw))
            return _real(*args, **kw)

        monkeypatch.setattr(figures, name, record)
    return calls


def _layouts(store) -> dict[str, str]:
    return {spec["name"]: spec["layout"] for spec in store.attrs["layers"]}


def _captions(report, layer: str) -> dict[str, str]:
    return {p.path: p.caption for p in report.pictures if p.layer == layer}


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _class_means(data: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    return [data[labels == c].mean(axis=0) for c in np.unique(labels)]


# -- the layouts the store recorded ------------------------------------------------------------
def test_the_stores_record_the_inferred_layouts(swin_store, token_store):
    assert _layouts(swin_store) == {"conv": "nchw", "norm": "nhwc", "back": "nchw"}
    assert swin_store["norm"].shape[1:] == (4, 4, 6)
    assert _layouts(token_store) == {"embed": "nchw", "norm": "tokens", "mlp": "tokens"}
    assert token_store["mlp"].shape[1:] == (4, 5)
    assert token_store.layout("mlp") == "tokens"
    assert token_store.stats_layers()["mlp"]["layout"] == "tokens"


# -- the aggregates, per channel of the layout ---------------------------------------------------
def test_nhwc_channel_means_and_class_averages_equal_numpy(swin_store):
    data = swin_store["norm"][:].astype(np.float64)  # (N, H, W, C)
    labels = swin_store.labels[:]
    stats = layer_stats(swin_store, "norm", max_channels=4)
    assert stats.layout == "nhwc"
    np.testing.assert_allclose(stats.channel_means, data.mean(axis=(1, 2))[:, :4], rtol=1e-12)
    for mean, expected in zip(stats.means, _class_means(data, labels), strict=True):
        np.testing.assert_allclose(mean, expected, rtol=1e-12)  # kept in the stored order
    summary = summarize(swin_store, "norm")
    np.testing.assert_allclose(summary.channel_means, data.mean(axis=(1, 2)), rtol=1e-12)
    # the same values channels first give the same channel means
    np.testing.assert_allclose(summary.channel_means, summarize(swin_store, "back").channel_means)


def test_token_channel_means_are_per_feature_over_the_tokens(token_store):
    data = token_store["norm"][:].astype(np.float64)  # (N, T=4, D=5)
    stats = summarize(token_store, "norm")
    assert stats.layout == "tokens" and stats.channel_means.shape == (N, 5)
    np.testing.assert_allclose(stats.channel_means, data.mean(axis=1), rtol=1e-12)
    labels = token_store.labels[:]
    for mean, expected in zip(stats.means, _class_means(data, labels), strict=True):
        np.testing.assert_allclose(mean, expected, rtol=1e-12)


def test_token_statistics_from_the_device_are_per_feature(token_store):
    data = token_store["mlp"][:].astype(np.float64)
    labels = token_store.labels[:]
    stats = summarize(token_store, "mlp")  # the per-class totals of --stats class-mean
    assert "stats/mlp" in stats.source and stats.layout == "tokens"
    for mean, expected in zip(stats.means, _class_means(data, labels), strict=True):
        np.testing.assert_allclose(mean, expected, rtol=1e-6)
    np.testing.assert_allclose(stats.channel_means, data.mean(axis=1), rtol=1e-12)
    totals = read_stats(token_store, "mlp")
    edges = np.asarray(totals.edges)
    assert totals.hist.shape == (3, 5, len(edges) + 1)  # per class and FEATURE
    for k, cls in enumerate(totals.classes):
        for j in range(5):
            values = data[labels == cls][:, :, j].ravel()  # every token's feature j
            expected = np.bincount(
                np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1
            )
            np.testing.assert_array_equal(totals.hist[k, j], expected)


# -- the pictures --------------------------------------------------------------------------------
def test_nhwc_maps_are_drawn_as_the_equal_channels_first_maps(swin_store, tmp_path, spy):
    report = actextract.render(swin_store, tmp_path / "r", layers="norm,back", max_channels=4)
    data = swin_store["norm"][:]
    drawn = {(p.layer, p.kind) for p in report.pictures}
    for kind in ("grids", "grid", "averages", "histograms"):
        assert {("norm", kind), ("back", kind)} <= drawn
    for r in (0, 1, 2):  # the first row of each class
        norm, back = (_png(tmp_path / "r" / f"{name}.grid.{r}.png") for name in ("norm", "back"))
        np.testing.assert_array_equal(norm, back)
        expected = figures.upscale(
            figures.feature_grid(data[r].transpose(2, 0, 1), max_channels=4), MIN_PIXELS
        )
        np.testing.assert_array_equal(norm, expected)
    captions = _captions(report, "norm")
    assert "4 of 6 channels" in captions["norm.samples.png"]
    assert "4 of 6 channels" in captions["norm.averages.png"]
    assert "mean activation per channel (4 shown)" in captions["norm.histograms.png"]
    # the class averages are given to the grid channels first, the first 4 channels
    means = _class_means(data.astype(np.float64), swin_store.labels[:])
    averages = [a[0] for a, kw in spy["feature_grid"] if kw.get("value_range") is not None]
    assert len(averages) == 2 * 3  # norm's three classes, then back's
    for got, expected in zip(averages[:3], means, strict=True):
        np.testing.assert_allclose(got, expected.transpose(2, 0, 1)[:4], rtol=1e-12)
    for a, b in zip(averages[:3], averages[3:], strict=True):
        np.testing.assert_array_equal(a, b)
    hists = [kw["channel_names"] for _a, kw in spy["histogram_figure"]]
    assert hists == [[f"channel {j}" for j in range(4)]] * 2


def test_token_layers_are_one_tokens_by_features_map_per_sample_and_class(
    token_store, tmp_path, spy
):
    report = actextract.render(token_store, tmp_path / "r", layers="norm")
    data = token_store["norm"][:]
    captions = _captions(report, "norm")
    assert "4 tokens × 5 features" in captions["norm.samples.png"]
    assert "4 tokens × 5 features" in captions["norm.averages.png"]
    assert "mean activation per feature (5 shown)" in captions["norm.histograms.png"]
    grid = _png(tmp_path / "r" / "norm.grid.0.png")  # one (T, D) map, the tokens down
    np.testing.assert_array_equal(grid, figures.upscale(figures.feature_grid(data[0]), MIN_PIXELS))
    averages = [a[0] for a, kw in spy["feature_grid"] if kw.get("value_range") is not None]
    means = _class_means(data.astype(np.float64), token_store.labels[:])
    assert [a.shape for a in averages] == [(1, 4, 5)] * 3
    for got, expected in zip(averages, means, strict=True):
        np.testing.assert_allclose(got[0], expected, rtol=1e-12)
    ((args, kw),) = spy["histogram_figure"]
    assert kw["channel_names"] == [f"feature {j}" for j in range(5)]
    assert args[1].shape[:2] == (5, 3)  # (features, classes, bins)


def test_channel_hist_of_a_token_layer_is_drawn_per_feature(token_store, tmp_path, spy):
    report = actextract.render(token_store, tmp_path / "r", layers="mlp", only="histograms")
    caption = _captions(report, "mlp")["mlp.values.png"]
    assert "every value per feature (5 shown)" in caption and "stats/mlp/hist" in caption
    values = [kw for _a, kw in spy["histogram_figure"] if "distribution" in kw["title"]]
    assert [kw["channel_names"] for kw in values] == [[f"feature {j}" for j in range(5)]]
    counts = next(a[1] for a, kw in spy["histogram_figure"] if "distribution" in kw["title"])
    totals = read_stats(token_store, "mlp")
    np.testing.assert_array_equal(counts, totals.hist[..., 1:-1].transpose(1, 0, 2))


def test_a_layer_in_the_other_layout_has_no_per_channel_pictures(tmp_path):
    store = _extract(Mixed(), tmp_path / "o.zarr", ["conv", "reshape"])
    assert _layouts(store) == {"conv": "nchw", "reshape": "other"}
    report = actextract.render(store, tmp_path / "r")
    drawn = {(p.layer, p.kind) for p in report.pictures}
    assert ("reshape", "histograms") not in drawn and ("conv", "histograms") in drawn
    assert {("reshape", "grids"), ("reshape", "averages")} <= drawn  # 3 axes: drawn as stored
    (note,) = [n for n in report.notes["reshape"] if "layout 'other'" in n]
    assert "no per-channel pictures" in note and "--layout 'reshape=nchw|nhwc|tokens'" in note
    assert "<td>other</td>" in (tmp_path / "r" / "index.html").read_text()


def test_a_store_from_before_layouts_renders_as_the_default_of_its_rank(swin_store, tmp_path):
    """Without "layout" in its attributes a (C, H, W) layer is nchw and a (D,) one a vector:
    the same pictures and captions as the store that records them."""
    old = tmp_path / "old.zarr"
    shutil.copytree(swin_store.path, old)
    store = open_store(old, mode="r+")
    layers = [{k: v for k, v in s.items() if k != "layout"} for s in store.attrs["layers"]]
    store.update_attrs(layers=layers)
    store = open_store(old)
    assert all("layout" not in s for s in store.attrs["layers"])
    assert store.layout("conv") == "nchw"
    new = actextract.render(swin_store, tmp_path / "new", layers="conv")
    was = actextract.render(store, tmp_path / "was", layers="conv")
    assert [(p.path, p.caption) for p in was.pictures] == [
        (p.path, p.caption) for p in new.pictures
    ]
    for p in new.pictures:
        np.testing.assert_array_equal(_png(tmp_path / "was" / p.path), _png(new.out / p.path))
    assert json.loads((tmp_path / "was" / "report.json").read_text())["notes"] == new.notes


def test_the_nearest_samples_of_a_clustering_follow_the_layout(swin_store, token_store, tmp_path):
    """Without inputs to show, nhwc rows are drawn as their mean map over the channels (as the
    same rows channels first), token rows as their (T, D) map."""
    swin = tmp_path / "s.zarr"
    shutil.copytree(swin_store.path, swin)
    for layer in ("norm", "back"):
        actextract.cluster(swin, layer, 2, nearest=2, device="cpu")
    report = actextract.render(swin, tmp_path / "r", only="clusters")
    nearest = {p.layer: p.caption for p in report.pictures if ".nearest." in p.path}
    assert (
        "mean maps over channels" in nearest["norm"]
        and "mean maps over channels" in nearest["back"]
    )
    store = open_store(swin)
    drawer = Drawer(store, RenderOptions(), Report(tmp_path, tmp_path / "x"), lambda p, c: None)
    rows = np.array([[0, 5], [7, 2]])
    norm, back = drawer._row_maps("norm", rows)[0], drawer._row_maps("back", rows)[0]
    assert sorted(norm) == [0, 2, 5, 7] and norm[5].shape == (4, 4)
    for r in norm:
        np.testing.assert_allclose(norm[r], back[r], atol=1e-12)
    tokens = tmp_path / "t.zarr"
    shutil.copytree(token_store.path, tokens)
    actextract.cluster(tokens, "norm", 2, nearest=2, device="cpu")
    report = actextract.render(tokens, tmp_path / "r2", only="clusters")
    (caption,) = [p.caption for p in report.pictures if ".nearest." in p.path]
    assert "tokens × features maps" in caption


def test_a_recording_of_channels_last_maps_is_drawn_as_channels_first(tmp_path, spy):
    torch.manual_seed(0)
    rec = actextract.Recorder(
        SwinLike().eval(),
        layers=["norm", "back"],
        probe=SeededImages(N),
        out=tmp_path / "r.zarr",
        dtype="float32",
        device="cpu",
    )
    for epoch in range(2):
        assert rec.capture(epoch) is True
    store = open_store(tmp_path / "r.zarr")
    assert store.layout("norm") == "nhwc" and store.layout("back") == "nchw"
    norm, back = (class_cells(store.at(1), layer) for layer in ("norm", "back"))
    assert norm[2].shape == (3, 4, 4)  # per class, the mean map over the 6 channels
    np.testing.assert_allclose(norm[2], back[2], atol=1e-12)
    report = actextract.render(store, tmp_path / "rep", samples=[0], max_channels=4)
    captions = {p.path: p.caption for p in report.pictures}
    assert {"norm.evolution.0.png", "norm.evolution.averages.png"} <= set(captions)
    # each epoch's grid of row 0: norm's and back's are the same channels-first maps
    grids = [a[0] for a, kw in spy["feature_grid"] if kw.get("value_range") == (0.0, 1.0)]
    assert [g.shape for g in grids] == [(4, 4, 4)] * 4  # 2 epochs each; 4 of the 6 channels read
    for a, b in zip(grids[:2], grids[2:], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)
