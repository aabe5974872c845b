"""Pictures as pure functions: arrays in, image arrays or matplotlib figures out.

Nothing here reads a store or writes a file (``report`` does both). Image arrays are
``uint8`` (H, W, 3); figures are :class:`matplotlib.figure.Figure` objects made without pyplot,
so they need no display and hold no global state.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_CMAP",
    "cell_slice",
    "colorize",
    "confusion_counts",
    "confusion_figure",
    "feature_grid",
    "filters_image",
    "grid_shape",
    "histogram_counts",
    "histogram_figure",
    "input_rgb",
    "maps_figure",
    "normalize_maps",
    "side_by_side",
    "strip_figure",
    "tile",
    "upscale",
]

DEFAULT_CMAP = "viridis"  # perceptually uniform
SEPARATOR = (255, 255, 255)
FILTER_SEPARATOR = (70, 120, 190)  # filters are drawn in gray: white would read as a weight


def grid_shape(n: int, cols: int | None = None) -> tuple[int, int]:
    """(rows, cols) of a near-square grid for ``n`` cells (cols ≥ rows)."""
    if n <= 0:
        return 0, 0
    cols = cols or math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def normalize_maps(maps: np.ndarray, *, same_scale: bool = False) -> np.ndarray:
    """Maps (K, H, W) → float64 in [0, 1]: each map on its own range, or all on the joint range
    (``same_scale``). A constant map becomes 0; NaN stays NaN."""
    maps = np.asarray(maps, dtype=np.float64)
    if not maps.size:
        return maps
    axes = None if same_scale else tuple(range(1, maps.ndim))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN map has no range
        lo = np.nanmin(maps, axis=axes, keepdims=True)
        hi = np.nanmax(maps, axis=axes, keepdims=True)
    spread = hi > lo
    out = np.where(spread, (maps - lo) / np.where(spread, hi - lo, 1.0), 0.0)
    out[np.isnan(maps)] = np.nan
    return out


def cell_slice(k: int, cell: tuple[int, int], cols: int, pad: int = 1) -> tuple[slice, slice]:
    """Where cell ``k`` (row-major) of a :func:`tile` image lies."""
    h, w = cell
    r, c = divmod(k, cols)
    return slice(r * (h + pad), r * (h + pad) + h), slice(c * (w + pad), c * (w + pad) + w)


def tile(cells: np.ndarray, *, cols: int | None = None, pad: int = 1) -> np.ndarray:
    """Cells (K, h, w[, 3]) on a grid, row-major, ``pad`` pixels of NaN between them (drawn as
    separators by :func:`colorize`); empty cells at the end are +inf (drawn white)."""
    k, h, w = cells.shape[:3]
    rows, cols = grid_shape(k, cols)
    out = np.full(
        (rows * (h + pad) - pad, cols * (w + pad) - pad, *cells.shape[3:]),
        np.nan,
        dtype=np.float64,
    )
    for i in range(rows * cols):
        out[cell_slice(i, (h, w), cols, pad)] = cells[i] if i < k else np.inf
    return out


def colorize(
    image: np.ndarray, cmap: str = DEFAULT_CMAP, separator: tuple[int, int, int] = SEPARATOR
) -> np.ndarray:
    """A [0, 1] image (H, W) through a colour map, or an (H, W, 3) image as RGB, → uint8 RGB;
    NaN pixels (separators) take the ``separator`` colour (white), +inf ones (empty cells)
    white."""
    import matplotlib

    nan, empty = np.isnan(image), np.isposinf(image)
    if image.ndim == 3:
        nan, empty = nan.any(axis=-1), empty.any(axis=-1)
    clean = np.nan_to_num(image, posinf=0.0)
    rgb = matplotlib.colormaps[cmap](clean)[..., :3] if image.ndim == 2 else clean
    out = (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    out[nan] = separator
    out[empty] = SEPARATOR
    return out


def upscale(image: np.ndarray, min_size: int, max_size: int = 1600) -> np.ndarray:
    """Nearest-neighbour upscaling by a whole factor until the shorter side is ≥ ``min_size``
    (small maps stay crisp), without the longer side passing ``max_size``."""
    short, long = max(1, min(image.shape[:2])), max(1, max(image.shape[:2]))
    factor = max(1, min(math.ceil(min_size / short), max_size // long))
    return image.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else image


def feature_grid(
    maps: np.ndarray,
    *,
    max_channels: int = 64,
    same_scale: bool = False,
    cmap: str = DEFAULT_CMAP,
    pad: int = 1,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """One sample's maps (C, H, W) — its first ``max_channels`` — on a near-square grid with
    thin separators → uint8 RGB. A (H, W) input is one map. ``value_range`` (lo, hi) puts
    every map on that scale (to compare grids with each other)."""
    maps = np.asarray(maps)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"feature_grid needs (C, H, W) maps, got shape {maps.shape}")
    maps = maps[:max_channels]
    if value_range is not None:
        lo, hi = value_range
        cells = np.clip((maps.astype(np.float64) - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    else:
        cells = normalize_maps(maps, same_scale=same_scale)
    return colorize(tile(cells, pad=pad), cmap)


def side_by_side(images: Sequence[np.ndarray], *, gap: int = 4) -> np.ndarray:
    """uint8 RGB images left to right, each scaled by a whole factor toward the tallest one's
    height, on a white background."""
    height = max(im.shape[0] for im in images)
    scaled = [
        im.repeat(max(1, height // im.shape[0]), 0).repeat(max(1, height // im.shape[0]), 1)
        for im in images
    ]
    height = max(im.shape[0] for im in scaled)
    width = sum(im.shape[1] for im in scaled) + gap * (len(scaled) - 1)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    x = 0
    for im in scaled:
        out[: im.shape[0], x : x + im.shape[1]] = im
        x += im.shape[1] + gap
    return out


def input_rgb(image: np.ndarray) -> np.ndarray:
    """A [0, 1] input image (H, W) or (H, W, 3) → uint8 RGB (grayscale drawn gray)."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return colorize(image)


