"""The pictures of a layer's per-class aggregates, mixed into :class:`actextract.pictures.Drawer`:
average and standard deviation maps, histograms of each sample's channel means, and the
distribution of the values per channel (``--stats channel-hist``). They come from
:func:`actextract.aggregate.summarize` (the run's statistics, or one pass over the stored
layer) and say which in their captions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from actextract import figures
from actextract.aggregate import LayerStats
from actextract.stats import read_stats

if TYPE_CHECKING:
    from actextract.pictures import RenderOptions, Report

__all__ = ["MAX_CLASS_ROWS", "ClassPictures"]

MAX_CLASS_ROWS = 32  # classes in an averages figure


class ClassPictures:
    """What a Drawer provides: ``store``, ``specs``, ``options``, ``report``, ``name_of``,
    ``stem`` (a layer's file stem), ``_grid`` and ``_save``."""

    store: Any
    specs: dict[str, Any]
    options: RenderOptions
    report: Report

    def averages(self, layer: str, shape: tuple[int, ...], stats: LayerStats) -> None:
        """Per-class average maps, and standard deviation maps when the run kept them."""
        if not len(stats.classes):
            why = "no stored rows" if layer in self.specs else stats.source
            self.report.note(layer, f"no averages: {why}.")
            return
        keep = slice(0, MAX_CLASS_ROWS)
        if len(stats.classes) > MAX_CLASS_ROWS:
            self.report.note(
                layer, f"averages show the first {MAX_CLASS_ROWS} of {len(stats.classes)} classes."
            )
        labels = [
            f"{self.name_of(int(c))} (n={n})"
            for c, n in zip(stats.classes[keep], stats.counts[keep], strict=True)
        ]
        pictures = [("averages", stats.means, "average")]
        if stats.stds is not None:
            pictures.append(("stds", stats.stds, "standard deviation"))
        for name, values, what in pictures:
            values = values[keep]
            if len(shape) == 1:
                fig = figures.strip_figure(
                    values, labels, title=f"{layer}: per-class {what}", cmap=self.options.cmap
                )
            else:
                maps = values if len(shape) == 3 else values[:, None]
                maps = maps[:, : self.options.max_channels]
                value_range = (float(np.nanmin(maps)), float(np.nanmax(maps)))
                fig = figures.maps_figure(
                    [
                        (label, None, self._grid(m, value_range))
                        for label, m in zip(labels, maps, strict=True)
                    ],
                    title=f"{layer}: per-class {what} maps (one scale for all classes)",
                )
            self._save(
                fig,
                f"{self.stem(layer)}.{name}.png",
                "averages",
                layer,
                f"{layer}: per-class {what}s, {stats.source}",
            )

    def histograms(self, layer: str, shape: tuple[int, ...], stats: LayerStats) -> None:
        if not len(stats.labels):
            return
        edges, counts = figures.histogram_counts(
            stats.channel_means, stats.labels, stats.classes, bins=self.options.bins
        )
        what = "feature" if len(shape) == 1 else "channel"
        fig = figures.histogram_figure(
            edges,
            counts,
            [self.name_of(int(c)) for c in stats.classes],
            title=f"{layer}: each sample's mean per {what}, by class",
            channel_names=[f"{what} {j}" for j in range(counts.shape[0])],
        )
        self._save(
            fig,
            f"{self.stem(layer)}.histograms.png",
            "histograms",
            layer,
            f"{layer}: mean activation per {what} ({counts.shape[0]} shown), "
            f"{stats.channel_source or stats.source}",
        )

    def value_histograms(self, layer: str, shape: tuple[int, ...]) -> None:
        """The on-device histograms of ``--stats channel-hist``: each channel's values (every
        position of every sample), one colour per class, over the run's fixed bins."""
        totals = read_stats(self.store, layer)
        if totals is None or totals.hist is None:
            return
        width = min(totals.hist.shape[1], self.options.max_channels)
        counts = totals.hist[:, :width].transpose(1, 0, 2)  # (C, K, below + bins + above)
        outside = int(counts[..., 0].sum() + counts[..., -1].sum())
        edges = np.broadcast_to(totals.edges, (width, len(totals.edges)))
        what = "feature" if len(shape) == 1 else "channel"
        fig = figures.histogram_figure(
            edges,
            counts[..., 1:-1],
            [self.name_of(int(c)) for c in totals.classes],
            title=f"{layer}: distribution of the values per {what}, by class",
            channel_names=[f"{what} {j}" for j in range(width)],
        )
        total = int(totals.hist.sum())
        self._save(
            fig,
            f"{self.stem(layer)}.values.png",
            "histograms",
            layer,
            f"{layer}: every value per {what} ({width} shown) in the run's fixed bins, counted "
            f"on the device (stats/{layer}/hist); {outside} of {total} values fell outside "
            f"[{totals.edges[0]:.4g}, {totals.edges[-1]:.4g}]",
        )
