"""Axis rules: where a step puts the channel axis of its output, given its input's.

Convolutions, batch norms and poolings put it first (after the batch axis), linear layers,
layer norms, embeddings, attention and RNNs (and transformers' ``Conv1D``, GPT-2's linear
layer) last; permutes and transposes move it; reshapes keep it when the axes up to it (or
from it on) are untouched; anything else keeps its input's (:func:`follow`). Axes here are of
the whole (B, ...) tensor, the batch axis first; None: unknown.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from actextract.core.axes import LOST

__all__ = ["follow", "function_axis", "module_axis"]

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
_RESHAPES = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "getitem"}
_RESHAPES |= {"narrow", "select", "expand", "repeat", "split", "chunk", "unbind"}


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
    # transformers' Conv1D is GPT-2's linear layer (its weight transposed), not a convolution
    if name == "Conv1D" and "transformers" in type(module).__module__:
        return rank - 1 if rank >= 2 else None
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
