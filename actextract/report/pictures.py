"""What to draw for each layer of a store, as figures and images, without writing a file.

:class:`Drawer` reads what it needs from the store (rows, dataset-wide aggregates, the inputs
and the model rebuilt from provenance), picks the pictures that fit each layer's shape and
layout (:mod:`actextract.core.axes`: channels-last maps are drawn as channels-first ones, a token
layer as one tokens × features map per sample, a layer in the ``other`` layout without
per-channel pictures), and hands each one, with its file name and caption, to the writer that
:mod:`actextract.report.writer` gives it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from actextract.core.axes import stored_layout
from actextract.errors import OptionError
from actextract.report import figures
from actextract.report.classpictures import ClassPictures, as_maps, describe_maps
from actextract.report.clusterpictures import ClusterPictures
from actextract.report.rebuild import Inputs, RebuildError, conv_weights, open_inputs, rebuild_model
from actextract.stats.aggregate import predictions, summarize
from actextract.store.run import Store

__all__ = ["KINDS", "Drawer", "Picture", "RenderOptions", "Report", "file_stem"]

log = logging.getLogger(__name__)

KINDS = ("grids", "averages", "histograms", "filters", "confusion", "clusters")
MAX_SAMPLE_ROWS = 32  # rows in a samples figure
MAX_STRIP_FEATURES = 4096
MIN_PIXELS = 384  # small maps are upscaled (nearest) to at least this many pixels a side

Write = Callable[["Picture", "Figure | np.ndarray"], None]


@dataclass(frozen=True)
class RenderOptions:
    """What to draw. ``samples``: 'per-class' (the first stored row of each label) or row
    indices; ``only``: a subset of :data:`KINDS`."""

    layers: Sequence[str] | None = None
    samples: str | Sequence[int] = "per-class"
    max_channels: int = 64
    only: Sequence[str] | None = None
    same_scale: bool = False
    cmap: str = figures.DEFAULT_CMAP
    bins: int = 30

    def __post_init__(self) -> None:
        if self.max_channels <= 0:
            raise OptionError(f"--max-channels {self.max_channels} must be a positive integer.")
        if self.bins <= 0:
            raise OptionError(f"--bins {self.bins} must be a positive integer.")
        unknown = sorted(set(self.only or ()) - set(KINDS))
        if unknown:
            raise OptionError(
                f"--only {','.join(unknown)}: unknown picture kind; choose from {', '.join(KINDS)}."
            )
        if isinstance(self.samples, str) and self.samples != "per-class":
            raise OptionError(
                f"--samples {self.samples}: give 'per-class' or row indices such as 0,17,42."
            )
        if self.cmap not in matplotlib.colormaps:
            raise OptionError(
                f"--cmap {self.cmap} is not a matplotlib colour map; try viridis, magma, gray."
            )

    def wants(self, kind: str) -> bool:
        return not self.only or kind in self.only


@dataclass
class Picture:
    """One PNG of the report. ``path`` is relative to the report folder."""

    kind: str
    layer: str | None
    path: str
    caption: str


@dataclass
class Report:
    """What ``render`` wrote: the pictures, per-layer notes (what was skipped and why), the
    accuracy when the store holds the model's output, and the page."""

    out: Path
    index: Path
    pictures: list[Picture] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)  # layer ('' = run) -> lines
    accuracy: dict[str, float] = field(default_factory=dict)
    confusion: dict[str, list[list[int]]] = field(default_factory=dict)  # true x predicted
    seconds: float = 0.0

    def note(self, layer: str | None, line: str, *, level: int = logging.INFO) -> None:
        log.log(level, "%s%s", f"{layer}: " if layer else "", line)
        self.notes.setdefault(layer or "", []).append(line)


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


