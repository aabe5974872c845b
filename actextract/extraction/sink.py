"""Sink: where each batch's rows land, and the background threads that write full row blocks.

The engine asks :meth:`Sink.place` where a batch's rows go: the sink opens the row blocks they
fall in, each on a buffer of the :class:`~actextract.extraction.transfer.BlockRing` (waiting for one
when all are taken: back-pressure), and answers with the views to copy into. Once the copies are
issued the engine calls :meth:`Sink.filled` with the batch's labels, ids and bad samples; a
block whose rows are all accounted for goes to a small pool of writer threads, which wait for
its copies to land, compress and write it as whole chunks (numcodecs releases the GIL), mark
it done, and give its buffer back. Memory is the ring's row blocks, whatever N.

A sink writes only its ``blocks`` (this shard's, not yet done): rows of other blocks in a
batch are left out. Before a block is written its rows' non-finite flags are counted per
layer, recorded with the block, and with ``on_nonfinite="error"`` stop the run instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actextract.core.dtypes import STORAGE_DTYPES
from actextract.data.samples import BadSample
from actextract.errors import NonFiniteError, OptionError, option
from actextract.extraction.transfer import BlockRing, Run
from actextract.store import Store

__all__ = ["NONFINITE_POLICIES", "Filled", "Sink", "check_nonfinite_policy"]

log = logging.getLogger(__name__)

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


@dataclass
class _Block:
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


class Sink:
    """Use as a context manager; ``close()`` writes what is left and re-raises any writer
    error. ``slots``: row blocks in the ring (see
    :func:`~actextract.extraction.transfer.ring_slots`); ``pin``: page-locked buffers, for
    asynchronous copies from a GPU; ``blocks``: the row blocks to write (default: all);
    ``on_nonfinite``: ``count`` or ``error``."""

    def __init__(
        self,
        store: Store,
        *,
        slots: int,
        writers: int = 2,
        pin: bool = False,
        blocks: Collection[int] | None = None,
        on_nonfinite: str = "count",
    ):
        check_nonfinite_policy(on_nonfinite)
        self.store = store
        self.on_nonfinite = on_nonfinite
        self._wanted = set(blocks) if blocks is not None else set(range(store.n_blocks))
        self.wanted = np.asarray(sorted(self._wanted), np.int64)
        self.bytes_written = 0  # uncompressed bytes of activations handed to the store
        keys = store.row_keys  # stored layers, and per-sample statistics (channel means)
        self.nonfinite = dict.fromkeys(keys, 0)  # rows with NaN/Inf written, per row array
        self.ring = BlockRing(
            {key: tuple(store.row_array(key).shape[1:]) for key in keys},
            STORAGE_DTYPES[store.attrs["dtype"]],
            rows=store.chunk_rows,
            slots=slots,
            pin=pin,
        )
        log.info(
            "device→host ring: %d row blocks of %.1f MB (%s)",
            slots,
            self.ring.slot_bytes / 1e6,
            "pinned" if pin else "pageable",
        )
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="actextract-write")
        self._lock = threading.Lock()
        self._open: dict[int, _Block] = {}
        self._error: BaseException | None = None
        self._abort = threading.Event()
        self._closed = False

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.close(abort=True)

    # -- engine side -------------------------------------------------------------------------
    def place(self, indices: np.ndarray, bad: Sequence[BadSample] = ()) -> tuple[list[Run], float]:
        """Open the blocks of these rows (good ``indices`` and ``bad`` samples), waiting for
        free buffers; return where each run of consecutive good rows goes, and the seconds
        waited."""
        waited = 0.0
        rows = self.store.chunk_rows
        blocks = indices // rows
        keep = np.flatnonzero(np.isin(blocks, self.wanted))  # batch positions this sink writes
        bad_blocks = {s.index // rows for s in bad} & self._wanted
        for b in sorted({*blocks[keep].tolist(), *bad_blocks}):
            waited += self._open_block(b)
        runs = []
        if len(keep):
            idx, blk_of = indices[keep], blocks[keep]
            breaks = (np.diff(idx) != 1) | (np.diff(blk_of) != 0) | (np.diff(keep) != 1)
            cuts = np.flatnonzero(breaks) + 1
            for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(keep)], strict=True):
                blk = self._open[int(blk_of[lo])]
                local = int(idx[lo]) - blk.start
                bufs = self.ring.buffers(blk.slot)
                dest = {name: buf[local : local + hi - lo] for name, buf in bufs.items()}
                flags = self.ring.flags(blk.slot)[local : local + hi - lo]
                runs.append(Run(slice(int(keep[lo]), int(keep[hi - 1]) + 1), dest, flags))
        return runs, waited

    def filled(self, batch: Filled) -> None:
        """The batch's rows are (being) copied: record labels and ids, and hand every block
        that is now complete to a writer."""
        rows = self.store.chunk_rows
        touched: dict[int, _Block] = {}
        for row, label, sample_id in zip(
            batch.indices.tolist(), batch.labels.tolist(), batch.ids, strict=True
        ):
            if row // rows not in self._open:
                continue  # a row of a block this sink does not write
            blk = touched[row // rows] = self._open[row // rows]
            blk.labels[row - blk.start], blk.ids[row - blk.start] = label, sample_id
            blk.missing -= 1
        for s in batch.bad:  # a skipped row keeps the fill value and label -1, with its id
            if s.index // rows not in self._open:
                continue
            blk = touched[s.index // rows] = self._open[s.index // rows]
            blk.ids[s.index - blk.start] = s.id
            blk.bad_rows.append(s.index - blk.start)
            blk.errors.append(s.error)
            blk.missing -= 1
        for b, blk in touched.items():
            if batch.ready is not None:  # the latest copy into the block (one stream, in order)
                blk.ready = batch.ready
            if blk.missing == 0:
                del self._open[b]
                self._pool.submit(self._write, blk)

    def close(self, *, abort: bool = False) -> None:
        """Write every complete block and stop the threads (``abort``: drop what is not
        written yet). Raises the first writer error."""
        if abort:
            self._abort.set()
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)
        if not abort:
            self._raise_if_failed()
            if self._open:
                blocks = sorted(self._open)
                raise RuntimeError(
                    f"row blocks {blocks} were left incomplete: "
                    f"{[self._open[b].missing for b in blocks]} rows never came"
                )

    def check(self) -> None:
        """Raise the writers' first error, if any (the engine calls it while it waits)."""
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _open_block(self, block: int) -> float:
        if block in self._open:
            return 0.0
        start = time.perf_counter()
        slot = self.ring.acquire(self.check)
        waited = time.perf_counter() - start
        rows = self.store.block_range(block)
        self._open[block] = _Block(
            block, rows.start, slot, np.full(len(rows), -1, np.int64), [""] * len(rows), len(rows)
        )
        self.ring.flags(slot)[: len(rows)] = 0  # a skipped row's flags are never copied
        return waited

    # -- writer side -------------------------------------------------------------------------
    def _write(self, blk: _Block) -> None:
        try:
            if self._error is None and not self._abort.is_set():
                if blk.ready is not None:
                    blk.ready.synchronize()  # the block's device→host copies have landed
                n = len(blk.labels)
                bufs = self.ring.buffers(blk.slot)
                arrays = {name: buf[:n].numpy() for name, buf in bufs.items()}
                for a in arrays.values():
                    a[blk.bad_rows] = np.nan  # skipped rows: the fill value, as if unwritten
                counts = self._count_nonfinite(blk)
                skipped = [
                    {"index": blk.start + r, "id": blk.ids[r], "error": blk.errors[i]}
                    for i, r in enumerate(blk.bad_rows)
                ]
                self.store.write_block(
                    blk.block, arrays, blk.labels, blk.ids, skipped=skipped, nonfinite=counts
                )
                with self._lock:
                    self.bytes_written += sum(a.nbytes for a in arrays.values())
                    for name, c in zip(self.nonfinite, counts, strict=True):
                        self.nonfinite[name] += c
        except BaseException as e:
            self._error = self._error or e
        finally:
            self.ring.release(blk.slot)  # the buffer may be filled again

    def _count_nonfinite(self, blk: _Block) -> list[int]:
        """Rows of the block with NaN/Inf, per layer (skipped rows, NaN on purpose, left out);
        raises NonFiniteError under ``on_nonfinite="error"``."""
        flags = self.ring.flags(blk.slot)[: len(blk.labels)].numpy().astype(bool)
        flags[blk.bad_rows] = False
        counts = flags.sum(axis=0).tolist()
        if self.on_nonfinite == "error" and any(counts):
            j = int(np.flatnonzero(flags.any(axis=0))[0])
            r = int(np.flatnonzero(flags[:, j])[0])
            key = list(self.nonfinite)[j]
            what = f"'{key}'" if "/" in key else f"layer '{key}'"
            raise NonFiniteError(
                f"{what} has NaN or Inf for sample {blk.start + r} "
                f"('{blk.ids[r]}'), and {sum(counts) - 1} more row(s) of rows "
                f"{blk.start}-{blk.start + len(blk.labels)} across layers. Check the input and "
                "the model (a float32 value beyond ±65504 becomes Inf in float16: --dtype "
                "float32 (dtype='float32') keeps it), or pass --on-nonfinite count "
                "(on_nonfinite='count') to store them and count them."
            )
        return counts
