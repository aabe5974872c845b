"""Tokens: a text run's activations as one row per real token, the layout sparse-autoencoder
and probe training read.

A text run keeps ``tokens/mask`` (N, T) (1: a real token, 0: padding, on the tokenizer's side)
and ``tokens/input_ids`` (N, T), written with each row block (so resume, shards and torchrun
keep their guarantees), and each token layer one of two ways:

- with ``--reduce tokens``, one row per real token (``rows: token``): row block ``b`` owns the
  rows from ``b × token_capacity`` (``chunk_rows × T``: room for every token of its samples),
  and its ``progress/tokens[b]`` real tokens fill them from the start, in order; the rows
  after them are never written (their chunks are absent, and read as NaN). Blocks stay
  disjoint, so any process writes any block, and the same tokens land in the same bytes;
- with ``--reduce none``, padded: ``acts/<layer>`` (N, T, D) beside the mask.

:func:`token_table` lists the real tokens in order: ``sample`` (the store's row),
``document`` and ``position`` (0 for a document's first token) and ``token_id``; a row is a
document, or in a packed run (``--pack``) a window of several, whose ``tokens/document`` and
``tokens/position`` say where each token came from. :func:`token_activations` gives the
tokens' rows of a layer, (n_tokens, D), in the same order, block by block
(:func:`iter_token_blocks`) or whole, from either layout; :func:`sample_tokens` gives chosen
samples' (T, D) rows, NaN at the padding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actextract.errors import StoreError
from actextract.store.base import StoreReader
from actextract.store.opening import as_store

__all__ = [
    "is_token_layer",
    "iter_token_blocks",
    "sample_tokens",
    "token_activations",
    "token_table",
]


def _mask(store: StoreReader) -> tuple[dict, object]:
    tokens = store.attrs.get("tokens")
    if not tokens:
        raise StoreError(
            f"{store.location} holds no token records: it is not from a text run (a dataset "
            "of documents tokenised with an attention mask); read its arrays as they are."
        )
    return tokens, store._node("tokens/mask")


def token_table(
    store: StoreReader | str | Path, rows: slice | None = None
) -> dict[str, np.ndarray]:
    """The real tokens of ``rows`` (default: every row): {``sample``, ``column`` (its place in
    the stored row, padding counted), ``document``, ``position``, ``token_id`` (-1 where the
    inputs had no ids)}, each (n_tokens,), in the store's order. Rows of blocks not done
    have none (their records may be written before the flag that makes them true)."""
    store = as_store(store)
    tokens, mask_arr = _mask(store)
    sl = rows or slice(0, store.n)
    mask = np.asarray(mask_arr[sl], dtype=bool)
    mask[~_done_rows(store)[sl]] = False
    return _table(store, tokens, sl, mask)


def _done_rows(store: StoreReader) -> np.ndarray:
    """(N,) bool: the rows of the row blocks recorded done."""
    done = store.done() if hasattr(store, "done") else np.ones(store.n_blocks, bool)
    return np.repeat(done, store.chunk_rows)[: store.n]


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
    """Whether ``layer`` is stored with a row for each of a text run's tokens: a row per real
    token (``--reduce tokens``), or (N, T, D) with the run's T (a token layer kept whole and
    padded, not pooled)."""
    tokens = store.attrs.get("tokens")
    if not tokens or layer not in store.layers:
        return False
    if store.per_token(layer):
        return True
    arr = store[layer]
    return arr.ndim == 3 and arr.shape[1] == tokens["length"]


def iter_token_blocks(
    store: StoreReader | str | Path, layer: str
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Row block by row block (memory: one block): its :func:`token_table` and the layer's
    rows of those tokens, (tokens of the block, D)."""
    store = as_store(store)
    tokens, mask_arr = _mask(store)
    arr = _token_layer(store, layer, tokens)
    counts = store.token_counts() if store.per_token(layer) else None  # type: ignore[attr-defined]
    done = _done_rows(store)
    for block in range(store.n_blocks):
        rows = store.block_range(block)
        sl = slice(rows.start, rows.stop)
        mask = np.asarray(mask_arr[sl], dtype=bool)  # read once for the table and the rows
        mask[~done[sl]] = False  # a block not done has no tokens yet
        if counts is None:
            values = np.asarray(arr[sl])[mask]
        else:
            span = store.block_rows(layer, block, int(counts[block]))
            values = np.asarray(arr[span.start : span.stop])
            if len(values) != mask.sum():  # a done block's count is its mask's
                raise StoreError(
                    f"{store.location}: block {block} of '{layer}' records {len(values)} "
                    f"tokens and its mask {int(mask.sum())}; run `actextract verify`."
                )
        yield _table(store, tokens, sl, mask), values


def sample_tokens(
    store: StoreReader | str | Path, layer: str, samples: Sequence[int]
) -> np.ndarray:
    """The (T, D) rows of each of ``samples`` (store rows) of a token layer, (len(samples), T,
    D), NaN at the padding, from either layout."""
    store = as_store(store)
    tokens, mask_arr = _mask(store)
    arr = _token_layer(store, layer, tokens)
    picked = np.asarray(samples, np.int64)
    mask = np.asarray(mask_arr.get_orthogonal_selection((picked,)), bool)
    mask[~_done_rows(store)[picked]] = False  # a block not done has no tokens yet
    if not store.per_token(layer):
        data = np.asarray(arr.get_orthogonal_selection((picked,)))
        return np.where(mask[..., None], data, np.nan).astype(data.dtype)
    out = np.full((len(picked), tokens["length"], arr.shape[-1]), np.nan, arr.dtype)
    for block in np.unique(picked[mask.any(axis=1)] // store.chunk_rows).tolist():
        rows = store.block_range(block)
        real = np.asarray(mask_arr[rows.start : rows.stop], bool).sum(axis=1)
        ends = np.cumsum(real)  # each sample's tokens end here in the block's rows
        here = np.flatnonzero(picked // store.chunk_rows == block)
        local = picked[here] - rows.start
        lo, hi = int((ends - real)[local].min()), int(ends[local].max())
        first = store.block_rows(layer, block, 0).start
        values = np.asarray(arr[first + lo : first + hi])  # one read for the block's picks
        for i, r in zip(here.tolist(), local.tolist(), strict=True):
            out[i, mask[i]] = values[ends[r] - real[r] - lo : ends[r] - lo]
    return out


def _token_layer(store: StoreReader, layer: str, tokens: dict) -> Any:
    """The array of a token layer (:func:`is_token_layer`); a clear error for any other."""
    arr = store[layer]
    if not is_token_layer(store, layer):
        raise StoreError(
            f"layer '{layer}' is stored as {tuple(arr.shape[1:])} per sample, not a row for each "
            f"of the run's {tokens['length']} tokens; token rows are of token layers stored "
            "whole (--reduce tokens or none), not pooled ones."
        )
    return arr


def token_activations(store: StoreReader | str | Path, layer: str) -> np.ndarray:
    """Every real token's row of ``layer``, (n_tokens, D), in :func:`token_table`'s order."""
    store = as_store(store)
    parts = [values for _, values in iter_token_blocks(store, layer)]
    if not parts:  # pragma: no cover - a store has at least one block
        return np.zeros((0, store[layer].shape[-1]), store[layer].dtype)
    return np.concatenate(parts)
