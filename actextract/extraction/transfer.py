"""Device→host: a ring of preallocated row-block buffers, and the copy of each batch into them.

A batch's activations are copied straight into the host buffers of the row blocks its rows
belong to (``Run``: which rows of the batch land where), so no byte is copied twice on the
host: on CUDA the buffers are pinned and the copies run on a side stream after the compute
stream's work, so the copy of batch k overlaps the forward of batch k+1; on the CPU the copy
is also the cast to the storage dtype (one pass over the data). A buffer goes back to the ring
only once its writer is done with it, and when none is free the engine waits (back-pressure):
host memory is ``slots`` row blocks whatever the dataset size.
"""

from __future__ import annotations

import math
import queue
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from actextract.errors import OptionError

__all__ = ["BlockRing", "Run", "ToHost", "blocks_open_at_once", "nonfinite_rows", "ring_slots"]


@dataclass(frozen=True)
class Run:
    """Consecutive rows of a batch that land in one row block: ``rows`` of the batch's
    tensors go to ``dest`` ({layer: (len, *shape)} views of that block's host buffers), and
    whether each row holds a NaN or Inf to ``flags`` ((len, n_layers) uint8, layers in
    ``dest``'s order)."""

    rows: slice
    dest: Mapping[str, torch.Tensor]
    flags: torch.Tensor | None = None


def nonfinite_rows(t: torch.Tensor) -> torch.Tensor:
    """(B,) bool: rows of ``t`` (B, ...) with a NaN or Inf. A row's max and min are finite
    exactly when all its values are (both propagate NaN): two reductions that read ``t``
    at memory speed and allocate nothing of its size (``isfinite(t)`` would allocate, and
    summing float16 in float32 converts every value: both ~10x slower on a CPU)."""
    flat = t.reshape(len(t), -1)
    if flat.shape[1] == 0:
        return torch.zeros(len(t), dtype=torch.bool, device=t.device)
    return ~(torch.isfinite(flat.amax(1)) & torch.isfinite(flat.amin(1)))


def blocks_open_at_once(batch_size: int, chunk_rows: int) -> int:
    """How many row blocks one batch of consecutive rows can touch: the ring's minimum."""
    if chunk_rows % batch_size == 0:
        return 1  # batches tile blocks exactly
    straddle = 0 if batch_size % chunk_rows == 0 else 1
    return math.ceil(batch_size / chunk_rows) + straddle


def ring_slots(host_buffers: int | None, *, batch_size: int, chunk_rows: int, writers: int) -> int:
    """Row blocks in the ring: ``host_buffers`` when given (at least what one batch touches,
    or the engine would wait for itself), else that minimum plus one per writer, so that the
    engine fills a block while every writer writes one."""
    need = blocks_open_at_once(batch_size, chunk_rows)
    if host_buffers is None:
        return need + writers
    if host_buffers < need:
        raise OptionError(
            f"host_buffers={host_buffers}: a batch of {batch_size} rows touches up to {need} "
            f"row blocks of {chunk_rows} rows; give at least {need} (or leave it unset)."
        )
    return host_buffers


