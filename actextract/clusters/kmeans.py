"""The clustering algorithms, fed one batch of feature rows at a time on the device: a
streaming PCA, k-means++ seeding and mini-batch k-means. Pure torch (scikit-learn's
IncrementalPCA for very wide rows); they know nothing of stores — :mod:`actextract.clusters.job`
streams a store's rows through them.

- :class:`StreamingPca` is exact up to ``EXACT_DIM_CPU`` features (``EXACT_DIM_GPU`` on a
  GPU): one pass sums the rows and their outer products in float64 on the device, and the
  eigenvectors of that covariance are the components, the same as an SVD of the whole centred
  matrix to float64 rounding. Rows are shifted by the first batch's mean before they are
  summed, so a large mean does not cancel the variance's digits. Wider rows would make the
  covariance the bottleneck (2·D² flops a row: 17 s for 20,000 rows of 4,096 on two cores),
  so there it runs randomized subspace iteration on the same shifted sums (Halko, Martinsson
  & Tropp 2011, with Rayleigh-Ritz): each pass multiplies the rows by ``n`` + oversampled
  directions (4·D·l flops a row), until the top Ritz values move by less than ``tol`` of the
  largest between passes (at most ``max_passes``).
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
    "EXACT_DIM_CPU",
    "EXACT_DIM_GPU",
    "MiniBatchKMeans",
    "Nearest",
    "Pca",
    "StreamingPca",
    "kmeans_pp",
    "sq_distances",
]

# The exact PCA (a D×D covariance: 2·D² flops a row, and its eigh) up to this many features;
# beyond, randomized subspace iteration (4·D·l flops a row and pass, l = n + oversampling).
EXACT_DIM_CPU = 1_024
EXACT_DIM_GPU = 8_192


@dataclass(frozen=True)
class Pca:
    """A fitted PCA: ``components`` (n, D) orthonormal rows, largest variance first, each
    signed so that its largest entry (in absolute value) is positive."""

    mean: np.ndarray  # (D,) float64
    components: np.ndarray  # (n, D) float64
    explained_variance: np.ndarray  # (n,) float64, with the n - 1 divisor (as numpy's var(ddof=1))
    total_variance: float  # the sum of every feature's variance (ddof=1)
    n_samples: int
    method: str = "covariance"  # or "randomized" (subspace iteration, for wide rows)
    passes: int = 1  # over the rows
    converged: bool = True  # False: randomized, stopped at max_passes

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
    """PCA of rows given one pass at a time (see the module's notes): :meth:`update` with
    every batch of a pass, then :meth:`end_pass`, which says whether to pass over the rows
    once more; then :meth:`result`."""

    def __init__(
        self,
        n_components: int,
        dim: int,
        device: torch.device,
        *,
        exact_dim: int | None = None,
        tol: float = 1e-3,
        max_passes: int = 8,
    ):
        self.n_components, self.dim, self.device = n_components, dim, device
        if exact_dim is None:
            exact_dim = EXACT_DIM_GPU if device.type == "cuda" else EXACT_DIM_CPU
        self.exact = dim <= exact_dim
        self.tol, self.max_passes = tol, max_passes
        self.n = self.passes = 0
        self.converged = self.exact  # randomized: once the Ritz values stop moving
        f64 = {"dtype": torch.float64, "device": device}
        self._shift: torch.Tensor | None = None
        self._sum = torch.zeros(dim, **f64)
        self._sumsq = torch.zeros((), **f64)
        if self.exact:
            self._outer = torch.zeros(dim, dim, **f64)
            return
        width = min(dim, n_components + max(10, n_components // 2))
        gen = torch.Generator(device=device).manual_seed(0)
        self._q = torch.linalg.qr(torch.randn(dim, width, generator=gen, **f64)).Q
        self._z = torch.zeros(dim, width, **f64)
        self._ritz: torch.Tensor | None = None
        self._found: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, x: torch.Tensor) -> None:
        """Add (B, D) rows of this pass (any float dtype, on any device)."""
        if not len(x):
            return
        x = x.to(self.device)
        if self._shift is None:  # float32-representable, so both paths subtract the same
            self._shift = x.double().mean(0).float().double()
        if self.exact:
            x64 = x.double() - self._shift
            self._sum += x64.sum(0)
            self._sumsq += (x64 * x64).sum()
            self.n += len(x)
            self._outer.addmm_(x64.T, x64)
            return
        # randomized: float32 within the batch (its rounding is far below the tolerance),
        # summed over batches in float64
        x32 = x.float() - self._shift.float()
        if self.passes == 0:
            self._sum += x32.sum(0, dtype=torch.float64)
            self._sumsq += (x32 * x32).sum(dtype=torch.float64)
            self.n += len(x)
        self._z += (x32.T @ (x32 @ self._q.float())).double()  # X'X Q: one power step

    def end_pass(self) -> bool:
        """After a pass: True when the rows must be given once more (randomized subspace
        iteration whose Ritz values still move by more than ``tol`` of the largest)."""
        self.passes += 1
        if self.exact or not self.n:
            return False
        m = self._sum / self.n
        cq = (self._z - self.n * torch.outer(m, m @ self._q)) / max(self.n - 1, 1)  # C Q
        t = self._q.T @ cq
        values, small = torch.linalg.eigh((t + t.T) / 2)  # Rayleigh-Ritz, ascending
        ritz = values.flip(0)[: self.n_components]
        prev, self._ritz = self._ritz, ritz
        moved = None if prev is None else float((ritz - prev).abs().max() / ritz[0].abs())
        self.converged = moved is not None and moved <= self.tol
        if self.converged or self.passes >= self.max_passes:
            self._found = (ritz, (self._q @ small).flip(1)[:, : self.n_components])
            return False
        self._q = torch.linalg.qr(cq).Q
        self._z.zero_()
        return True

    def result(self) -> Pca:
        if self._shift is None:
            raise ValueError("no rows were given")
        n = self.n
        mean_shifted = self._sum / n
        total = float((self._sumsq - n * mean_shifted @ mean_shifted) / max(n - 1, 1))
        if self.exact:
            cov = (self._outer - n * torch.outer(mean_shifted, mean_shifted)) / max(n - 1, 1)
            values, vectors = torch.linalg.eigh(cov)  # ascending
            values, vectors = values.flip(0), vectors.flip(1)
        else:
            if self._found is None:
                raise ValueError("end_pass() was not called after the last pass")
            values, vectors = self._found
        k = self.n_components
        return Pca(
            mean=(mean_shifted + self._shift).cpu().numpy(),
            components=_flip_signs(vectors[:, :k].T.cpu().numpy()),
            explained_variance=values[:k].clamp_min(0).cpu().numpy(),
            total_variance=total,
            n_samples=n,
            method="covariance" if self.exact else "randomized",
            passes=self.passes,
            converged=self.converged,
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
