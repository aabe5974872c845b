"""Top tokens: for a text run's token layer, each of the first features' top-activating tokens
in their context, the "max activating examples" view, as HTML text whose background colour
is the feature's activation at each token.

One pass over the layer's row blocks (memory: one block) keeps, per feature, the ``top``
largest values over the real tokens (:func:`actextract.store.tokens.iter_token_blocks`), then
reads each example's row for its context: ``context`` tokens either side within its sample.
Tokens are shown as the model's tokenizer decodes them (rebuilt from the store's model spec),
else as their ids.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from html import escape
from typing import Any

import numpy as np

from actextract.store import Store
from actextract.store.tokens import iter_token_blocks, sample_tokens

__all__ = ["Example", "top_examples", "top_tokens_html"]

FEATURES = 8  # the first features shown
TOP = 5  # examples per feature
CONTEXT = 8  # tokens either side


@dataclass(frozen=True)
class Example:
    """One top-activating token of a feature: its row and place there, the value, and its
    context (token ids and the feature's value at each, the token itself at ``at``)."""

    value: float
    sample: int
    document: int
    position: int
    ids: list[int]
    values: list[float]
    at: int


def top_examples(
    store: Store, layer: str, features: int = FEATURES, top: int = TOP, context: int = CONTEXT
) -> dict[int, list[Example]]:
    """{feature: its ``top`` examples, largest first} for the first ``features`` features."""
    n_features = min(features, store[layer].shape[-1])
    heaps: list[list[tuple[float, int, tuple[int, int, int, int]]]] = [
        [] for _ in range(n_features)
    ]
    seen = 0  # tokens before this block: a tie-breaker that keeps the store's order
    for table, values in iter_token_blocks(store, layer):
        v = np.nan_to_num(values[:, :n_features].astype(np.float32), nan=-np.inf)
        for f in range(n_features):
            for i in np.lexsort((np.arange(len(v)), -v[:, f]))[:top]:  # ties: the first
                where = tuple(
                    int(table[k][i]) for k in ("sample", "column", "document", "position")
                )
                item = (float(v[i, f]), -(seen + int(i)), where)
                push = heapq.heappush if len(heaps[f]) < top else heapq.heappushpop
                push(heaps[f], item)
        seen += len(values)
    mask_arr, ids_arr = store._node("tokens/mask"), _ids(store)
    out: dict[int, list[Example]] = {}
    for f, heap in enumerate(heaps):
        out[f] = []
        for value, _, (sample, column, document, position) in sorted(heap, reverse=True):
            row = np.asarray(sample_tokens(store, layer, [sample])[0, :, f], np.float32)
            mask = np.asarray(mask_arr[sample], bool)
            ids = np.asarray(ids_arr[sample]) if ids_arr is not None else np.full(len(row), -1)
            lo, hi = max(0, column - context), min(len(row), column + context + 1)
            keep = [j for j in range(lo, hi) if mask[j]]
            out[f].append(
                Example(
                    value,
                    sample,
                    document,
                    position,
                    [int(ids[j]) for j in keep],
                    [float(row[j]) for j in keep],
                    keep.index(column),
                )
            )
    return out


def _ids(store: Store) -> Any:
    tokens = store.attrs.get("tokens") or {}
    return store._node("tokens/input_ids") if tokens.get("input_ids") else None


def top_tokens_html(store: Store, layer: str, decode: Any = None) -> str:
    """The view as an HTML fragment; ``decode(ids) -> list of str`` names the tokens (default:
    their ids)."""
    examples = top_examples(store, layer)
    parts = [
        "<h3>Top-activating tokens</h3>",
        f"<p>For each of the first {len(examples)} features, the {TOP} real tokens with its "
        f"largest values, with up to {CONTEXT} tokens of context either side; the background is "
        "the feature's value at each token (white: 0 or below, full: the example's value).</p>",
        "<div class='tokens'>",
    ]
    for f, items in examples.items():
        parts.append(f"<p class='feature'><strong>feature {f}</strong></p><ol>")
        for ex in items:
            words = decode(ex.ids) if decode else [f"#{i}" for i in ex.ids]
            top = max(ex.value, 1e-12)
            spans = []
            for j, (word, v) in enumerate(zip(words, ex.values, strict=True)):
                alpha = min(1.0, max(0.0, v / top))
                style = f"background: rgba(230, 85, 13, {alpha:.2f})"
                text = escape(word)
                text = f"<b>{text}</b>" if j == ex.at else text
                spans.append(f"<span style='{style}' title='{v:.3g}'>{text}</span>")
            parts.append(
                f"<li><code>{ex.value:.3g}</code> sample {ex.sample}, document {ex.document}, "
                f"token {ex.position}: {' '.join(spans)}</li>"
            )
        parts.append("</ol>")
    parts.append("</div>")
    return "\n".join(parts)
