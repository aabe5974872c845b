"""Tokens: a text run's activations as one row per real token, the layout sparse-autoencoder
and probe training read.

A text run stores each token layer padded, ``acts/<layer>`` (N, T, D), and beside it
``tokens/mask`` (N, T) (1: a real token, 0: padding, on the tokenizer's side) and
``tokens/input_ids`` (N, T), written with each row block (so resume, shards and torchrun keep
their guarantees). :func:`token_table` lists the real tokens in order: ``sample`` (the
store's row), ``document`` and ``position`` (0 for a document's first token) and ``token_id``;
a row is a document, or in a packed run (``--pack``) a window of several, whose
``tokens/document`` and ``tokens/position`` say where each token came from.
:func:`token_activations` gives the tokens' rows of a layer, (n_tokens, D), in the same order,
block by block or whole.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from actextract.errors import StoreError
from actextract.store.base import StoreReader

__all__ = ["is_token_layer", "iter_token_blocks", "token_activations", "token_table"]


def _mask(store: StoreReader) -> tuple[dict, object]:
    tokens = store.attrs.get("tokens")
    if not tokens:
        raise StoreError(
            f"{store.location} holds no token records: it is not from a text run (a dataset "
            "of documents tokenised with an attention mask); read its arrays as they are."
        )
    return tokens, store._node("tokens/mask")


def token_table(store: StoreReader, rows: slice | None = None) -> dict[str, np.ndarray]:
    """The real tokens of ``rows`` (default: every row): {``sample``, ``column`` (its place in
    the stored row, padding counted), ``document``, ``position``, ``token_id`` (-1 where the
    inputs had no ids)}, each (n_tokens,), in the store's order."""
    tokens, mask_arr = _mask(store)
    sl = rows or slice(0, store.n)
    return _table(store, tokens, sl, np.asarray(mask_arr[sl], dtype=bool))


def _table(store: StoreReader, tokens: dict, sl: slice, mask: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`token_table` of the rows ``sl``, whose mask is read already."""
    sample, at = np.nonzero(mask)
    start = sl.start or 0

    def column(name: str) -> np.ndarray:
        return np.asarray(store._node(f"tokens/{name}")[sl])[sample, at].astype(np.int32)

    records = tokens.get("records") or []
    if "document" in records:  # a packed window: each token says where it came from
        document, position = column("document").astype(np.int64), column("position")
    else:  # a row is a document
        document = (sample + start).astype(np.int64)
        position = (np.cumsum(mask, axis=1) - 1)[sample, at].astype(np.int32)
    ids = column("input_ids") if tokens.get("input_ids") else np.full(len(sample), -1, np.int32)
    return {
        "sample": (sample + start).astype(np.int64),
        "column": at.astype(np.int32),  # where in the stored (padded) row
        "document": document,
        "position": position,
        "token_id": ids,
    }


def is_token_layer(store: StoreReader, layer: str) -> bool:
    """Whether ``layer`` is stored with a row for each of a text run's tokens: (N, T, D) with
    the run's T (a token layer kept whole, not pooled)."""
    tokens = store.attrs.get("tokens")
    if not tokens or layer not in store.layers:
        return False
    arr = store[layer]
    return arr.ndim == 3 and arr.shape[1] == tokens["length"]


def iter_token_blocks(
    store: StoreReader, layer: str
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Row block by row block (memory: one block): its :func:`token_table` and the layer's
    rows of those tokens, (tokens of the block, D)."""
    tokens, mask_arr = _mask(store)
    arr = store[layer]
    if not is_token_layer(store, layer):
        raise StoreError(
            f"layer '{layer}' is stored as {tuple(arr.shape[1:])} per sample, not a row for each "
            f"of the run's {tokens['length']} tokens; token rows are of token layers stored "
            "whole (--reduce none or tokens), not pooled ones."
        )
    for block in range(store.n_blocks):
        rows = store.block_range(block)
        sl = slice(rows.start, rows.stop)
        mask = np.asarray(mask_arr[sl], dtype=bool)  # read once for the table and the rows
        yield _table(store, tokens, sl, mask), np.asarray(arr[sl])[mask]


def token_activations(store: StoreReader, layer: str) -> np.ndarray:
    """Every real token's row of ``layer``, (n_tokens, D), in :func:`token_table`'s order."""
    parts = [values for _, values in iter_token_blocks(store, layer)]
    if not parts:
        return np.zeros((0, store[layer].shape[-1]), store[layer].dtype)
    return np.concatenate(parts)
