"""The pictures of ``actextract cluster``'s results, drawn for
:class:`actextract.report.pictures.Drawer` on its :class:`~actextract.report.canvas.Canvas`: for
each clustering of a layer, its rows on the first two principal components coloured by
label and by cluster, and the samples nearest each centre (their inputs when the store can give
them back, else their activations: a map layer's mean map over its channels, whichever axis
the layout puts them on, a token layer's (tokens × features) map).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from actextract.clusters.results import Clustering, clusterings
from actextract.core.axes import to_channels_first
from actextract.report.canvas import Canvas, file_stem
from actextract.report.figures import normalize_maps
from actextract.stats.aggregate import MAPS

__all__ = ["MAX_CLUSTER_ROWS", "MAX_POINTS", "ClusterPictures", "nearest_figure", "scatter_figure"]

MAX_POINTS = 20_000  # points in a scatter (a seeded sample beyond)
MAX_CLUSTER_ROWS = 20  # clusters in a nearest-samples figure


def _palette(n: int) -> list[Any]:
    import matplotlib

    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
    elif n <= 20:
        cmap = matplotlib.colormaps["tab20"]
    else:
        cmap = matplotlib.colormaps["turbo"].resampled(n)
    return [cmap(i % cmap.N) for i in range(n)]


def scatter_figure(
    coords: np.ndarray,
    panels: Sequence[tuple[str, np.ndarray, Sequence[str]]],
    *,
    title: str,
    axis_labels: tuple[str, str],
    centres: np.ndarray | None = None,
) -> Figure:
    """One scatter per panel (title, each point's category index (-1: grey), category names)
    of the same (n, 2) ``coords``; ``centres`` (k, 2) are marked in the last panel."""
    fig = Figure(figsize=(6.2 * len(panels), 5.6))
    for i, (name, category, names) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        colors = _palette(len(names))
        none = category < 0
        if none.any():
            ax.scatter(*coords[none].T, s=4, c="#bbb", linewidths=0, label="none")
        for j, label in enumerate(names):
            pick = category == j
            if pick.any():
                ax.scatter(*coords[pick].T, s=4, color=colors[j], linewidths=0, label=label)
        if centres is not None and i == len(panels) - 1:
            ax.scatter(*centres.T, marker="x", s=60, c="black", linewidths=1.5)
            name += "; × the centres"
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(axis_labels[0], fontsize=8)
        ax.set_ylabel(axis_labels[1], fontsize=8)
        ax.tick_params(labelsize=7)
        if len(names) <= 20:
            ax.legend(fontsize=7, markerscale=3, loc="best", frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def nearest_figure(
    cells: Sequence[Sequence[tuple[np.ndarray | None, str]]],
    row_names: Sequence[str],
    *,
    title: str,
) -> Figure:
    """A row per cluster, a cell per sample: its picture (2-D gray or (H, W, 3)) or, without
    one, its caption alone."""
    rows, cols = len(cells), max(map(len, cells))
    fig = Figure(figsize=(1.15 * cols + 1.6, 1.25 * rows + 0.6))
    for r, line in enumerate(cells):
        for c, (image, caption) in enumerate(line):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if image is not None:
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
                ax.set_title(caption, fontsize=6)
            else:
                ax.text(0.5, 0.5, caption, ha="center", va="center", fontsize=6)
            if c == 0:
                ax.set_ylabel(row_names[r], fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


class ClusterPictures:
    """The pictures of a layer's clusterings, drawn on ``canvas`` (the store, the labels, the
    inputs, the report and the writer)."""

    def __init__(self, canvas: Canvas):
        self.canvas = canvas

    def clusters(self, layer: str) -> None:
        """Per complete clustering of ``layer``, its scatter and its nearest samples; an
        interrupted one is noted."""
        for result in clusterings(self.canvas.store, layer):
            if not result.complete:
                self.canvas.report.note(
                    layer,
                    f"clustering {result.name} was interrupted (status "
                    f"{result.attrs.get('status')}); run 'actextract cluster' again to draw it.",
                )
                continue
            self.cluster_scatter(layer, result)
            self.cluster_nearest(layer, result)

    def _scores(self, result: Clustering) -> str:
        m = result.metrics
        if "ari" not in m:
            return "no labels to score against"
        return f"purity {m['purity']:.3f}, ARI {m['ari']:.3f}, NMI {m['nmi']:.3f}"

    def cluster_scatter(self, layer: str, result: Clustering) -> None:
        canvas = self.canvas
        coords, assign = result["coords"], result["assignments"]
        rows = np.flatnonzero(assign >= 0)
        if len(rows) > MAX_POINTS:
            rows = np.sort(np.random.default_rng(0).choice(rows, MAX_POINTS, replace=False))
        s, labels = result.settings, canvas.labels[rows]
        classes = [int(c) for c in np.unique(labels) if c >= 0]
        by_label = np.searchsorted(classes, labels) if classes else np.full(len(rows), -1)
        by_label = np.where(labels >= 0, by_label, -1)
        ratio = result.attrs["pca"]["explained_variance_ratio"] + [0.0, 0.0]
        pca = result.pca
        centres = None
        if s.pca is None:  # the centres are in the rows' space: onto the plane
            centres = (result["centroids"] - pca.mean) @ pca.components[:2].T
        elif s.pca >= 2:
            centres = result["centroids"][:, :2]
        fig = scatter_figure(
            coords[rows],
            [
                ("by label", by_label, [canvas.name_of(c) for c in classes]),
                (f"by cluster (k={s.k})", assign[rows], [f"cluster {c}" for c in range(s.k)]),
            ],
            title=f"{layer}: {result.name} — {self._scores(result)}",
            axis_labels=(f"PC1 ({ratio[0]:.1%} of the variance)", f"PC2 ({ratio[1]:.1%})"),
            centres=centres,
        )
        shown = f"{len(rows):,} of {int(result.metrics['clustered']):,} rows"
        canvas.save(
            fig,
            f"{file_stem(layer)}.clusters.{result.name}.png",
            "clusters",
            layer,
            f"{layer}: k-means {result.name} on the first two principal components ({shown}), "
            f"coloured by label and by cluster; {self._scores(result)}",
        )

    def cluster_nearest(self, layer: str, result: Clustering) -> None:
        canvas = self.canvas
        nearest, sizes = result["nearest"], result["sizes"]
        k = len(nearest)
        if k > MAX_CLUSTER_ROWS:
            canvas.report.note(
                layer, f"{result.name}: nearest samples of the first {MAX_CLUSTER_ROWS} of {k}."
            )
        maps, drawn = self.row_maps(layer, nearest[:MAX_CLUSTER_ROWS])
        used_inputs = False
        cells = []
        for line in nearest[:MAX_CLUSTER_ROWS]:
            out = []
            for r in (int(r) for r in line if r >= 0):
                image = canvas.input_image(r)
                used_inputs |= image is not None
                if image is None:
                    image = maps.get(r)
                out.append((image, f"{canvas.name_of(int(canvas.labels[r]))} · {r}"))
            cells.append(out or [(None, "empty")])
        what = "inputs" if used_inputs else drawn if maps else "rows"
        fig = nearest_figure(
            cells,
            [f"cluster {c}\n(n={int(sizes[c])})" for c in range(len(cells))],
            title=f"{layer}: {result.name} — the samples nearest each centre",
        )
        canvas.save(
            fig,
            f"{file_stem(layer)}.nearest.{result.name}.png",
            "clusters",
            layer,
            f"{layer}: the {nearest.shape[1]} samples nearest each centre of {result.name}, "
            f"nearest first ({what}; captions: label · row)",
        )

    def row_maps(self, layer: str, nearest: np.ndarray) -> tuple[dict[int, np.ndarray], str]:
        """For rows without an input: a picture of each, on its own scale, and what it is: the
        mean map over channels of (C, H, W) or (H, W, C) maps, a token layer's (T, D) map;
        none for other layouts."""
        if self.canvas.inputs() is not None:
            return {}, ""
        store = self.canvas.store
        arr, layout = store[layer], store.layout(layer)
        drawable = (arr.ndim == 4 and layout in MAPS) or (arr.ndim == 3 and layout == "tokens")
        if not drawable:
            return {}, ""
        rows = np.unique(nearest[nearest >= 0])
        data = np.asarray(arr.get_orthogonal_selection((rows,)), dtype=np.float64)
        if layout in MAPS:
            data = to_channels_first(data, layout).mean(1)
        scaled = normalize_maps(data)
        drawn = "mean maps over channels" if layout in MAPS else "tokens × features maps"
        return {int(r): m for r, m in zip(rows, scaled, strict=True)}, drawn
