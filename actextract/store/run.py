"""Store: the on-disk schema of a run (Zarr v3), its creation, block writes and the reader.

::

    run.zarr/
      zarr.json        root attributes: provenance, layers, dtype, chunk rows, status
      acts/<layer>     (N, *shape) per layer, chunks of chunk_rows samples, dimension_names
      labels           (N,) int64, -1 where a sample has none (or was skipped)
      ids              (N,) str: the sample's id (relative path, or dataset index)
      progress/skipped (n_blocks,) str: JSON list of the block's skipped samples {index, id, error}
      progress/nonfinite (n_blocks, n_rows) int64: rows of the block with NaN/Inf, per row array
      progress/done    (n_blocks,) uint8: 1 once every array of that row block is written
      stats/<layer>/   on-device statistics, progress/parts their committed sums
                       (:mod:`actextract.stats.parts`)

The row arrays are the layers stored in full (``acts/``) and the per-sample channel means of
``--stats channel-mean`` (``stats/<layer>/channel_means``); ``row_arrays`` lists them.

A row block (``chunk_rows`` samples, addressed by dataset index) is the unit of work, written
by exactly one process in one aligned call per array (zarr takes no locks: two writers of one
chunk would lose updates). Its records and then its completion flag are written after all of
its data, and the flag is the only thing a reader trusts: with ``write_empty_chunks=False``
zarr deletes chunks equal to the fill value, so "the file exists" never means "done". A store
is sealed (status ``complete``) once every block is done; the run's totals (skipped samples,
non-finite rows) are then summed from the per-block records, so they count each block once
whatever the number of processes, kills and resumes behind it. Every chunk ends with a crc32c
checksum (:meth:`~actextract.store.layout.StoreOptions.compressors`).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from actextract.core.axes import array_layout, stored_layout
from actextract.errors import OutputExistsError, StoreError
from actextract.store.layout import (
    FORMAT_VERSION,
    ArraySpec,
    StoreOptions,
    build_store,
    choose_chunk_rows,
    now,
    quiet_numcodecs,
    row_keys,
)
from actextract.store.location import Location, writable

__all__ = [
    "FORMAT_VERSION",
    "MAX_SKIPPED_IN_ATTRS",
    "ArraySpec",
    "Location",
    "Store",
    "StoreOptions",
    "check_output",
    "choose_chunk_rows",
    "create_store",
    "open_store",
]


MAX_SKIPPED_IN_ATTRS = 10_000  # beyond this the attrs keep the count; progress/skipped has all


class Store:
    """A run's store, for writing blocks and for reading lazily.

    ``store[layer]`` is a zarr Array of shape (N, *shape): slicing reads only the chunks it
    touches. ``labels`` (N,) int64, ``ids`` (N,) str, ``attrs`` the provenance.
    """

    this_run: dict[str, Any] | None = None  # what the extract() that returned it did (text.py)

    def __init__(self, location: str | Path | Location, group: zarr.Group):
        self.location = Location.parse(location)
        self.group = group
        self._nodes: dict[str, zarr.Array] = {}
        self._lock = threading.Lock()
        self._left_out: list[int] = []

    @property
    def path(self) -> Path | str:
        """The store's folder (local stores), else its URL."""
        return self.location.local or self.location.url

    # -- reading ---------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def layers(self) -> list[str]:
        return [spec["name"] for spec in self.attrs["layers"]]

    @property
    def row_keys(self) -> list[str]:
        """The arrays written per row block: stored layers by name, others by path."""
        return row_keys(self.attrs)

    def row_array(self, key: str) -> zarr.Array:
        """A row array by its key (a stored layer's name, or a path such as
        ``stats/conv1/channel_means``)."""
        return self._node(key if "/" in key else f"acts/{key}")

    def layout(self, layer: str) -> str:
        """The layout of a layer's stored rows (:mod:`actextract.core.axes`): the layer's own, or
        ``vector`` once pooled; for a layer kept only as statistics, its output's."""
        spec = next((s for s in self.attrs["layers"] if s["name"] == layer), None)
        if spec is None:
            kept = self.stats_layers().get(layer)
            if kept is None:
                raise StoreError(f"layer '{layer}' is not in {self.location}.")
            return stored_layout(kept)
        return array_layout(stored_layout(spec), spec.get("reduce", "none"))

    def stats_layers(self) -> dict[str, dict[str, Any]]:
        """{layer: its --stats attributes (kinds, output shape, histogram edges)}."""
        return dict(self.attrs.get("stats") or {})

    def __getitem__(self, layer: str) -> zarr.Array:
        if layer not in self.layers:
            raise StoreError(
                f"layer '{layer}' is not in {self.location}; it holds: {', '.join(self.layers)}."
            )
        return self._node(f"acts/{layer}")

    def _node(self, path: str) -> zarr.Array:
        """An array of the store, opened once: its metadata never changes after creation, and
        block writes would otherwise re-read it from disk every time.

        Opened with ``write_empty_chunks``: every chunk is written as it is, so zarr does not
        scan each one for being all fill value (a pass over the data that halved the speed of
        uncompressed writes), and a written chunk is never deleted. The setting goes with the
        array (``with_config``), never through zarr's global config, which other threads
        share; the lock keeps one array per path (writer threads open arrays on first use)."""
        with self._lock:
            if path not in self._nodes:
                with quiet_numcodecs():
                    arr = self.group[path].with_config({"write_empty_chunks": True})
                self._nodes[path] = arr  # type: ignore[assignment]
            return self._nodes[path]

    def forget_nodes(self) -> None:
        """Open every array afresh on next use (after its metadata was rewritten)."""
        with self._lock:
            self._nodes.clear()

    def __contains__(self, layer: object) -> bool:
        return layer in self.layers

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    @property
    def labels(self) -> zarr.Array:
        return self._node("labels")

    @property
    def ids(self) -> zarr.Array:
        return self._node("ids")

    @property
    def n(self) -> int:
        return int(self.attrs["n_samples"])

    @property
    def chunk_rows(self) -> int:
        return int(self.attrs["chunk_rows"])

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.n / self.chunk_rows)

    def block_range(self, block: int) -> range:
        return range(block * self.chunk_rows, min(self.n, (block + 1) * self.chunk_rows))

    def done(self) -> np.ndarray:
        """(n_blocks,) bool: which row blocks are completely written (and not left out)."""
        done = self._node("progress/done")[:].astype(bool)  # chunks are read afresh
        done[self._left_out] = False
        return done

    def leave_out(self, blocks: Sequence[int]) -> None:
        """Readers of this Store object treat ``blocks`` as not done: ``render
        --allow-damaged`` draws around the rows of damaged chunks."""
        self._left_out = sorted(set(blocks))

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", "unknown"))

    @property
    def complete(self) -> bool:
        return self.status == "complete" and bool(self.done().all())

    def has_records(self) -> bool:
        """The store keeps per-block records (format 2 on): it can be resumed and sharded."""
        return int(self.attrs.get("format_version", 1)) >= 2

    def skipped(self) -> list[dict[str, Any]]:
        """The skipped samples recorded by the done blocks, in row order (one read of the
        records: zarr fetches their chunks concurrently)."""
        records = self._node("progress/skipped")[:][self.done()]
        return [s for text in records.tolist() if text for s in json.loads(text)]

    def nonfinite(self) -> dict[str, int]:
        """{row array: rows holding NaN or Inf}, summed over the done blocks."""
        counts = self._node("progress/nonfinite")[:][self.done()].sum(axis=0)
        return {name: int(c) for name, c in zip(self.row_keys, counts.tolist(), strict=True)}

    def __repr__(self) -> str:
        return f"Store('{self.location}', layers={self.layers}, n={self.n}, status={self.status})"

    # -- writing ---------------------------------------------------------------------------
    def write_block(
        self,
        block: int,
        acts: Mapping[str, np.ndarray],
        labels: np.ndarray,
        ids: Sequence[str],
        *,
        skipped: Sequence[Mapping[str, Any]] = (),
        nonfinite: Sequence[int] | None = None,
    ) -> None:
        """Write one row block (``acts``: {row key: len(block_range(block)) rows}) and its
        records (``skipped`` samples, ``nonfinite`` rows per row array), then mark it done."""
        rows = self.block_range(block)
        sl = slice(rows.start, rows.stop)
        with writable(self.location, f"write row block {block} (rows {rows.start}-{rows.stop})"):
            with quiet_numcodecs():
                for key, data in acts.items():
                    self.row_array(key)[sl] = data
            self._node("labels")[sl] = labels
            self._node("ids")[sl] = np.asarray(ids, dtype=str)
            if self.has_records():
                self._node("progress/skipped")[block] = json.dumps(list(skipped))
                counts = np.zeros(len(self.row_keys), np.int64)
                if nonfinite is not None:
                    counts[:] = nonfinite
                self._node("progress/nonfinite")[block] = counts
            self._node("progress/done")[block] = 1  # only now is the block trusted

    def update_attrs(self, **values: Any) -> None:
        """Update the root attributes in one write of zarr.json (``attrs.update`` would write
        it once per key, and a failure between two would leave half an update); one process
        at a time, as the file is rewritten whole."""
        with writable(self.location, "update the store's attributes"):
            self.group.update_attributes(values)

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

    # -- summary ---------------------------------------------------------------------------
    def disk_bytes(self, node: str = "") -> int:
        """Bytes on disk under ``node`` ('' for the whole store)."""
        return self.location.disk_bytes(node)

    def info(self) -> dict[str, Any]:
        """What ``actextract info`` shows: arrays, shapes, codec, sizes, labels, status, and
        the damage the quick check finds (:func:`actextract.check.info.store_info`)."""
        from actextract.check.info import store_info  # it checks the store: imported on use

        return store_info(self)


