"""Discover: what a model offers to capture, as ``actextract layers`` shows it: every layer's
name, kind, output shape, layout, parameters and whether it is cloned at capture, from a probe
(:func:`actextract.model.probe.layer_table`) with zeros of the model's input shape, or with a
real sample: a dataset's first, or for a model that reads text a tokenised ``text``; the model
is left as it was."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from actextract.core.names import count_matches, match_names, names_option, wider_hint
from actextract.data.inputs import MASK_KEY, Inputs, per_sample_shape, stack
from actextract.data.samples import Sample
from actextract.data.source import open_dataset
from actextract.errors import LayerNotFoundError, OptionError, option
from actextract.model.capture import Method
from actextract.model.probe import LayerInfo, layer_table
from actextract.model.zoo import borrowed, load_model

__all__ = ["LayerTable", "list_layers"]


@dataclass(frozen=True)
class LayerTable:
    """What ``actextract layers`` shows."""

    model: str
    input_shape: Any  # per sample: (3, 224, 224), or a text sample's {"input_ids": (T,), ...}
    method: str
    rows: list[LayerInfo]
    params: tuple[int, int] = (0, 0)  # the model's (trainable, total) parameters, each once
    param_bytes: int = 0  # their bytes, at their own dtypes
    matched: dict[str, int] = field(default_factory=dict)  # --layers pattern → names matched
    tokens: int | None = None  # the probe's real tokens (a text model's sample)
    probed_with: str | None = None  # what the probe ran on, where it was not zeros


def list_layers(
    model: str | nn.Module,
    *,
    input_shape: Sequence[int] | None = None,
    weights: str | Path | None = None,
    capture: Method = "auto",
    layers: Sequence[str] | str | None = None,
    trust_checkpoint: bool = False,
    dataset: str | None = None,
    text: str | None = None,
    max_length: int | None = None,
    tokenizer: Any = None,
) -> LayerTable:
    """Every capturable layer of ``model``: name, kind, per-sample output shape, layout and
    whether it is cloned at capture, found by a probe with (1, *input_shape) zeros on the
    CPU (the model is left as it was). ``layers``: only the names these patterns match
    (``LayerTable.matched`` counts them per pattern). ``trust_checkpoint``: as
    :func:`actextract.model.zoo.load_model` takes it. ``dataset``: probe with its first
    sample instead (a text dataset tokenised to ``max_length``); ``text``: with these words,
    tokenised by the model's tokenizer; a model that reads text and is given neither is
    probed with a sentence of its tokenizer's (``tokenizer``: the one of a Module given)."""
    loaded = load_model(model, weights=weights, trust_checkpoint=trust_checkpoint)
    if tokenizer is not None:  # a Module given with the tokenizer its text is read with
        loaded = replace(loaded, tokenizer=tokenizer)
    example, shape, tokens, what = _example(loaded, input_shape, dataset, text, max_length)
    with borrowed(loaded.module) as module:
        rows, method = layer_table(module, shape, method=capture, example=example)
    matched: dict[str, int] = {}
    patterns = names_option(layers)
    if patterns:
        names = [r.name for r in rows]
        matched = count_matches(patterns, names)
        chosen = set(match_names(patterns, names, lambda pat: _no_match(pat, loaded.spec, names)))
        rows = [r for r in rows if r.name in chosen]
    params = list(loaded.module.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = (trainable, sum(p.numel() for p in params))
    size = sum(p.numel() * p.element_size() for p in params)
    return LayerTable(loaded.spec, shape, method, rows, total, size, matched, tokens, what)


PROBE_TEXT = "The quick brown fox jumps over the lazy dog."


def _example(
    loaded: Any,
    input_shape: Sequence[int] | None,
    dataset: str | None,
    text: str | None,
    max_length: int | None,
) -> tuple[Inputs | None, Any, int | None, str | None]:
    """What the probe runs on: (a batch of one or None for zeros, the per-sample input
    shape, the real tokens in it, a description)."""
    if text is not None and dataset is not None:
        raise OptionError(f"pass {option('dataset')} or {option('text')}, not both.")
    if text is not None or (dataset is None and loaded.tokenizer is not None and not input_shape):
        if loaded.tokenizer is None:
            raise OptionError(
                f"{option('text')}: model '{loaded.spec}' has no tokenizer to read it with; "
                "use an hf: model saved with its tokenizer."
            )
        words = PROBE_TEXT if text is None else text
        cut = {"padding": "max_length", "truncation": True} if max_length else {}
        enc = loaded.tokenizer(words, max_length=max_length, return_tensors="pt", **cut)
        sample, what = {k: v[0] for k, v in enc.items()}, f"text {words!r}"
    elif dataset is not None:
        source = open_dataset(  # as extract opens it: text tokenised, token dicts padded
            dataset, loaded.preprocess, tokenizer=loaded.tokenizer, max_length=max_length
        )
        first = source.dataset[0] if len(source) else None
        if not isinstance(first, Sample):
            why = first.error if first is not None else "it has no samples"
            raise OptionError(f"{option('dataset')} {dataset}: its first sample fails ({why}).")
        sample, what = first.input, f"{dataset}'s first sample ({first.id})"
    else:
        shape = tuple(input_shape) if input_shape else loaded.input_shape
        if not shape:
            raise OptionError(
                f"model '{loaded.spec}' implies no input shape; pass {option('input_shape')}, "
                f"e.g. 3,224,224, or probe with a sample: {option('dataset')}."
            )
        return None, shape, None, None
    mask = sample.get(MASK_KEY) if isinstance(sample, dict) else None
    tokens = int(mask.sum()) if mask is not None else None
    return stack([sample]), per_sample_shape(sample), tokens, what


def _no_match(pattern: str, model: str, names: Sequence[str]) -> Exception:
    return LayerNotFoundError(
        f"{option('layers')} '{pattern}' matches none of the layers of {model}"
        f"{wider_hint(pattern, names)}; run 'actextract layers {model}' to list them."
    )
