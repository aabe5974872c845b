"""Inputs: what one sample gives the model, and how a batch of them is made.

A sample's input is one tensor (an image, a vector), a tuple of tensors (the model's
positional arguments) or a dict of tensors (keyword arguments: what a tokenizer or a Hugging
Face dataset row gives, ``input_ids``, ``attention_mask``, ...). :func:`as_inputs` makes one of
the three from what a dataset yields (numpy arrays, lists of token ids, a tokenizer's
``BatchEncoding``), :func:`stack` makes the batch (B, ...) of each tensor, padding sequences of
different lengths where the sample says which positions are real (its ``attention_mask``),
and :func:`call` passes a batch to the model as it expects it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from actextract.errors import OptionError

__all__ = [
    "LABEL_KEYS",
    "Inputs",
    "Padding",
    "SampleShape",
    "WithRecords",
    "as_inputs",
    "attention_mask",
    "batch_len",
    "call",
    "check_one_tensor",
    "describe",
    "map_tensors",
    "pad_sample",
    "per_sample_shape",
    "positional",
    "shape_text",
    "split_label",
    "stack",
    "token_records",
    "tokens_attribute",
    "with_positions",
]

Inputs = torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]
# a sample's shape in its input's structure: (3, 224, 224), ((4,), (3,)), {"input_ids": (128,)}
SampleShape = tuple[int, ...] | tuple[tuple[int, ...], ...] | dict[str, tuple[int, ...]]

# keys of a dict sample that hold its label, not an input of the model (a Hugging Face
# dataset's rows carry "label"; a model given labels= would compute a loss instead)
LABEL_KEYS = ("label", "labels")
MASK_KEY = "attention_mask"


@dataclass(frozen=True)
class WithRecords:
    """A sample's inputs, and what the store keeps of it that is not the model's: a packed
    window's ``document`` and ``position`` of each token ({name: (T,) tensor})."""

    inputs: Any
    records: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Padding:
    """How sequences of different lengths become one batch: ``side`` (``right``, or ``left``
    for tokenizers that pad on the left), ``to`` (every batch padded to this length, so that
    the layers' shapes are the same in every batch; None: the longest in the batch) and the
    value each dict key is padded with (``input_ids``: the tokenizer's pad token; any other
    key, ``attention_mask`` included, 0)."""

    side: str = "right"
    to: int | None = None
    values: Mapping[str, int | float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.side not in ("left", "right"):
            raise ValueError(f"padding side {self.side!r}: choose 'left' or 'right'")
        if self.to is not None and self.to < 1:
            raise ValueError(f"padding to length {self.to}: give a length of 1 or more")


def as_inputs(x: Any) -> Inputs:
    """One sample's input as a tensor, a tuple of tensors or a dict of tensors (str keys).
    A list or tuple of arrays or tensors is a tuple of inputs; a list of numbers is one
    tensor (token ids). A ValueError says what cannot be an input."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, Mapping):
        out = {}
        for key, value in x.items():
            if not isinstance(key, str):
                raise ValueError(
                    f"a dict input's keys name the model's arguments; key {key!r} is a "
                    f"{type(key).__name__}, not a str"
                )
            out[key] = _tensor(value, f"input '{key}'")
        if not out:
            raise ValueError("a dict input with no keys: the model would get no input")
        return out
    if isinstance(x, tuple | list) and x and all(_is_array(v) for v in x):
        return tuple(_tensor(v, f"input {i}") for i, v in enumerate(x))
    return _tensor(x, "the input")


def split_label(x: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """A dict sample without its label key (``label`` or ``labels``, see
    :data:`LABEL_KEYS`), and the label (None when it has none)."""
    found = [k for k in LABEL_KEYS if k in x]
    if len(found) > 1:
        raise ValueError(
            f"a dict sample with both {found[0]!r} and {found[1]!r}: keep one label key"
        )
    rest = {k: v for k, v in x.items() if k not in LABEL_KEYS}
    return rest, (x[found[0]] if found else None)


def check_one_tensor(x: Inputs, sample: str) -> None:
    """An OptionError unless ``x`` is one tensor: what a Recorder takes per sample in this
    version (extract takes tuples and dicts too)."""
    if not isinstance(x, torch.Tensor):
        kind = "a tuple" if isinstance(x, tuple) else "a dict"
        raise OptionError(
            f"{sample}'s input is {kind} of tensors, {describe(x)}; a Recorder runs the model "
            "on one tensor per sample in this version (extract takes tuples and dicts). Give "
            "that tensor (for a text model, the input_ids of fixed-length sequences), or wrap "
            "the model in a module whose forward takes one tensor."
        )


def per_sample_shape(x: Inputs) -> SampleShape:
    """The shape of a sample (or, for a batch, of its rows) in the input's own structure."""
    if isinstance(x, torch.Tensor):
        return tuple(x.shape)
    if isinstance(x, tuple):
        return tuple(tuple(t.shape) for t in x)
    return {k: tuple(t.shape) for k, t in x.items()}


def shape_text(shape: Any) -> str:
    """A per-sample shape as messages and tables write it: ``(3, 224, 224)``, a tuple's, or a
    dict's ``{input_ids: (128,), attention_mask: (128,)}``."""
    if isinstance(shape, dict):
        return "{" + ", ".join(f"{k}: {tuple(v)}" for k, v in shape.items()) + "}"
    return str(tuple(shape))


def describe(x: Inputs) -> str:
    """E.g. ``(3, 224, 224) float32`` or ``{input_ids: (128,) int64, attention_mask: ...}``."""

    def one(t: torch.Tensor) -> str:
        return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"

    if isinstance(x, torch.Tensor):
        return one(x)
    if isinstance(x, tuple):
        return "(" + ", ".join(one(t) for t in x) + ")"
    return "{" + ", ".join(f"{k}: {one(t)}" for k, t in x.items()) + "}"


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], x: Inputs) -> Inputs:
    """``fn`` applied to every tensor of ``x``, in its structure."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, tuple):
        return tuple(fn(t) for t in x)
    return {k: fn(t) for k, t in x.items()}


def attention_mask(x: Inputs) -> torch.Tensor | None:
    """A dict batch's (B, T) ``attention_mask`` (1: a real token, 0: padding); else None."""
    mask = x.get(MASK_KEY) if isinstance(x, dict) else None
    return mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None


