"""Accumulate: dataset-scale statistics of a layer, summed on the device during the pass.

``--stats 'layer*=class-mean,class-std,channel-hist'`` keeps, per layer, aggregates that cost
no storage of the maps themselves:

- ``class-mean``: per class (slot ``label + 1``; slot 0 collects unlabelled rows) the row
  count and the float64 sum of the layer's output (K, *shape);
- ``class-std``: also the float64 sum of squares, for the standard deviation;
- ``channel-hist``: per class and channel, a histogram of the output's values over fixed bins
  (``bins`` between the layer's ``edges``, plus one bin below and one above);
- ``channel-mean``: each sample's mean per channel, (N, C). This one is a row array, written
  with the row blocks like a stored layer (:mod:`actextract.model.reduce` pools it); the others are
  sums, which :class:`Accumulator` keeps on the device in float64 from the layer's output as
  computed (before any pooling and before the cast to the storage dtype).

"Channel" is the layer's layout's (:mod:`actextract.core.axes`): a map's channels in either order,
a token layer's features (its channel-mean is the mean over tokens per feature).

A sum cannot be rewritten like a chunk, so each row block must reach it exactly once whatever
the kills, shards and ranks: the accumulator counts the rows of its blocks as they arrive and
:attr:`Accumulator.summed` says which blocks are entirely in the sums; :mod:`actextract.parts`
commits the sums with that list, and only a committed list counts a block as summed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from actextract.core.axes import channel_axis
from actextract.core.names import match_names
from actextract.errors import LayerNotFoundError, OptionError, option
from actextract.store.parts import TOTALS

__all__ = [
    "ACCUMULATED",
    "DEFAULT_BINS",
    "STAT_KINDS",
    "Accumulator",
    "LayerStatsSpec",
    "hist_edges",
    "parse_stats",
]

STAT_KINDS = ("class-mean", "class-std", "channel-mean", "channel-hist")
ACCUMULATED = tuple(TOTALS)  # sums, not row arrays: the kinds whose totals a store keeps
DEFAULT_BINS = 64
MAX_CLASSES = 1 << 16  # labels beyond this are not class indices
CHUNK_ELEMENTS = 1 << 24  # float64 temporaries per step: 128 MB, whatever the batch


def parse_stats(
    spec: str | Mapping[str, str | Sequence[str]] | None, layers: Sequence[str]
) -> dict[str, tuple[str, ...]]:
    """``'layer*=class-mean,class-std;fc1=channel-hist'`` (``;`` between groups; a group
    without ``=`` means every layer) → {layer: kinds} for the layers that asked for any.
    ``class-std`` implies ``class-mean`` (the mean is its half of the work)."""
    if isinstance(spec, str):
        items = []
        for group in filter(None, (g.strip() for g in spec.split(";"))):
            pat, sep, kinds = group.rpartition("=")
            items.append((pat.strip() if sep else "*", kinds))
    else:
        items = list((spec or {}).items())
    plan: dict[str, set[str]] = {}
    for pat, kinds in items:
        wanted = [k.strip() for k in kinds.split(",")] if isinstance(kinds, str) else list(kinds)
        for kind in filter(None, wanted):
            if kind not in STAT_KINDS:
                raise OptionError(
                    f"{option('stats')} '{pat}={kind}': '{kind}' is not one of "
                    f"{', '.join(STAT_KINDS)}."
                )

        def not_found(p: str) -> Exception:
            return LayerNotFoundError(
                f"{option('stats')} '{p}' matches none of the captured layers "
                f"({', '.join(layers)}); its patterns choose among the layers of "
                f"{option('layers')} and {option('store')}."
            )

        for name in match_names([pat], layers, not_found):
            plan.setdefault(name, set()).update(filter(None, wanted))
    for kinds in plan.values():
        if "class-std" in kinds:
            kinds.add("class-mean")
    return {
        name: tuple(k for k in STAT_KINDS if k in plan[name]) for name in layers if plan.get(name)
    }


def hist_edges(
    values: torch.Tensor, bins: int, given: tuple[float, float] | None = None
) -> list[float]:
    """``bins + 1`` edges: ``given`` (lo, hi), else the span of the finite ``values`` (a probe
    sample's output; ``plan.finite_probe`` finds others where it has none) widened by half
    its width on each side (never below 0 when the layer's values start at 0, as after a
    ReLU). Values outside land in the below/above bins, so the totals stay exact whatever
    the range."""
    if bins < 1:
        raise OptionError(f"{option('hist_bins')} {bins} must be a positive integer.")
    if given is not None:
        lo, hi = float(given[0]), float(given[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise OptionError(
                f"{option('hist_range')} {lo},{hi}: give two finite numbers LO,HI with LO < HI."
            )
    else:
        finite = values[torch.isfinite(values)].double()
        lo, hi = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
        span = hi - lo if hi > lo else max(abs(hi), 1.0)
        lo, hi = (0.0 if lo == 0 else lo - span / 2), hi + span / 2
    # float32 values (what the device compares with), so the edges mean the same everywhere
    return np.linspace(lo, hi, bins + 1).astype(np.float32).astype(np.float64).tolist()


@dataclass(frozen=True)
class LayerStatsSpec:
    """One layer's accumulated statistics: ``kinds`` (of :data:`ACCUMULATED`), the layer's
    output ``shape`` per sample, and the histogram ``edges`` (empty without channel-hist)."""

    layer: str
    kinds: tuple[str, ...]
    shape: tuple[int, ...]
    edges: tuple[float, ...] = ()
    layout: str = ""  # the layer's (:mod:`actextract.core.axes`); "": a store from before layouts
    # a text run's token layer: every real token is a row of ``shape`` (D,), padding left out,
    # and ``tokens`` counts them per class beside the samples' count
    over_tokens: bool = False

    @property
    def channel_axis(self) -> int | None:
        """The per-sample channel (or feature) axis; None: the layout has none. Stores from
        before layouts took the first axis, whatever the layer."""
        if not self.layout:
            return 0 if self.shape else None
        return channel_axis(self.layout, len(self.shape))

    @property
    def channels(self) -> int:
        c = self.channel_axis
        return self.shape[c] if self.shape and c is not None else 1

    @classmethod
    def from_attrs(cls, layer: str, attrs: Mapping) -> LayerStatsSpec:
        kinds = tuple(k for k in attrs["kinds"] if k in ACCUMULATED)
        edges = tuple(attrs.get("edges") or ())
        shape, layout = tuple(attrs["shape"]), attrs.get("layout") or ""
        if attrs.get("over") == "tokens":  # a (T, D) layer summed a token at a time: (D,) rows
            return cls(layer, kinds, shape[1:], edges, "vector", True)
        return cls(layer, kinds, shape, edges, layout)


class _LayerSums:
    """The device tensors of one layer: sum, sum of squares (float64, (K, *shape)) and
    histogram counts (int64, (K, C, bins + 2)); K grows with the labels seen."""

    def __init__(self, spec: LayerStatsSpec, device: torch.device):
        self.spec = spec
        self.device = device
        self.sum = self.sumsq = self.hist = self.tokens = None
        self.edges = torch.tensor(spec.edges, dtype=torch.float32, device=device)
        self.k = 0

    def grow(self, k: int) -> None:
        def grown(t: torch.Tensor | None, shape: tuple[int, ...], dtype) -> torch.Tensor:
            new = torch.zeros((k, *shape), dtype=dtype, device=self.device)
            if t is not None:
                new[: len(t)] = t
            return new

        kinds, shape = self.spec.kinds, self.spec.shape
        if "class-mean" in kinds:
            self.sum = grown(self.sum, shape, torch.float64)
        if "class-std" in kinds:
            self.sumsq = grown(self.sumsq, shape, torch.float64)
        if "channel-hist" in kinds:
            bins = len(self.spec.edges) + 1  # below, len(edges) - 1 bins, above
            self.hist = grown(self.hist, (self.spec.channels, bins), torch.int64)
        if self.spec.over_tokens:
            self.tokens = grown(self.tokens, (), torch.int64)
        self.k = k

    def add(self, x: torch.Tensor, slots: torch.Tensor) -> None:
        """Add rows ``x`` (n, *shape) to the classes ``slots`` (n,) int64 on the device."""
        if self.tokens is not None:
            self.tokens.index_add_(0, slots, torch.ones_like(slots))
        per_row = max(1, math.prod(x.shape[1:]))
        step = max(1, CHUNK_ELEMENTS // per_row)
        for lo in range(0, len(x), step):
            part, s = x[lo : lo + step], slots[lo : lo + step]
            if self.sum is not None:
                flat = part.reshape(len(part), -1).double()
                self.sum.view(self.k, -1).index_add_(0, s, flat)
                if self.sumsq is not None:
                    self.sumsq.view(self.k, -1).index_add_(0, s, flat * flat)
            if self.hist is not None:
                self._histogram(part, s)

    def _histogram(self, x: torch.Tensor, slots: torch.Tensor) -> None:
        """One bincount of (class, channel, bin) for the rows: bin 0 holds values below the
        first edge, the last bin values at or above the last edge and NaN. The channel axis is
        the layout's (a token layer's features, a channels-last map's last axis)."""
        n, c = len(x), self.spec.channels
        axis = self.spec.channel_axis
        if axis:  # channels-last maps, tokens: the channel axis next to the rows
            x = x.movedim(1 + axis, 1).contiguous()
        v = x.reshape(n, c, -1).float()
        # edges[i-1] <= v < edges[i] → i; below → 0; at or above the last, and NaN → last
        bins = torch.bucketize(v, self.edges, right=True)
        width = len(self.edges) + 1
        cell = (slots.view(n, 1, 1) * c + torch.arange(c, device=v.device).view(1, c, 1)) * width
        counts = torch.bincount(bins.add_(cell).reshape(-1), minlength=self.k * c * width)
        self.hist.view(-1).add_(counts)

    def tensors(self) -> dict[str, torch.Tensor]:
        names = ("sum", "sumsq", "hist", "tokens")
        return {n: t for n in names if (t := getattr(self, n)) is not None}


class Accumulator:
    """The run's on-device sums for the layers of ``specs``, fed only with the rows of
    ``blocks`` (this process's row blocks whose statistics are not committed yet; rows of
    other blocks in a batch are left out).

    ``add`` per batch (the layers' outputs as computed, and the batch's rows); ``summed``
    lists the blocks whose every row (bad samples included) is in the sums; ``partial`` says
    whether some block is only partly in (no commit then: a resumed run would add its first
    rows twice); ``state()`` gives the sums."""

    def __init__(
        self,
        specs: Sequence[LayerStatsSpec],
        device: torch.device,
        *,
        chunk_rows: int,
        n: int,
        blocks: Collection[int],
    ):
        self.specs = {s.layer: s for s in specs}
        self.device = device
        self.chunk_rows = chunk_rows
        self.blocks = np.asarray(sorted(blocks), np.int64)
        self._missing = {
            int(b): min(n, (int(b) + 1) * chunk_rows) - int(b) * chunk_rows for b in self.blocks
        }
        self._started: set[int] = set()  # blocks partly in the sums
        self._sums = {s.layer: _LayerSums(s, device) for s in specs}
        self.counts = np.zeros(0, np.int64)  # rows per class slot, on the host (exact)
        self.summed: list[int] = []  # every complete block so far (what a commit covers)

    @property
    def partial(self) -> bool:
        return bool(self._started)

    def add(
        self,
        outputs: Mapping[str, torch.Tensor],
        indices: np.ndarray,
        labels: np.ndarray,
        bad: Sequence[int] = (),
        mask: torch.Tensor | None = None,
    ) -> None:
        """Sum the rows of ``outputs`` ({layer: (B, *shape)}) that belong to this
        accumulator's blocks; ``indices``/``labels`` (B,) are their dataset rows and labels,
        ``bad`` the rows of the batch's skipped samples (they count towards their block);
        ``mask`` (B, T) the batch's real tokens, for the layers summed over tokens."""
        blocks = indices // self.chunk_rows
        keep = np.isin(blocks, self.blocks)
        self._arrived(blocks[keep], np.asarray(bad, np.int64) // self.chunk_rows)
        if not keep.any():
            return
        slots = labels[keep].astype(np.int64) + 1
        wrong = np.flatnonzero((slots < 0) | (slots > MAX_CLASSES))
        if len(wrong):
            i = wrong[0]
            raise OptionError(
                f"sample {indices[keep][i]} has label {labels[keep][i]}, not a class index: "
                f"per-class {option('stats')} need labels 0..{MAX_CLASSES - 1}, or -1 for none. "
                "Drop the class-* kinds, or give the dataset class indices as labels."
            )
        k = int(slots.max()) + 1
        if k > len(self.counts):
            self.counts = np.pad(self.counts, (0, k - len(self.counts)))
            for sums in self._sums.values():
                sums.grow(k)
        np.add.at(self.counts, slots, 1)
        s = torch.from_numpy(slots).to(self.device)
        rows = None if keep.all() else torch.from_numpy(np.flatnonzero(keep)).to(self.device)
        for layer, sums in self._sums.items():
            x = outputs[layer]
            x = x if rows is None else x.index_select(0, rows)
            if sums.spec.over_tokens:  # every real token a row, with its sample's class
                if mask is None:
                    raise ValueError(f"{layer}: statistics over tokens need the attention mask")
                real = (mask if rows is None else mask.index_select(0, rows)).to(torch.bool)
                sums.add(x[real], s.repeat_interleave(real.sum(1)))
            else:
                sums.add(x, s)

    def _arrived(self, blocks: np.ndarray, bad_blocks: np.ndarray) -> None:
        for b in [*blocks.tolist(), *bad_blocks.tolist()]:
            if b in self._missing:
                self._missing[b] -= 1
                self._started.add(b)
                if self._missing[b] == 0:
                    self._started.discard(b)
                    self.summed.append(b)

    def state(self) -> dict[str, dict[str, torch.Tensor | np.ndarray]]:
        """{layer: {sum, sumsq, hist}} (the device tensors) and {"": {"count": (K,)}}: the
        sums so far. Read them before the next ``add``."""
        out: dict[str, dict[str, torch.Tensor | np.ndarray]]
        out = {layer: sums.tensors() for layer, sums in self._sums.items()}
        out[""] = {"count": self.counts.copy()}
        return out