def maps_figure(
    rows: Sequence[tuple[str, np.ndarray | None, np.ndarray]],
    *,
    title: str,
    gap: int = 6,
) -> Figure:
    """Seed 003's figure: one row per (label, input image or None, feature-grid RGB): the
    input first, then the sample's (or class's) maps. The rows are composed as one image and
    drawn on one axes, so a figure of many rows stays fast to draw."""
    lines = []
    for _, image, grid in rows:
        parts = [input_rgb(image)] if image is not None else []
        lines.append(side_by_side([*parts, grid], gap=gap))
    width = max(line.shape[1] for line in lines)
    canvas = np.full((sum(line.shape[0] + gap for line in lines) - gap, width, 3), 255, np.uint8)
    centers, y = [], 0
    for line in lines:
        canvas[y : y + line.shape[0], : line.shape[1]] = line
        centers.append(y + line.shape[0] / 2)
        y += line.shape[0] + gap
    scale = min(14.0 / width, 2.0 / max(line.shape[0] for line in lines))  # inches per pixel
    fig_width = max(width * scale + 2.0, 0.09 * len(title) + 0.4)  # room for the title
    fig = Figure(figsize=(fig_width, canvas.shape[0] * scale + 0.7))
    ax = fig.add_axes(
        (
            1.8 / fig.get_figwidth(),
            0.1 / fig.get_figheight(),
            width * scale / fig.get_figwidth(),
            canvas.shape[0] * scale / fig.get_figheight(),
        )
    )
    ax.imshow(canvas, interpolation="nearest")
    ax.set_yticks(centers, [label for label, _, _ in rows], fontsize=9)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    ax.tick_params(left=False)
    fig.suptitle(title, y=1 - 0.1 / fig.get_figheight(), va="top", fontsize=11)
    return fig


