"""Probe: what each captured layer's output is, from real samples run through the capture
before anything is stored.

Two forwards, under ``no_grad`` (``inference_mode`` keeps no version counters):

1. **One sample, traced** (:mod:`actextract.model.trace`): node by node on fx, module by module on
   hooks. Each captured output's version counter is read when it is produced and after every
   later step: one that moves is written in place later (``F.relu(x, inplace=True)``,
   ``out += identity``, ``x[...] = ...``), and only those are cloned at capture, on every
   batch. The channel axis is followed from the input through every step to decide each
   layer's layout (:mod:`actextract.core.axes`).
2. **Two samples together** (different ones where the dataset has two): the axis that grows
   from 1 to 2 is the batch axis. A layer without one cannot be stored row by row (an error
   naming it); one whose batch axis is not the first (an LSTM's ``h_n``, (layers, B, H)) has it
   moved to the front, and the log says so.

:func:`probe` configures the capture with what it found and returns it per layer;
:func:`layer_table` is the same for every capturable layer (``actextract layers``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from actextract.core.axes import (
    LOST,
    check_layout,
    layout_of,
)
from actextract.data.inputs import Inputs, attention_mask, describe, map_tensors
from actextract.errors import CaptureError, option
from actextract.model.capture import (
    Capture,
    Method,
    candidates,
    check_outputs,
    split_index,
    tensor_paths,
)
from actextract.model.trace import trace_forward

__all__ = ["LayerInfo", "LayerProbe", "configure", "layer_table", "model_output_layers", "probe"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerProbe:
    """What the probe found of one layer. ``shape``: per sample (batch axis in front), None
    when the output is not one tensor; ``clone``: why it is cloned at capture (None: it is
    not); ``batch_axis``: where the batch axis was (0: first); ``problem``: why it cannot be
    stored (None: it can)."""

    name: str
    kind: str
    shape: tuple[int, ...] | None
    layout: str = "other"
    inferred: str = "other"  # the layout the probe found, before any --layout
    clone: str | None = None
    batch_axis: int = 0
    problem: str | None = None
    elements: tuple[str, ...] = ()  # a tuple output's tensors, by index: ("[0]", "[1][0]")


@dataclass(frozen=True)
class LayerInfo:
    """One row of ``actextract layers``: a capturable layer, its output and parameters."""

    name: str
    kind: str
    shape: tuple[int, ...] | None = None
    params: tuple[int, int] = (0, 0)  # (trainable, total) of the module, its children included
    nested: bool = False  # a container: its parameters are also its children's rows'
    layout: str = ""
    clone: str | None = None
    batch_axis: int = 0
    problem: str | None = None

    def bytes_per_sample(self, dtype: torch.dtype) -> int:
        return math.prod(self.shape or ()) * dtype.itemsize


def probe(
    cap: Capture,
    single: Inputs,
    pair: Inputs | None = None,
    *,
    layouts: Mapping[str, str] | None = None,
    strict: bool = True,
    keep: bool = True,
) -> tuple[dict[str, LayerProbe], dict[str, torch.Tensor]]:
    """Probe ``cap`` with ``single`` (1, *input) and ``pair`` (2, *input; None: ``single``
    twice), configure it (clones, batch axes, shapes), and return what it found per layer and
    the layers' outputs for ``single`` ({layer: (1, *shape)}). ``layouts``: the user's
    --layout per layer. ``strict``: a layer that cannot be stored is a CaptureError (else its
    ``problem`` says why). ``keep``: the outputs returned are each as it was produced, a copy
    (without: as the forward left them, for a probe that only needs their shapes)."""
    pair = map_tensors(lambda t: torch.cat([t, t]), single) if pair is None else pair
    try:
        with torch.no_grad():
            values, written, axes = trace_forward(cap, single, keep=keep)
            doubled = cap.raw(pair, verify=False)
    except CaptureError:
        raise
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""  # fx adds the node and a traceback
        raise CaptureError(
            f"a forward pass of one sample of shape {_one_sample(single)} "
            f"failed: {type(e).__name__}: {first}. Check the input shape: "
            f"{option('input_shape')}, or the dataset's transform."
        ) from e
    if strict:
        check_outputs(cap.names, values)
    found: dict[str, LayerProbe] = {}
    outputs: dict[str, torch.Tensor] = {}
    for name in cap.names:
        value, kind = values.get(name), cap.kinds.get(name, "?")
        if not isinstance(value, torch.Tensor):
            paths = tensor_paths(value)
            what = f"; its tensors: {', '.join(name + p for p in paths[:6])}" if paths else ""
            found[name] = LayerProbe(
                name,
                kind,
                None,
                problem=f"not one tensor ({type(value).__name__}{what})",
                elements=tuple(paths),
            )
            continue
        other = doubled.get(name)
        axis, problem = _batch_axis(name, value, other)
        if axis < 0:
            found[name] = LayerProbe(name, kind, None, problem=problem)
            continue
        shape = tuple(value.shape[:axis]) + tuple(value.shape[axis + 1 :])
        channel = axes.get(name)
        if isinstance(channel, int) and channel not in (LOST, axis):
            channel -= int(channel > axis)
        elif channel == axis:
            channel = LOST
        inferred = layout_of(channel if isinstance(channel, int) else None, len(shape))
        layout = inferred
        if layouts and name in layouts:
            layout = check_layout(name, layouts[name], shape)
        found[name] = LayerProbe(name, kind, shape, layout, inferred, written.get(name), axis)
        if axis > 0:
            log.info("%s: batch axis %d of %s moved to the front", name, axis, tuple(value.shape))
        outputs[name] = value.movedim(axis, 0)
        _check_independent(name, outputs[name], other.movedim(axis, 0))  # type: ignore[union-attr]
    problems = [f"{p.name}: {p.problem}" for p in found.values() if p.problem]
    if strict and problems:
        raise CaptureError(
            "cannot store "
            + "; ".join(problems)
            + ". Each stored layer needs an output with one row per sample: choose another "
            "layer, or an element of a tuple output by its index (see 'actextract layers')."
        )
    cloned = {n: p.clone for n, p in found.items() if p.clone}
    if cloned:
        log.info(
            "cloned at capture (written in place later in the forward): %s",
            "; ".join(f"{n} ({why})" for n, why in cloned.items()),
        )
    mask = attention_mask(single)
    configure(cap, found, None if mask is None else int(mask.shape[1]))
    return found, outputs


def _one_sample(x: Inputs) -> str:
    """A batch of one's input shape, per sample: ``(3, 224, 224)``, or each tensor's."""
    if isinstance(x, torch.Tensor):
        return str(tuple(x.shape[1:]))
    return describe(map_tensors(lambda t: t[0], x))


def configure(cap: Capture, found: Mapping[str, LayerProbe], tokens: int | None = None) -> None:
    """Set ``cap`` (or a new capture of the same layers) up as the probe ``found`` them:
    clones, batch axes, per-sample shapes, and the probe's ``tokens`` (text)."""
    cap.configure(
        clones={n: p.clone for n, p in found.items() if p.clone},
        batch_axes={n: p.batch_axis for n, p in found.items() if p.shape is not None},
        shapes={n: p.shape for n, p in found.items() if p.shape is not None},
        tokens=tokens,
    )


