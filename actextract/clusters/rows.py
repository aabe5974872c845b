"""Rows: the per-row arrays of a clustering result, written a chunk at a time as the rows
arrive, and the scores of the clusters against the labels (the schema:
:mod:`actextract.clusters.results`)."""

from __future__ import annotations

import numpy as np
import zarr

from actextract.store.build import checked_array
from actextract.store.layout import quiet_numcodecs

__all__ = ["OUT_CHUNK", "RowWriter", "label_scores", "result_array"]

OUT_CHUNK = 1 << 16  # rows per chunk of the per-row results


def label_scores(contingency: np.ndarray) -> dict[str, float]:
    """Purity, adjusted Rand index and normalised mutual information (arithmetic mean, as
    scikit-learn's default) of a (labels, clusters) table of counts."""
    from sklearn.metrics import mutual_info_score

    c = contingency[contingency.sum(1) > 0][:, contingency.sum(0) > 0].astype(np.float64)
    n = c.sum()
    pairs = lambda v: (v * (v - 1) / 2).sum()  # noqa: E731
    rows, cols = c.sum(1), c.sum(0)
    expected = pairs(rows) * pairs(cols) / pairs(np.array([n]))
    top = (pairs(rows) + pairs(cols)) / 2
    ari = 1.0 if top == expected else (pairs(c) - expected) / (top - expected)
    entropy = lambda v: -(v / n * np.log(v / n)).sum()  # noqa: E731
    mi = mutual_info_score(None, None, contingency=c)
    h = (entropy(rows) + entropy(cols)) / 2
    nmi = 1.0 if h == 0 else mi / h
    return {"purity": float(c.max(0).sum() / n), "ari": float(ari), "nmi": float(nmi)}


class RowWriter:
    """Per-row results arriving in increasing row order, written a chunk at a time."""

    def __init__(self, arrays: dict[str, zarr.Array], n: int):
        self.arrays, self.n = arrays, n
        self.start = 0
        self._new()

    def _new(self) -> None:
        size = min(OUT_CHUNK, self.n - self.start)
        self.buf = {
            name: np.full((size, *a.shape[1:]), a.fill_value, a.dtype)
            for name, a in self.arrays.items()
        }

    def put(self, rows: np.ndarray, labels, dist, coords) -> None:
        values = [labels.cpu().numpy(), dist.cpu().numpy(), coords.cpu().numpy()]
        while len(rows):
            while rows[0] >= self.start + OUT_CHUNK:
                self.flush()
            here = rows < self.start + OUT_CHUNK
            for name, v in zip(self.buf, values, strict=True):
                self.buf[name][rows[here] - self.start] = v[here]
            rows, values = rows[~here], [v[~here] for v in values]

    def close(self) -> None:
        """Write the last chunks (those past the last clustered row hold fill values)."""
        while self.start < self.n:
            self.flush()

    def flush(self) -> None:
        if self.start >= self.n:
            return
        with quiet_numcodecs():
            for name, arr in self.arrays.items():
                arr[self.start : self.start + len(self.buf[name])] = self.buf[name]
        self.start += OUT_CHUNK
        if self.start < self.n:
            self._new()


def result_array(group, path, shape, dtype, fill, dims) -> zarr.Array:
    """A result array (see :func:`~actextract.store.build.checked_array`), OUT_CHUNK rows a
    chunk."""
    chunks = (min(OUT_CHUNK, shape[0]) or 1, *shape[1:])
    return checked_array(group, path, shape, chunks, dtype, fill=fill, dims=dims)
