"""Cluster: k-means of one stored layer's rows, streamed block by block, the result written
back into the store under ``clusters/<layer>/<settings>`` (its schema:
:mod:`actextract.clusters.results`).

The layer is read in passes, one row block at a time with the next one read ahead, and never
held whole: a PCA pass (:class:`~actextract.clusters.kmeans.StreamingPca`), a pass that projects the
rows and draws the k-means++ sample, ``epochs`` passes of mini-batch k-means in a shuffled
order, and a last pass that assigns every row. The projected rows are kept on the device
between passes when they fit in ``cache_bytes``; otherwise every pass reads the store again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from actextract.clusters import results as clustering
from actextract.clusters.kmeans import (
    MiniBatchKMeans,
    Nearest,
    Pca,
    StreamingPca,
    kmeans_pp,
    sq_distances,
)
from actextract.clusters.results import ROOT, Clustering, Settings
from actextract.clusters.rows import RowWriter, label_scores, result_array
from actextract.core.axes import pool as pool_rows
from actextract.core.axes import reduced_shape, reductions_for
from actextract.core.devices import resolve_device
from actextract.core.versions import software
from actextract.errors import OptionError, StoreError, option
from actextract.store import Store
from actextract.store.base import consolidate
from actextract.store.layout import now, quiet_numcodecs
from actextract.store.location import writable
from actextract.store.tokens import is_token_layer, sample_tokens

__all__ = ["cluster"]

Progress = Callable[[str, int], None]


class Rows:
    """The layer's rows as float32 (B, D) batches on the device: pooled, flattened, with the
    rows holding NaN or Inf left out; the next block is read while one is used."""

    def __init__(self, store: Store, layer: str, pool: str, device: torch.device):
        self.store, self.layer, self.pool, self.device = store, layer, pool, device
        self.arr = store[layer]
        shape = store.sample_shape(layer)
        self.layout = store.layout(layer)
        self.text = is_token_layer(store, layer)  # pooled over each document's real tokens
        if self.text and pool == "none":
            raise OptionError(
                f"layer '{layer}' holds a text run's tokens, {shape} per document with its "
                f"padding: cluster documents pooled over their real tokens, with "
                f"{option('pool')} mean, max, cls or last (pool='mean')."
            )
        if pool != "none" and pool not in reductions_for(self.layout):
            raise OptionError(
                f"{option('pool')} '{pool}': the rows of '{layer}' have shape {shape} with "
                f"layout {self.layout}, with no spatial axes or tokens to pool; leave --pool out "
                "(pool='none')."
            )
        self.dim = math.prod(reduced_shape(layer, shape, self.layout, pool, option("pool")))
        self.excluded = 0  # rows left out, counted by the first pass

    def blocks(self, order: list[int] | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """(rows int64, labels int64, x float32) per block, in ``order`` (default: row order)."""
        order = list(range(self.store.n_blocks)) if order is None else order
        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(self._read, order[0]) if order else None
            for i in range(len(order)):
                read = ahead.result()  # type: ignore[union-attr]
                ahead = pool.submit(self._read, order[i + 1]) if i + 1 < len(order) else None
                yield self._prepare(*read)

    def _read(self, block: int) -> tuple[range, np.ndarray, np.ndarray, np.ndarray | None]:
        span = self.store.block_range(block)
        with quiet_numcodecs():
            labels = self.store.labels[span.start : span.stop]
            if not self.text:
                return span, self.arr[span.start : span.stop], labels, None
            mask = np.asarray(self.store._node("tokens/mask")[span.start : span.stop], bool)
            data = sample_tokens(self.store, self.layer, span)
            return span, np.nan_to_num(data, nan=0.0), labels, mask

    def _prepare(
        self, span: range, data: np.ndarray, labels: np.ndarray, mask: np.ndarray | None
    ) -> tuple[torch.Tensor, ...]:
        x = torch.from_numpy(np.ascontiguousarray(data)).to(self.device).float()
        real = None if mask is None else torch.from_numpy(mask).to(self.device)
        x = pool_rows(x, self.layout, self.pool, real).reshape(len(x), -1)
        if real is not None:  # a skipped document, or one of a block not done: no tokens
            x[~real.any(1)] = float("nan")
        keep = torch.isfinite(x).all(1)
        rows = torch.arange(span.start, span.stop, device=self.device)
        labels_t = torch.from_numpy(labels.astype(np.int64)).to(self.device)
        if not bool(keep.all()):
            return rows[keep], labels_t[keep], x[keep]
        return rows, labels_t, x


def cluster(
    store: Store | str | Path,
    layer: str,
    k: int,
    *,
    pool: str = "none",
    pca: int | None = None,
    seed: int = 0,
    epochs: int = 10,
    batch_size: int = 1024,
    n_init: int = 3,
    init_size: int | None = None,
    nearest: int = 8,
    device: str | torch.device = "auto",
    cache_bytes: int = 1 << 30,
    progress: Progress | None = None,
    storage_options: Mapping | str | None = None,
) -> Clustering:
    """Cluster the rows of ``layer`` into ``k`` groups and write the result into the store
    under ``clusters/<layer>/<settings name>``; a result of the same settings is replaced
    once the new one is complete (a kill leaves one of them).
    ``pool`` ('mean', 'max') reduces spatial maps to one value per channel first; ``pca`` projects
    the rows on that many principal components before k-means. ``progress(phase, rows)`` is
    called as rows pass. Same store, settings and device: the same result.
    ``storage_options``: the fsspec options of a store URL."""

    settings = Settings(k, pool, pca, seed, epochs, batch_size, n_init, init_size, nearest)
    settings.check()
    store = clustering.writable_store(store, storage_options)
    if layer not in store.layers:
        if layer in store.stats_layers():
            raise StoreError(
                f"layer '{layer}' was kept as statistics only, not named in {option('store')}; "
                f"its rows are not in {store.location}. Extract it with --store including "
                f"'{layer}' (store=[..., '{layer}']) to cluster it."
            )
        store[layer]  # raises, naming the layers the store holds
    dev = resolve_device(device)
    tick = progress or (lambda phase, n: None)
    rows = Rows(store, layer, pool, dev)
    if pca is not None and pca > rows.dim:
        raise OptionError(
            f"--pca {pca}: the rows of '{layer}' have only {rows.dim} features; give "
            f"{option('pca')} at most {rows.dim}."
        )
    if pca is not None and pca > store.n:
        raise OptionError(
            f"--pca {pca}: the store has only {store.n} rows; give {option('pca')} at most "
            f"{store.n}."
        )

    fitted, max_label = _fit_pca(rows, max(pca or 0, 2), tick)
    clustered = fitted.n_samples
    if clustered < k:
        raise OptionError(
            f"--k {k}: only {clustered} rows of '{layer}' can be clustered; give {option('k')} "
            f"at most {clustered}."
        )
    space = _Space(fitted, pca, dev)
    cache, sample = _project(rows, space, settings, clustered, cache_bytes, tick)
    gen = torch.Generator(device=dev).manual_seed(seed)
    km = MiniBatchKMeans(_seed_centres(sample, k, n_init, gen))
    shuffle = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        for x in _shuffled(rows, space, cache, batch_size, shuffle):
            km.step(x)
            tick(f"k-means epoch {epoch + 1}/{epochs}", len(x))
        km.end_epoch()
    return _write(store, layer, settings, dev, rows, space, cache, km, fitted, max_label, tick)


def _fit_pca(rows: Rows, n: int, tick: Progress) -> tuple[Pca, int]:
    """The PCA's passes (one, or a few for wide rows); the first also counts the rows left out
    and finds the largest label."""
    fit = StreamingPca(min(n, rows.dim), rows.dim, rows.device)
    max_label, total, more = -1, 0, True
    while more:
        first = fit.passes == 0
        for _, labels, x in rows.blocks():
            fit.update(x)
            if first:
                total += len(x)
                max_label = max(max_label, int(labels.max()) if len(labels) else -1)
            tick("PCA" if first else f"PCA pass {fit.passes + 1}", len(x))
        if not total:
            raise StoreError(f"no row of '{rows.layer}' holds finite values: nothing to cluster.")
        more = fit.end_pass()
    rows.excluded = rows.store.n - total
    return fit.result(), max_label


class _Space:
    """The space k-means runs in: the first ``pca`` components, or the centred rows."""

    def __init__(self, fitted: Pca, pca: int | None, device: torch.device):
        self.pca = pca
        self.dim = pca or len(fitted.mean)
        self._project = fitted.projector(device, pca) if pca else None
        self._mean = torch.as_tensor(fitted.mean, dtype=torch.float32, device=device)
        self._basis = torch.as_tensor(fitted.components[:2].T, dtype=torch.float32, device=device)
        self.offset = np.zeros(self.dim) if pca else fitted.mean  # centroids' own coordinates

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._project(x) if self._project else x - self._mean

    def coords(self, x: torch.Tensor | None, features: torch.Tensor) -> torch.Tensor:
        """The first two principal components of rows (``features``: their image here; ``x``
        the pooled rows, needed with --pca 1 only)."""
        if self.pca and self.pca >= 2:
            c = features[:, :2]
        else:  # the centred rows (the features themselves without --pca) on the plane
            centred = features if self.pca is None else x - self._mean  # type: ignore[operator]
            c = centred @ self._basis
        return torch.nn.functional.pad(c, (0, 2 - c.shape[1]))  # a layer of one feature


def _project(
    rows: Rows, space: _Space, s: Settings, clustered: int, cache_bytes: int, tick: Progress
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, torch.Tensor]:
    """The projection pass: a uniform random sample of ``init_size`` rows (the smallest random
    keys) and, when it fits in ``cache_bytes``, every projected row with its row and label."""
    size = min(clustered, s.init_size or max(3 * s.batch_size, 20 * s.k))
    keep = clustered * space.dim * 4 + clustered * 16 <= cache_bytes
    gen = torch.Generator().manual_seed(s.seed + 1)
    sample = keys = None
    parts: list[tuple[torch.Tensor, ...]] = []
    for r, labels, x in rows.blocks():
        f = space(x)
        key = torch.rand(len(f), generator=gen).to(f.device)
        keys = key if keys is None else torch.cat([keys, key])
        sample = f if sample is None else torch.cat([sample, f])
        if len(keys) > size:
            best = torch.topk(keys, size, largest=False).indices
            keys, sample = keys[best], sample[best]
        if keep:
            parts.append((r, labels, f))
        tick("projection", len(x))
    cache = tuple(torch.cat(p) for p in zip(*parts, strict=True)) if keep else None
    return cache, sample  # type: ignore[return-value]


def _seed_centres(sample: torch.Tensor, k: int, n_init: int, gen: torch.Generator) -> torch.Tensor:
    """The k-means++ seeding with the lowest inertia on the sample among ``n_init`` tries."""
    best, best_inertia = None, math.inf
    for _ in range(n_init):
        centres = kmeans_pp(sample, k, gen)
        inertia = float(sq_distances(sample, centres).min(1).values.sum())
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    return best  # type: ignore[return-value]


def _shuffled(
    rows: Rows, space: _Space, cache, batch: int, gen: torch.Generator
) -> Iterator[torch.Tensor]:
    """One epoch of batches in a random order: a permutation of the cached rows, or the blocks
    in a random order mixed ``window`` rows at a time (data stored by class is mixed too)."""
    if cache is not None:
        feats = cache[2]
        order = torch.randperm(len(feats), generator=gen).to(feats.device)
        for start in range(0, len(order), batch):
            yield feats[order[start : start + batch]]
        return
    window = max(16 * batch, 1 << 15)
    pending: list[torch.Tensor] = []
    order = torch.randperm(rows.store.n_blocks, generator=gen).tolist()
    blocks = rows.blocks(order)
    for i, (_, _, x) in enumerate(blocks):
        pending.append(space(x))
        if sum(map(len, pending)) < window and i + 1 < len(order):
            continue
        mixed = torch.cat(pending)
        mixed = mixed[torch.randperm(len(mixed), generator=gen).to(mixed.device)]
        cut = len(mixed) - len(mixed) % batch if i + 1 < len(order) else len(mixed)
        for start in range(0, cut, batch):
            yield mixed[start : start + batch]
        pending = [mixed[cut:]] if cut < len(mixed) else []


def _write(
    store: Store,
    layer: str,
    s: Settings,
    dev: torch.device,
    rows: Rows,
    space: _Space,
    cache,
    km: MiniBatchKMeans,
    fitted: Pca,
    max_label: int,
    tick: Progress,
) -> Clustering:
    """The assignment pass, written as it goes under a hidden name, the attributes (status
    'complete') last, then put in place of an older result of the same settings."""

    n, k = store.n, s.k
    with writable(store.location, f"write the clustering of '{layer}'"):
        parent = store.group.require_group(ROOT).require_group(layer)
        clustering.tidy(parent)  # what killed runs left
        hidden = clustering.new_name(s.name)
        started = {"status": "writing", "started": now(), "writer": clustering.writer()}
        group = parent.create_group(hidden, attributes=started)
        out = {
            "assignments": result_array(group, "assignments", (n,), np.int32, -1, ("sample",)),
            "distances": result_array(group, "distances", (n,), np.float32, np.nan, ("sample",)),
            "coords": result_array(group, "coords", (n, 2), np.float32, np.nan, ("sample", "pc")),
        }
        buffers = RowWriter(out, n)
        nearest = Nearest(k, s.nearest, dev)
        contingency = np.zeros((max_label + 1, k), np.int64)
        inertia, sizes = 0.0, torch.zeros(k, dtype=torch.int64, device=dev)
        batches = _in_order(rows, space, cache, s.batch_size)
        for r, labels, x, f in batches:
            lab, dist = km.assign(f)
            nearest.add(r, lab, dist)
            inertia += float(dist.double().sum())
            sizes += torch.bincount(lab, minlength=k)
            has = labels >= 0
            if bool(has.any()):
                np.add.at(contingency, (labels[has].cpu().numpy(), lab[has].cpu().numpy()), 1)
            buffers.put(r.cpu().numpy(), lab, dist, space.coords(x, f))
            tick("assignment", len(r))
        buffers.close()
        arrays = {
            "centroids": (km.centers.cpu().numpy() + space.offset, ("cluster", "feature")),
            "sizes": (sizes.cpu().numpy(), ("cluster",)),
            "nearest": (nearest.rows.cpu().numpy(), ("cluster", "rank")),
            "pca/mean": (fitted.mean, ("feature",)),
            "pca/components": (fitted.components, ("component", "feature")),
            "pca/explained_variance": (fitted.explained_variance, ("component",)),
        }
        for path, (values, dims) in arrays.items():
            result_array(group, path, values.shape, values.dtype, 0, dims)[...] = values
        metrics = {"inertia": inertia, "clustered": int(sizes.sum()), "excluded": rows.excluded}
        metrics["reassigned"] = km.reassigned
        if contingency.sum():
            metrics.update(label_scores(contingency), labelled=int(contingency.sum()))
        attrs = {
            "status": "complete",
            "layer": layer,
            "settings": asdict(s),
            "metrics": metrics,
            "device": str(dev),
            "pool_dim": rows.dim,
            "pca": {
                "total_variance": fitted.total_variance,
                "n_samples": fitted.n_samples,
                "method": fitted.method,
                "passes": fitted.passes,
                "converged": fitted.converged,
                "explained_variance_ratio": fitted.explained_variance_ratio.tolist(),
            },
            "finished": now(),
            "software": software(torchvision=False),
        }
        group.update_attributes(attrs)
        group = clustering.install(parent, hidden, s.name)
        consolidate(store)  # consolidated again, the result in it, as at the seal
    return Clustering(layer, s.name, dict(group.attrs), group)


def _in_order(rows: Rows, space: _Space, cache, batch: int):
    """(rows, labels, x or None, features) in row order: x (the pooled rows) only when the
    scatter needs them (--pca 1)."""
    if cache is not None and space.pca != 1:
        r, labels, feats = cache
        for start in range(0, len(r), batch):
            sl = slice(start, start + batch)
            yield r[sl], labels[sl], None, feats[sl]
        return
    for r, labels, x in rows.blocks():
        yield r, labels, x, space(x)
