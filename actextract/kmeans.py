"""The clustering algorithms, fed one batch of feature rows at a time on the device: a
streaming PCA, k-means++ seeding and mini-batch k-means. Pure torch (scikit-learn's
IncrementalPCA for very wide rows); they know nothing of stores — :mod:`actextract.cluster`
streams a store's rows through them.

- :class:`StreamingPca` sums the rows and their outer products in float64 on the device, in
  one pass, and takes the eigenvectors of the covariance at the end: the same components and
  variances as an SVD of the whole centred matrix, to float64 rounding. Rows are shifted by the
  first batch's mean before they are summed, so a large mean does not cancel the variance's
  digits. Past ``max_dim`` features (a D×D float64 matrix of 2 GiB) it hands the batches to
  scikit-learn's IncrementalPCA instead, on the CPU.
- :func:`kmeans_pp` is greedy k-means++ (Arthur & Vassilvitskii; ``2 + ln k`` candidates per
  centre, as scikit-learn does), on a sample of the rows.
- :class:`MiniBatchKMeans` is Sculley's mini-batch k-means: each centre moves to the running
  mean of every row ever assigned to it (a per-centre learning rate of 1/count), and a centre
  that no row chose during a whole epoch is moved to the row farthest from its centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "MAX_COVARIANCE_DIM",
    "MiniBatchKMeans",
    "Nearest",
    "Pca",
    "StreamingPca",
    "kmeans_pp",
    "sq_distances",
]

MAX_COVARIANCE_DIM = 16_384  # D×D float64 = 2 GiB on the device


@dataclass(frozen=True)
class Pca:
    """A fitted PCA: ``components`` (n, D) orthonormal rows, largest variance first, each
    signed so that its largest entry (in absolute value) is positive."""

    mean: np.ndarray  # (D,) float64
    components: np.ndarray  # (n, D) float64
    explained_variance: np.ndarray  # (n,) float64, with the n - 1 divisor (as numpy's var(ddof=1))
    total_variance: float  # the sum of every feature's variance (ddof=1)
    n_samples: int

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        if self.total_variance <= 0:
            return np.zeros_like(self.explained_variance)
        return self.explained_variance / self.total_variance

    def projector(self, device: torch.device, n: int | None = None):
        """``project(x)``: (B, D) float32 rows on ``device`` → (B, n) coordinates."""
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=device)
        basis = torch.as_tensor(self.components[:n], dtype=torch.float32, device=device).T

        def project(x: torch.Tensor) -> torch.Tensor:
            return (x - mean) @ basis

        return project


def _flip_signs(components: np.ndarray) -> np.ndarray:
    """Sign each row so that its entry of largest magnitude is positive (scikit-learn's
    ``svd_flip`` on the components), so results do not depend on the solver's sign."""
    pick = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), pick])
    signs[signs == 0] = 1
    return components * signs[:, None]


class StreamingPca:
    """PCA of rows given a batch at a time (see the module's notes)."""

    def __init__(
        self, n_components: int, dim: int, device: torch.device, max_dim: int = MAX_COVARIANCE_DIM
    ):
        self.n_components, self.dim, self.device = n_components, dim, device
        self.n = 0
        self._shift: torch.Tensor | None = None
        self._sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self._outer: torch.Tensor | None = None
        self._sklearn = None
        self._pending: list[np.ndarray] = []
        self._held: np.ndarray | None = None
        if dim <= max_dim:
            self._outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        else:
            from sklearn.decomposition import IncrementalPCA

            self._sklearn = IncrementalPCA(n_components=n_components)

    def update(self, x: torch.Tensor) -> None:
        """Add (B, D) rows (any float dtype, on any device)."""
        if not len(x):
            return
        if self._sklearn is not None:
            self._pending.append(x.detach().to("cpu", torch.float64).numpy())
            if sum(map(len, self._pending)) >= max(self.n_components, 256):
                block, self._pending = np.concatenate(self._pending), []
                if self._held is not None:  # the last block waits: a short tail joins it
                    self._fit(self._held)
                self._held = block
            return
        x = x.to(self.device, torch.float64)
        if self._shift is None:
            self._shift = x.mean(0)
        x = x - self._shift
        self._sum += x.sum(0)
        self._outer.addmm_(x.T, x)  # type: ignore[union-attr]
        self.n += len(x)

    def _fit(self, block: np.ndarray) -> None:
        self._sklearn.partial_fit(block)  # type: ignore[union-attr]
        self.n += len(block)

    def result(self) -> Pca:
        if self._sklearn is not None:
            # IncrementalPCA takes at least n_components rows per call: the tail joins the
            # block held back for it
            tail = [b for b in (self._held, *self._pending) if b is not None]
            self._held, self._pending = None, []
            if tail:
                self._fit(np.concatenate(tail))
            fit = self._sklearn
            total = float(fit.explained_variance_[0] / fit.explained_variance_ratio_[0])
            return Pca(
                mean=np.asarray(fit.mean_, np.float64),
                components=_flip_signs(np.asarray(fit.components_, np.float64)),
                explained_variance=np.asarray(fit.explained_variance_, np.float64),
                total_variance=total,
                n_samples=self.n,
            )
        assert self._outer is not None and self._shift is not None, "no rows were given"
        n = self.n
        mean_shifted = self._sum / n
        cov = (self._outer - n * torch.outer(mean_shifted, mean_shifted)) / max(n - 1, 1)
        values, vectors = torch.linalg.eigh(cov)  # ascending
        top = torch.flip(torch.arange(self.dim, device=self.device), [0])[: self.n_components]
        return Pca(
            mean=(mean_shifted + self._shift).cpu().numpy(),
            components=_flip_signs(vectors[:, top].T.cpu().numpy()),
            explained_variance=values[top].clamp_min(0).cpu().numpy(),
            total_variance=float(torch.trace(cov)),
            n_samples=n,
        )


