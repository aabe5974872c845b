"""Dataset-scale aggregates of a stored layer, streamed block by block.

One pass over a layer's done row blocks gives what the report draws from the whole store:
per-class sums in float64 (the average maps), each sample's mean per channel (the histograms)
and, for the model's output layer, true and predicted classes (the confusion matrix). Memory
holds one block and the accumulators, never the layer. When the run kept statistics on the
device (``--stats``), :func:`summarize` takes them instead: the per-class totals and the
stored channel means, also for layers whose maps were never stored.

"Channel" is the layout's (:mod:`actextract.core.axes`): a map's channels whether first (``nchw``)
or last (``nhwc``), a token layer's features (its channel mean is the mean over the tokens),
a vector's features (their own means). A layer in the ``other`` layout has no channel axis, so
no channel means.

Rows count when their block is recorded done and they hold data: skipped samples and blocks
not yet written read as NaN (the store's fill value) and are left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from actextract.core.axes import channel_axis, stored_layout, to_channels_first
from actextract.stats.parts import read_stats
from actextract.store import Store
from actextract.store.tokens import is_token_layer, iter_token_blocks

__all__ = [
    "MAPS",
    "LayerStats",
    "channel_means",
    "channel_unit",
    "layer_stats",
    "predictions",
    "stored_blocks",
    "summarize",
]

MAPS = ("nchw", "nhwc")  # the layouts whose channel axis is a map's channels


def channel_unit(layout: str) -> str:
    """What one entry of the channel axis is called: 'channel' for maps, 'feature' for tokens
    and vectors."""
    return "channel" if layout in MAPS else "feature"


@dataclass
class LayerStats:
    """Aggregates of one layer over the stored rows."""

    layer: str
    classes: np.ndarray  # (K,) label values present, sorted; -1 collects unlabelled rows
    counts: np.ndarray  # (K,) rows per class
    sums: np.ndarray  # (K, *shape) float64
    channel_means: np.ndarray  # (M, C') per row, its first C' channels' means (float64)
    labels: np.ndarray  # (M,) the label of each row of channel_means
    rows_missing: int  # rows of the store not counted (blocks not done, skipped samples)
    source: str  # where the numbers came from, for the report
    channel_source: str = ""  # where the channel means came from, when not ``source``
    stds: np.ndarray | None = None  # (K, *shape) per-class standard deviation (--stats class-std)
    layout: str = ""  # the layout of ``sums``' per-row axes (:mod:`actextract.core.axes`)

    @property
    def means(self) -> np.ndarray:
        """(K, *shape) per-class average, float64."""
        shape = (-1,) + (1,) * (self.sums.ndim - 1)
        return self.sums / np.maximum(self.counts, 1).reshape(shape)


def stored_blocks(store: Store, layer: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each done block of ``layer`` (or of another row array: its key): (rows, labels,
    data) of the rows that hold data."""
    arr = store.row_array(layer)
    done = store.done()
    for block in np.flatnonzero(done):
        span = store.block_range(int(block))
        data = arr[span.start : span.stop]
        labels = store.labels[span.start : span.stop]
        keep = ~_empty_rows(data)
        rows = np.arange(span.start, span.stop)
        if keep.all():
            yield rows, labels, data
        elif keep.any():
            yield rows[keep], labels[keep], data[keep]


def _empty_rows(data: np.ndarray) -> np.ndarray:
    """Rows that are all NaN (the fill value). Only rows whose first value is NaN are checked
    in full, so this costs a fraction of the block in memory."""
    flat = data.reshape(len(data), -1)
    empty = np.isnan(flat[:, 0]) if flat.shape[1] else np.zeros(len(data), bool)
    for i in np.flatnonzero(empty):
        empty[i] = np.isnan(flat[i]).all()
    return empty


def channel_means(data: np.ndarray, layout: str, max_channels: int = 64) -> np.ndarray:
    """Rows (N, *shape) in ``layout`` → (N, C') float64: per row, the mean of each of its first
    ``max_channels`` channels over the other axes (nchw (N, C, H, W) and nhwc (N, H, W, C): over
    H, W; tokens (N, T, D): over T, per feature); a vector's features are their own means. The
    ``other`` layout has no channel axis: (N, 0)."""
    if channel_axis(layout, data.ndim - 1) is None:
        return np.zeros((len(data), 0))
    part = to_channels_first(data, layout)[:, :max_channels]
    if part.ndim == 2:
        return part.astype(np.float64)
    return part.mean(axis=tuple(range(2, part.ndim)), dtype=np.float64)


def layer_stats(
    store: Store,
    layer: str,
    *,
    max_channels: int = 64,
) -> LayerStats:
    """Per-class sums and counts, and per-row channel means (of the channels of the stored
    rows' layout, :func:`channel_means`), of ``layer`` in one streaming pass. Exact: float64
    accumulation of the stored values."""
    if is_token_layer(store, layer):
        return _token_layer_stats(store, layer, max_channels)
    shape = tuple(store[layer].shape[1:])
    layout = store.layout(layer)
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    means: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    used = 0
    for _rows, block_labels, data in stored_blocks(store, layer):
        used += len(data)
        for cls in np.unique(block_labels):
            mask = block_labels == cls
            part = data if mask.all() else data[mask]
            total = part.sum(axis=0, dtype=np.float64)
            key = int(cls)
            if key in sums:
                sums[key] += total
            else:
                sums[key] = total
            counts[key] = counts.get(key, 0) + int(mask.sum())
        means.append(channel_means(data, layout, max_channels))
        labels.append(block_labels)
    keys = sorted(sums)
    axis = channel_axis(layout, len(shape))
    width = 0 if axis is None else min(shape[axis], max_channels)
    return LayerStats(
        layer=layer,
        classes=np.array(keys, dtype=np.int64),
        counts=np.array([counts[k] for k in keys], dtype=np.int64),
        sums=np.stack([sums[k] for k in keys]) if keys else np.zeros((0, *shape)),
        channel_means=np.concatenate(means) if means else np.zeros((0, width)),
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        rows_missing=store.n - used,
        source=f"one pass over the {used} stored rows (float64 sums)",
        layout=layout,
    )


