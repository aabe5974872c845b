"""Evolution: the pictures of a recording (a store with an epoch axis) across its epochs.

Per layer, each drawn when ``--only`` wants the kind in brackets: each class's average at
every epoch, a row per epoch and a column per class (``<layer>.evolution.averages.png``,
averages); the probe's accuracy per epoch, for the model's output
(``<layer>.evolution.accuracy.png``, confusion); and each chosen sample's maps or features at
every epoch, one line per epoch (``<layer>.evolution.<row>.png``, grids). The last epoch is
also drawn as a run's store is (:class:`actextract.report.pictures.Drawer` on an
:class:`~actextract.store.epochs.EpochView`). :class:`Evolution` reads the store and hands each
picture (kinds ``evolution`` and ``evolution-sample``) to the report's writer; the figure
functions are pure, as in :mod:`actextract.report.figures`. Each layer's maps are read in its layout
(:mod:`actextract.core.axes`): channels-last maps are drawn channels first, a token layer's
(T, D) as one map with the tokens down.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from actextract.core.axes import channel_axis
from actextract.errors import StoreError
from actextract.report import figures
from actextract.report.classpictures import as_maps, describe_maps
from actextract.report.pictures import (
    MAX_SAMPLE_ROWS,
    MAX_STRIP_FEATURES,
    MIN_PIXELS,
    Drawer,
    Picture,
    RenderOptions,
    Report,
    Write,
    file_stem,
)
from actextract.report.rebuild import Inputs, RebuildError, open_inputs
from actextract.stats.aggregate import MAPS, predictions, stored_blocks
from actextract.store.epochs import EpochStore, EpochView, format_epochs

__all__ = [
    "Evolution",
    "accuracy_figure",
    "class_cells",
    "epoch_class_figure",
    "pick_epochs",
    "probe_inputs",
    "scale_channels",
]

MAX_EPOCH_LINES = 16  # epochs in one evolution figure, evenly spread, first and last included
MAX_EVOLUTION_SAMPLES = 4  # samples drawn across epochs (one tall figure each)
MAX_CELL_FEATURES = 256  # features of a 1-D layer in a class-average cell


def pick_epochs(epochs: Sequence[int], most: int = MAX_EPOCH_LINES) -> list[int]:
    """At most ``most`` of ``epochs``, evenly spread, the first and the last included."""
    if len(epochs) <= most:
        return list(epochs)
    picks = np.unique(np.linspace(0, len(epochs) - 1, most).round().astype(int))
    return [epochs[i] for i in picks]


def scale_channels(maps: np.ndarray) -> np.ndarray:
    """(E, C, ...) → float64 in [0, 1], each channel on its own range over all epochs: the
    pattern of a map and its growth or fading across epochs both show. NaN stays NaN."""
    maps = np.asarray(maps, dtype=np.float64)
    axes = (0, *range(2, maps.ndim))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN channel has no range
        lo = np.nanmin(maps, axis=axes, keepdims=True)
        hi = np.nanmax(maps, axis=axes, keepdims=True)
    spread = hi > lo
    return np.where(spread, (maps - lo) / np.where(spread, hi - lo, 1.0), 0.0)


def class_cells(
    view: EpochView, layer: str, *, max_features: int = MAX_CELL_FEATURES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One epoch's per-class average cell of ``layer``, streamed block by block: (classes,
    counts, cells (K, h, w) float64). A cell is the class average of the channel-mean map for
    3-axis maps (nchw (C, H, W), nhwc (H, W, C)), the whole 2-axis map (a token layer's (T, D),
    a (C, L) map channels first), and the first ``max_features`` features as one row (1, F) for
    1-D ones."""
    layout = view.layout(layer)
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for _rows, labels, data in stored_blocks(view, layer):
        data = np.asarray(data, dtype=np.float64)
        if data.ndim in (3, 4):
            data = as_maps(data, layout).mean(axis=1)  # (N, C, h, w): one map is C = 1
        elif data.ndim == 2:
            data = data[:, None, :max_features]
        for cls in np.unique(labels):
            mask = labels == cls
            key = int(cls)
            sums[key] = sums.get(key, 0) + data[mask].sum(axis=0)
            counts[key] = counts.get(key, 0) + int(mask.sum())
    keys = sorted(sums)
    n = np.array([counts[k] for k in keys], dtype=np.int64)
    cells = np.stack([sums[k] / counts[k] for k in keys]) if keys else np.zeros((0, 1, 1))
    return np.array(keys, dtype=np.int64), n, cells


