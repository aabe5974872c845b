"""Dataset-scale aggregates of a stored layer, streamed block by block.

One pass over a layer's done row blocks gives what the report draws from the whole store:
per-class sums in float64 (the average maps), each sample's mean per channel (the histograms)
and, for the model's output layer, true and predicted classes (the confusion matrix). Memory
holds one block and the accumulators, never the layer.

Rows count when their block is recorded done and they hold data: skipped samples and blocks
not yet written read as NaN (the store's fill value) and are left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from actextract.store import Store

__all__ = ["LayerStats", "layer_stats", "predictions", "stored_blocks"]


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

    @property
    def means(self) -> np.ndarray:
        """(K, *shape) per-class average, float64."""
        shape = (-1,) + (1,) * (self.sums.ndim - 1)
        return self.sums / np.maximum(self.counts, 1).reshape(shape)


def stored_blocks(store: Store, layer: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each done block of ``layer``: (rows, labels, data) of the rows that hold data."""
    arr = store[layer]
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


def _channel_means(data: np.ndarray, max_channels: int) -> np.ndarray:
    """Per row, the mean of each of the first ``max_channels`` channels (axis 1) over the
    remaining axes; a 1-D layer's features are their own means."""
    part = data[:, :max_channels]
    if part.ndim == 2:
        return part.astype(np.float64)
    return part.mean(axis=tuple(range(2, part.ndim)), dtype=np.float64)


def layer_stats(
    store: Store,
    layer: str,
    *,
    max_channels: int = 64,
) -> LayerStats:
    """Per-class sums and counts, and per-row channel means, of ``layer`` in one streaming
    pass. Exact: float64 accumulation of the stored values."""
    shape = tuple(store[layer].shape[1:])
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
        means.append(_channel_means(data, max_channels))
        labels.append(block_labels)
    keys = sorted(sums)
    width = min(shape[0], max_channels) if shape else 1
    return LayerStats(
        layer=layer,
        classes=np.array(keys, dtype=np.int64),
        counts=np.array([counts[k] for k in keys], dtype=np.int64),
        sums=np.stack([sums[k] for k in keys]) if keys else np.zeros((0, *shape)),
        channel_means=np.concatenate(means) if means else np.zeros((0, width)),
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        rows_missing=store.n - used,
        source=f"one pass over the {used} stored rows (float64 sums)",
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
