"""What to draw for each layer of a store, as figures and images, without writing a file.

:class:`Drawer` reads what it needs from the store (rows, dataset-wide aggregates, the inputs
and the model rebuilt from provenance), picks the pictures that fit each layer's shape and
layout (:mod:`actextract.core.axes`: channels-last maps are drawn as channels-first ones, a token
layer as one tokens × features map per sample, a layer in the ``other`` layout without
per-channel pictures), and hands each one, with its file name and caption, to the writer that
:mod:`actextract.report.writer` gives it. The options, the report and the pictures' shared
:class:`~actextract.report.canvas.Canvas` are in :mod:`actextract.report.canvas` (and importable
from here).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from actextract.core.axes import stored_layout
from actextract.report import figures
from actextract.report.canvas import (
    KINDS,
    MAX_SAMPLE_ROWS,
    Canvas,
    OpenInputs,
    Picture,
    RenderOptions,
    Report,
    Write,
    file_stem,
)
from actextract.report.classpictures import (
    ClassPictures,
    as_maps,
    describe_maps,
    drawing_layout,
)
from actextract.report.clusterpictures import ClusterPictures
from actextract.report.rebuild import RebuildError, conv_weights, open_inputs, rebuild_model
from actextract.stats.aggregate import predictions, summarize
from actextract.store import Store
from actextract.store.tokens import is_token_layer, sample_tokens

__all__ = [
    "KINDS",
    "MAX_SAMPLE_ROWS",
    "Drawer",
    "Picture",
    "RenderOptions",
    "Report",
    "Write",
    "file_stem",
]

MAX_STRIP_FEATURES = 4096
MIN_PIXELS = 384  # small maps are upscaled (nearest) to at least this many pixels a side


def _other_note(layer: str, shape: tuple[int, ...], drawable: bool) -> str:
    """Why a layer in the ``other`` layout has no per-channel pictures, and how to give it a
    layout."""
    drawn = ""
    if drawable and len(shape) > 1:
        drawn = "; its maps are drawn as stored" + (
            ", the first axis as channels" if len(shape) == 3 else ", as one map"
        )
    return (
        f"layout 'other' (shape {shape}): no channel axis, so no per-channel pictures (no "
        f"histograms of channel means){drawn}. If it has channels, give its layout when "
        f"extracting: --layout '{layer}=nchw|nhwc|tokens'."
    )


class Drawer:
    """Draws one layer at a time and hands each picture to ``write``. What is shared across
    layers and pictures (the labels, the inputs, the writer) is its :class:`Canvas`, given to
    the per-class pictures (:class:`~actextract.report.classpictures.ClassPictures`) and those
    of clusterings (:class:`~actextract.report.clusterpictures.ClusterPictures`); the samples,
    filters (from the rebuilt model) and confusion matrix are drawn here. ``store``,
    ``options`` and ``report`` are the canvas's; ``open_inputs``: how the store's inputs are
    opened again."""

    def __init__(
        self,
        store: Store,
        options: RenderOptions,
        report: Report,
        write: Write,
        *,
        open_inputs: OpenInputs = open_inputs,
    ):
        self.canvas = Canvas(store, options, report, write, open_inputs=open_inputs)
        self.store, self.options, self.report = store, options, report
        self.class_pictures = ClassPictures(self.canvas)
        self.cluster_pictures = ClusterPictures(self.canvas)
        self._model: Any = None

    def sample_rows(self) -> list[int]:
        """The rows the grids and strips show (stored rows only)."""
        return self.canvas.sample_rows()

    def model(self):
        if self._model is None:
            try:
                self._model = rebuild_model(self.canvas.attrs)
            except RebuildError as e:
                self._model = str(e)
        return self._model

    def _row_maps(self, layer: str, nearest: np.ndarray) -> tuple[dict[int, np.ndarray], str]:
        """A picture of each of the ``nearest`` rows without an input, and what it is
        (:meth:`~actextract.report.clusterpictures.ClusterPictures.row_maps`)."""
        return self.cluster_pictures.row_maps(layer, nearest)

    # -- one layer ---------------------------------------------------------------------------
    def layer(self, layer: str, rows: list[int]) -> None:
        specs, stats_specs = self.canvas.specs, self.canvas.stats_specs
        stored = layer in specs
        spec = specs.get(layer) or stats_specs[layer]
        shape = tuple(self.store.sample_shape(layer) if stored else spec["shape"])
        layout = self.store.layout(layer)  # of the stored rows (vector once pooled)
        opts = self.options
        drawable = len(shape) in (1, 2, 3)
        if not drawable:
            self.report.note(layer, f"shape {shape} has no picture (1, 2 or 3 axes are drawn).")
        if layout == "other":
            self.report.note(layer, _other_note(layer, shape, drawable))
        if not stored:
            self.report.note(layer, "not stored in full (--store): statistics only.")
        # an image transformer's token layer: each feature on the patch grid
        draw = drawing_layout(layout, shape, bool(self.store.attrs.get("tokens")))
        if opts.wants("grids") and drawable and rows and stored:
            self.samples(layer, shape, rows, draw)
        if opts.wants("filters") and spec.get("kind") == "Conv2d":
            self.filters(layer)
        if drawable and (opts.wants("averages") or opts.wants("histograms")):
            stats = summarize(self.store, layer, max_channels=opts.max_channels)
            if opts.wants("averages"):
                drawn = replace(stats, layout=draw) if draw == "patches" else stats
                self.class_pictures.averages(layer, tuple(stats.sums.shape[1:]) or shape, drawn)
            if opts.wants("histograms"):
                self.class_pictures.histograms(layer, layout, stats)
        if opts.wants("histograms") and layer in stats_specs:
            output = stored_layout(stats_specs[layer])  # the layer output's layout
            self.class_pictures.value_histograms(layer, output)
        if opts.wants("confusion") and stored and spec.get("model_output") and len(shape) == 1:
            self.confusion(layer, shape[0])
        if opts.wants("clusters") and stored:
            self.cluster_pictures.clusters(layer)

    def samples(self, layer: str, shape: tuple[int, ...], rows: list[int], layout: str) -> None:
        """The chosen rows of ``layer`` (one row: ``shape`` in ``layout``): a strip of values
        for 1-D layers; else per row its maps
        (:func:`~actextract.report.classpictures.as_maps`) beside its input, and all rows in
        one figure."""
        if layout == "tokens" and is_token_layer(self.store, layer):
            # a text run's padding is no token of the sample: left blank, not drawn as one
            data = sample_tokens(self.store, layer, rows)
        else:
            data = np.asarray(self.store[layer].get_orthogonal_selection((np.array(rows),)))
        stem = file_stem(layer)
        labels = [f"{self.canvas.name_of(int(self.canvas.labels[r]))}\nrow {r}" for r in rows]
        if len(shape) == 1:
            values = data[:, :MAX_STRIP_FEATURES]
            if shape[0] > MAX_STRIP_FEATURES:
                self.report.note(layer, f"strips show the first {MAX_STRIP_FEATURES} features.")
            fig = figures.strip_figure(
                values, labels, title=f"{layer} per sample", cmap=self.options.cmap
            )
            self.canvas.save(
                fig,
                f"{stem}.strip.png",
                "grids",
                layer,
                f"{layer}: each sample's {shape[0]} values, one row per sample",
            )
            return
        lines = []
        for r, label, maps in zip(rows, labels, as_maps(data, layout), strict=True):
            grid = self.canvas.grid(maps)
            image = self.canvas.input_image(r)
            lines.append((label, image, grid))
            parts = [figures.input_rgb(image)] if image is not None else []
            picture = figures.side_by_side([figures.upscale(p, MIN_PIXELS) for p in [*parts, grid]])
            self.canvas.save(picture, f"{stem}.grid.{r}.png", "grid", layer, label)
        drawn = describe_maps(shape, layout, self.options.max_channels)
        scale = "one scale for all maps" if self.options.same_scale else "each map on its own scale"
        fig = figures.maps_figure(lines, title=f"{layer}: {drawn} ({scale})")
        self.canvas.save(
            fig,
            f"{stem}.samples.png",
            "grids",
            layer,
            f"{layer}: the chosen samples, input then feature maps: {drawn} ({scale})",
        )

    def filters(self, layer: str) -> None:
        model = self.model()
        try:
            if isinstance(model, str):
                raise RebuildError(model)
            weights = conv_weights(model, layer)
        except RebuildError as e:
            self.report.note(layer, f"filters not drawn: {e}")
            return
        image = figures.filters_image(weights, max_channels=self.options.max_channels)
        o, i, kh, kw = weights.shape
        how = {3: "colour tiles (RGB)", 1: "one gray tile each"}.get(i, "a row per input channel")
        self.canvas.save(
            figures.upscale(image, MIN_PIXELS // 2),
            f"{file_stem(layer)}.filters.png",
            "filters",
            layer,
            f"{layer}: {min(o, self.options.max_channels)} of {o} filters {kh}×{kw}, {how}",
        )

    def confusion(self, layer: str, width: int) -> None:
        names = self.canvas.class_names
        if names and len(names) != width:
            self.report.note(
                layer,
                f"no confusion matrix: the model's output has {width} classes and the dataset "
                f"{len(names)}, so the labels do not name its outputs.",
            )
            return
        true, pred = predictions(self.store, layer)
        if not len(true):
            self.report.note(layer, "no labelled rows: no confusion matrix.")
            return
        k = max(width, int(true.max()) + 1)
        matrix = figures.confusion_counts(true, pred, k)
        accuracy = float(np.trace(matrix) / matrix.sum())
        self.report.accuracy[layer] = accuracy
        self.report.confusion[layer] = matrix.tolist()
        fig = figures.confusion_figure(
            matrix,
            [self.canvas.name_of(c) for c in range(k)],
            title=f"{layer}: accuracy {accuracy:.2%} on {matrix.sum()} labelled samples",
        )
        self.canvas.save(
            fig,
            f"{file_stem(layer)}.confusion.png",
            "confusion",
            layer,
            f"confusion matrix of {layer} (argmax of the model's output): accuracy {accuracy:.2%}",
        )