def strip_figure(
    values: np.ndarray, row_labels: Sequence[str], *, title: str, cmap: str = DEFAULT_CMAP
) -> Figure:
    """1-D layers (flatten, linear, pooled features, logits): one row per sample or class,
    one column per feature, as a heatmap with a colour bar (seed 000's figures)."""
    values = np.asarray(values, dtype=np.float64)
    n, f = values.shape
    fig = Figure(figsize=(min(16.0, 3 + f * 0.25), 1.2 + 0.3 * n), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(values, aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_yticks(range(n), list(row_labels))
    ax.set_xlabel(f"feature (0–{f - 1})")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.05)
    return fig


def histogram_counts(
    values: np.ndarray, labels: np.ndarray, classes: Sequence[int], *, bins: int = 30
) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, shared bins over every class: edges (C, bins+1) and counts
    (C, len(classes), bins) of ``values`` (N, C) for the rows of each class."""
    values = np.asarray(values, dtype=np.float64)
    c = values.shape[1]
    edges = np.empty((c, bins + 1))
    counts = np.zeros((c, len(classes), bins), dtype=np.int64)
    for j in range(c):
        col = values[:, j]
        lo, hi = (float(col.min()), float(col.max())) if col.size else (0.0, 1.0)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges[j] = np.linspace(lo, hi, bins + 1)
        for k, cls in enumerate(classes):
            counts[j, k] = np.histogram(col[labels == cls], bins=edges[j])[0]
    return edges, counts


def histogram_figure(
    edges: np.ndarray,
    counts: np.ndarray,
    class_names: Sequence[str],
    *,
    title: str,
    channel_names: Sequence[str] | None = None,
) -> Figure:
    """Seed 003's histograms: one panel per channel, one colour per class, shared bins within
    a panel. Panels are drawn in one axes (one polygon collection), which keeps 64 panels
    fast; each panel's value range is written under it."""
    import matplotlib
    from matplotlib.collections import PatchCollection, PolyCollection
    from matplotlib.patches import Patch, Rectangle

    c, k, nbins = counts.shape
    rows, cols = grid_shape(c)
    cmap = matplotlib.colormaps["tab10" if k <= 10 else "tab20"]
    colors = [cmap(i % cmap.N) for i in range(k)]
    w, h, gx, gy = 1.0, 0.6, 0.12, 0.3  # panel size and gaps, in axes units
    polys, faces, frames = [], [], []
    fig = Figure(figsize=(2.1 * cols + 1.6, 1.45 * rows + 0.7))
    ax = fig.add_axes(
        (0.01, 0.01, (2.1 * cols) / (2.1 * cols + 1.6), 1 - 0.7 / fig.get_figheight())
    )
    for j in range(c):
        r, col = divmod(j, cols)
        x0, y0 = col * (w + gx), -(r + 1) * (h + gy)
        top = max(1, int(counts[j].max()))
        xs = x0 + np.repeat(np.linspace(0, w, nbins + 1), 2)[1:-1]
        for i in range(k):
            ys = y0 + np.repeat(counts[j, i], 2) / top * h * 0.95
            polys.append(np.vstack([[xs[0], y0], np.column_stack([xs, ys]), [xs[-1], y0]]))
            faces.append(colors[i])
        frames.append(Rectangle((x0, y0), w, h))
        name = channel_names[j] if channel_names else f"channel {j}"
        ax.text(x0 + w / 2, y0 + h + 0.03, name, ha="center", va="bottom", fontsize=7)
        ax.text(x0, y0 - 0.02, f"{edges[j, 0]:.3g}", ha="left", va="top", fontsize=6)
        ax.text(x0 + w, y0 - 0.02, f"{edges[j, -1]:.3g}", ha="right", va="top", fontsize=6)
    ax.add_collection(PolyCollection(polys, facecolors=faces, alpha=0.45, linewidths=0))
    ax.add_collection(PatchCollection(frames, facecolor="none", edgecolor="#999", linewidth=0.5))
    ax.set_xlim(-0.02, cols * (w + gx))
    ax.set_ylim(-rows * (h + gy) - 0.05, 0)
    ax.set_axis_off()
    handles = [Patch(color=colors[i], alpha=0.45, label=n) for i, n in enumerate(class_names)]
    fig.legend(handles=handles, loc="upper right", fontsize=7, title="class", frameon=False)
    fig.suptitle(title, y=1 - 0.1 / fig.get_figheight(), va="top", fontsize=11)
    return fig


def confusion_counts(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts: row = true class, column = predicted class."""
    return np.bincount(np.asarray(true) * k + np.asarray(pred), minlength=k * k).reshape(k, k)


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str], *, title: str) -> Figure:
    """Counts in every cell, darker for more; the title says the accuracy."""
    k = matrix.shape[0]
    size = min(14.0, 2.5 + 0.45 * k)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    if k <= 40:
        ax.set_xticks(range(k), list(class_names), rotation=90 if k > 10 else 0)
        ax.set_yticks(range(k), list(class_names))
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if matrix[i, j] > threshold else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.05)
    return fig


def filters_image(
    weights: np.ndarray, *, max_channels: int = 64, max_inputs: int = 8, cmap: str = "gray"
) -> np.ndarray:
    """Conv filters (O, I, kh, kw) → uint8 RGB. With three input channels each filter is one
    colour tile (seed 002), with one a gray tile, both on a near-square grid; otherwise one row
    per input channel (the first ``max_inputs``) and one column per filter (the first
    ``max_channels``). Each filter is scaled to its own range."""
    w = np.asarray(weights, dtype=np.float64)[:max_channels]
    if w.ndim != 4:
        raise ValueError(f"filters_image needs (O, I, kh, kw) weights, got shape {w.shape}")
    o, i, kh, kw = w.shape
    per_filter = normalize_maps(w.reshape(o, i * kh, kw)).reshape(o, i, kh, kw)
    if i == 3:
        return colorize(tile(per_filter.transpose(0, 2, 3, 1)), separator=FILTER_SEPARATOR)
    if i == 1:
        return colorize(tile(per_filter[:, 0]), cmap, FILTER_SEPARATOR)
    i = min(i, max_inputs)
    cells = per_filter[:, :i].transpose(1, 0, 2, 3).reshape(i * o, kh, kw)
    return colorize(tile(cells, cols=o), cmap, FILTER_SEPARATOR)
