"""Device→host: a ring of preallocated host buffers, and the copy into them.

On CUDA the buffers are pinned and the copy runs on a side stream after an event on the compute
stream, so the copy of batch k overlaps the forward of batch k+1; on the CPU the same ring
without streams. A slot is handed back by the sink once it has copied the batch's rows into its
row blocks (``HostBatch.on_consumed``), so a buffer is never overwritten before its rows are
safe; when every slot is taken the engine waits (back-pressure), and host memory stays at
``slots`` batches whatever the dataset size.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable

import torch

from actextract.errors import OptionError

__all__ = ["HostRing", "ToHost"]


class HostRing:
    """``slots`` sets of host buffers, one per layer each, allocated on first use and reused
    (the last, shorter batch uses a view of them)."""

    def __init__(self, slots: int, *, pin: bool = False):
        if slots < 1:
            raise OptionError(f"host buffers: {slots} slots; the ring needs at least 1.")
        self.slots, self.pin = slots, pin
        self._free: queue.Queue[int] = queue.Queue()
        for slot in range(slots):
            self._free.put(slot)
        self._buffers: list[dict[str, torch.Tensor]] = [{} for _ in range(slots)]

    def acquire(
        self, like: dict[str, torch.Tensor], check: Callable[[], None] = lambda: None
    ) -> tuple[int, dict[str, torch.Tensor]]:
        """Wait for a free slot (calling ``check`` while waiting, which raises when the consumer
        failed); return it with buffers shaped like ``like``."""
        while True:
            check()
            try:
                slot = self._free.get(timeout=0.1)
                break
            except queue.Empty:
                continue
        buffers = self._buffers[slot]
        out = {}
        for name, t in like.items():
            buf = buffers.get(name)
            if (
                buf is None
                or buf.dtype != t.dtype
                or buf.shape[1:] != t.shape[1:]
                or (len(buf) < len(t))
            ):
                buf = buffers[name] = torch.empty(t.shape, dtype=t.dtype, pin_memory=self.pin)
            out[name] = buf[: len(t)]
        return slot, out

    def release(self, slot: int) -> None:
        self._free.put(slot)

    @property
    def free(self) -> int:
        return self._free.qsize()


class ToHost:
    """``to_host(acts)`` → (host tensors, CUDA event or None, release callback, seconds waited
    for a free slot, seconds spent copying on the host). On CUDA the copies' GPU time is read
    from events without a per-batch sync, and :meth:`gpu_seconds` totals it."""

    def __init__(self, device: torch.device, slots: int, check: Callable[[], None]):
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.ring = HostRing(slots, pin=self.cuda)
        self._check = check
        self._timed: deque[tuple[torch.cuda.Event, torch.cuda.Event]] = deque()
        self._gpu_ms = 0.0

    def __call__(self, acts: dict[str, torch.Tensor]):
        t0 = time.perf_counter()
        slot, host = self.ring.acquire(acts, self._check)
        t1 = time.perf_counter()
        ready = None
        if self.cuda:
            acts = {k: v.contiguous() for k, v in acts.items()}
            self.stream.wait_stream(torch.cuda.current_stream())  # outputs are computed
            with torch.cuda.stream(self.stream):
                begin = torch.cuda.Event(enable_timing=True)
                begin.record(self.stream)
                for k, v in acts.items():
                    host[k].copy_(v, non_blocking=True)
                    v.record_stream(self.stream)  # keep the device memory until the copy is done
                ready = torch.cuda.Event(enable_timing=True)
                ready.record(self.stream)
            self._timed.append((begin, ready))
            self._collect(wait=False)
        else:
            for k, v in acts.items():
                host[k].copy_(v)
        copied = 0.0 if self.cuda else time.perf_counter() - t1
        return host, ready, lambda: self.ring.release(slot), t1 - t0, copied

    def _collect(self, *, wait: bool) -> None:
        while self._timed and (wait or self._timed[0][1].query()):
            begin, end = self._timed.popleft()
            end.synchronize()
            self._gpu_ms += begin.elapsed_time(end)

    def gpu_seconds(self) -> float:
        """GPU time of every copy so far (0 on the CPU); waits for the last ones."""
        self._collect(wait=True)
        return self._gpu_ms / 1000
