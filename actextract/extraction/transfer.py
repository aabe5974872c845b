"""Device→host: a ring of preallocated row-block buffers, and each batch's rows put in them.

A batch's activations go straight to the row blocks their rows belong to (``Run``: which rows
of the batch land where), and no byte is copied twice on the host. On CUDA the block buffers
are pinned, the non-finite flags are taken on the device after the cast, and the copies run
on a side stream after the compute stream's work, so the copy of batch k overlaps the
forward of batch k+1. On the CPU a layer output that already is what the store holds (the
storage dtype, C-contiguous, its memory nobody else's) is not copied at all: the run holds
the tensor until its block is written from it (``Run.held``); any other is cast into the
block's buffer, which is the one pass it needs. The non-finite check on the CPU is the
writer's, in the pass that writes the bytes (:mod:`actextract.store.chunks`). A buffer goes
back to the ring only once its writer is done with it, and when none is free the engine
waits (back-pressure): host memory is ``slots`` row blocks whatever the dataset size.
"""

from __future__ import annotations

import functools
import math
import os
import queue
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from actextract.errors import OptionError

__all__ = [
    "BlockRing",
    "Run",
    "ToHost",
    "blocks_open_at_once",
    "default_writers",
    "holdable",
    "nonfinite_rows",
    "ring_slots",
    "takes_turns",
    "usable_cores",
]

MAX_TURN_WRITERS = 4  # a turn's threads: each writes whole chunks, a few per block


@dataclass(frozen=True)
class Run:
    """Consecutive rows of a batch that land in one row block: ``rows`` of the batch's
    tensors go to rows ``start`` onwards of the block on ring slot ``slot`` (:meth:`dest`);
    on CUDA whether each row holds a NaN or Inf goes to ``flags`` ((len, n_layers) uint8,
    layers in the ring's order). ``held``: on the CPU, the layers whose rows stay in the
    output tensor itself ({layer: (len, *shape) view}), written from it instead of copied."""

    rows: slice
    ring: BlockRing
    slot: int
    start: int
    flags: torch.Tensor | None = None
    held: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.rows.stop - self.rows.start

    def dest(self, name: str) -> torch.Tensor:
        """The (len, *shape) rows of the block's buffer of ``name`` these rows go to."""
        return self.ring.buffer(self.slot, name)[self.start : self.start + len(self)]


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


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def takes_turns(device: torch.device) -> bool:
    """Whether the writers wait for the forward and the forward for them: on a CPU whose
    cores torch's threads all use (its default), where a writer beside the forward takes a
    core from a thread the others then wait for, spinning (docs/performance.md)."""
    return device.type == "cpu" and torch.get_num_threads() >= usable_cores()


def default_writers(device: torch.device) -> int:
    """Writer threads when none are asked for: on a CPU taking turns, one per core (up to
    four) for the turn; beside a forward that leaves cores free, one; two on CUDA, whose
    forward leaves the cores to the writers."""
    if device.type == "cuda":
        return 2
    return min(usable_cores(), MAX_TURN_WRITERS) if takes_turns(device) else 1


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
    when ``pin``), each layer's allocated on first use and reused."""

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
        self._buffers: list[dict[str, torch.Tensor]] = [{} for _ in range(slots)]
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

    def buffer(self, slot: int, name: str) -> torch.Tensor:
        """The slot's (rows, *shape) host tensor of layer ``name``, allocated on first use (a
        layer written from its own outputs never needs one)."""
        bufs = self._buffers[slot]
        if name not in bufs:
            shape = (self.rows, *self.shapes[name])
            bufs[name] = torch.empty(shape, dtype=self.dtype, pin_memory=self.pin)
        return bufs[name]

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


