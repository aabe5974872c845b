"""The read side every store shares (:class:`StoreReader`), and the row blocks'
(:class:`BlockReader`); and the one write both writers share, of the root attributes
(:func:`write_attributes`).

The schema itself is described once, in ``docs/store-format.md``.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from actextract.core.axes import array_layout, stored_layout
from actextract.errors import StoreError
from actextract.store.layout import fixed_strings, quiet_numcodecs, row_keys
from actextract.store.location import Location, writable
from actextract.store.strings import TextArray

__all__ = ["BlockReader", "StoreReader", "consolidate", "drop_consolidated", "write_attributes"]

SLAB_BYTES = 64 << 20  # fixed-width records read this much at a time (see skipped)


class StoreReader:
    """What every store of actextract reads alike, and nothing it writes: its attributes, its
    arrays opened lazily (``store[layer]``: slicing reads only the chunks it touches), the
    labels (N,) int64 and ids (N,) str (a :class:`~actextract.store.strings.TextArray`: read
    alike from a store of format 7's fixed-width UTF-8 and an older store's strings).
    :class:`~actextract.store.run.Store` (a run's row blocks) and
    :class:`~actextract.store.epochs.EpochStore` (a recording's epochs) build on it.
    """

    def __init__(self, location: str | Path | Location, group: zarr.Group):
        self.location = Location.parse(location)
        self.group = group
        self._nodes: dict[str, zarr.Array] = {}
        self._lock = threading.Lock()

    @property
    def path(self) -> Path | str:
        """The store's folder (local stores), else its URL."""
        return self.location.local or self.location.url

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

    def per_token(self, key: str) -> bool:
        """Whether the row array ``key`` holds a row per real token of a text run (a token
        layer stored with ``--reduce tokens``), not a row per sample: block ``b``'s tokens are
        rows ``b * token_capacity`` on, ``progress/tokens[b]`` of them (:meth:`block_rows`)."""
        spec = self._layer_spec(key.removeprefix("acts/"))
        return spec is not None and spec.get("rows") == "token"

    def _layer_spec(self, name: str) -> dict[str, Any] | None:
        """The root attributes' entry of the stored layer ``name`` (None: not one)."""
        return next((s for s in self.attrs["layers"] if s["name"] == name), None)

    def sample_shape(self, key: str) -> tuple[int, ...]:
        """A sample's rows in the row array ``key``: (T, D) for a layer of token rows, else
        the array's shape past the sample axis."""
        if self.per_token(key):
            return tuple(self._layer_spec(key)["shape"])  # type: ignore[index]
        return tuple(self.row_array(key).shape[1:])

    @property
    def token_capacity(self) -> int:
        """The token rows each row block has room for: ``chunk_rows`` × the run's T."""
        return self.chunk_rows * int(self.attrs["tokens"]["length"])

    def block_rows(self, key: str, block: int, count: int | None = None) -> range:
        """The rows of the row array ``key`` that row block ``block`` holds: its samples, or
        in a layer of token rows its real tokens (``count`` of them; default: as
        ``progress/tokens`` records)."""
        if not self.per_token(key):
            return self.block_range(block)
        if count is None:
            count = int(self._node("progress/tokens")[block])
        start = block * self.token_capacity
        return range(start, start + count)

    def block_chunks(
        self, path: str, block: int, *, per_block: bool = False, count: int | None = None
    ) -> list[tuple[int, ...]]:
        """The coordinates of the chunks of the array at ``path`` that hold row block
        ``block``: those of its rows (:meth:`block_rows`, ``count`` real tokens in a layer of
        token rows), or of a record with a row per block (``per_block``)."""
        arr = self._node(path)
        c0 = arr.chunks[0]
        if per_block:
            first, stop = block // c0, block // c0 + 1
        else:
            rows = self.block_rows(path, block, count)
            first, stop = rows.start // c0, -(-rows.stop // c0)
        rest = list(itertools.product(*(range(n) for n in arr.cdata_shape[1:])))
        return [(i, *r) for i in range(first, stop) for r in rest]

    def layout(self, layer: str) -> str:
        """The layout of a layer's stored rows (:mod:`actextract.core.axes`): the layer's own, or
        ``vector`` once pooled; for a layer kept only as statistics, its output's."""
        spec = self._layer_spec(layer)
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
    def ids(self) -> TextArray:
        """(N,) str: each row's id (dataset index or relative path); indexing reads only the
        chunks it touches and returns NumPy strings, as zarr reads a store's own."""
        return TextArray(self._node("ids"))

    def text(self, path: str) -> TextArray:
        """The array of strings at ``path`` (ids, a block or epoch record), read as strings."""
        return TextArray(self._node(path))

    @property
    def n(self) -> int:
        return int(self.attrs["n_samples"])

    @property
    def chunk_rows(self) -> int:
        return int(self.attrs["chunk_rows"])

    @property
    def n_blocks(self) -> int:
        """Row blocks of ``chunk_rows`` samples along the sample axis."""
        return math.ceil(self.n / self.chunk_rows)

    def block_range(self, block: int) -> range:
        return range(block * self.chunk_rows, min(self.n, (block + 1) * self.chunk_rows))

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", "unknown"))

    def disk_bytes(self, node: str = "") -> int:
        """Bytes on disk under ``node`` ('' for the whole store)."""
        return self.location.disk_bytes(node)


class BlockReader(StoreReader):
    """A store of N rows in row blocks of ``chunk_rows``, read: which blocks are done, and
    what their records say. A run's :class:`~actextract.store.run.Store`, and one epoch of a
    recording (:class:`~actextract.store.epochs.EpochView`)."""

    def __init__(self, location: str | Path | Location, group: zarr.Group):
        super().__init__(location, group)
        self._left_out: list[int] = []

    def done(self) -> np.ndarray:
        """(n_blocks,) bool: which row blocks are completely written (and not left out)."""
        done = self._node("progress/done")[:].astype(bool)  # chunks are read afresh
        done[self._left_out] = False
        return done

    def token_counts(self) -> np.ndarray:
        """(n_blocks,) int64: the real tokens of each done row block of a text run (0 in the
        others)."""
        counts = np.asarray(self._node("progress/tokens")[:], np.int64)
        counts[~self.done()] = 0
        return counts

    def leave_out(self, blocks: Sequence[int]) -> None:
        """Readers of this Store object treat ``blocks`` as not done: ``render
        --allow-damaged`` draws around the rows of damaged chunks."""
        self._left_out = sorted(set(blocks))

    @property
    def complete(self) -> bool:
        return self.status == "complete" and bool(self.done().all())

    def has_records(self) -> bool:
        """The store keeps per-block records (format 2 on): it can be resumed and sharded."""
        return int(self.attrs.get("format_version", 1)) >= 2

    def skipped(self) -> list[dict[str, Any]]:
        """The skipped samples recorded by the done blocks, in row order (one read of the
        records: zarr fetches their chunks concurrently)."""
        records = self.text("progress/skipped")
        done = np.flatnonzero(self.done())
        row = records.width or 1  # a fixed-width record's bytes: read in slabs of blocks
        step = max(1, SLAB_BYTES // row) if records.fixed else max(1, len(done))
        out: list[dict[str, Any]] = []
        for lo in range(0, len(done), step):
            texts = records[done[lo : lo + step]].tolist()
            out += [s for text in texts if text for s in json.loads(text)]
        bare = [s for s in out if "id" not in s]  # a block that kept indexes only
        if bare:
            found = self.ids[[s["index"] for s in bare]].tolist()
            for s, i in zip(bare, found, strict=True):
                s.update(id=i, error=s.get("error", ""))
        return out

    def nonfinite(self) -> dict[str, int]:
        """{row array: rows holding NaN or Inf}, summed over the done blocks."""
        counts = self._node("progress/nonfinite")[:][self.done()].sum(axis=0)
        return {name: int(c) for name, c in zip(self.row_keys, counts.tolist(), strict=True)}


def write_attributes(store: StoreReader, values: dict[str, Any]) -> None:
    """Update the root attributes of the store its writer holds, in one write of zarr.json
    (``attrs.update`` would write it once per key, and a failure between two would leave half
    an update); one process at a time, as the file is rewritten whole."""
    with writable(store.location, "update the store's attributes"):
        drop_consolidated(store.group.store)  # (the rewrite below would leave it out too)
        store.group.update_attributes(values)


def consolidate(store: StoreReader) -> None:
    """Write the store's consolidated metadata (every node's metadata, copied into the root
    zarr.json), which xarray and ``zarr.open_group`` read in one request: done when the store
    is sealed, and dropped before any later write changes what it copies
    (:func:`drop_consolidated`), so that no copy outlives what it copies. actextract's own
    readers never read it (``use_consolidated=False``). Stores before format 7 are left as
    they were written: without it."""
    if not fixed_strings(store.attrs):
        return
    with warnings.catch_warnings():  # "not part in the Zarr format 3 specification": known
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(store.group.store)


def drop_consolidated(zstore: zarr.abc.store.Store) -> bool:
    """Remove the consolidated metadata from the root zarr.json of ``zstore`` (opened for
    writing), if it has any; True when there was some. Done before anything that changes
    what it copies (the metadata below the root: attributes, new arrays and groups) is
    written to a sealed store: attributes (``write_attributes``), arrays written whole
    (``checked_array``: statistics, ``cluster``), ``verify --repair``'s restored metadata.
    Chunks, which it does not copy, are written without it. The root's own attributes (its
    ``status``) are never copied: the root zarr.json holds them once."""
    prototype = default_buffer_prototype()
    raw = sync(zstore.get("zarr.json", prototype=prototype))
    if raw is None:
        return False
    meta = json.loads(raw.to_bytes())
    if meta.pop("consolidated_metadata", None) is None:
        return False
    text = json.dumps(meta, indent=2).encode()
    sync(zstore.set("zarr.json", prototype.buffer.from_bytes(text)))
    return True