def tokens_attribute(shape: SampleShape, records: Sequence[str] = ()) -> dict[str, Any] | None:
    """What a store records of a run whose samples have this shape: for text (a dict with a
    (T,) ``attention_mask``), ``{"length": T, "input_ids": whether they are kept}``, and the
    ``records`` its samples carry (a packed window's ``document`` and ``position``)."""
    if not isinstance(shape, dict) or len(shape.get(MASK_KEY, ())) != 1:
        return None
    length = int(shape[MASK_KEY][0])
    out = {"length": length, "input_ids": tuple(shape.get("input_ids", ())) == (length,)}
    return {**out, "records": list(records)} if records else out


def token_records(
    x: Inputs | None, records: Mapping[str, torch.Tensor] | None = None
) -> dict[str, Any] | None:
    """What a store keeps of a text batch beside its activations: ``mask`` (B, T) uint8 (1: a
    real token), ``input_ids`` (B, T) int32 where the batch has them, and its samples'
    ``records`` (int32); None for other inputs."""
    mask = attention_mask(x) if x is not None else None
    if mask is None:
        return None
    out = {"mask": mask.cpu().numpy().astype("uint8")}
    ids = x.get("input_ids") if isinstance(x, dict) else None
    if isinstance(ids, torch.Tensor) and ids.shape == mask.shape:
        out["input_ids"] = ids.cpu().numpy().astype("int32")
    for name, values in (records or {}).items():
        out[name] = values.cpu().numpy().astype("int32")
    return out


def batch_len(x: Inputs) -> int:
    """The number of samples in a batch of inputs (the first axis of its tensors)."""
    first = (
        x if isinstance(x, torch.Tensor) else next(iter(x if isinstance(x, tuple) else x.values()))
    )
    return len(first)


def call(fn: Callable[..., Any], x: Inputs) -> Any:
    """``fn`` called with a batch: one tensor as its argument, a tuple's tensors as positional
    arguments, a dict's as keyword arguments (:func:`with_positions` first)."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, tuple):
        return fn(*x)
    return fn(**with_positions(fn, x))


def with_positions(fn: Callable[..., Any], x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch padded on the left, given the ``position_ids`` of its real tokens when ``fn``
    takes them and the batch does not say: 0 for each sequence's first real token, as
    transformers' ``generate`` and TransformerLens count them. Without them a model with
    absolute positions (GPT-2, BERT) numbers the padding too, and a document's activations
    would depend on how much padding its batch gave it. Right padding needs none (the real
    tokens come first: 0, 1, ...); other batches are returned as they are."""
    mask = x.get(MASK_KEY)
    if "position_ids" in x or not isinstance(mask, torch.Tensor) or mask.ndim != 2:
        return x
    real = mask != 0
    if not bool((real[:, 1:] & ~real[:, :-1]).any()):  # no real token after a padding one
        return x
    target = getattr(fn, "_orig_mod", fn)  # a compiled module: the module it compiled
    if isinstance(target, torch.nn.Module):  # its __call__ takes (*args, **kwargs)
        target = target.forward
    try:
        takes = "position_ids" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        takes = False
    if not takes:
        return x
    return {**x, "position_ids": (real.long().cumsum(-1) - 1).clamp_min(0)}


def positional(fn: Callable[..., Any], x: Inputs) -> tuple[Any, ...]:
    """A batch as ``fn``'s positional arguments, in order: a tensor, a tuple's tensors, or a
    dict's bound to ``fn``'s parameters by name, the rest their defaults (what an fx
    Interpreter, which takes only positional arguments, is run with)."""
    if isinstance(x, torch.Tensor):
        return (x,)
    if isinstance(x, tuple):
        return x
    bound = inspect.signature(fn).bind(**with_positions(fn, x))
    bound.apply_defaults()
    return bound.args


