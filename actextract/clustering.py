"""Clustering: the results of ``actextract cluster`` in a store — their schema, the writer of
the per-row arrays, the reader, and the scores against the labels.

::

    clusters/<layer>/<name>/     one result per settings, e.g. k10-poolmean-pca64-seed0
      assignments  (N,) int32      each row's cluster; -1 where a row was not clustered (a
                                   skipped sample, or NaN/Inf in its activations)
      distances    (N,) float32    squared distance to its centre, in the space k-means ran in
      coords       (N, 2) float32  the first two principal components (the report's scatter)
      centroids    (K, d) float32  in the space k-means ran in: the first --pca components, or
                                   the pooled rows themselves
      sizes        (K,) int64      rows per cluster
      nearest      (K, M) int64    the rows nearest each centre, nearest first (-1: none)
      pca/mean (D,), pca/components (n, D), pca/explained_variance (n,)   float64
    attributes: settings, metrics (inertia; purity, ARI, NMI against the labels), software,
    status ('complete', written after every array: anything else is an interrupted result)

Every array has named dimensions and a crc32c checksum on each chunk, and every chunk is
written (a chunk of fill values too), so a missing chunk is damage, not a silent fill value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from actextract.errors import OptionError
from actextract.kmeans import Pca
from actextract.layout import checked_array, quiet_numcodecs
from actextract.store import Store

__all__ = [
    "OUT_CHUNK",
    "POOLS",
    "ROOT",
    "Clustering",
    "RowWriter",
    "Settings",
    "arrays",
    "clusterings",
    "drop",
    "label_scores",
    "result_array",
]

POOLS = ("none", "mean", "max")
ROOT = "clusters"
OUT_CHUNK = 1 << 16  # rows per chunk of the per-row results


@dataclass(frozen=True)
class Settings:
    """What a clustering result depends on; its ``name`` keeps results of other settings
    apart (the defaults of epochs and batch size are left out of the name)."""

    k: int
    pool: str = "none"
    pca: int | None = None
    seed: int = 0
    epochs: int = 10
    batch_size: int = 1024
    n_init: int = 3
    init_size: int | None = None  # the k-means++ sample; None: max(3 × batch, 20 × k) rows
    nearest: int = 8

    @property
    def name(self) -> str:
        parts = [f"k{self.k}", f"pool{self.pool}", f"pca{self.pca or 'off'}", f"seed{self.seed}"]
        defaults = Settings(k=self.k)
        for field in ("epochs", "batch_size", "n_init", "init_size"):
            if getattr(self, field) != getattr(defaults, field):
                parts.append(f"{field.replace('_', '')}{getattr(self, field)}")
        return "-".join(parts)

    def check(self) -> None:
        if self.k < 2:
            raise OptionError(f"--k {self.k}: k-means needs at least 2 clusters.")
        if self.pool not in POOLS:
            raise OptionError(f"--pool '{self.pool}' is not one of {', '.join(POOLS)}.")
        if self.pca is not None and self.pca < 1:
            raise OptionError(f"--pca {self.pca}: give a number of components, at least 1.")
        for field in ("epochs", "batch_size", "n_init", "nearest"):
            if getattr(self, field) < 1:
                raise OptionError(f"--{field.replace('_', '-')} must be at least 1.")


@dataclass
class Clustering:
    """A clustering result in a store; the arrays are read when asked for."""

    layer: str
    name: str
    attrs: dict[str, Any]
    group: zarr.Group

    @property
    def complete(self) -> bool:
        return self.attrs.get("status") == "complete"

    @property
    def settings(self) -> Settings:
        return Settings(**self.attrs["settings"])

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.attrs.get("metrics") or {})

    def __getitem__(self, name: str) -> np.ndarray:
        """An array of the result: assignments, distances, coords, centroids, sizes, nearest."""
        with quiet_numcodecs():
            return np.asarray(self.group[name][:])

    @property
    def pca(self) -> Pca:
        a = self.attrs["pca"]
        return Pca(
            mean=self["pca/mean"],
            components=self["pca/components"],
            explained_variance=self["pca/explained_variance"],
            total_variance=float(a["total_variance"]),
            n_samples=int(a["n_samples"]),
            method=a.get("method", "covariance"),
            passes=int(a.get("passes", 1)),
            converged=bool(a.get("converged", True)),
        )


def clusterings(store: Store, layer: str | None = None) -> list[Clustering]:
    """The clustering results in ``store`` (of ``layer``), complete or not, by layer and name."""
    if ROOT not in store.group:
        return []
    out = []
    for name, layer_group in sorted(store.group[ROOT].groups()):
        if layer is None or name == layer:
            for result, group in sorted(layer_group.groups()):
                out.append(Clustering(name, result, dict(group.attrs), group))
    return out


def arrays(store: Store) -> list[str]:
    """Every array of every clustering result, for ``verify`` to read whole."""
    if ROOT not in store.group:
        return []
    members = store.group[ROOT].members(max_depth=None)
    return sorted(f"{ROOT}/{path}" for path, node in members if isinstance(node, zarr.Array))


def drop(store: Store, damaged: list[str]) -> list[str]:
    """Delete the results holding the ``damaged`` arrays (``verify --repair``): a result is
    remade whole by running ``actextract cluster`` again. Returns the results deleted."""
    from actextract.location import writable

    results = sorted({"/".join(p.split("/")[:3]) for p in damaged if p.startswith(f"{ROOT}/")})
    with writable(store.location, "delete the damaged clustering results"):
        for path in results:
            del store.group[path]
    return results


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
    """A result array (see :func:`~actextract.layout.checked_array`), OUT_CHUNK rows a chunk."""
    chunks = (min(OUT_CHUNK, shape[0]) or 1, *shape[1:])
    return checked_array(group, path, shape, chunks, dtype, fill=fill, dims=dims)