def check_output(path: str | Path | Location, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``, and never one that is not a Zarr store
    (or an empty folder): ``--out ~`` must not delete a home directory. Touches nothing."""
    location = Location.parse(path)
    if not location.exists():
        return
    if not overwrite:
        raise OutputExistsError(
            f"output '{location}' already exists; pass --resume to finish it, --overwrite to "
            "replace it, or choose another --out."
        )
    if not (location.is_store() or location.is_empty_dir()):
        raise OutputExistsError(
            f"output '{location}' exists and is not a Zarr store; --overwrite "
            "only replaces stores. Remove it yourself or choose another --out."
        )


def create_store(
    path: str | Path | Location,
    *,
    n: int,
    arrays: Sequence[ArraySpec],
    options: StoreOptions,
    chunk_rows: int,
    attrs: Mapping[str, Any],
    overwrite: bool = False,
) -> Store:
    """Create an empty store for ``n`` samples; ``status`` is 'incomplete' until sealed."""
    location = Location.parse(path)
    if n <= 0:
        raise StoreError(f"cannot create '{location}' for {n} samples: the dataset is empty.")
    check_output(location, overwrite)
    if location.exists():
        with writable(location, "remove the old store (--overwrite)"):
            location.remove()
    if not location.create(build_store(n, arrays, options, chunk_rows, attrs)):
        raise OutputExistsError(f"output '{location}' was created by another process meanwhile.")
    return open_store(location, mode="r+")


def open_store(path: str | Path | Location, *, mode: str = "r") -> Store:
    """Open a store written by actextract (a path or URL). ``mode='r'`` reads; ``'r+'`` lets
    a run write."""
    location = Location.parse(path)
    if not location.is_store():
        raise StoreError(
            f"'{location}' is not a Zarr store (no zarr.json); give the --out of an actextract run."
        )
    try:
        group = zarr.open_group(location.zarr_store(read_only=mode == "r"), mode=mode)
    except Exception as e:
        raise StoreError(
            f"'{location}' cannot be opened as a Zarr v3 group ({type(e).__name__}: {e}). If "
            "actextract wrote it, its root zarr.json (the record of the run) is damaged: restore "
            "that file from a copy, or extract again into a new store."
        ) from None
    version = group.attrs.get("format_version")
    if version is None or "layers" not in group.attrs:
        raise StoreError(
            f"'{location}' is a Zarr group but not an actextract store (no "
            "format_version/layers attributes)."
        )
    if int(version) > FORMAT_VERSION:  # type: ignore[arg-type]
        raise StoreError(
            f"'{location}' has store format {version}; this actextract reads up to "
            f"{FORMAT_VERSION}. Upgrade actextract."
        )
    if group.attrs.get("axis") == "epoch":  # a Recorder's store: see actextract.store.epochs
        from actextract.store.epochs import EpochStore

        return EpochStore(location, group)
    return Store(location, group)
