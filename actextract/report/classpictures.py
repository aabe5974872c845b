"""The pictures of a layer's per-class aggregates, drawn for
:class:`actextract.report.pictures.Drawer` on its :class:`~actextract.report.canvas.Canvas`:
average and standard deviation maps, histograms of each sample's channel means, and the
distribution of the values per channel (``--stats channel-hist``). They come from
:func:`actextract.stats.aggregate.summarize` (the run's statistics, or one pass over the stored
layer) and say which in their captions.

Each reads the layer's layout (:mod:`actextract.core.axes`): channels-last maps are drawn as the
same maps channels-first would be, a token layer's class average is one (tokens × features)
map per class and its histograms are per feature, and a layer in the ``other`` layout has no
per-channel histograms.
"""

from __future__ import annotations

import math

import numpy as np

from actextract.core.axes import to_channels_first
from actextract.report import figures
from actextract.report.canvas import Canvas, file_stem
from actextract.stats.aggregate import MAPS, LayerStats, channel_unit
from actextract.stats.parts import read_stats

__all__ = ["MAX_CLASS_ROWS", "ClassPictures", "as_maps", "describe_maps"]

MAX_CLASS_ROWS = 32  # classes in an averages figure


def patch_grid(tokens: int) -> tuple[int, int] | None:
    """An image transformer's (T, D) tokens as (leading tokens, side): T = s² patches, or a
    CLS token and s² patches (197 = 1 + 14²), s at least 4; None when T is neither."""
    for lead in (1, 0):
        side = math.isqrt(tokens - lead)
        if side >= 4 and side * side == tokens - lead:
            return lead, side
    return None


def drawing_layout(layout: str, shape: tuple[int, ...], text: bool) -> str:
    """How a layer is drawn: a token layer of an image transformer (not of a text run) whose
    tokens are a patch grid as ``patches``, per feature a (side, side) map; else its layout."""
    if layout == "tokens" and not text and len(shape) == 2 and patch_grid(shape[0]):
        return "patches"
    return layout


def as_maps(rows: np.ndarray, layout: str) -> np.ndarray:
    """Rows (N, *shape) in ``layout``, 2 or 3 axes each, → (N, C, h, w) maps to draw: nchw and
    nhwc maps channels first ((N, C, H, W); a (C, L) or (L, C) layer is one (C, L) map), a
    token layer's (T, D) one map with the tokens down (``patches``: each feature's patch grid,
    the CLS token left out), ``other`` as it is stored (the first axis as channels when there
    are three). A view where it can be."""
    if layout == "patches":
        lead, side = patch_grid(rows.shape[1])  # type: ignore[misc]
        grid = rows[:, lead:].reshape(len(rows), side, side, rows.shape[2])
        return np.moveaxis(grid, 3, 1)
    if layout in MAPS:
        rows = to_channels_first(rows, layout)
    return rows if rows.ndim == 4 else rows[:, None]


def describe_maps(shape: tuple[int, ...], layout: str, shown: int) -> str:
    """What :func:`as_maps` draws of one row of ``shape``, for titles and captions:
    '8 of 96 channels' (``shown``: the most drawn), '197 tokens × 768 features', 'one (4, 5)
    map' (other)."""
    if layout in MAPS and len(shape) == 3:
        c = shape[-1] if layout == "nhwc" else shape[0]
        return f"{min(c, shown)} of {c} channels"
    if layout in MAPS:
        c, length = (shape[1], shape[0]) if layout == "nhwc" else shape
        return f"one map of {c} channels × {length} positions"
    if layout == "patches":
        lead, side = patch_grid(shape[0])  # type: ignore[misc]
        cls = ", the CLS token left out" if lead else ""
        return f"{min(shape[1], shown)} of {shape[1]} features on the {side}×{side} patch grid{cls}"
    if layout == "tokens":
        return f"{shape[0]} tokens × {shape[1]} features"
    if len(shape) == 3:
        return f"{min(shape[0], shown)} of {shape[0]} slices of the first axis"
    return f"one {tuple(shape)} map"


