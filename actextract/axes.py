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

The probe (:mod:`actextract.probe`) follows the channel axis from the input through the
model: convolutions, batch norms and poolings put it first, linear layers, layer norms,
embeddings, attention and RNNs last, permutes and transposes move it, reshapes keep it when
the axes up to it (or from it on) are untouched, elementwise work keeps the input's. Where
nothing says, the rank decides: ``(D,)`` vector, ``(T, D)`` tokens, ``(C, H, W)`` maps.
``--layout 'features.*=nhwc'`` overrides it per layer. Reductions (``--reduce``), the
statistics, the store's dimension names and the renderer's per-channel pictures all read it.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from actextract.errors import OptionError
from actextract.names import match_names

__all__ = [
    "LAYOUTS",
    "LOST",
    "REDUCTIONS",
    "array_layout",
    "channel_axis",
    "check_layout",
    "default_layout",
    "dimension_names",
    "function_axis",
    "layout_of",
    "module_axis",
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
REDUCTIONS = ("none", "mean", "max", "cls", "tokens")
_BY_LAYOUT = {
    "nchw": ("none", "mean", "max"),
    "nhwc": ("none", "mean", "max"),
    "tokens": ("none", "mean", "max", "cls", "tokens"),
    "vector": ("none",),
    "other": ("none",),
}
_WHAT = {
    "mean": "the mean over the spatial axes (maps) or the tokens",
    "max": "the maximum over the spatial axes (maps) or the tokens",
    "cls": "the first token",
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
            f"--layout {name}={layout}: '{layout}' is not a layout; choose from "
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
            f"{canonical} is {need}; for {rank} axes choose from {', '.join(fitting)}."
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
                    f"--layout '{part}': give LAYER=LAYOUT pairs, e.g. 'features.*=nhwc'."
                )
            items.append((pat.strip(), layout.strip()))
    else:
        items = list((spec or {}).items())
    out: dict[str, str] = {}
    for pat, layout in items:
        if str(layout).lower() not in ALIASES:
            raise OptionError(
                f"--layout {pat}={layout}: '{layout}' is not a layout; choose from "
                f"{', '.join(LAYOUTS)}."
            )

        def not_found(p: str) -> Exception:
            return OptionError(f"--layout '{p}' matches none of the captured layers.")

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
    name: str, shape: tuple[int, ...], layout: str, how: str, option: str = "--reduce"
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
            f"{option} {name}={how}: layer '{name}' has shape {tuple(shape)} with layout "
            f"{layout}, and {how} keeps {_WHAT[how]}; for {layout} choose from: {fits}. "
            f"If the layout is wrong, set it with --layout '{name}=nchw|nhwc|tokens'."
        )
    if how in ("none", "tokens"):
        return shape
    return (shape[channel_axis(layout, len(shape))],)


def array_layout(layout: str, how: str) -> str:
    """The layout of the stored array of a layer in ``layout`` reduced by ``how``."""
    return layout if how in ("none", "tokens") else "vector"


def pool(t: torch.Tensor, layout: str, how: str) -> torch.Tensor:
    """(B, *shape) in ``layout`` → (B, C) or (B, D) for mean/max/cls; as it is otherwise. A
    mean accumulates in float32, so that one over many fp16/bf16 values keeps its digits."""
    if how in ("none", "tokens"):
        return t
    if how == "cls":
        return t[:, 0]
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


# -- inference: the channel axis through modules and functions ------------------------------------
# Axes here are of the whole (B, ...) tensor, the batch axis first; None: unknown.
_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd,
    nn.modules.pooling._MaxUnpoolNd,
    nn.FractionalMaxPool2d,
    nn.FractionalMaxPool3d,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.ChannelShuffle,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Fold,
)
_LAST = (
    nn.Linear,
    nn.Bilinear,
    nn.LayerNorm,
    nn.RMSNorm,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.MultiheadAttention,
    nn.RNNBase,
    nn.Transformer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)
_ND = re.compile(r"[123][dD]$")  # LayerNorm2d, FrozenBatchNorm2d, BatchNormAct2d, ...
_FIRST_FUNCTIONS = re.compile(
    r"^(conv\d?d|conv_transpose\dd|.*pool\dd|batch_norm|instance_norm|group_norm|"
    r"local_response_norm|interpolate|upsample.*|pixel_(un)?shuffle|channel_shuffle|"
    r"dropout\dd|feature_alpha_dropout)$"
)
_LAST_FUNCTIONS = re.compile(r"^(linear|bilinear|layer_norm|rms_norm|embedding|embedding_bag)$")
_MOVES = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t"}
_RESHAPES = {
    "view",
    "reshape",
    "flatten",
    "unflatten",
    "squeeze",
    "unsqueeze",
    "getitem",
    "narrow",
    "select",
    "expand",
    "repeat",
    "split",
    "chunk",
    "unbind",
}