def epoch_class_figure(
    cells: np.ndarray,
    epoch_labels: Sequence[str],
    class_labels: Sequence[str],
    *,
    title: str,
    cmap: str = figures.DEFAULT_CMAP,
    same_scale: bool = False,
) -> Figure:
    """Cells (E, K, h, w) on a grid, a row per epoch and a column per class, thin white
    separators. Each row (epoch) on its own range, or all on one (``same_scale``, with a
    colour bar)."""
    cells = np.asarray(cells, dtype=np.float64)
    e, k, h, w = cells.shape
    if h == 1:  # a 1-D layer's features: a bar tall enough to see
        h = max(2, min(w // 3, 12))
        cells = cells.repeat(h, axis=2)
    axes = None if same_scale else (1, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo = np.nanmin(cells, axis=axes, keepdims=True)
        hi = np.nanmax(cells, axis=axes, keepdims=True)
    scaled = np.clip((cells - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    canvas = figures.tile(scaled.reshape(e * k, h, w), cols=k)
    image = figures.colorize(canvas, cmap)
    factor = max(1, min(MIN_PIXELS // max(1, min(image.shape[:2])), 1600 // max(image.shape[:2])))
    image = image.repeat(factor, axis=0).repeat(factor, axis=1)
    inches = min(14.0 / image.shape[1], 9.0 / image.shape[0])
    fig = Figure(
        figsize=(image.shape[1] * inches + 2.6, image.shape[0] * inches + 1.6), layout="constrained"
    )
    ax = fig.add_subplot()
    ax.imshow(image, interpolation="nearest")
    step_y, step_x = (h + 1) * factor, (w + 1) * factor
    ax.set_yticks([i * step_y + h * factor / 2 for i in range(e)], list(epoch_labels), fontsize=8)
    ax.set_xticks(
        [j * step_x + w * factor / 2 for j in range(k)],
        list(class_labels),
        fontsize=8,
        rotation=90 if k > 12 else 0,
    )
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_ylabel("epoch")
    ax.set_xlabel("class")
    ax.set_title(title, fontsize=11)
    if same_scale:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        norm = Normalize(float(lo.min()), float(hi.max()))
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.04)
    return fig


def accuracy_figure(epochs: Sequence[int], accuracy: Sequence[float], *, title: str) -> Figure:
    """The probe's accuracy (0-1) at each recorded epoch, as a line."""
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(list(epochs), [100 * a for a in accuracy], marker="o", color="#3465a4")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=11)
    return fig


def probe_inputs(attrs: dict[str, Any], ids: Any) -> Inputs:
    """The probe's inputs, reopened from the recorded spec (and ``rows``, when the probe was
    some of the dataset's samples)."""
    dataset = attrs.get("dataset") or {}
    spec, rows = str(dataset.get("spec", "")), dataset.get("rows")
    if not spec or spec.startswith("python-object:"):
        raise RebuildError(
            "the probe was a Dataset object; only a dataset spec (digits, folder:PATH, "
            "mnist:ROOT, python:module:callable) can be reopened to show the inputs."
        )
    if rows is None:
        return open_inputs(attrs, ids)
    from actextract.data.probes import select_rows

    whole = open_inputs({**attrs, "n_samples": 0}, ids)
    if max(rows) >= len(whole.source):
        raise RebuildError(
            f"the dataset '{spec}' has {len(whole.source)} samples now; the probe used row "
            f"{max(rows)}."
        )
    return Inputs(select_rows(whole.source, rows), ids)


class _ProbeDrawer(Drawer):
    """The Drawer for one epoch of a recording: the probe's inputs reopened with its rows;
    no filters (a recording keeps activations, not each epoch's weights)."""

    _filters_noted = False

    def __init__(self, store: EpochView, options: RenderOptions, report: Report, write: Write):
        super().__init__(store, options, report, write, open_inputs=probe_inputs)

    def filters(self, layer: str) -> None:
        if not self._filters_noted:
            self._filters_noted = True
            self.report.note(
                None, "filters are not drawn: a recording keeps activations, not the weights."
            )


class Evolution:
    """Draws a recording across its epochs, a layer at a time; ``view`` is its last epoch,
    which ``drawer`` draws as a run's store."""

    @classmethod
    def of(cls, store: Any, options: RenderOptions, report: Report, write: Write):
        """An Evolution of ``store`` when it is a recording, else None."""
        return cls(store, options, report, write) if isinstance(store, EpochStore) else None

    def __init__(self, store: EpochStore, options: RenderOptions, report: Report, write: Write):
        self.store, self.options, self.report, self._write = store, options, report, write
        self.epochs = store.epochs()
        if not self.epochs:
            raise StoreError(
                f"'{store.location}' is a recording with no epoch captured yet; there is "
                "nothing to draw until Recorder.capture has run once."
            )
        self.shown = pick_epochs(self.epochs)
        self.view = store.at(self.epochs[-1])
        self.drawer = _ProbeDrawer(self.view, options, report, write)
        self.canvas = self.drawer.canvas  # the labels and their names, the inputs
        self._capped = False  # the note that fewer samples are drawn across epochs is made
        last = self.epochs[-1]
        report.note(
            None,
            f"a recording of {len(self.epochs)} epochs ({format_epochs(self.epochs)}); the "
            f"pictures other than the evolution show epoch {last}.",
        )
        if len(self.shown) < len(self.epochs):
            report.note(None, f"the evolution shows {len(self.shown)} epochs, evenly spread.")
        if store.status != "complete":
            report.note(
                None,
                f"the recording's last capture ({store.attrs.get('capturing')}) did not finish "
                f"(status {store.status}); its epoch is not drawn.",
                level=logging.WARNING,
            )

    def layer(self, layer: str, rows: list[int]) -> None:
        shape = tuple(self.view[layer].shape[1:])
        if len(shape) not in (1, 2, 3):
            return  # the drawer notes it
        opts = self.options
        if opts.wants("averages"):
            self.class_averages(layer, shape)
        spec = self.canvas.specs.get(layer, {})
        if opts.wants("confusion") and spec.get("model_output") and len(shape) == 1:
            self.accuracy(layer, shape[0])
        if opts.wants("grids") and rows:
            if len(rows) > MAX_EVOLUTION_SAMPLES and not self._capped:
                self._capped = True
                shown = ", ".join(map(str, rows[:MAX_EVOLUTION_SAMPLES]))
                self.report.note(
                    None,
                    f"each sample across epochs: the first {MAX_EVOLUTION_SAMPLES} of the "
                    f"{len(rows)} chosen samples (rows {shown}; --samples picks others).",
                )
            self.samples(layer, shape, rows[:MAX_EVOLUTION_SAMPLES])

    def _save(self, content: Figure, name: str, layer: str, caption: str, kind: str) -> None:
        self._write(Picture(kind, layer, name, caption), content)

    def samples(self, layer: str, shape: tuple[int, ...], rows: list[int]) -> None:
        """One figure per sample: its maps (or features) at each shown epoch."""
        layout = self.view.layout(layer)
        width = self.options.max_channels if len(shape) == 3 else MAX_STRIP_FEATURES
        picked: tuple[Any, ...] = (np.array(self.shown), np.array(rows))
        if len(shape) != 2:  # the first channels (maps, on the layout's axis) or features (1-D)
            axis = channel_axis(layout, len(shape)) if layout in MAPS else 0
            picked += (slice(None),) * (axis or 0) + (slice(0, width),)
        data = self.store[layer].get_orthogonal_selection(picked)  # (E, R, *shape')
        epochs = [f"epoch {e}" for e in self.shown]
        same = self.options.same_scale
        for i, r in enumerate(rows):
            maps = data[:, i]  # (E, *shape')
            name = self.canvas.name_of(int(self.canvas.labels[r]))
            stem = f"{file_stem(layer)}.evolution.{r}.png"
            if len(shape) == 1:
                fig = figures.strip_figure(
                    maps, epochs, title=f"{layer}: {name} (row {r}) at each epoch"
                )
                caption = f"{layer}: row {r} ({name}), its values at each epoch"
                self._save(fig, stem, layer, caption, "evolution-sample")
                continue
            maps = as_maps(maps, layout)  # (E, C, h, w), channels first; one map: C = 1
            scaled = scale_channels(maps)
            if same:
                scaled = figures.normalize_maps(maps, same_scale=True)
            grids = [
                figures.feature_grid(
                    m, max_channels=width, value_range=(0.0, 1.0), cmap=self.options.cmap
                )
                for m in scaled
            ]
            lines = [(label, None, grid) for label, grid in zip(epochs, grids, strict=True)]
            image = self.canvas.input_image(r)
            if image is not None:
                height = grids[0].shape[0]
                lines.insert(0, ("input", None, figures.upscale(figures.input_rgb(image), height)))
            scale = "one scale for all" if same else "each channel on one scale across epochs"
            drawn = describe_maps(shape, layout, width)
            fig = figures.maps_figure(lines, title=f"{layer}: {name} (row {r}), {drawn} ({scale})")
            caption = f"{layer}: row {r} ({name}) at each epoch ({scale})"
            self._save(fig, stem, layer, caption, "evolution-sample")

    def class_averages(self, layer: str, shape: tuple[int, ...]) -> None:
        """Rows = epochs, columns = classes: each class's average cell at each epoch."""
        per_epoch = [class_cells(self.store.at(e), layer) for e in self.shown]
        classes, counts, _ = per_epoch[0]
        if not len(classes):
            return
        cells = np.stack([c for _, _, c in per_epoch])[:, :MAX_SAMPLE_ROWS]
        if len(classes) > MAX_SAMPLE_ROWS:
            self.report.note(
                layer, f"the evolution shows the first {MAX_SAMPLE_ROWS} of {len(classes)} classes."
            )
        what = {3: "channel-mean map", 2: "map", 1: "features"}[len(shape)]
        if self.view.layout(layer) == "tokens":
            what = "tokens × features map"
        if len(shape) == 1 and shape[0] > MAX_CELL_FEATURES:
            what = f"first {MAX_CELL_FEATURES} of {shape[0]} features"
        scale = "one scale for all" if self.options.same_scale else "each epoch on its own scale"
        fig = epoch_class_figure(
            cells,
            [str(e) for e in self.shown],
            [
                f"{self.canvas.name_of(int(c))}\n(n={n})"
                for c, n in zip(classes[:MAX_SAMPLE_ROWS], counts, strict=False)
            ],
            title=f"{layer}: each class's average {what} by epoch ({scale})",
            cmap=self.options.cmap,
            same_scale=self.options.same_scale,
        )
        self._save(
            fig,
            f"{file_stem(layer)}.evolution.averages.png",
            layer,
            f"{layer}: per-class average {what} at each epoch (rows) for each class (columns), "
            f"{scale}",
            "evolution",
        )

    def accuracy(self, layer: str, width: int) -> None:
        """The probe's accuracy (argmax of the model's output) at every recorded epoch."""
        names = self.canvas.class_names
        if names and len(names) != width:
            return  # the drawer's confusion matrix notes why
        values = []
        for e in self.epochs:
            true, pred = predictions(self.store.at(e), layer)
            if not len(true):
                return
            values.append(float((true == pred).mean()))
        listed = ", ".join(f"{e}: {a:.1%}" for e, a in zip(self.epochs, values, strict=True))
        self.report.note(layer, f"probe accuracy by epoch: {listed}")
        fig = accuracy_figure(
            self.epochs, values, title=f"{layer}: accuracy on the probe's {len(true)} samples"
        )
        self._save(
            fig,
            f"{file_stem(layer)}.evolution.accuracy.png",
            layer,
            f"{layer}: the probe's accuracy (argmax of the model's output) at each epoch; "
            f"{values[-1]:.2%} at epoch {self.epochs[-1]}",
            "evolution",
        )
