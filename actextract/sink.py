"""Sink: background writer threads between the engine and the store.

The engine ``put``s each batch's host copies (with the CUDA event that says when the copy has
landed); an assembler thread fills per-block buffers row by row, and each full block goes to a
small pool of writer threads that compress and write it (numcodecs releases the GIL), then
mark it done. The queue and the number of blocks in flight are bounded, so memory is bounded
by ``queue_depth`` batches plus ``writers + 1`` row blocks of every layer, whatever N.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from actextract.samples import BadSample
from actextract.store import Store

__all__ = ["HostBatch", "Sink"]


@dataclass
class HostBatch:
    """One batch on its way to disk. ``acts``: {layer: (B, *shape)} CPU tensors, possibly
    still being filled by an async device→host copy until ``ready`` (a CUDA event) fires."""

    indices: np.ndarray  # (B,) int64 dataset rows
    labels: np.ndarray  # (B,) int64
    ids: list[str]
    acts: dict[str, torch.Tensor]
    bad: list[BadSample] = field(default_factory=list)
    ready: Any = None  # torch.cuda.Event | None
    on_consumed: Callable[[], None] | None = None  # hands the host buffers back to the ring


@dataclass
class _Block:
    """A row block being assembled: buffers pre-filled with the store's fill values."""

    block: int
    start: int
    acts: dict[str, np.ndarray]
    labels: np.ndarray
    ids: list[str]
    missing: int  # rows still to come


class Sink:
    """``put(batch)`` returns the seconds spent waiting for room; ``close()`` flushes and
    re-raises any writer error. Use as a context manager."""

    def __init__(self, store: Store, *, writers: int = 2, queue_depth: int = 4):
        self.store = store
        self.bytes_written = 0  # uncompressed bytes of activations handed to the store
        self._shapes = {name: tuple(store[name].shape[1:]) for name in store.layers}
        self._dtypes = {name: store[name].dtype for name in store.layers}
        self._queue: queue.Queue[HostBatch | None] = queue.Queue(maxsize=queue_depth)
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="actextract-write")
        self._slots = threading.BoundedSemaphore(writers + 1)  # blocks being written at once
        self._lock = threading.Lock()
        self._open: dict[int, _Block] = {}
        self._error: BaseException | None = None
        self._abort = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="actextract-sink", daemon=True)
        self._thread.start()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.close(abort=True)

    # -- engine side -------------------------------------------------------------------------
    def put(self, batch: HostBatch) -> float:
        """Queue a batch; blocks while the queue is full. Returns the seconds waited."""
        t0 = time.perf_counter()
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(batch, timeout=0.1)
                return time.perf_counter() - t0
            except queue.Full:
                continue

    def close(self, *, abort: bool = False) -> float:
        """Write every block and stop the threads (``abort``: drop what is not written yet).
        Returns the seconds spent waiting; raises the first writer error."""
        t0 = time.perf_counter()
        if abort:
            self._abort.set()
        if self._closed:
            return 0.0
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self._pool.shutdown(wait=True)
        if not abort:
            self._raise_if_failed()
            if self._open:
                blocks = sorted(self._open)
                raise RuntimeError(
                    f"row blocks {blocks} were left incomplete: "
                    f"{[self._open[b].missing for b in blocks]} rows never came"
                )
        return time.perf_counter() - t0

    def check(self) -> None:
        """Raise the writers' first error, if any (the engine calls it while it waits)."""
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # -- writer side -------------------------------------------------------------------------
    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            try:
                if self._error is None and not self._abort.is_set():
                    self._assemble(batch)  # else drain without work: put() never blocks forever
            except BaseException as e:
                self._error = e
            finally:
                if batch.on_consumed is not None:
                    batch.on_consumed()  # the batch's host buffers may be reused

    def _assemble(self, batch: HostBatch) -> None:
        if batch.ready is not None:
            batch.ready.synchronize()
        acts = {name: t.numpy() for name, t in batch.acts.items()}
        rows = self.store.chunk_rows
        blocks = batch.indices // rows
        for b in np.unique(blocks).tolist():
            mask = blocks == b
            blk = self._block(b)
            local = batch.indices[mask] - blk.start
            for name, arr in acts.items():
                blk.acts[name][local] = arr[mask]
            blk.labels[local] = batch.labels[mask]
            for r, sample_id in zip(
                local.tolist(), np.asarray(batch.ids)[mask].tolist(), strict=True
            ):
                blk.ids[r] = sample_id
            self._rows_done(blk, len(local))
        for bad in batch.bad:  # a skipped row keeps the fill value and label -1, with its id
            blk = self._block(bad.index // rows)
            blk.ids[bad.index - blk.start] = bad.id
            self._rows_done(blk, 1)

    def _block(self, block: int) -> _Block:
        if block not in self._open:
            rows = self.store.block_range(block)
            n = len(rows)
            self._open[block] = _Block(
                block,
                rows.start,
                {
                    name: np.full((n, *shape), np.nan, dtype=self._dtypes[name])
                    for name, shape in self._shapes.items()
                },
                np.full(n, -1, dtype=np.int64),
                [""] * n,
                n,
            )
        return self._open[block]

    def _rows_done(self, blk: _Block, count: int) -> None:
        blk.missing -= count
        if blk.missing == 0:
            del self._open[blk.block]
            self._slots.acquire()  # bounded: wait while writers+1 blocks are being written
            self._pool.submit(self._write, blk)

    def _write(self, blk: _Block) -> None:
        try:
            if self._error is None and not self._abort.is_set():
                self.store.write_block(blk.block, blk.acts, blk.labels, blk.ids)
                with self._lock:
                    self.bytes_written += sum(a.nbytes for a in blk.acts.values())
        except BaseException as e:
            self._error = self._error or e
        finally:
            self._slots.release()
