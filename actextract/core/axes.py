"""Axes: what each axis of a layer's output means (its *layout*), and what follows from it.

Layouts, per sample (the batch axis left out):

============  ==============  ========================================================
``nchw``      ``(C, *S)``     channels-first maps, 1 to 3 spatial axes: CNNs, Conv1d
``nhwc``      ``(*S, C)``     channels-last maps: Swin stages, ConvNeXt's MLP layers,
                              MaxViT's window partitions ``(windows, positions, C)``
``tokens``    ``(T, D)``      a sequence of feature vectors: transformers, RNNs
``vector``    ``(D,)``        features, logits
``other``     anything        stored as it is, never pooled
============  ==============  ========================================================

The probe follows the channel axis from the input through the model (:mod:`actextract.model.trace`):
convolutions, batch norms and poolings put it first, linear layers, layer norms, embeddings,
attention and RNNs last, permutes and transposes move it, reshapes keep it when the axes up to
it (or from it on) are untouched, elementwise work keeps the input's. Where
nothing says, the rank decides: ``(D,)`` vector, ``(T, D)`` tokens, ``(C, H, W)`` maps.
``--layout 'features.*=nhwc'`` overrides it per layer. Reductions (``--reduce``), the
statistics, the store's dimension names and the renderer's per-channel pictures all read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from actextract import errors
from actextract.core.names import match_names
from actextract.errors import OptionError, option

__all__ = [
    "LAYOUTS",
    "LOST",
    "REDUCTIONS",
    "array_layout",
    "channel_axis",
    "check_layout",
    "default_layout",
    "dimension_names",
    "layout_of",
    "parse_layouts",
    "pool",
    "reduced_shape",
    "reductions_for",
    "stored_layout",
    "to_channels_first",
]

LAYOUTS = ("nchw", "nhwc", "tokens", "vector", "other")
ALIASES = {
    **{name: name for name in LAYOUTS},
    "channels-first": "nchw",
    "channels_first": "nchw",
    "ncl": "nchw",
    "ncdhw": "nchw",
    "channels-last": "nhwc",
    "channels_last": "nhwc",
    "ndhwc": "nhwc",
    "features": "vector",
}
REDUCTIONS = ("none", "mean", "max", "cls", "last", "tokens")
_BY_LAYOUT = {
    "nchw": ("none", "mean", "max"),
    "nhwc": ("none", "mean", "max"),
    "tokens": ("none", "mean", "max", "cls", "last", "tokens"),
    "vector": ("none",),
    "other": ("none",),
}
_WHAT = {
    "mean": "the mean over the spatial axes (maps) or the tokens",
    "max": "the maximum over the spatial axes (maps) or the tokens",
    "cls": "the first token",
    "last": "the last token",
    "tokens": "every token",
}
LOST = -1  # the channel axis went into a reshape that mixes it with others: layout "other"


# -- layouts and what they imply ----------------------------------------------------------------
def default_layout(rank: int) -> str:
    """The layout when nothing in the model says: (D,) vector, (T, D) tokens, (C, H, W) and
    (C, D, H, W) maps."""
    return {1: "vector", 2: "tokens", 3: "nchw", 4: "nchw"}.get(rank, "other")


def layout_of(axis: int | None, rank: int) -> str:
    """The layout of a per-sample shape of ``rank`` axes whose channel axis is ``axis``
    (None: unknown, :data:`LOST`: mixed into other axes)."""
    if rank == 1:
        return "vector"
    if rank == 0 or axis == LOST:
        return "other"
    if axis is None:
        return default_layout(rank)
    if axis == 0:
        return "nchw"
    if axis == rank - 1:
        return "tokens" if rank == 2 else "nhwc"
    return "other"


def channel_axis(layout: str, rank: int) -> int | None:
    """The channel (or feature) axis of a per-sample shape in ``layout``; None for other."""
    return {"nchw": 0, "nhwc": rank - 1, "tokens": 1, "vector": 0}.get(layout)


def check_layout(name: str, layout: str, shape: Sequence[int], given: bool = True) -> str:
    """``layout`` (an alias resolved) when it fits the layer's per-sample ``shape``."""
    canonical = ALIASES.get(str(layout).lower())
    if canonical is None:
        raise OptionError(
            f"{option('layout')} '{name}={layout}': '{layout}' is not a layout; choose from "
            f"{', '.join(LAYOUTS)}."
        )
    rank = len(shape)
    fits = {
        "nchw": rank >= 2,
        "nhwc": rank >= 2,
        "tokens": rank == 2,
        "vector": rank == 1,
        "other": True,
    }[canonical]
    if not fits:
        need = {
            "nchw": "(C, *spatial)",
            "nhwc": "(*spatial, C)",
            "tokens": "(T, D)",
            "vector": "(D,)",
        }[canonical]
        fitting = [n for n in LAYOUTS if n == layout_of(None, rank) or n == "other"]
        raise OptionError(
            f"--layout {name}={layout}: layer '{name}' has shape {tuple(shape)}, and "
            f"{canonical} is {need}; for {rank} axes set {option('layout')} to one of "
            f"{', '.join(fitting)}."
            if given
            else f"layer '{name}' has shape {tuple(shape)}, not {need} as {canonical} is."
        )
    return canonical


