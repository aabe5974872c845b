"""Discover: what a model offers to capture, as ``actextract layers`` shows it: every layer's
name, kind, output shape, layout, parameters and whether it is cloned at capture, from a probe
with zeros (:func:`actextract.model.probe.layer_table`); the model is left as it was."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from actextract.core.names import count_matches, match_names, names_option, wider_hint
from actextract.errors import LayerNotFoundError, OptionError, option
from actextract.model.capture import Method
from actextract.model.probe import LayerInfo, layer_table
from actextract.model.zoo import borrowed, load_model

__all__ = ["LayerTable", "list_layers"]


@dataclass(frozen=True)
class LayerTable:
    """What ``actextract layers`` shows."""

    model: str
    input_shape: tuple[int, ...]
    method: str
    rows: list[LayerInfo]
    params: tuple[int, int] = (0, 0)  # the model's (trainable, total) parameters, each once
    param_bytes: int = 0  # their bytes, at their own dtypes
    matched: dict[str, int] = field(default_factory=dict)  # --layers pattern → names matched


def list_layers(
    model: str | nn.Module,
    *,
    input_shape: Sequence[int] | None = None,
    weights: str | Path | None = None,
    capture: Method = "auto",
    layers: Sequence[str] | str | None = None,
    trust_checkpoint: bool = False,
) -> LayerTable:
    """Every capturable layer of ``model``: name, kind, per-sample output shape, layout and
    whether it is cloned at capture, found by a probe with (1, *input_shape) zeros on the
    CPU (the model is left as it was). ``layers``: only the names these patterns match
    (``LayerTable.matched`` counts them per pattern). ``trust_checkpoint``: as
    :func:`actextract.model.zoo.load_model` takes it."""
    loaded = load_model(model, weights=weights, trust_checkpoint=trust_checkpoint)
    shape = tuple(input_shape) if input_shape else loaded.input_shape
    if not shape:
        raise OptionError(
            f"model '{loaded.spec}' implies no input shape; pass {option('input_shape')}, "
            "e.g. 3,224,224."
        )
    with borrowed(loaded.module) as module:
        rows, method = layer_table(module, shape, method=capture)
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
    return LayerTable(loaded.spec, shape, method, rows, total, size, matched)


def _no_match(pattern: str, model: str, names: Sequence[str]) -> Exception:
    return LayerNotFoundError(
        f"{option('layers')} '{pattern}' matches none of the layers of {model}"
        f"{wider_hint(pattern, names)}; run 'actextract layers {model}' to list them."
    )