def module_axis(
    module: nn.Module,
    in_axis: int | None,
    in_shape: tuple[int, ...] | None,
    out_shape: tuple[int, ...],
) -> int | None:
    """The channel axis of ``module``'s output (B, ...) of ``out_shape``, given its input's
    (``in_axis`` of ``in_shape``; None when unknown)."""
    rank = len(out_shape)
    fmt = str(getattr(module, "data_format", "") or "").lower()
    if fmt in ("channels_last", "channels_first"):  # timm's and Hugging Face's own norms
        return (rank - 1 if fmt == "channels_last" else 1) if rank >= 2 else None
    name = type(module).__name__
    if _ND.search(name) or isinstance(module, _FIRST):
        return 1 if rank >= 2 else None
    if isinstance(module, _LAST):
        return rank - 1 if rank >= 2 else None
    dims = getattr(module, "dims", None)
    if name == "Permute" and isinstance(dims, Sequence):  # torchvision.ops.misc.Permute
        return _permuted(in_axis, list(dims), rank)
    return follow(in_axis, in_shape, out_shape, lost=None)


def function_axis(
    target: Any,
    args: tuple,
    kwargs: Mapping[str, Any],
    in_axis: int | None,
    in_shape: tuple[int, ...] | None,
    out_shape: tuple[int, ...],
) -> int | None:
    """The channel axis of the output of an fx ``call_function``/``call_method`` node:
    ``target`` (a function or a method name), ``args``/``kwargs`` as the node got them (the
    tensor first), ``in_axis``/``in_shape`` those of its main tensor input."""
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    if target is operator.getitem:
        name = "getitem"
    rank = len(out_shape)
    if _FIRST_FUNCTIONS.match(name):
        return 1 if rank >= 2 else None
    if _LAST_FUNCTIONS.match(name):
        return rank - 1 if rank >= 2 else None
    if name in _MOVES and in_axis is not None and in_shape is not None:
        return _moved(name, args[1:], kwargs, in_axis, len(in_shape))
    return follow(in_axis, in_shape, out_shape, lost=LOST if name in _RESHAPES else None)


def follow(
    in_axis: int | None,
    in_shape: tuple[int, ...] | None,
    out_shape: tuple[int, ...],
    *,
    lost: int | None,
) -> int | None:
    """The input's channel axis carried through a change of shape: the same where the shape
    is, where every axis up to it is unchanged, or where every axis from it on is; else
    ``lost`` (:data:`LOST` for a reshape seen as such, None for work not seen)."""
    if in_axis is None or in_axis == LOST or in_shape is None:
        return in_axis
    if tuple(in_shape) == tuple(out_shape):
        return in_axis
    if len(out_shape) > in_axis and in_shape[: in_axis + 1] == out_shape[: in_axis + 1]:
        return in_axis
    tail = len(in_shape) - in_axis
    if len(out_shape) >= tail and in_shape[in_axis:] == out_shape[len(out_shape) - tail :]:
        return len(out_shape) - tail
    return lost


def _permuted(axis: int | None, dims: list[int], rank: int) -> int | None:
    if axis is None or axis == LOST:
        return axis
    dims = [d % rank for d in dims]
    return dims.index(axis) if axis in dims and len(dims) == rank else LOST


def _moved(name: str, rest: tuple, kwargs: Mapping[str, Any], axis: int, rank: int) -> int:
    """``axis`` after permute/transpose/movedim with the arguments ``rest``."""
    try:
        if name == "permute":
            dims = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], Sequence) else rest
            dims = kwargs.get("dims", dims)
            return _permuted(axis, [int(d) for d in dims], rank)  # type: ignore[return-value]
        if name == "t":
            a, b = 0, 1
        elif name in ("movedim", "moveaxis"):
            src, dst = [*rest, kwargs.get("source"), kwargs.get("destination")][:2]
            order = list(range(rank))
            src, dst = int(src) % rank, int(dst) % rank
            order.insert(dst, order.pop(src))
            return order.index(axis)
        else:
            a = kwargs.get("dim0", rest[0] if rest else None)
            b = kwargs.get("dim1", rest[1] if len(rest) > 1 else None)
        a, b = int(a) % rank, int(b) % rank
    except (TypeError, ValueError, IndexError):
        return LOST
    return b if axis == a else a if axis == b else axis