def parse_layouts(spec: str | Mapping[str, str] | None, names: Sequence[str]) -> dict[str, str]:
    """``'features.*=nhwc,encoder.**=tokens'`` → {layer: layout} for the layers it names
    (checked against their shapes by :func:`check_layout` at the probe)."""
    if isinstance(spec, str):
        items = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            pat, sep, layout = part.rpartition("=")
            if not sep or not pat.strip():
                raise OptionError(
                    f"{option('layout')} '{part}': give LAYER=LAYOUT pairs, e.g. 'features.*=nhwc'."
                )
            items.append((pat.strip(), layout.strip()))
    else:
        items = list((spec or {}).items())
    out: dict[str, str] = {}
    for pat, layout in items:
        if str(layout).lower() not in ALIASES:
            raise OptionError(
                f"{option('layout')} '{pat}={layout}': '{layout}' is not a layout; choose from "
                f"{', '.join(LAYOUTS)}."
            )

        def not_found(p: str) -> Exception:
            return OptionError(f"{option('layout')} '{p}' matches none of the captured layers.")

        for name in match_names([pat], names, not_found):
            out[name] = layout
    return out


def stored_layout(spec: Mapping[str, Any]) -> str:
    """The layout of a layer as a store records it. Stores from before layouts (format 3 and
    older) read every layer of two or more axes as channels first, as they were written."""
    if spec.get("layout"):
        return spec["layout"]
    rank = len(spec.get("output_shape", spec.get("shape", ())))
    return "vector" if rank == 1 else "nchw" if rank >= 2 else "other"


# -- reductions ---------------------------------------------------------------------------------
def reductions_for(layout: str) -> tuple[str, ...]:
    return _BY_LAYOUT[layout]


def reduced_shape(
    name: str, shape: tuple[int, ...], layout: str, how: str, option: str = errors.option("reduce")
) -> tuple[int, ...]:
    """The per-sample shape after ``how``: (C,) or (D,) for mean/max/cls, unchanged for
    none/tokens; a reduction that does not fit the layout is an error naming both."""
    if how not in REDUCTIONS:
        raise OptionError(
            f"{option} '{name}={how}': '{how}' is not one of {', '.join(REDUCTIONS)}."
        )
    if how not in _BY_LAYOUT[layout]:
        fits = ", ".join(_BY_LAYOUT[layout])
        raise OptionError(
            f"{option} '{name}={how}': layer '{name}' has shape {tuple(shape)} with layout "
            f"{layout}, and {how} keeps {_WHAT[how]}; for {layout} choose from: {fits}. "
            f"If the layout is wrong, set it with {errors.option('layout')} "
            f"'{name}=nchw|nhwc|tokens'."
        )
    if how in ("none", "tokens"):
        return shape
    return (shape[channel_axis(layout, len(shape))],)


def array_layout(layout: str, how: str) -> str:
    """The layout of the stored array of a layer in ``layout`` reduced by ``how``."""
    return layout if how in ("none", "tokens") else "vector"


def pool(t: torch.Tensor, layout: str, how: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, *shape) in ``layout`` → (B, C) or (B, D) for mean/max/cls/last; as it is otherwise.
    A mean accumulates in float32, so that one over many fp16/bf16 values keeps its digits.

    ``mask``: the batch's (B, T) attention mask (1: a real token, 0: padding) for a token
    layer of T tokens: mean and max take the real tokens only, cls the first real one and
    last the last real one, wherever the padding is (left or right). Without one every token
    is real."""
    if how in ("none", "tokens"):
        return t
    tokens = layout == "tokens" and t.ndim == 3
    if tokens and mask is not None and mask.shape == t.shape[:2]:
        real = mask.to(torch.bool)
        if how in ("cls", "last"):
            at = torch.arange(t.shape[1], device=t.device).expand_as(real)
            pick = (
                torch.where(real, at, t.shape[1]).amin(1)
                if how == "cls"
                else torch.where(real, at, -1).amax(1)
            )
            return t[torch.arange(t.shape[0], device=t.device), pick.clamp(0, t.shape[1] - 1)]
        if how == "mean":
            weight = real.unsqueeze(-1).to(torch.float32)
            total = (t.to(torch.float32) * weight).sum(1)
            return total / weight.sum(1).clamp_min(1)
        return t.masked_fill(~real.unsqueeze(-1), float("-inf")).amax(1)
    if how == "cls":
        return t[:, 0]
    if how == "last":
        return t[:, -1]
    c = 1 + channel_axis(layout, t.ndim - 1)
    dims = tuple(d for d in range(1, t.ndim) if d != c)
    return t.mean(dims, dtype=torch.float32) if how == "mean" else t.amax(dims)


# -- names and views for readers ----------------------------------------------------------------
_SPATIAL = {1: ("x",), 2: ("y", "x"), 3: ("z", "y", "x")}


def dimension_names(layout: str, rank: int) -> tuple[str, ...]:
    """The store's dimension names of an array in ``layout`` with ``rank`` axes per sample."""
    spatial = _SPATIAL.get(rank - 1) or tuple(f"s{i}" for i in range(1, rank))
    rest = {
        "nchw": ("channel", *spatial),
        "nhwc": (*spatial, "channel"),
        "tokens": ("token", "feature"),
        "vector": ("feature",),
    }.get(layout) or tuple(f"dim{i}" for i in range(1, rank + 1))
    return ("sample", *rest)


def to_channels_first(data: np.ndarray, layout: str) -> np.ndarray:
    """(N, *shape) rows in ``layout`` → (N, C, *rest) with the channel (or feature) axis next
    to the rows: nhwc (N, H, W, C) → (N, C, H, W), tokens (N, T, D) → (N, D, T). A view."""
    c = channel_axis(layout, data.ndim - 1)
    return data if c in (None, 0) else np.moveaxis(data, 1 + c, 1)
