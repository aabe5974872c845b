"""Stats: the store side of the on-device statistics — committed parts, totals, the reader.

The arrays (``stats/<layer>/...``, ``progress/parts/<part>/``) are described in
``docs/store-format.md`` ("Statistics: stats/ and progress/parts/"), the one copy of the schema.

The per-class arrays are totals, written when the store is sealed. Until then each process
keeps its own sums on the device and commits them now and then as a *part*: the sums go to the
part's spare slot (``a`` or ``b``), then one atomic write of the part's attributes names that
slot and the row blocks it holds. A kill at any moment leaves the previous commit intact. A
block counts as summed only when a committed part lists it; a resumed run sums again exactly
the blocks no part lists (rewriting their rows byte for byte if they were written), so sealing
adds every block once: the totals equal one uninterrupted process's, within float64 rounding,
whatever the kills, shards and ranks.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from actextract.stats.accumulate import Accumulator, LayerStatsSpec
from actextract.store import Store
from actextract.store.build import checked_array
from actextract.store.layout import ArraySpec, now
from actextract.store.location import writable
from actextract.store.parts import PARTS, parts, summed_blocks, summed_layers

__all__ = [
    "ClassStats",
    "PartWriter",
    "accumulated",
    "arrays",
    "finalize",
    "read_stats",
    "repair",
]

log = logging.getLogger(__name__)

WRITE_BYTES = 64 << 20
SUMS = ("sum", "sumsq", "hist", "tokens")


def accumulated(store: Store) -> list[LayerStatsSpec]:
    """The layers whose statistics are sums (class-mean, class-std, channel-hist): those of
    :func:`~actextract.store.parts.summed_layers`, as specs."""
    attrs = store.stats_layers()
    return [LayerStatsSpec.from_attrs(layer, attrs[layer]) for layer in summed_layers(store)]


class PartWriter:
    """This process's part: ``commit()`` writes the accumulator's sums and the blocks they
    hold; ``maybe_commit()`` does so when ``every`` seconds have passed and no block is half
    summed; ``close()`` commits what is new and drops the spare slot."""

    def __init__(self, store: Store, acc: Accumulator, *, every: float, rank: int | None = None):
        self.store, self.acc, self.every = store, acc, every
        who = f"r{rank}-" if rank is not None else ""
        self.name = f"{who}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.slot: str | None = None
        self.committed = 0  # blocks in the last commit
        self.last = time.monotonic()
        with writable(store.location, "create this process's statistics part"):
            self.group = store.group.require_group(f"{PARTS}/{self.name}")
            self.group.update_attributes({"slot": None, "blocks": [], "started": now()})

    def add(self, outputs, indices: np.ndarray, labels: np.ndarray, bad=(), mask=None) -> None:
        """A batch's outputs into the sums (:meth:`Accumulator.add`)."""
        self.acc.add(outputs, indices, labels, bad, mask)

    def maybe_commit(self) -> float:
        """Commit when due and possible; the seconds it took."""
        new = len(self.acc.summed) > self.committed
        if new and not self.acc.partial and time.monotonic() - self.last >= self.every:
            start = time.perf_counter()
            self.commit()
            return time.perf_counter() - start
        return 0.0

    def commit(self) -> None:
        """Sums to the spare slot, then the part's attributes name it (the commit point)."""
        slot = "b" if self.slot == "a" else "a"
        state = self.acc.state()  # the sums of exactly the blocks listed
        blocks = sorted(self.acc.summed)
        with writable(self.store.location, "commit the statistics sums"):
            target = self.group.require_group(slot)
            _write(target, "count", state.pop("")["count"])
            for layer, sums in state.items():
                for name, data in sums.items():
                    _write(target, f"{layer}/{name}", data)
            self.group.update_attributes({"slot": slot, "blocks": blocks, "committed": now()})
        self.slot, self.committed, self.last = slot, len(blocks), time.monotonic()
        log.debug("part %s: committed %d blocks to slot %s", self.name, len(blocks), slot)

    def close(self) -> None:
        if len(self.acc.summed) > self.committed:
            self.commit()
        spare = "b" if self.slot == "a" else "a"
        with writable(self.store.location, "drop the spare statistics slot"):
            if spare in self.group:
                del self.group[spare]