class BlockRing:
    """``slots`` row-block buffers, each {layer: (rows, *shape)} in the storage dtype (pinned
    when ``pin``), allocated on first use and reused."""

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, ...]],
        dtype: torch.dtype,
        *,
        rows: int,
        slots: int,
        pin: bool = False,
    ):
        if slots < 1:
            raise OptionError(f"host buffers: {slots} row blocks; the ring needs at least 1.")
        self.shapes, self.dtype, self.rows, self.slots, self.pin = shapes, dtype, rows, slots, pin
        self._free: queue.Queue[int] = queue.Queue()
        for slot in range(slots):
            self._free.put(slot)
        self._buffers: list[dict[str, torch.Tensor] | None] = [None] * slots
        self._flags: list[torch.Tensor | None] = [None] * slots

    @property
    def slot_bytes(self) -> int:
        """Host bytes of one row block of every layer."""
        return self.rows * sum(math.prod(s) for s in self.shapes.values()) * self.dtype.itemsize

    def acquire(self, check: Callable[[], None] = lambda: None) -> int:
        """Wait for a free slot, calling ``check`` while waiting (it raises when the writers
        failed, so a dead writer never hangs the engine)."""
        while True:
            check()
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                continue

    def buffers(self, slot: int) -> dict[str, torch.Tensor]:
        """The slot's {layer: (rows, *shape)} host tensors."""
        bufs = self._buffers[slot]
        if bufs is None:
            bufs = self._buffers[slot] = {
                name: torch.empty((self.rows, *shape), dtype=self.dtype, pin_memory=self.pin)
                for name, shape in self.shapes.items()
            }
        return bufs

    def flags(self, slot: int) -> torch.Tensor:
        """The slot's (rows, n_layers) uint8 buffer: 1 where a row of a layer is not finite."""
        flags = self._flags[slot]
        if flags is None:
            shape = (self.rows, len(self.shapes))
            flags = self._flags[slot] = torch.zeros(shape, dtype=torch.uint8, pin_memory=self.pin)
        return flags

    def release(self, slot: int) -> None:
        self._free.put(slot)

    @property
    def free(self) -> int:
        return self._free.qsize()


class ToHost:
    """``to_host(acts, runs)`` copies each run's rows of ``acts`` ({layer: (B, *shape)} on the
    device) into its host buffers, with the rows' non-finite flags (taken from the values as
    stored: a float32 value beyond float16's range counts), and returns (CUDA event that
    fires when the copies have landed or None, seconds the host spent copying). On CUDA the
    copies' GPU time is read from events without a per-batch sync, and :meth:`gpu_seconds`
    totals it."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self._timed: deque[tuple[torch.cuda.Event, torch.cuda.Event]] = deque()
        self._gpu_ms = 0.0

    def __call__(self, acts: Mapping[str, torch.Tensor], runs: Sequence[Run]):
        if not acts or not runs:
            return None, 0.0
        t0 = time.perf_counter()
        if not self.cuda:
            for run in runs:
                for j, (name, dest) in enumerate(run.dest.items()):
                    dest.copy_(acts[name][run.rows])  # casts to the storage dtype on the way
                    if run.flags is not None:
                        run.flags[:, j] = nonfinite_rows(dest)
            return None, time.perf_counter() - t0
        acts = {k: v.contiguous() for k, v in acts.items()}  # channels-last outputs, views
        names = list(runs[0].dest) if runs else []
        # (B, n_layers) on the device, after the cast: a few small kernels, no sync
        flags = torch.stack([nonfinite_rows(acts[n]) for n in names], 1).to(torch.uint8)
        self.stream.wait_stream(torch.cuda.current_stream())  # the outputs are computed
        with torch.cuda.stream(self.stream):
            begin = torch.cuda.Event(enable_timing=True)
            begin.record(self.stream)
            for run in runs:
                for name, dest in run.dest.items():
                    dest.copy_(acts[name][run.rows], non_blocking=True)
                if run.flags is not None:
                    run.flags.copy_(flags[run.rows], non_blocking=True)
            flags.record_stream(self.stream)
            for v in acts.values():
                v.record_stream(self.stream)  # keep the device memory until the copy is done
            ready = torch.cuda.Event(enable_timing=True)
            ready.record(self.stream)
        self._timed.append((begin, ready))
        self._collect(wait=False)
        return ready, 0.0

    def _collect(self, *, wait: bool) -> None:
        while self._timed and (wait or self._timed[0][1].query()):
            begin, end = self._timed.popleft()
            end.synchronize()
            self._gpu_ms += begin.elapsed_time(end)

    def gpu_seconds(self) -> float:
        """GPU time of every copy so far (0 on the CPU); waits for the last ones."""
        self._collect(wait=True)
        return self._gpu_ms / 1000
