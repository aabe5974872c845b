"""Sink: where each batch's rows land, and the threads that write full row blocks.

The engine asks :meth:`Sink.place` where a batch's rows go: the sink opens the row blocks they
fall in, each on a slot of the :class:`~actextract.extraction.transfer.BlockRing` (waiting for
one when all are taken: back-pressure), and answers with the runs to put them in. Once they are
copied (or, on the CPU, held) the engine calls :meth:`Sink.filled` with the batch's labels, ids
and bad samples; a block whose rows are all accounted for goes to a small pool of writer
threads, which write each array's chunk from where its rows lie
(:meth:`~actextract.store.Store.write_rows`: the check for NaN/Inf and the checksum in the
pass that writes), mark it done, and give its slot back. Memory is the ring's row blocks,
whatever N.

The writers run in one of two ways. Beside the forward (on CUDA, or a CPU whose forward
leaves cores free): each writer takes a whole block, after its device→host copies have
landed, while the next batches compute. In turns (``turns``: a CPU whose cores torch's
threads all use): complete blocks wait until ``TURN_BLOCKS`` of them are ready (or they hold
every slot), then the loop stops while every writer thread writes their chunks, the biggest
first, and the blocks are marked done. A writer beside a forward that uses every core takes
a core from one of its threads, and the others spin at the next barrier until it is back
(docs/performance.md measures both ways).

A sink writes only its ``blocks`` (this shard's, not yet done): rows of other blocks in a
batch are left out. A block's rows with NaN or Inf (on the CPU found by the write, on CUDA
flagged on the device) are counted per layer and recorded with the block, and with
``on_nonfinite="error"`` stop the run before the block is marked done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from actextract.core.dtypes import STORAGE_DTYPES
from actextract.data.samples import BadSample
from actextract.extraction.blocks import (
    Block,
    Filled,
    Turn,
    check_nonfinite_policy,
    nonfinite_counts,
)
from actextract.extraction.growth import Growth
from actextract.extraction.transfer import BlockRing, Run
from actextract.store import Store
from actextract.store.build import token_arrays, token_dtype
from actextract.store.chunks import BlockRows

__all__ = ["Sink"]

log = logging.getLogger(__name__)

TURN_BLOCKS = 2  # complete blocks a turn writes (sooner when they hold every slot)


class Sink:
    """Use as a context manager; ``close()`` writes what is left and re-raises any writer
    error. ``slots``: row blocks in the ring (see
    :func:`~actextract.extraction.transfer.ring_slots`); ``cuda``: the rows come from a GPU:
    page-locked buffers for asynchronous copies, and the non-finite flags come with them
    (on the CPU the writers find them); ``turns``: the loop and the writers take turns (see
    the module docstring); ``blocks``: the row blocks to write (default: all);
    ``on_nonfinite``: ``count`` or ``error``; ``grow``: the store grows with the rows of a
    stream (:mod:`actextract.extraction.growth`), whose last block is written at ``close``."""

    def __init__(
        self,
        store: Store,
        *,
        slots: int,
        writers: int = 2,
        cuda: bool = False,
        turns: bool = False,
        blocks: Collection[int] | None = None,
        on_nonfinite: str = "count",
        grow: Growth | None = None,
    ):
        check_nonfinite_policy(on_nonfinite)
        self.grow = grow
        self.store = store
        self.on_nonfinite = on_nonfinite
        self.cuda = cuda
        self._wanted = set(blocks) if blocks is not None else set(range(store.n_blocks))
        self.wanted = np.asarray(sorted(self._wanted), np.int64)
        self.bytes_written = 0  # uncompressed bytes of activations handed to the store
        self.write_cpu = 0.0  # CPU seconds of the writer threads (their system calls included)
        keys = store.row_keys  # stored layers, and per-sample statistics (channel means)
        tokens = store.attrs.get("tokens") or {}
        self._tokens = {  # a text run's per-sample records: (dtype, fill value, tokens)
            name: (*token_dtype(name), tokens["length"]) for name in token_arrays(tokens)
        }
        self.nonfinite = dict.fromkeys(keys, 0)  # rows with NaN/Inf written, per row array
        self.ring = BlockRing(
            {key: store.sample_shape(key) for key in keys},  # a token layer's (T, D) too
            STORAGE_DTYPES[store.attrs["dtype"]],
            rows=store.chunk_rows,
            slots=slots,
            pin=cuda,
        )
        log.info(
            "device→host ring: %d row blocks of %.1f MB (%s)",
            slots,
            self.ring.slot_bytes / 1e6,
            "pinned" if cuda else "pageable",
        )
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="actextract-write")
        self._lock = threading.Lock()
        self._open: dict[int, Block] = {}
        self._placed: list[tuple[Block, Run]] = []  # the last batch's runs, for filled()
        self._error: BaseException | None = None
        self._abort = threading.Event()
        self._closed = False
        self.turns = turns
        self._ready: list[Block] = []  # complete blocks waiting for the next turn

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
        if self.grow is not None:  # a stream's: every block, the store grown to hold them
            self.grow.cover(indices, bad)
            self._wanted = set(range(self.store.n_blocks))
            self.wanted = np.arange(self.store.n_blocks)
        rows = self.store.chunk_rows
        blocks = indices // rows
        keep = np.flatnonzero(np.isin(blocks, self.wanted))  # batch positions this sink writes
        bad_blocks = {s.index // rows for s in bad} & self._wanted
        for b in sorted({*blocks[keep].tolist(), *bad_blocks}):
            waited += self._open_block(b)
        runs, self._placed = [], []
        if len(keep):
            idx, blk_of = indices[keep], blocks[keep]
            breaks = (np.diff(idx) != 1) | (np.diff(blk_of) != 0) | (np.diff(keep) != 1)
            cuts = np.flatnonzero(breaks) + 1
            for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(keep)], strict=True):
                blk = self._open[int(blk_of[lo])]
                local = int(idx[lo]) - blk.start
                flags = self.ring.flags(blk.slot)[local : local + hi - lo] if self.cuda else None
                rows = slice(int(keep[lo]), int(keep[hi - 1]) + 1)
                run = Run(rows, self.ring, blk.slot, local, flags)
                runs.append(run)
                self._placed.append((blk, run))
        return runs, waited

    def filled(self, batch: Filled) -> float:
        """The batch's rows are (being) copied or held: record where each layer's rows are,
        the labels and ids, and hand every block that is now complete to the writers; the
        seconds the loop waited for them (a turn)."""
        waited = 0.0
        for blk, run in self._placed:
            for name in self.ring.shapes:
                held = run.held.get(name)
                piece = (run.start, len(run), held)
                blk.pieces.setdefault(name, []).append(piece)
        self._placed = []
        rows = self.store.chunk_rows
        touched: dict[int, Block] = {}
        for i, (row, label, sample_id) in enumerate(
            zip(batch.indices.tolist(), batch.labels.tolist(), batch.ids, strict=True)
        ):
            if row // rows not in self._open:
                continue  # a row of a block this sink does not write
            blk = touched[row // rows] = self._open[row // rows]
            blk.labels[row - blk.start], blk.ids[row - blk.start] = label, sample_id
            for name, values in blk.tokens.items():
                values[row - blk.start] = batch.tokens[name][i]  # type: ignore[index]
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
                if not self.turns:
                    self._pool.submit(self._write, blk)
                    continue
                self._ready.append(blk)
                if len(self._ready) >= TURN_BLOCKS:
                    start = time.perf_counter()
                    self._take_turn()
                    waited += time.perf_counter() - start
        return waited

    def close(self, *, abort: bool = False) -> None:
        """Write every complete block and stop the threads (``abort``: drop what is not
        written yet). Raises the first writer error."""
        if abort:
            self._abort.set()
        if self._closed:
            return
        self._closed = True
        try:
            if self._ready and not abort:
                self._take_turn()  # the last turn
            if self.grow is not None and not abort and self._error is None:
                self._end_stream()
        finally:
            for blk in self._ready:  # aborted: let go unwritten (no error over the caller's)
                self._free(blk)
            self._ready = []
            self._pool.shutdown(wait=True)
        if not abort:
            self._raise_if_failed()
            if self._open:
                blocks = sorted(self._open)
                raise RuntimeError(
                    f"row blocks {blocks} were left incomplete: "
                    f"{[self._open[b].missing for b in blocks]} rows never came"
                )

    def _end_stream(self) -> None:
        """The stream has ended: once the blocks being written have landed, the store is cut
        to its rows and the last block, cut with it, written."""
        if not self.turns:
            self._pool.shutdown(wait=True)  # the writes in flight, before the shape changes
        self.grow.end()  # type: ignore[union-attr]
        for b in sorted(self._open):
            blk = self._open[b]
            self.grow.cut(blk)  # type: ignore[union-attr]
            if blk.missing == 0:
                del self._open[b]
                if self.turns:
                    self._ready.append(blk)
                    self._take_turn()
                else:
                    self._write(blk)  # here: the pool is shut

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
        if self._ready and not self.ring.free:
            self._take_turn()  # the ready blocks hold every slot: write them now
        slot = self.ring.acquire(self.check)
        waited = time.perf_counter() - start
        rows = self.store.block_range(block)
        self._open[block] = Block(
            block, rows.start, slot, np.full(len(rows), -1, np.int64), [""] * len(rows), len(rows)
        )
        self._open[block].tokens = {
            name: np.full((len(rows), length), fill, dtype)
            for name, (dtype, fill, length) in self._tokens.items()
        }
        if self.cuda:
            self.ring.flags(slot)[: len(rows)] = 0  # a skipped row's flags are never copied
        return waited

    # -- writer side -------------------------------------------------------------------------
    def _write(self, blk: Block) -> None:
        """A writer thread's job when the writers run beside the forward: the whole block."""
        cpu = time.thread_time()
        try:
            if self._error is None and not self._abort.is_set():
                if blk.ready is not None:
                    blk.ready.synchronize()  # the block's device→host copies have landed
                rows = {name: self._rows(blk, name) for name in self.ring.shapes}
                found = self.store.write_rows(
                    blk.block, rows, check=not self.cuda, mask=blk.tokens.get("mask")
                )
                self._finish(blk, found)
        except BaseException as e:
            self._error = self._error or e
        finally:
            self._spent(cpu)
            self._free(blk)

    def _take_turn(self) -> None:
        """The ready blocks' chunks written by every writer thread at once while the loop
        waits (see the class docstring), the biggest first; the thread that writes a block's
        last chunk marks it done."""
        blocks, self._ready = self._ready, []
        try:
            if self._error is None and not self._abort.is_set():
                for blk in blocks:
                    if blk.ready is not None:
                        blk.ready.synchronize()  # its device→host copies have landed
                turn = Turn(blocks, len(self.ring.shapes))
                jobs = [(b, name, self._rows(b, name)) for b in blocks for name in self.ring.shapes]
                jobs.sort(key=lambda job: -job[2].nbytes)
                futures = [self._pool.submit(self._write_one, turn, *job) for job in jobs]
                wait(futures)  # all of them, even after one fails: they read the slots
                for future in futures:
                    future.result()
                if not self.ring.shapes:  # no row arrays: only the records
                    for blk in blocks:
                        self._finish(blk, {})
        except BaseException as e:
            self._error = self._error or e
        finally:
            for blk in blocks:
                self._free(blk)
        self._raise_if_failed()

    def _write_one(self, turn: Turn, blk: Block, name: str, rows: BlockRows) -> None:
        """One chunk of a turn; after the block's last, its records and its done mark."""
        cpu = time.thread_time()
        try:
            try:
                mask = blk.tokens.get("mask")
                turn.found[blk.block].update(
                    self.store.write_rows(blk.block, {name: rows}, check=not self.cuda, mask=mask)
                )
            except BaseException as e:
                self._error = self._error or e  # before the count: the last chunk sees it
                raise
            finally:
                last = turn.written(blk)
            if last and self._error is None:
                self._finish(blk, turn.found[blk.block])
        finally:
            self._spent(cpu)

    def _finish(self, blk: Block, found: dict[str, np.ndarray]) -> None:
        """After the block's row chunks: its records, then the mark that it is done."""
        counts = self._count_nonfinite(blk, found)
        skipped = [
            {"index": blk.start + r, "id": blk.ids[r], "error": blk.errors[i]}
            for i, r in enumerate(blk.bad_rows)
        ]
        self.store.finish_block(
            blk.block, blk.labels, blk.ids, skipped=skipped, nonfinite=counts, tokens=blk.tokens
        )
        with self._lock:
            self.bytes_written += len(blk.labels) * self.ring.slot_bytes // self.ring.rows
            for name, c in zip(self.nonfinite, counts, strict=True):
                self.nonfinite[name] += c

    def _spent(self, since: float) -> None:
        with self._lock:
            self.write_cpu += time.thread_time() - since

    def _free(self, blk: Block) -> None:
        blk.pieces.clear()  # the held outputs can go
        self.ring.release(blk.slot)  # the buffer may be filled again

    def _rows(self, blk: Block, name: str) -> BlockRows:
        """Where the block's rows of ``name`` lie: held outputs, and the runs of rows copied
        into the slot's buffer, next ones joined; the rows of skipped samples are gaps."""
        pieces: list[tuple[int, np.ndarray]] = []
        buffered: tuple[int, int] | None = None  # rows [a, b) of the buffer, not yet a piece
        for start, count, held in sorted(blk.pieces.get(name, []), key=lambda p: p[0]):
            if held is None and buffered is not None and buffered[1] == start:
                buffered = (buffered[0], start + count)
                continue
            if buffered is not None:
                pieces.append(self._buffered(blk, name, *buffered))
                buffered = None
            if held is None:
                buffered = (start, start + count)
            else:
                pieces.append((start, held.numpy()))
        if buffered is not None:
            pieces.append(self._buffered(blk, name, *buffered))
        return BlockRows(len(blk.labels), pieces)

    def _buffered(self, blk: Block, name: str, a: int, b: int) -> tuple[int, np.ndarray]:
        return a, self.ring.buffer(blk.slot, name)[a:b].numpy()

    def _count_nonfinite(self, blk: Block, found: dict[str, np.ndarray]) -> list[int]:
        """Rows of the block with NaN/Inf, per layer: ``found`` by the write on the CPU, else
        the flags that came from the device (:func:`nonfinite_counts`)."""
        n = len(blk.labels)
        if self.cuda:
            flags = self.ring.flags(blk.slot)[:n].numpy().astype(bool)
        else:
            flags = np.zeros((n, len(self.ring.shapes)), np.bool_)
            for j, name in enumerate(self.ring.shapes):
                flags[:, j] = found[name]
        return nonfinite_counts(blk, flags, list(self.nonfinite), self.on_nonfinite)