def sq_distances(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """(B, K) squared Euclidean distances of rows ``x`` (B, d) to ``centers`` (K, d)."""
    d = (x * x).sum(1, keepdim=True) - 2 * x @ centers.T + (centers * centers).sum(1)[None]
    return d.clamp_min_(0)


def kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k centres chosen among the rows of ``x`` (n, d) by greedy k-means++; ``generator``
    lives on ``x``'s device."""
    n = len(x)
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=generator, device=x.device))
    chosen = [first]
    d2 = sq_distances(x, x[first : first + 1])[:, 0]
    for _ in range(1, k):
        total = d2.sum()
        # every row on a centre already (duplicates): any row will do
        weights = torch.ones_like(d2) if total <= 0 else d2 / total
        candidates = torch.multinomial(weights, trials, replacement=True, generator=generator)
        new = torch.minimum(d2[None], sq_distances(x[candidates], x))  # (trials, n)
        best = int(new.sum(1).argmin())
        chosen.append(int(candidates[best]))
        d2 = new[best]
    return x[torch.tensor(chosen, device=x.device)].clone()


class MiniBatchKMeans:
    """Mini-batch k-means from given centres (see the module's notes)."""

    def __init__(self, centers: torch.Tensor):
        self.centers = centers.to(torch.float32).clone()
        k = len(centers)
        self.counts = torch.zeros(k, dtype=torch.float64, device=centers.device)
        self._epoch_counts = torch.zeros(k, dtype=torch.int64, device=centers.device)
        self._far_row: torch.Tensor | None = None  # the last batch's farthest rows
        self.reassigned = 0

    def step(self, x: torch.Tensor) -> None:
        """Move the centres towards one batch (B, d) of float32 rows."""
        d = sq_distances(x, self.centers)
        labels = d.argmin(1)
        k = len(self.centers)
        sums = torch.zeros_like(self.centers).index_add_(0, labels, x)
        n = torch.bincount(labels, minlength=k)
        self._epoch_counts += n
        self.counts += n
        moved = n > 0
        if moved.any():
            weight = (1.0 / self.counts[moved]).to(torch.float32)[:, None]
            c = self.centers[moved]
            self.centers[moved] = c + weight * (sums[moved] - n[moved, None] * c)
        own = d.gather(1, labels[:, None])[:, 0]
        far = torch.argsort(own, descending=True)[:k]
        self._far_row = x[far].clone()

    def end_epoch(self) -> int:
        """Move each centre no row chose this epoch onto one of the farthest rows of the last
        batch; returns how many moved."""
        empty = torch.nonzero(self._epoch_counts == 0)[:, 0]
        moved = 0
        if len(empty) and self._far_row is not None:
            moved = min(len(empty), len(self._far_row))
            self.centers[empty[:moved]] = self._far_row[:moved]
            self.counts[empty[:moved]] = 1
        self._epoch_counts.zero_()
        self.reassigned += moved
        return moved

    def assign(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels int64, squared distance to the own centre float32) of rows ``x``."""
        d = sq_distances(x, self.centers)
        dist, labels = d.min(1)
        return labels, dist


class Nearest:
    """The ``m`` rows nearest each of ``k`` centres, kept on the device as batches pass."""

    def __init__(self, k: int, m: int, device: torch.device):
        self.k, self.m = k, m
        self.dist = torch.full((k, m), math.inf, device=device)
        self.rows = torch.full((k, m), -1, dtype=torch.int64, device=device)

    def add(self, rows: torch.Tensor, labels: torch.Tensor, dist: torch.Tensor) -> None:
        """``rows`` (B,) the rows' store indices, ``labels`` their clusters, ``dist`` their
        squared distances."""
        step = max(1, (1 << 24) // max(self.k, 1))  # at most 16 M candidates at a time
        for start in range(0, len(rows), step):
            sl = slice(start, start + step)
            r, lab, d = rows[sl], labels[sl], dist[sl]
            cand = torch.full((self.k, len(r)), math.inf, device=d.device)
            cand[lab, torch.arange(len(r), device=d.device)] = d
            all_d = torch.cat([self.dist, cand], 1)
            all_r = torch.cat([self.rows, r[None].expand(self.k, -1)], 1)
            best = torch.topk(all_d, self.m, dim=1, largest=False).indices
            self.dist = all_d.gather(1, best)
            self.rows = torch.where(torch.isinf(self.dist), -1, all_r.gather(1, best))
