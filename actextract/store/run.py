"""A run's store: N rows in row blocks, each written once by one process and then marked
done, and the run sealed. The schema of every array is in ``docs/store-format.md`` (its one
copy); :mod:`actextract.store.layout` lays it out.

A row block (``chunk_rows`` samples, addressed by dataset index) is the unit of work, written
by exactly one process in one aligned call per array (zarr takes no locks: two writers of one
chunk would lose updates). Its records and then its completion flag are written after all of
its data, and the flag is the only thing a reader trusts: with ``write_empty_chunks=False``
zarr deletes chunks equal to the fill value, so "the file exists" never means "done". A store
is sealed (status ``complete``) once every block is done; the run's totals (skipped samples,
non-finite rows) are then summed from the per-block records, so they count each block once
whatever the number of processes, kills and resumes behind it. Every chunk ends with a crc32c
checksum (:meth:`~actextract.store.layout.StoreOptions.compressors`). A sealed store (format 7
on) gets consolidated metadata in its root zarr.json, for xarray and zarr; reopening it for
writing drops it (:func:`~actextract.store.base.drop_consolidated`) until the next seal.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from zarr.core.sync import sync

from actextract.store.base import BlockReader, consolidate, write_attributes
from actextract.store.build import counts_tokens
from actextract.store.chunks import BlockRows, chunk_file, nonfinite_rows, write_chunk
from actextract.store.layout import now, quiet_numcodecs
from actextract.store.location import writable
from actextract.store.strings import fit_json

__all__ = ["MAX_SKIPPED_IN_ATTRS", "Store"]

MAX_SKIPPED_IN_ATTRS = 10_000  # beyond this the attrs keep the count; progress/skipped has all


class Store(BlockReader):
    """A run's store: its row blocks read (:class:`~actextract.store.base.BlockReader`) and
    written, one block at a time, and the run sealed."""

    this_run: dict[str, Any] | None = None  # what the extract() that returned it did

    def __repr__(self) -> str:
        return f"Store('{self.location}', layers={self.layers}, n={self.n}, status={self.status})"

    def write_block(
        self,
        block: int,
        acts: Mapping[str, np.ndarray | BlockRows],
        labels: np.ndarray,
        ids: Sequence[str],
        *,
        skipped: Sequence[Mapping[str, Any]] = (),
        nonfinite: Sequence[int] | None = None,
        tokens: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Write one row block (``acts``: {row key: the block's rows}) and its records
        (``skipped`` samples, ``nonfinite`` rows per row array, a text run's ``tokens``), then
        mark it done: :meth:`write_rows`, then :meth:`finish_block`."""
        self.write_rows(block, acts, mask=(tokens or {}).get("mask"))
        self.finish_block(block, labels, ids, skipped=skipped, nonfinite=nonfinite, tokens=tokens)

    def write_rows(
        self,
        block: int,
        acts: Mapping[str, np.ndarray | BlockRows],
        *,
        check: bool = False,
        mask: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Write the block's chunk of each row array (``acts``: {row key: its
        ``len(block_range(block))`` rows, as one array or as :class:`BlockRows`}), straight
        from the pieces where :func:`~actextract.store.chunks.chunk_file` allows, else through
        zarr; a layer of token rows gets the real tokens of its rows, where the block's
        ``mask`` (rows, T) says. With ``check``, returns {row key: (rows,) bool} where a
        written row (a sample) holds a NaN or Inf (taken in the same pass as the write where
        it is direct); else {}."""
        rows = self.block_range(block)
        flags: dict[str, np.ndarray] = {}
        with writable(self.location, f"write row block {block} (rows {rows.start}-{rows.stop})"):
            for key, data in acts.items():
                arr = self.row_array(key)
                if not isinstance(data, BlockRows):
                    data = BlockRows(len(rows), [(0, np.ascontiguousarray(data))])
                found = None
                if check:
                    found = flags[key] = np.zeros(len(rows), np.bool_)
                if self.per_token(key):
                    self._write_tokens(block, key, data, mask, found)
                    continue
                path = chunk_file(arr, self.location.local, block)
                if path is not None:
                    write_chunk(arr, path, data, found)
                    continue
                if found is not None:
                    for start, piece in data.pieces:
                        if piece.size:
                            found[start : start + len(piece)] = nonfinite_rows(
                                piece.reshape(len(piece), -1)
                            )
                with quiet_numcodecs():
                    arr[rows.start : rows.stop] = data.array(arr)
        return flags

    def _write_tokens(
        self,
        block: int,
        key: str,
        data: BlockRows,
        mask: np.ndarray | None,
        found: np.ndarray | None,
    ) -> None:
        """The block's real tokens of the token-row array ``key``, from the start of the
        block's region, chunk by chunk (the last one padded with the fill value; those after
        it are never written); ``found`` (rows,): set for the samples of a NaN or Inf token."""
        if mask is None:
            raise ValueError(f"{key} holds a row per real token: writing it needs the mask")
        arr = self.row_array(key)
        values = data.tokens(mask)
        span = self.block_rows(key, block, len(values))
        per_chunk = arr.chunks[0]
        bad = np.zeros(len(values), np.bool_) if found is not None else None
        if chunk_file(arr, self.location.local, 0) is not None:
            for lo in range(0, len(values), per_chunk):
                path = chunk_file(arr, self.location.local, (span.start + lo) // per_chunk)
                piece = BlockRows(per_chunk, [(0, values[lo : lo + per_chunk])])
                write_chunk(arr, path, piece, None if bad is None else bad[lo : lo + per_chunk])
        elif len(values):
            if bad is not None:
                bad[:] = nonfinite_rows(values.reshape(len(values), -1))
            with quiet_numcodecs():
                arr[span.start : span.stop] = values
        if found is not None and bad is not None:
            owner = np.repeat(np.arange(len(found)), np.asarray(mask, bool).sum(axis=1))
            found[owner[bad]] = True

    def finish_block(
        self,
        block: int,
        labels: np.ndarray,
        ids: Sequence[str],
        *,
        skipped: Sequence[Mapping[str, Any]] = (),
        nonfinite: Sequence[int] | None = None,
        tokens: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """After the block's row arrays: its labels, ids and records (``skipped`` samples,
        ``nonfinite`` rows per row array, a text run's ``tokens``: {``mask``, ``input_ids``:
        (rows, T)}), then the flag that marks it done."""
        rows = self.block_range(block)
        sl = slice(rows.start, rows.stop)
        writes: list[tuple[str, Any, Any]] = [
            ("labels", sl, labels),
            ("ids", sl, self.ids.encoded(ids, count=len(rows))),  # StoreError: one too long
        ]
        writes += [(f"tokens/{k}", sl, v) for k, v in (tokens or {}).items()]
        if counts_tokens(self.attrs):  # where the block's token rows end
            count = int(np.asarray(tokens["mask"], bool).sum()) if tokens else 0
            writes.append(("progress/tokens", block, count))
        if self.has_records():
            counts = np.zeros(len(self.row_keys), np.int64)
            if nonfinite is not None:
                counts[:] = nonfinite
            record = self.text("progress/skipped")
            text = json.dumps(list(skipped))
            if record.fixed:  # errors cut to fit the block's record, if need be
                text = fit_json(list(skipped), record.width or 0, f"block {block}'s record")
            writes += [
                ("progress/skipped", block, record.encoded(text, "record")),
                ("progress/nonfinite", block, counts),
            ]
        with writable(self.location, f"write row block {block} (rows {rows.start}-{rows.stop})"):
            self._write_together(writes)
            self._node("progress/done")[block] = 1  # only now is the block trusted

    def _write_together(self, writes: Sequence[tuple[str, Any, Any]]) -> None:
        """``(path, selection, value)`` writes of small arrays at once: one round trip through
        zarr's event loop instead of one each (on a remote store, one latency instead of
        four; docs/performance.md measures it locally)."""
        arrays = [(self._node(path).async_array, sel, value) for path, sel, value in writes]

        async def all_of_them() -> None:
            await asyncio.gather(*(arr.setitem(sel, value) for arr, sel, value in arrays))

        sync(all_of_them())

    def update_attrs(self, **values: Any) -> None:
        """Update the root attributes (:func:`~actextract.store.base.write_attributes`)."""
        write_attributes(self, values)

    def seal(self, status: str = "incomplete", *, summed: bool = True, **values: Any) -> None:
        """Record ``values`` with status ``complete`` when every block is done and ``summed``
        (the statistics' totals are written), with the totals summed from the block records;
        else with ``status``."""
        if not (summed and self.done().all()):
            self.update_attrs(status=status, **values)
            return
        totals: dict[str, Any] = {}
        if self.has_records():
            skipped = self.skipped()
            totals = {
                "skipped": skipped[:MAX_SKIPPED_IN_ATTRS],
                "skipped_count": len(skipped),
                "nonfinite": self.nonfinite(),
            }
        if self.attrs.get("error"):  # a failed attempt's error, no longer true
            totals["error"] = None
        self.update_attrs(**values, **totals, status="complete", finished=now())
        with writable(self.location, "consolidate the sealed store's metadata"):
            consolidate(self)  # readable by all: consolidated metadata, once sealed