def _batch_axis(name: str, one: torch.Tensor, two: object) -> tuple[int, str | None]:
    """The axis of ``one`` (a layer's output for one sample) that holds the batch, from its
    output for two samples; -1 and why, where none does."""
    s1 = tuple(one.shape)
    s2 = tuple(two.shape) if isinstance(two, torch.Tensor) else None
    if s2 is None or len(s1) != len(s2) or not s1:
        return -1, f"its output {s1} for one sample has no batch axis"
    grows = [
        k
        for k in range(len(s1))
        if s1[k] == 1 and s2[k] == 2 and s1[:k] + s1[k + 1 :] == s2[:k] + s2[k + 1 :]
    ]
    if 0 in grows:
        return 0, None
    if len(grows) == 1:
        return grows[0], None
    why = "no axis of it follows the batch" if not grows else "more than one axis could be"
    return -1, f"its output is {s1} for one sample and {s2} for two: {why}"


def _check_independent(name: str, alone: torch.Tensor, together: torch.Tensor) -> None:
    """Warn when a sample's output changes with the other samples of its batch."""
    a, b = alone[0].detach().float(), together[0].detach().float()
    if a.shape != b.shape or not torch.isfinite(a).all():
        return
    scale = float(a.abs().max()) if a.numel() else 0.0
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    if diff > 1e-3 * max(scale, 1e-6) + 1e-5:
        log.warning(
            "%s: a sample's output changes when another sample shares its batch (by up to "
            "%.3g of %.3g): its stored values will depend on the batch (a layer that mixes "
            "samples, or a batch axis the model does not expect)",
            name,
            diff,
            scale,
        )