def file_stem(layer: str) -> str:
    """A layer name as a safe file name (dots kept: ``layer1.0.conv1``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", layer)


class Drawer(ClassPictures, ClusterPictures):
    """Draws one layer at a time and hands each picture to ``write``; holds what is shared
    across layers (the labels, the inputs, the rebuilt model). The per-class pictures are in
    :class:`actextract.report.classpictures.ClassPictures`, those of clusterings in
    :class:`actextract.report.clusterpictures.ClusterPictures`."""

    stem = staticmethod(file_stem)  # a layer's file names start with it

    def __init__(self, store: Store, options: RenderOptions, report: Report, write: Write):
        self.store, self.options, self.report, self._write = store, options, report, write
        self.attrs = store.attrs
        self.specs = {s["name"]: s for s in self.attrs["layers"]}
        self.stats_specs = store.stats_layers()  # layers with --stats (maybe not stored)
        classes = (self.attrs.get("dataset") or {}).get("classes") or []
        self.class_names = list(map(str, classes))
        self.labels = np.asarray(store.labels[:])
        self._inputs: Inputs | str | None = None  # str: why there are none
        self._model: Any = None

    # -- what is shared ----------------------------------------------------------------------
    def name_of(self, label: int) -> str:
        if label < 0:
            return "unlabelled"
        return self.class_names[label] if label < len(self.class_names) else str(label)

    def sample_rows(self) -> list[int]:
        """The rows the grids and strips show (stored rows only)."""
        rows_done = np.repeat(self.store.done(), self.store.chunk_rows)[: self.store.n]
        skipped = {int(s["index"]) for s in self.attrs.get("skipped", [])}
        stored = rows_done & ~np.isin(np.arange(self.store.n), list(skipped))
        samples = self.options.samples
        if isinstance(samples, str):  # per-class: the first stored row of each label
            labels = np.where(stored, self.labels, -2)
            values = [v for v in np.unique(labels) if v >= 0]
            rows = [int(np.argmax(labels == v)) for v in values]
            if not rows:
                rows = [int(i) for i in np.flatnonzero(stored)[:10]]
        else:
            bad = [i for i in samples if not 0 <= i < self.store.n]
            if bad:
                raise OptionError(
                    f"--samples {','.join(map(str, bad))}: the store has rows 0 to "
                    f"{self.store.n - 1}."
                )
            rows = [i for i in samples if stored[i]]
            missing = [i for i in samples if not stored[i]]
            if missing:
                self.report.note(None, f"rows {missing} are not stored (skipped or not written).")
        if len(rows) > MAX_SAMPLE_ROWS:
            self.report.note(
                None, f"showing the first {MAX_SAMPLE_ROWS} of {len(rows)} chosen samples."
            )
            rows = rows[:MAX_SAMPLE_ROWS]
        return rows

    def inputs(self) -> Inputs | None:
        if self._inputs is None:
            try:
                self._inputs = open_inputs(self.attrs, self.store.ids)
            except RebuildError as e:
                self._inputs = str(e)
                self.report.note(None, f"inputs not shown: {e}")
        return self._inputs if isinstance(self._inputs, Inputs) else None

    def input_image(self, row: int) -> np.ndarray | None:
        inputs = self.inputs()
        if inputs is None:
            return None
        try:
            return inputs.image(row)
        except RebuildError as e:
            self.report.note(None, f"input of row {row} not shown: {e}")
            return None

    def model(self):
        if self._model is None:
            try:
                self._model = rebuild_model(self.attrs)
            except RebuildError as e:
                self._model = str(e)
        return self._model

    # -- one layer ---------------------------------------------------------------------------
    def layer(self, layer: str, rows: list[int]) -> None:
        stored = layer in self.specs
        spec = self.specs.get(layer) or self.stats_specs[layer]
        shape = tuple(self.store[layer].shape[1:] if stored else spec["shape"])
        layout = self.store.layout(layer)  # of the stored rows (vector once pooled)
        opts = self.options
        drawable = len(shape) in (1, 2, 3)
        if not drawable:
            self.report.note(layer, f"shape {shape} has no picture (1, 2 or 3 axes are drawn).")
        if layout == "other":
            self.report.note(layer, _other_note(layer, shape, drawable))
        if not stored:
            self.report.note(layer, "not stored in full (--store): statistics only.")
        if opts.wants("grids") and drawable and rows and stored:
            self.samples(layer, shape, rows, layout)
        if opts.wants("filters") and spec.get("kind") == "Conv2d":
            self.filters(layer)
        if drawable and (opts.wants("averages") or opts.wants("histograms")):
            stats = summarize(self.store, layer, max_channels=opts.max_channels)
            if opts.wants("averages"):
                self.averages(layer, tuple(stats.sums.shape[1:]) or shape, stats)
            if opts.wants("histograms"):
                self.histograms(layer, layout, stats)
        if opts.wants("histograms") and layer in self.stats_specs:
            self.value_histograms(layer, stored_layout(self.stats_specs[layer]))  # the output's
        if opts.wants("confusion") and stored and spec.get("model_output") and len(shape) == 1:
            self.confusion(layer, shape[0])
        if opts.wants("clusters") and stored:
            self.clusters(layer)

    def _save(self, content: Figure | np.ndarray, name: str, kind: str, layer: str, caption: str):
        self._write(Picture(kind, layer, name, caption), content)

    def _grid(self, maps: np.ndarray, value_range=None) -> np.ndarray:
        return figures.feature_grid(
            maps,
            max_channels=self.options.max_channels,
            same_scale=self.options.same_scale,
            cmap=self.options.cmap,
            value_range=value_range,
        )

    def samples(self, layer: str, shape: tuple[int, ...], rows: list[int], layout: str) -> None:
        """The chosen rows of ``layer`` (one row: ``shape`` in ``layout``): a strip of values
        for 1-D layers; else per row its maps (:func:`~actextract.report.classpictures.as_maps`) beside
        its input, and all rows in one figure."""
        data = np.asarray(self.store[layer].get_orthogonal_selection((np.array(rows),)))
        stem = file_stem(layer)
        labels = [f"{self.name_of(int(self.labels[r]))}\nrow {r}" for r in rows]
        if len(shape) == 1:
            values = data[:, :MAX_STRIP_FEATURES]
            if shape[0] > MAX_STRIP_FEATURES:
                self.report.note(layer, f"strips show the first {MAX_STRIP_FEATURES} features.")
            fig = figures.strip_figure(
                values, labels, title=f"{layer} per sample", cmap=self.options.cmap
            )
            self._save(
                fig,
                f"{stem}.strip.png",
                "grids",
                layer,
                f"{layer}: each sample's {shape[0]} values, one row per sample",
            )
            return
        lines = []
        for r, label, maps in zip(rows, labels, as_maps(data, layout), strict=True):
            grid = self._grid(maps)
            image = self.input_image(r)
            lines.append((label, image, grid))
            parts = [figures.input_rgb(image)] if image is not None else []
            picture = figures.side_by_side([figures.upscale(p, MIN_PIXELS) for p in [*parts, grid]])
            self._save(picture, f"{stem}.grid.{r}.png", "grid", layer, label)
        drawn = describe_maps(shape, layout, self.options.max_channels)
        scale = "one scale for all maps" if self.options.same_scale else "each map on its own scale"
        fig = figures.maps_figure(lines, title=f"{layer}: {drawn} ({scale})")
        self._save(
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
        self._save(
            figures.upscale(image, MIN_PIXELS // 2),
            f"{file_stem(layer)}.filters.png",
            "filters",
            layer,
            f"{layer}: {min(o, self.options.max_channels)} of {o} filters {kh}×{kw}, {how}",
        )

    def confusion(self, layer: str, width: int) -> None:
        if self.class_names and len(self.class_names) != width:
            self.report.note(
                layer,
                f"no confusion matrix: the model's output has {width} classes and the dataset "
                f"{len(self.class_names)}, so the labels do not name its outputs.",
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
            [self.name_of(c) for c in range(k)],
            title=f"{layer}: accuracy {accuracy:.2%} on {matrix.sum()} labelled samples",
        )
        self._save(
            fig,
            f"{file_stem(layer)}.confusion.png",
            "confusion",
            layer,
            f"confusion matrix of {layer} (argmax of the model's output): accuracy {accuracy:.2%}",
        )