class ClassPictures:
    """The per-class pictures of a layer, drawn on ``canvas`` (the store, the options, the
    report and the writer)."""

    def __init__(self, canvas: Canvas):
        self.canvas = canvas

    def averages(self, layer: str, shape: tuple[int, ...], stats: LayerStats) -> None:
        """Per-class average maps (``shape``: of one class, in ``stats.layout``), and standard
        deviation maps when the run kept them."""
        canvas = self.canvas
        if not len(stats.classes):
            why = "no stored rows" if layer in canvas.specs else stats.source
            canvas.report.note(layer, f"no averages: {why}.")
            return
        keep = slice(0, MAX_CLASS_ROWS)
        if len(stats.classes) > MAX_CLASS_ROWS:
            canvas.report.note(
                layer, f"averages show the first {MAX_CLASS_ROWS} of {len(stats.classes)} classes."
            )
        labels = [
            f"{canvas.name_of(int(c))} (n={n})"
            for c, n in zip(stats.classes[keep], stats.counts[keep], strict=True)
        ]
        pictures = [("averages", stats.means, "average")]
        if stats.stds is not None:
            pictures.append(("stds", stats.stds, "standard deviation"))
        layout = stats.layout
        drawn = (
            f"{shape[0]} features"
            if len(shape) == 1
            else describe_maps(shape, layout, canvas.options.max_channels)
        )
        for name, values, what in pictures:
            values = values[keep]
            if len(shape) == 1:
                fig = figures.strip_figure(
                    values, labels, title=f"{layer}: per-class {what}", cmap=canvas.options.cmap
                )
            else:
                maps = as_maps(values, layout)[:, : canvas.options.max_channels]
                value_range = (float(np.nanmin(maps)), float(np.nanmax(maps)))
                fig = figures.maps_figure(
                    [
                        (label, None, canvas.grid(m, value_range))
                        for label, m in zip(labels, maps, strict=True)
                    ],
                    title=f"{layer}: per-class {what} maps, {drawn} (one scale for all classes)",
                )
            canvas.save(
                fig,
                f"{file_stem(layer)}.{name}.png",
                "averages",
                layer,
                f"{layer}: per-class {what}s ({drawn}), {stats.source}",
            )

    def histograms(self, layer: str, layout: str, stats: LayerStats) -> None:
        """Each sample's mean per channel (per feature for tokens and vectors; ``layout``: of
        the stored rows), one colour per class."""
        canvas = self.canvas
        if not len(stats.labels) or not stats.channel_means.shape[1]:
            return
        edges, counts = figures.histogram_counts(
            stats.channel_means, stats.labels, stats.classes, bins=canvas.options.bins
        )
        what = channel_unit(layout)
        fig = figures.histogram_figure(
            edges,
            counts,
            [canvas.name_of(int(c)) for c in stats.classes],
            title=f"{layer}: each sample's mean per {what}, by class",
            channel_names=[f"{what} {j}" for j in range(counts.shape[0])],
        )
        canvas.save(
            fig,
            f"{file_stem(layer)}.histograms.png",
            "histograms",
            layer,
            f"{layer}: mean activation per {what} ({counts.shape[0]} shown), "
            f"{stats.channel_source or stats.source}",
        )

    def value_histograms(self, layer: str, layout: str) -> None:
        """The on-device histograms of ``--stats channel-hist``: each channel's values (every
        position of every sample; a token layer's features over every token), one colour per
        class, over the run's fixed bins. ``layout``: the layer output's, whose channel axis
        the histograms were counted on (``other``: one histogram of every value)."""
        canvas = self.canvas
        totals = read_stats(canvas.store, layer)
        if totals is None or totals.hist is None:
            return
        width = min(totals.hist.shape[1], canvas.options.max_channels)
        counts = totals.hist[:, :width].transpose(1, 0, 2)  # (C, K, below + bins + above)
        outside = int(counts[..., 0].sum() + counts[..., -1].sum())
        edges = np.broadcast_to(totals.edges, (width, len(totals.edges)))
        what = channel_unit(layout)
        names, per, shown = [f"{what} {j}" for j in range(width)], f"per {what}", f"{width} shown"
        if layout == "other":  # no channel axis: the device counted every value together
            names, per, shown = ["all values"], "together", "layout other: no channel axis"
        fig = figures.histogram_figure(
            edges,
            counts[..., 1:-1],
            [canvas.name_of(int(c)) for c in totals.classes],
            title=f"{layer}: distribution of the values {per}, by class",
            channel_names=names,
        )
        total = int(totals.hist.sum())
        canvas.save(
            fig,
            f"{file_stem(layer)}.values.png",
            "histograms",
            layer,
            f"{layer}: every value {per} ({shown}) in the run's fixed bins, counted "
            f"on the device (stats/{layer}/hist); {outside} of {total} values fell outside "
            f"[{totals.edges[0]:.4g}, {totals.edges[-1]:.4g}]",
        )