def stack(items: Sequence[Inputs], padding: Padding | None = None) -> Inputs:
    """The batch of ``items`` (all of one structure: the first's), each tensor (B, ...).

    Tensors of different shapes are a ValueError, except, with ``padding``, the sequences of a
    dict sample that has an ``attention_mask``: each of its tensors whose first axis is the
    mask's length is padded to the batch's longest (or ``padding.to``), on ``padding.side``,
    the mask with 0, so that the padding is no token the model attends to. A sample longer than
    ``padding.to`` is a ValueError too (truncate it in the tokenizer: ``max_length``)."""
    if not items:
        raise ValueError("no samples to make a batch of")
    first = items[0]
    for i, item in enumerate(items[1:], 1):
        _check_structure(first, item, i)
    if isinstance(first, torch.Tensor):
        return torch.stack(_same_shapes(list(items), "the input"))
    if isinstance(first, tuple):
        return tuple(
            torch.stack(_same_shapes([it[j] for it in items], f"input {j}"))  # type: ignore[index]
            for j in range(len(first))
        )
    dicts: list[dict[str, torch.Tensor]] = list(items)  # type: ignore[arg-type]
    if padding is not None and MASK_KEY in first:
        dicts = _padded(dicts, padding)
    return {k: torch.stack(_same_shapes([d[k] for d in dicts], f"input '{k}'")) for k in first}


def pad_sample(x: Inputs, padding: Padding) -> Inputs:
    """One dict sample with an ``attention_mask`` padded to ``padding.to`` tokens (see
    :func:`stack`); any other input is a ValueError, as is a sample longer than that."""
    if not isinstance(x, dict) or MASK_KEY not in x:
        kind = "dict without an attention_mask" if isinstance(x, dict) else describe(x)
        raise ValueError(
            f"--max-length pads dict samples with an attention_mask (a tokenizer's), and this "
            f"sample is a {kind}"
        )
    return _padded([x], padding)[0]


def _padded(
    dicts: list[dict[str, torch.Tensor]], padding: Padding
) -> list[dict[str, torch.Tensor]]:
    lengths = [_sequence_length(d) for d in dicts]
    longest = max(lengths)
    to = padding.to if padding.to is not None else longest
    if longest > to:
        i = lengths.index(longest)
        which = f"sample {i} of the batch" if len(dicts) > 1 else "the sample"
        raise ValueError(
            f"{which} has {longest} tokens, more than the padded length {to}: truncate it "
            "(the tokenizer's truncation=True, max_length=...) or pad to more (--max-length)"
        )
    out = []
    for d, n in zip(dicts, lengths, strict=True):
        if n == to:
            out.append(d)
            continue
        row = {}
        for key, t in d.items():
            if t.ndim == 0 or t.shape[0] != n:
                row[key] = t  # not a sequence of the sample's tokens
                continue
            fill = 0 if key == MASK_KEY else padding.values.get(key, 0)
            pad = t.new_full((to - n, *t.shape[1:]), fill)
            row[key] = torch.cat([t, pad] if padding.side == "right" else [pad, t])
        out.append(row)
    return out


def _sequence_length(d: Mapping[str, torch.Tensor]) -> int:
    mask = d[MASK_KEY]
    if mask.ndim != 1:
        raise ValueError(
            f"an attention_mask of shape {tuple(mask.shape)} per sample: give one of (tokens,) "
            "per sample (a dataset item is one sample, without a batch axis)"
        )
    return int(mask.shape[0])


def _check_structure(first: Inputs, item: Inputs, i: int) -> None:
    kind = type(first).__name__ if not isinstance(first, torch.Tensor) else "tensor"
    other = type(item).__name__ if not isinstance(item, torch.Tensor) else "tensor"
    if kind != other:
        raise ValueError(f"sample {i} of the batch is a {other} input, the first a {kind}")
    if isinstance(first, tuple) and len(first) != len(item):  # type: ignore[arg-type]
        raise ValueError(
            f"sample {i} of the batch has {len(item)} inputs, the first {len(first)}"  # type: ignore[arg-type]
        )
    if isinstance(first, dict) and set(first) != set(item):  # type: ignore[arg-type]
        raise ValueError(
            f"sample {i} of the batch has the keys {sorted(item)}, the first {sorted(first)}"  # type: ignore[arg-type]
        )


def _same_shapes(tensors: list[torch.Tensor], what: str) -> list[torch.Tensor]:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        a, b = sorted(shapes)[:2]
        raise ValueError(
            f"{what} is {a} in one sample and {b} in another: a batch needs one shape (for "
            "token sequences, give each sample an attention_mask and they are padded)"
        )
    return tensors


def _is_array(v: Any) -> bool:
    return isinstance(v, torch.Tensor | np.ndarray)


def _tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"{what} is a {type(value).__name__}, which is no tensor ({e}); give tensors, "
            "arrays or lists of numbers"
        ) from None
    return t