def _write(group, path: str, data: np.ndarray | torch.Tensor, dims=None) -> None:
    """An array of sums (one class per chunk), copied from the device a few classes at a
    time: host memory stays near WRITE_BYTES whatever the size of the sums."""
    t = torch.as_tensor(data)
    arr = checked_array(
        group,
        path,
        tuple(t.shape),
        (1, *t.shape[1:]) if t.ndim > 1 else tuple(max(1, n) for n in t.shape),
        torch.empty(0, dtype=t.dtype).numpy().dtype,
        dims=dims,
    )
    row = max(1, math.prod(t.shape[1:]) * t.element_size())
    step = max(1, WRITE_BYTES // row)
    for lo in range(0, len(t), step):
        arr[lo : lo + step] = t[lo : lo + step].cpu().numpy()


def finalize(store: Store) -> bool:
    """Write the totals under ``stats/<layer>/`` from the committed parts, once every block is
    in one; False (nothing written) while some block is not."""
    specs = accumulated(store)
    if not specs:
        return True
    if not summed_blocks(store).all():
        return False
    committed = list(parts(store))
    counts = np.zeros(0, np.int64)
    for part in committed:
        c = part.group["count"][:]
        counts = np.pad(counts, (0, max(0, len(c) - len(counts))))
        counts[: len(c)] += c
    slots = np.flatnonzero(counts)  # classes that have rows
    with writable(store.location, "write the statistics totals"):
        for spec in specs:
            _finalize_layer(store, spec, committed, slots, counts[slots])
        for part in committed:  # what a kill mid-commit left in a spare slot
            for spare in set("ab") - {part.slot}:
                if spare in part.parent:
                    del part.parent[spare]
    return True


def _finalize_layer(store: Store, spec: LayerStatsSpec, parts, slots, counts) -> None:
    """One class at a time (memory: a few of the layer's maps, whatever the class count)."""
    group = store.group.require_group(f"stats/{spec.layer}")
    _write(group, "classes", (slots - 1).astype(np.int64), ("class",))
    _write(group, "count", counts.astype(np.int64), ("class",))
    if spec.over_tokens:  # the rows of the sums are tokens: their count per class divides
        tokens = [_class_total(parts, spec.layer, "tokens", slot) for slot in slots.tolist()]
        counts = np.asarray([int(t) if t is not None else 0 for t in tokens], np.int64)
        _write(group, "tokens", counts, ("class",))
    k = len(slots)
    names = ArraySpec(spec.layer, tuple(spec.shape), layout=spec.layout).dimension_names()
    maps = ("class", *names[1:])
    out = {}
    if "class-mean" in spec.kinds:
        out["mean"] = (k, *spec.shape), np.float64, maps
    if "class-std" in spec.kinds:
        out["std"] = (k, *spec.shape), np.float64, maps
    if "channel-hist" in spec.kinds:  # the channel axis named as the layer's dimensions are
        c = spec.channel_axis
        channel = names[1 + c] if c is not None else "channel"
        out["hist"] = (k, spec.channels, len(spec.edges) + 1), np.int64, ("class", channel, "bin")
    arrays = {
        name: checked_array(group, name, shape, (1, *shape[1:]), t, dims=dims)
        for name, (shape, t, dims) in out.items()
    }
    if "hist" in arrays:
        arrays["hist"].attrs.update({"edges": list(spec.edges), "below_first_bin": True})
    for j, (slot, n) in enumerate(zip(slots.tolist(), counts.tolist(), strict=True)):
        total = {name: _class_total(parts, spec.layer, name, slot) for name in SUMS}
        if "mean" in arrays:
            mean = total["sum"] / max(n, 1)
            arrays["mean"][j] = mean
            if "std" in arrays:
                arrays["std"][j] = np.sqrt(np.maximum(total["sumsq"] / max(n, 1) - mean**2, 0.0))
        if "hist" in arrays:
            arrays["hist"][j] = total["hist"]


def _class_total(parts, layer: str, name: str, slot: int) -> np.ndarray | None:
    total = None
    for part in parts:
        path = f"{layer}/{name}"
        if path not in part.group:
            continue
        arr = part.group[path]
        if slot < arr.shape[0]:
            row = arr[slot]
            total = row if total is None else total + row
    return total


def arrays(store: Store) -> list[str]:
    """The arrays of statistics read whole by ``verify``: the committed slots of the parts,
    and the totals (not the channel means: row arrays, checked block by block)."""
    paths = [f"{PARTS}/{p.name}/{p.slot}/{path}" for p in parts(store) for path in _tree(p.group)]
    if "stats" in store.group:
        paths += [f"stats/{path}" for path in _tree(store.group["stats"])]
    return [p for p in paths if not p.endswith("/channel_means")]


def _tree(group, prefix: str = "") -> Iterator[str]:
    with warnings.catch_warnings():  # zarr warns of a folder without its zarr.json
        warnings.simplefilter("ignore")
        arrays, groups = list(group.arrays()), list(group.groups())
    for name, _ in arrays:
        yield f"{prefix}{name}"
    for name, sub in groups:
        yield from _tree(sub, f"{prefix}{name}/")


def repair(store: Store, damaged: list[tuple[str, str]]) -> list[str]:
    """Drop the damaged parts (their blocks count as not summed, so ``--resume`` sums them
    again) and the totals (rewritten when the store is sealed again); the store is no longer
    sealed. Returns what was dropped."""
    dropped = sorted({"/".join(p.split("/")[:3]) for p, _ in damaged if p.startswith(PARTS)})
    with writable(store.location, "drop the damaged statistics"):
        for part in dropped:
            del store.group[part]
        for spec in accumulated(store):
            for name in ("classes", "count", "mean", "std", "hist"):
                path = f"stats/{spec.layer}/{name}"
                if path in store.group:
                    del store.group[path]
                    dropped.append(path)
        if store.status == "complete":
            store.update_attrs(status="incomplete")
    return dropped


@dataclass(frozen=True)
class ClassStats:
    """A layer's totals as ``stats/<layer>/`` holds them (None where not kept)."""

    layer: str
    classes: np.ndarray  # (K,) labels, -1 for unlabelled rows
    counts: np.ndarray  # (K,)
    mean: np.ndarray | None  # (K, *shape) float64
    std: np.ndarray | None
    hist: np.ndarray | None  # (K, C, bins + 2)
    edges: np.ndarray | None  # (bins + 1,)


def read_stats(store: Store, layer: str) -> ClassStats | None:
    """The layer's per-class totals, or None when the store has none (not asked, or not
    sealed yet)."""
    path = f"stats/{layer}"
    if path not in store.group or "count" not in store.group[path]:
        return None
    group = store.group[path]
    get = lambda name: group[name][...] if name in group else None  # noqa: E731
    hist = group.get("hist")
    return ClassStats(
        layer,
        get("classes"),
        get("count"),
        get("mean"),
        get("std"),
        hist[...] if hist is not None else None,
        np.asarray(hist.attrs["edges"]) if hist is not None else None,
    )