def _token_layer_stats(store: Store, layer: str, max_channels: int) -> LayerStats:
    """:func:`layer_stats` of a text run's token layer: per class the sums over its real
    tokens, (K, D), counted in tokens, and each document's mean over its real tokens (the
    padding, stored or not, is no token of it)."""
    labels_all = np.asarray(store.labels[:])
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    means: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    width = store[layer].shape[-1]
    for table, values in iter_token_blocks(store, layer):
        values = values.astype(np.float64)
        keep = np.isfinite(values).all(axis=1)
        sample, values = table["sample"][keep], values[keep]
        token_labels = labels_all[sample]
        for cls in np.unique(token_labels):
            picked = token_labels == cls
            total = values[picked].sum(axis=0)
            key = int(cls)
            sums[key] = sums[key] + total if key in sums else total
            counts[key] = counts.get(key, 0) + int(picked.sum())
        if len(sample):  # the tokens of a sample are together, in order
            starts = np.flatnonzero(np.r_[True, sample[1:] != sample[:-1]])
            n = np.diff(np.r_[starts, len(sample)])
            part = values[:, :max_channels]
            means.append(np.add.reduceat(part, starts, axis=0) / n[:, None])
            labels.append(labels_all[sample[starts]])
    keys = sorted(sums)
    docs = sum(len(m) for m in means)
    return LayerStats(
        layer=layer,
        classes=np.array(keys, dtype=np.int64),
        counts=np.array([counts[k] for k in keys], dtype=np.int64),
        sums=np.stack([sums[k] for k in keys]) if keys else np.zeros((0, width)),
        channel_means=np.concatenate(means) if means else np.zeros((0, min(width, max_channels))),
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        rows_missing=store.n - docs,
        source=f"one pass over the {sum(counts.values())} real tokens of {docs} stored rows "
        "(float64 sums)",
        layout="tokens",
    )


def summarize(store: Store, layer: str, *, max_channels: int = 64) -> LayerStats:
    """The layer's per-class averages and channel means from the best source: the on-device
    totals and per-sample channel means of ``--stats`` when the run kept them (the sealed
    totals count every row, including those of a layer never stored), else one pass over the
    stored layer. ``source`` and ``channel_source`` say which."""
    totals = read_stats(store, layer)
    has_totals = totals is not None and totals.mean is not None
    means_key = f"stats/{layer}/channel_means"
    has_means = means_key in store.row_keys
    base = None  # a pass over the stored maps, only for what the statistics do not give
    if layer in store.layers and not (has_totals and has_means):
        base = layer_stats(store, layer, max_channels=max_channels)
    if base is not None and not has_means:
        channel = (base.channel_means, base.labels, base.source)
    elif has_means:
        parts = list(stored_blocks(store, means_key))
        width = min(store.row_array(means_key).shape[1], max_channels)
        values = [d[:, :max_channels].astype(np.float64) for _r, _l, d in parts]
        channel = (
            np.concatenate(values) if values else np.zeros((0, width)),
            np.concatenate([lab for _r, lab, _d in parts]) if parts else np.zeros(0, np.int64),
            f"each sample's channel means as computed on the device ({means_key})",
        )
    else:
        channel = (np.zeros((0, 1)), np.zeros(0, np.int64), "")
    if has_totals:
        counts = totals.counts
        shape = (-1,) + (1,) * (totals.mean.ndim - 1)
        return LayerStats(
            layer=layer,
            classes=totals.classes,
            counts=counts,
            sums=totals.mean * counts.reshape(shape),
            channel_means=channel[0],
            labels=channel[1],
            rows_missing=store.n - int(counts.sum()),
            source=f"on-device float64 sums over {int(counts.sum())} rows (stats/{layer})",
            channel_source=channel[2],
            stds=totals.std,
            layout=stored_layout(store.stats_layers()[layer]),  # the output's, not pooled
        )
    if base is not None:
        return replace(base, channel_means=channel[0], labels=channel[1], channel_source=channel[2])
    return LayerStats(
        layer,
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        np.zeros((0,)),
        *channel[:2],
        rows_missing=store.n,
        source=(
            "no per-class totals yet: the store is not sealed (finish it with --resume)"
            if "class-mean" in store.stats_layers().get(layer, {}).get("kinds", ())
            else "no per-class sums: the layer is not stored and --stats has no class-mean"
        ),
        channel_source=channel[2],
        layout=store.layout(layer),
    )


def predictions(store: Store, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """True labels and argmax predictions of an output layer (logits, one per class) for the
    stored rows that have a label."""
    true: list[np.ndarray] = []
    pred: list[np.ndarray] = []
    for _rows, labels, data in stored_blocks(store, layer):
        has = labels >= 0
        true.append(labels[has])
        pred.append(np.asarray(data[has], dtype=np.float32).argmax(axis=1))
    if not true:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(true), np.concatenate(pred)
