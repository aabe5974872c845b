"""A store's arrays as xarray objects, for analysis in the PyData tools.

``to_xarray(store, "conv1")`` is one layer as a lazy (dask-backed) ``xarray.DataArray`` with the
store's dimension names (``sample``, ``channel``, ``y``, ``x``, ...) and the run's ``labels`` and
``ids`` as coordinates on ``sample`` (a text run's padded token layer also has ``mask`` and
``input_ids`` on ``sample`` and ``token``; its layer of token rows, ``--reduce tokens``, is
(``token``, ``feature``) with each token's sample, document, position, id and label). One
layer at a time, because layers share dimension names with different sizes (``channel`` is 64
in one layer, 256 in another), which one ``xarray.Dataset`` cannot hold:
``xarray.open_zarr(path, group="acts")`` fails on a store of several layers.

Needs ``pip install xarray dask`` (imported on first use, not with actextract).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from actextract.store.base import StoreReader
from actextract.store.build import token_arrays
from actextract.store.opening import as_store
from actextract.store.tokens import is_token_layer, token_table

if TYPE_CHECKING:
    import xarray

__all__ = ["to_xarray"]


def to_xarray(
    store: StoreReader | str | Path,
    layer: str,
    *,
    storage_options: Mapping[str, Any] | str | None = None,
) -> xarray.DataArray:
    """One row array of ``store`` (a path, URL or open :class:`Store`) as a lazy DataArray.

    ``layer`` is a stored layer, or another per-sample array by its path
    (``stats/conv1/channel_means``). Its dask chunks are the store's row blocks; values are as
    stored (float16 by default: cast with ``.astype("float32")`` before sums and means, which
    overflow in float16). Coordinates: ``sample`` (the row index, kept through selections),
    ``labels`` (-1 where a sample has none) and ``ids``. Skipped or unwritten rows read as NaN.
    A Recorder's store gives (``epoch``, ``sample``, ...). ``storage_options``: those of a URL.
    """
    try:
        import dask.array as da
        import xarray as xr
    except ImportError as e:
        raise ImportError(
            f"to_xarray needs xarray and dask ({e}); install them: pip install xarray dask"
        ) from None
    store = as_store(store, storage_options)
    if store.per_token(layer):
        return _token_rows(store, layer, da, xr)
    # an unknown one: store[layer]'s StoreError, naming the layers
    arr = store.row_array(layer) if layer in store.row_keys else store[layer]
    labels, ids = store.labels[:], store.ids[:]
    coords = {
        "sample": np.arange(len(labels)),
        "labels": ("sample", labels),
        "ids": ("sample", ids),
    }
    dims = arr.metadata.dimension_names
    if dims[:2] == ("sample", "token") and is_token_layer(store, layer):
        # a text run's token layer: which tokens are real, and their ids, beside the values
        for name in token_arrays(store.attrs["tokens"]):
            coords[name] = (("sample", "token"), da.from_zarr(store._node(f"tokens/{name}")))
    return xr.DataArray(da.from_zarr(arr), dims=dims, coords=coords, name=layer)


def _token_rows(store: StoreReader, layer: str, da, xr) -> xarray.DataArray:
    """A layer of token rows (``--reduce tokens``): (``token``, ``feature``), the real tokens of
    the done blocks in order (their rows of the store, lazily), and on ``token`` where each came
    from (:func:`~actextract.store.tokens.token_table`: ``sample``, ``document``, ``position``,
    ``token_id``) with its sample's ``labels`` and ``ids``."""
    arr = store[layer]
    counts = store.token_counts()  # type: ignore[attr-defined]
    lazy = da.from_zarr(arr)
    pieces = []
    for block, count in enumerate(counts.tolist()):
        span = store.block_rows(layer, block, count)
        if count:
            pieces.append(lazy[span.start : span.stop])
    values = da.concatenate(pieces) if pieces else lazy[:0]
    table = token_table(store)
    sample = table["sample"]
    coords = {name: ("token", table[name]) for name in ("sample", "document", "position")}
    coords["token_id"] = ("token", table["token_id"])
    coords["labels"] = ("token", np.asarray(store.labels[:])[sample])
    coords["ids"] = ("token", np.asarray(store.ids[:])[sample])
    return xr.DataArray(values, dims=("token", "feature"), coords=coords, name=layer)