def holdable(name: str, dtype: torch.dtype, *outputs: Mapping[str, torch.Tensor]) -> bool:
    """Whether the CPU output ``outputs[0][name]`` can be written from itself, later, by a
    writer thread: it is what the store holds (``dtype``, C-contiguous) and nothing but this
    batch can write to it: no other tensor shares its memory (a view of it or of what it
    views, a module's buffer, the input batch) and nothing but the slots of ``outputs`` (the
    engine's dicts of this batch's outputs) refers to it, so neither the next forward nor the
    data loader can change it before it is written. Anything else is copied, as on CUDA."""
    t = outputs[0][name]
    if t.device.type != "cpu" or t.dtype != dtype or not t.is_contiguous():
        return False
    # one tensor holds its memory (the storage object asked for holds a reference too)
    use_count = getattr(torch._C, "_storage_Use_Count", None)  # private: copy where it is gone
    if use_count is None or use_count(t.untyped_storage()._cdata) > 2:
        return False
    del t  # counted as the baseline is: nothing of this frame refers to it
    return _other_references(name, *outputs) <= _unowned_baseline()


def _other_references(name: str, *outputs: Mapping[str, torch.Tensor]) -> int:
    """References to ``outputs[0][name]`` beyond the slots of ``outputs`` (this frame's own
    included: :func:`_unowned_baseline` says how many those are)."""
    t = outputs[0][name]
    return sys.getrefcount(t) - sum(v is t for out in outputs for v in out.values())


@functools.cache
def _unowned_baseline() -> int:
    """What :func:`_other_references` counts for a tensor that only a dict holds: the same
    frames measure it, so that however the interpreter counts its own references (a local, a
    call's argument), only someone else's reference tips the balance."""
    return _other_references("x", {"x": torch.empty(1)})


class ToHost:
    """``to_host(acts, runs, also=...)`` puts each run's rows of ``acts`` ({layer: (B, *shape)}
    on the device) in their row block, and returns (CUDA event that fires when the copies
    have landed or None, seconds the host spent copying). On the CPU a layer whose output
    :func:`holdable` is held (``Run.held``), any other cast into the block's buffer; on CUDA
    every layer is copied, with the rows' non-finite flags taken on the device from the
    values as stored (a float32 value beyond float16's range counts), and the copies' GPU
    time is read from events without a per-batch sync (:meth:`gpu_seconds` totals it).
    ``also``: the other references the engine holds to these outputs (the statistics')."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self._timed: deque[tuple[torch.cuda.Event, torch.cuda.Event]] = deque()
        self._gpu_ms = 0.0
        self.held_bytes = 0  # CPU: bytes written from the outputs themselves, not copied

    def __call__(
        self,
        acts: Mapping[str, torch.Tensor],
        runs: Sequence[Run],
        also: Mapping[str, torch.Tensor] | None = None,
    ):
        if not acts or not runs:
            return None, 0.0
        t0 = time.perf_counter()
        names = list(runs[0].ring.shapes)
        if not self.cuda:
            dtype = runs[0].ring.dtype
            hold = {n: holdable(n, dtype, acts, also or {}) for n in names}
            for run in runs:
                for name in names:
                    rows = acts[name][run.rows]
                    if hold[name]:
                        run.held[name] = rows
                        self.held_bytes += rows.nbytes
                    else:
                        run.dest(name).copy_(rows)  # casts to the storage dtype on the way
            return None, time.perf_counter() - t0
        acts = {k: v.contiguous() for k, v in acts.items()}  # channels-last outputs, views
        # (B, n_layers) on the device, after the cast: a few small kernels, no sync
        flags = torch.stack([nonfinite_rows(acts[n]) for n in names], 1).to(torch.uint8)
        self.stream.wait_stream(torch.cuda.current_stream())  # the outputs are computed
        with torch.cuda.stream(self.stream):
            begin = torch.cuda.Event(enable_timing=True)
            begin.record(self.stream)
            for run in runs:
                for name in names:
                    run.dest(name).copy_(acts[name][run.rows], non_blocking=True)
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
