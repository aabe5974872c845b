"""Growth: a store whose row count is not known when it is created (a run over an iterable)
grows by whole row blocks as its rows come, and is cut to its real row count at the end.

Which arrays follow the row count, and how, is what creating a store of that many rows would
lay out (:func:`~actextract.store.build.expected_metadata`): every array whose shape there
differs from the store's is resized to it — the row arrays, labels, ids, a text run's
``tokens/`` and token rows, and the per-block records — whatever arrays the store's format
has. So a store grown to ``n`` rows has the metadata, byte for byte, of one created with
``n``: ``verify`` and every reader see an ordinary store of ``n`` rows, its last block partial
as a sized run's is.

Resizing writes only metadata (growing never moves a chunk; the cut at the end stays within
the last block, whose chunk is written after it). The store's open arrays are resized in
place, so the writer threads' next writes see the new shape, and their writes in flight stay
within the shape they had.
"""

from __future__ import annotations

import json
import logging

from actextract.store.build import expected_metadata
from actextract.store.run import Store

__all__ = ["resize_rows"]

log = logging.getLogger(__name__)


def resize_rows(store: Store, n: int, **attrs) -> None:
    """Give ``store`` the arrays of a store of ``n`` rows (see the module docstring), then
    record ``n_samples`` (and ``attrs``) in its root attributes."""
    wanted = expected_metadata({**store.attrs, "n_samples": n})
    for path, meta in wanted.items():
        doc = json.loads(meta)
        if doc.get("node_type") != "array":
            continue
        arr = store._node(path)  # the store's own open array: resized where the writers see it
        if tuple(arr.shape) != tuple(doc["shape"]):
            arr.resize(tuple(doc["shape"]))
    store.update_attrs(n_samples=n, **attrs)
    log.debug("%s: resized to %d rows", store.location, n)