@torch.no_grad()
def model_output_layers(
    capture: Capture, outputs: Mapping[str, torch.Tensor], example: Inputs
) -> set[str]:
    """The layers among ``outputs`` (from :func:`probe` of ``example``) whose output is the
    model's own output: its logits, which the renderer turns into a confusion matrix."""
    try:
        final = capture.model_output(example)
    except Exception:  # the capture worked; not knowing the model output is no error
        return set()
    if not isinstance(final, torch.Tensor):
        return set()
    # Close, not bitwise equal: on a GPU the two forwards may pick different kernels.
    return {
        n
        for n, t in outputs.items()
        if t.shape == final.shape and torch.allclose(t.float(), final.float(), rtol=1e-3, atol=1e-5)
    }


def layer_table(
    module: nn.Module,
    input_shape: Sequence[int] | None,
    *,
    method: Method = "auto",
    example: Inputs | None = None,
) -> tuple[list[LayerInfo], str]:
    """Every capturable layer with its kind, per-sample output shape, layout and whether it
    is cloned at capture (None shape: not one tensor; a tuple output's tensors follow as
    rows of their own, ``name[i]``), from a probe with ``example`` (a batch of one: a text
    model's tokenised sample), else with zeros of ``input_shape``; and the method used."""
    cands = candidates(module, method)
    device = _module_device(module)
    if example is not None:
        example = map_tensors(lambda t: t.to(device), example)
    else:
        example = torch.zeros((1, *(input_shape or ())), device=device)
    found = _probe_all(module, list(cands.names), cands, example)
    indexed = [n + p for n, f in found.items() for p in f.elements]
    if indexed:
        found |= _probe_all(module, indexed, cands, example)
    rows = []
    for n in [*cands.names, *indexed]:
        f = found[n]
        params, nested = (
            _parameters(module, split_index(n)[0]) if n in cands.names else ((0, 0), False)
        )
        rows.append(
            LayerInfo(
                n,
                f.kind,
                f.shape,
                params,
                nested,
                f.layout if f.shape is not None else "",
                f.clone,
                f.batch_axis,
                f.problem,
            )
        )
    order = {n: i for i, n in enumerate(cands.names)}
    rows.sort(key=lambda r: (order[split_index(r.name)[0]], split_index(r.name)[1]))
    return rows, cands.method


def _probe_all(module, names, cands, example) -> dict[str, LayerProbe]:
    cap = Capture(module, names, cands)
    try:
        return probe(cap, example, strict=False, keep=False)[0]
    finally:
        cap.close()


def _parameters(module: nn.Module, name: str) -> tuple[tuple[int, int], bool]:
    """(trainable, total) parameters of the submodule ``name`` (0 for an fx node that calls a
    function, or a module used a second time: its parameters are the first use's), and
    whether it is a container of modules that hold them."""
    try:
        sub = module.get_submodule(name)
    except AttributeError:
        return (0, 0), False
    params = list(sub.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    nested = any(True for c in sub.children() if any(True for _ in c.parameters()))
    return (trainable, sum(p.numel() for p in params)), nested


def _module_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
