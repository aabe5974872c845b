"""Row blocks as the sink fills and writes them: a batch whose rows are placed (:class:`Filled`),
a block being filled (:class:`Block`), what the threads of one turn share (:class:`Turn`), and
the NaN/Inf policy and counts of a block (:func:`nonfinite_counts`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from actextract.data.samples import BadSample
from actextract.errors import NonFiniteError, OptionError, option

__all__ = [
    "NONFINITE_POLICIES",
    "Block",
    "Filled",
    "Turn",
    "check_nonfinite_policy",
    "nonfinite_counts",
]

NONFINITE_POLICIES = ("count", "error")


def check_nonfinite_policy(policy: str) -> None:
    if policy not in NONFINITE_POLICIES:
        raise OptionError(
            f"{option('on_nonfinite')} '{policy}' is not one of {', '.join(NONFINITE_POLICIES)}."
        )


@dataclass
class Filled:
    """A batch whose copies into its row blocks are issued. ``ready``: the CUDA event that
    fires when they have landed (None on the CPU, where they are done)."""

    indices: np.ndarray  # (B,) int64 dataset rows of the good samples
    labels: np.ndarray  # (B,) int64
    ids: list[str]
    bad: list[BadSample] = field(default_factory=list)
    ready: Any = None  # torch.cuda.Event | None
    tokens: dict[str, np.ndarray] | None = None  # text: (B, T) mask and input_ids


@dataclass
class Block:
    """A row block being filled on ring slot ``slot``."""

    block: int
    start: int
    slot: int
    labels: np.ndarray
    ids: list[str]
    missing: int  # rows still to come
    bad_rows: list[int] = field(default_factory=list)  # left at the fill value (NaN)
    errors: list[str] = field(default_factory=list)  # why each bad row was skipped
    ready: Any = None  # the last copy into it (copies run in order on one stream)
    tokens: dict[str, np.ndarray] = field(default_factory=dict)  # text: (rows, T) each
    # per layer, (first row, rows, the held output rows; None: they are in the slot's buffer)
    pieces: dict[str, list[tuple[int, int, torch.Tensor | None]]] = field(default_factory=dict)


class Turn:
    """What one turn's threads share: per block, its NaN/Inf rows found so far and its chunks
    still being written."""

    def __init__(self, blocks: list[Block], arrays: int):
        self.found: dict[int, dict[str, np.ndarray]] = {b.block: {} for b in blocks}
        self._left = {b.block: arrays for b in blocks}
        self._lock = threading.Lock()

    def written(self, blk: Block) -> bool:
        """Count one of the block's chunks written (or failed); whether it was the last."""
        with self._lock:
            self._left[blk.block] -= 1
            return self._left[blk.block] == 0


def nonfinite_counts(blk: Block, flags: np.ndarray, keys: list[str], policy: str) -> list[int]:
    """Per row array (``keys``), the block's rows whose ``flags`` ((rows, arrays) bool) say
    NaN/Inf, skipped rows (NaN on purpose) left out; raises NonFiniteError under
    ``policy="error"``."""
    n = len(blk.labels)
    flags[blk.bad_rows] = False
    counts = flags.sum(axis=0).tolist()
    if policy == "error" and any(counts):
        j = int(np.flatnonzero(flags.any(axis=0))[0])
        r = int(np.flatnonzero(flags[:, j])[0])
        key = keys[j]
        what = f"'{key}'" if "/" in key else f"layer '{key}'"
        raise NonFiniteError(
            f"{what} has NaN or Inf for sample {blk.start + r} "
            f"('{blk.ids[r]}'), and {sum(counts) - 1} more row(s) of rows "
            f"{blk.start}-{blk.start + n} across layers. Check the input and "
            "the model (a float32 value beyond ±65504 becomes Inf in float16: --dtype "
            "float32 (dtype='float32') keeps it), or pass --on-nonfinite count "
            "(on_nonfinite='count') to store them and count them."
        )
    return counts
