"""Growth: a store whose row count is not known when it is created (a run over an iterable)
grows by whole row blocks as its rows come, and is cut to its real row count at the end.

Which arrays follow the row count, and how, is what creating a store of that many rows would
lay out (:func:`~actextract.store.build.expected_metadata`): every array whose shape there
differs from the store's is resized to it — the row arrays, labels, ids, a text run's
``tokens/`` and token rows, and the per-block records — whatever arrays the store's format
has. So a store grown to ``n`` rows has the metadata, byte for byte, of one created with
``n``: ``verify`` and every reader see an ordinary store of ``n`` rows, its last block partial
as a sized run's is.

Resizing writes only metadata: growing never moves a chunk, and the cut at the end deletes
none (the blocks past the rows that came were never written; the last one is written after
it). The store's open arrays are resized in
place, so the writer threads' next writes see the new shape, and their writes in flight stay
within the shape they had.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from zarr.core.sync import sync

from actextract.store.build import expected_metadata
from actextract.store.run import Store

__all__ = ["Resizer", "resize_rows", "row_shapes"]

log = logging.getLogger(__name__)

Shapes = dict[str, tuple[int, ...]]


def row_shapes(attrs: Mapping[str, Any], n: int) -> Shapes:
    """{array path: shape} of a store of ``n`` rows with these root attributes, as creating
    it would lay it out."""
    out = {}
    for path, meta in expected_metadata({**attrs, "n_samples": n}).items():
        doc = json.loads(meta)
        if doc.get("node_type") == "array":
            out[path] = tuple(doc["shape"])
    return out


class Resizer:
    """:func:`resize_rows` for one store, many times: the shapes at whole blocks come from
    those of 1 and 2 blocks (every array's length grows by the same steps with each block:
    samples, block records, token rows), checked against 3 blocks once (else laid out anew
    each time, as at any other row count)."""

    def __init__(self, store: Store):
        self.store = store
        self.attrs = store.attrs
        self.rows = store.chunk_rows
        one, two, three = (row_shapes(self.attrs, k * self.rows) for k in (1, 2, 3))
        self.one = one
        self.step = {p: tuple(b - a for a, b in zip(one[p], two[p], strict=True)) for p in one}
        self.linear = one.keys() == three.keys() and self._at(3) == three

    def _at(self, blocks: int) -> Shapes:
        return {
            p: tuple(a + (blocks - 1) * d for a, d in zip(self.one[p], self.step[p], strict=True))
            for p in self.one
        }

    def shapes(self, n: int) -> Shapes:
        if self.linear and n > 0 and n % self.rows == 0:
            return self._at(n // self.rows)
        return row_shapes(self.attrs, n)

    def __call__(self, n: int, **attrs: Any) -> None:
        """Give the store the arrays of a store of ``n`` rows (see the module docstring), then
        record ``n_samples`` (and ``attrs``) in its root attributes."""
        arrays = [(self.store._node(path), shape) for path, shape in self.shapes(n).items()]
        # the store's own open arrays, resized where the writers see them; all at once (one
        # round trip to a remote store, not one per array)
        todo = [(arr, shape) for arr, shape in arrays if tuple(arr.shape) != shape]

        async def all_of_them() -> None:
            await asyncio.gather(
                *(arr.async_array.resize(shape, delete_outside_chunks=False) for arr, shape in todo)
            )

        sync(all_of_them())
        self.store.update_attrs(n_samples=n, **attrs)
        log.debug("%s: resized to %d rows", self.store.location, n)


def resize_rows(store: Store, n: int, **attrs: Any) -> None:
    """Give ``store`` the arrays of a store of ``n`` rows (see the module docstring), then
    record ``n_samples`` (and ``attrs``) in its root attributes."""
    Resizer(store)(n, **attrs)
