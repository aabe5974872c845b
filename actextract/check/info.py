"""Store info: what ``actextract info`` shows of a store — arrays, shapes, codec, sizes,
labels, status — and whether it is whole (:func:`actextract.store.integrity.check`).

A damaged store is summed up from what can still be read: an array whose metadata is missing
is listed with its shape from the root attributes, the damage comes with its rows, and
``status`` is then ``damaged`` whatever the root attributes say.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from actextract.store import EpochStore, StoreReader, integrity
from actextract.store.epochs import AXIS
from actextract.store.layout import layer_arrays
from actextract.store.opening import as_store

__all__ = ["store_info"]


def store_info(
    store: StoreReader | str | Path, *, storage_options: Mapping[str, Any] | str | None = None
) -> dict[str, Any]:
    """See the module docstring; ``damage`` lists what is wrong, one line each ([] when
    the store is whole). ``store``: an open store, or its path or URL (opened with
    ``storage_options``)."""
    store = as_store(store, storage_options)
    attrs = store.attrs
    damage = integrity.check(store)
    broken = {p.path for p in damage.metadata}
    if "" in broken:  # the root attributes are damaged: no array is opened by them
        broken |= {"labels", *layer_arrays(attrs)}
    lines = damage.lines()
    done = store.done() if "progress/done" not in broken else np.zeros(0, bool)
    paths = {name: path for path, name in layer_arrays(attrs).items()}
    arrays = [_array(store, spec, paths[spec["name"]], broken) for spec in attrs["layers"]]
    labels: dict[int, int] = {}
    if "labels" not in broken and not any(g[0] == "labels" for g in damage.gaps):
        try:  # (the check reads the labels of a run's store; a recording's are read here)
            values, counts = np.unique(store.labels[:], return_counts=True)
            labels = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
        except Exception as e:  # a chunk that does not decode (checksum)
            lines.append(f"labels: {integrity.undecodable(e)}")
    from actextract.clusters.results import clusterings  # they read stores: imported on use
    from actextract.store.parts import summed_blocks

    stats = {
        layer: {"kinds": a["kinds"], "disk_bytes": store.disk_bytes(f"stats/{layer}")}
        for layer, a in store.stats_layers().items()
    }
    summed = None
    if stats and not damage:  # e.g. a block in two parts: the sum would be wrong
        summed = int(summed_blocks(store).sum())
    info = {
        "path": str(store.location),
        "status": "damaged" if lines else attrs.get("status"),
        "recorded_status": attrs.get("status"),
        "damage": lines,
        "blocks_done": int(done.sum()),
        "n_blocks": len(done) if "progress/done" not in broken else store.n_blocks,
        "n_samples": store.n,
        "chunk_rows": store.chunk_rows,
        "dtype": attrs.get("dtype"),
        "codec": attrs.get("codec"),
        "model": attrs.get("model"),
        "dataset": attrs.get("dataset"),
        "precision": attrs.get("precision"),
        "arrays": arrays,
        "tokens": attrs.get("tokens"),  # a text run's token records
        "disk_bytes": store.disk_bytes(),
        "labels": labels,
        "skipped": attrs.get("skipped", []),
        "error": attrs.get("error"),
        "nonfinite": attrs.get("nonfinite"),
        "summary": attrs.get("summary"),
        "stats": stats,
        "blocks_summed": summed,
        "clusters": [
            {"layer": c.layer, "name": c.name}
            | {k: c.attrs.get(k) for k in ("status", "settings", "metrics")}
            for c in clusterings(store)
        ],
    }
    if isinstance(store, EpochStore):  # blocks_done/n_blocks count epochs here
        info.update(axis=AXIS, epochs=store.epochs(), every=attrs.get("every"))
        info["nonfinite"] = store.nonfinite()
    return info


def _array(store: StoreReader, spec: dict[str, Any], path: str, broken: set[str]) -> dict[str, Any]:
    """One layer's row of the table (its array at ``path``); shape and chunks from the root
    attributes when its metadata is missing (then its raw size is not known)."""
    if path in broken:
        shape = (store.n, *spec["shape"])
        chunks, dtype, raw = (store.chunk_rows, *spec["shape"]), str(store.attrs.get("dtype")), 0
    else:
        arr = store[spec["name"]]
        shape, chunks, dtype, raw = tuple(arr.shape), tuple(arr.chunks), str(arr.dtype), arr.nbytes
        if spec.get("rows") == "token":  # its rows are the done blocks' real tokens
            n_tokens = int(store.token_counts().sum())  # type: ignore[attr-defined]
            shape, raw = (n_tokens, *shape[1:]), n_tokens * arr.nbytes // max(1, arr.shape[0])
    return {
        "name": spec["name"],
        "shape": tuple(shape),
        "dtype": dtype,
        "chunks": tuple(chunks),
        "reduce": spec.get("reduce", "none"),
        "layout": spec.get("layout"),  # the layer's output's (None: before format 4)
        "clone": spec.get("clone"),
        "batch_axis": spec.get("batch_axis", 0),
        "rows": spec.get("rows", "sample"),  # "token": a row per real token of a text run
        "raw_bytes": raw,
        "disk_bytes": store.disk_bytes(path),
    }
