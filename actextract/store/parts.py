"""Parts: the completion records of the statistics' sums (``--stats``), as the store keeps
them. Each process commits its sums now and then as a *part* under ``progress/parts/``, whose
attributes name its committed slot and the row blocks it holds (:mod:`actextract.stats.parts`
writes them); a block is summed only when one committed part lists it. Here: listing the
parts, which blocks are summed, and what is wrong with them (a block in two parts, a sealed
store without its totals) for the quick check and ``verify``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from actextract.errors import StoreError
from actextract.store.run import Store

__all__ = [
    "PARTS",
    "TOTALS",
    "Part",
    "missing_totals",
    "overlaps",
    "parts",
    "problems",
    "summed_blocks",
    "summed_layers",
]

PARTS = "progress/parts"


def summed_layers(store: Store) -> dict[str, list[str]]:
    """{layer: its statistics that are sums (class-mean, class-std, channel-hist)}, the layers
    without any left out."""
    out = {
        layer: [k for k in a["kinds"] if k in TOTALS] for layer, a in store.stats_layers().items()
    }
    return {layer: kinds for layer, kinds in out.items() if kinds}


@dataclass(frozen=True)
class Part:
    name: str
    blocks: list[int]
    slot: str
    parent: Any  # the part's zarr group
    group: Any  # its committed slot


def parts(store: Store) -> Iterator[Part]:
    if PARTS not in store.group:
        return
    with warnings.catch_warnings():  # zarr warns of a *.partial file among the parts
        warnings.simplefilter("ignore")
        groups = list(store.group[PARTS].groups())
    for name, group in groups:
        slot = group.attrs.get("slot")
        if slot:
            blocks = [int(b) for b in group.attrs.get("blocks", [])]
            yield Part(name, blocks, str(slot), group, group[slot])


def summed_blocks(store: Store) -> np.ndarray:
    """(n_blocks,) bool: the blocks whose statistics a committed part holds (all True when
    the store keeps no sums). A block in two parts is a broken store, never counted twice."""
    out = np.zeros(store.n_blocks, bool)
    if not summed_layers(store):
        out[:] = True
        return out
    twice = overlaps(store)
    if twice:
        path, what = twice[0]
        raise StoreError(
            f"{store.location}: {path} {what}, so its sums would count twice. Run `actextract "
            f"verify {store.location} --repair` (it drops that part), then the same extract "
            "command with --resume, which sums the blocks no part holds."
        )
    for part in parts(store):
        out[part.blocks] = True
    return out


TOTALS = {"class-mean": "mean", "class-std": "std", "channel-hist": "hist"}  # kind: array


def problems(store: Store) -> list[tuple[str, str]]:
    """(array, what) of the statistics' bookkeeping that is wrong without a chunk being
    damaged: a row block in two parts (:func:`overlaps`), a total the sealed store lacks
    (:func:`missing_totals`); ``verify --repair`` mends both."""
    return overlaps(store) + missing_totals(store)


def missing_totals(store: Store) -> list[tuple[str, str]]:
    """(array, what) for each total a sealed store must hold under ``stats/<layer>/`` whose
    metadata cannot be read (a deleted file or folder; ``repair`` drops the totals, and the
    resume that seals the store again rewrites them)."""
    if store.status != "complete":
        return []
    out = []
    for layer, kinds in summed_layers(store).items():
        for name in ("classes", "count", *(TOTALS[k] for k in kinds)):
            path = f"stats/{layer}/{name}"
            try:
                store.group[path]
            except (KeyError, FileNotFoundError):
                out.append((path, "missing: its metadata cannot be read"))
    return out


def overlaps(store: Store) -> list[tuple[str, str]]:
    """(part, what) for each committed part holding a row block that an earlier part holds
    too (two writers that summed the same block: the later part is dropped by ``repair``)."""
    seen: dict[int, str] = {}
    out = []
    for part in parts(store):
        both = [b for b in part.blocks if b in seen]
        if both:
            out.append(
                (
                    f"{PARTS}/{part.name}",
                    f"holds row block {both[0]}, which {PARTS}/{seen[both[0]]} holds too",
                )
            )
            continue
        seen.update(dict.fromkeys(part.blocks, part.name))
    return out
