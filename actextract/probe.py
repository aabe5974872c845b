"""Probe: what each captured layer's output is, from real samples run through the capture
before anything is stored.

Two forwards, under ``no_grad`` (``inference_mode`` keeps no version counters):

1. **One sample, traced** node by node on fx (a :class:`torch.fx.Interpreter`) or module by
   module on hooks (a forward hook on every module, for this forward only). Each captured
   output's version counter is read when it is produced and after every later step: one that
   moves is written in place later (``F.relu(x, inplace=True)``, ``out += identity``,
   ``x[...] = ...``), and only those are cloned at capture, on every batch. The channel axis is
   followed from the input through every step (:mod:`actextract.axes`) to decide each layer's
   layout.
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
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from actextract.axes import (
    LOST,
    check_layout,
    function_axis,
    layout_of,
    module_axis,
)
from actextract.capture import (
    Capture,
    Method,
    candidates,
    check_outputs,
    split_index,
    tensor_paths,
)
from actextract.errors import CaptureError, OptionError

__all__ = ["LayerInfo", "LayerProbe", "layer_table", "model_output_layers", "probe"]

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
    single: torch.Tensor,
    pair: torch.Tensor | None = None,
    *,
    layouts: Mapping[str, str] | None = None,
    strict: bool = True,
) -> tuple[dict[str, LayerProbe], dict[str, torch.Tensor]]:
    """Probe ``cap`` with ``single`` (1, *input) and ``pair`` (2, *input; None: ``single``
    twice), configure it (clones, batch axes, shapes), and return what it found per layer and
    the layers' outputs for ``single`` ({layer: (1, *shape)}). ``layouts``: the user's
    --layout per layer. ``strict``: a layer that cannot be stored is a CaptureError (else its
    ``problem`` says why)."""
    pair = torch.cat([single, single]) if pair is None else pair
    try:
        with torch.no_grad():
            values, written, axes = _trace(cap, single)
            doubled = cap.raw(pair, verify=False)
    except CaptureError:
        raise
    except Exception as e:
        raise CaptureError(
            f"a forward pass of one sample of shape {tuple(single.shape[1:])} "
            f"failed: {type(e).__name__}: {e}. Check the input shape "
            "(--input-shape, or the dataset's transform)."
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
        shape = tuple(value.shape[:axis]) + tuple(value.shape[axis + 1 :]) if axis >= 0 else ()
        channel = axes.get(name)
        if isinstance(channel, int) and channel not in (LOST, axis) and axis >= 0:
            channel -= int(channel > axis)
        elif channel == axis and axis >= 0:
            channel = LOST
        inferred = layout_of(channel if isinstance(channel, int) else None, len(shape))
        layout = inferred
        if layouts and name in layouts:
            layout = check_layout(name, layouts[name], shape)
        found[name] = LayerProbe(
            name, kind, shape, layout, inferred, written.get(name), max(axis, 0), problem
        )
        if axis > 0:
            log.info("%s: batch axis %d of %s moved to the front", name, axis, tuple(value.shape))
        if axis >= 0:
            outputs[name] = value.movedim(axis, 0)
            if isinstance(other, torch.Tensor) and not problem:
                _check_independent(name, outputs[name], other.movedim(axis, 0))
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
    cap.configure(
        clones=cloned,
        batch_axes={n: p.batch_axis for n, p in found.items() if p.shape is not None},
        shapes={n: p.shape for n, p in found.items() if p.shape is not None and not p.problem},
    )
    return found, outputs


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


# -- the traced forward -------------------------------------------------------------------------
def _trace(cap: Capture, x: torch.Tensor) -> tuple[dict[str, object], dict[str, str], dict]:
    """One forward of ``x`` watched step by step: {layer: output}, {layer: why it must be
    cloned} for the outputs written after capture, {layer: channel axis of its (B, ...)
    output (None: unknown)}."""
    if cap.method == "fx":
        return _FxTrace(cap).trace(x)
    return _HookTrace(cap).trace(x)


class _Watch:
    """Captured outputs and their version counters as they were when produced."""

    def __init__(self) -> None:
        self.tensors: dict[str, tuple[torch.Tensor, int]] = {}
        self.written: dict[str, str] = {}

    def add(self, name: str, value: object) -> None:
        if isinstance(value, torch.Tensor) and name not in self.tensors:
            self.tensors[name] = (value, value._version)

    def check(self, by: str) -> None:
        for name, (t, version) in self.tensors.items():
            if name not in self.written and t._version != version:
                self.written[name] = f"written in place later, {by}"


def _nested_axes(value: object, rule) -> object:
    """``rule(shape)`` for a tensor; the same for each element of a tuple or list."""
    if isinstance(value, torch.Tensor):
        return rule(tuple(value.shape))
    if isinstance(value, tuple | list):
        return tuple(_nested_axes(v, rule) for v in value)
    return None


def _element(axes: object, index: tuple[int, ...]) -> object:
    for i in index:
        axes = axes[i] if isinstance(axes, tuple) and i < len(axes) else None
    return axes


def _input_axis(x: object) -> object:
    """The input's channel axis: second of (B, C, ...) images, none of (B,) or (B, T) ids."""
    return _nested_axes(x, lambda s: 1 if len(s) >= 3 else None)


class _FxTrace(torch.fx.Interpreter):
    """The capture's graph run node by node."""

    def __init__(self, cap: Capture):
        super().__init__(cap.graph_module)
        out = next(n for n in cap.graph_module.graph.nodes if n.op == "output")
        self.names: dict[torch.fx.Node, list[str]] = {}
        for name, node in out.args[0].items():
            self.names.setdefault(node, []).append(name)
        self.watch = _Watch()
        self.axes: dict[torch.fx.Node, object] = {}
        self.shapes: dict[torch.fx.Node, object] = {}

    def trace(self, x: torch.Tensor):
        outputs = self.run(x)
        self.watch.check("after the last step of the forward")
        axes = {n: self.axes.get(node) for node, names in self.names.items() for n in names}
        return dict(outputs), dict(self.watch.written), axes

    def run_node(self, n: torch.fx.Node) -> Any:
        value = super().run_node(n)
        if n.op != "output":
            self.watch.check(f"by '{_describe(n)}'")
            self.shapes[n] = _nested_axes(value, lambda s: s)
            self.axes[n] = self._axis(n, value)
            for name in self.names.get(n, ()):
                self.watch.add(name, value)
        return value

    def _axis(self, n: torch.fx.Node, value: object) -> object:
        if n.op == "placeholder":
            return _input_axis(value)
        if n.op == "get_attr":
            return None
        args = [a for a in _flat(n.args) + _flat(n.kwargs) if isinstance(a, torch.fx.Node)]
        if n.target is operator.getitem and args and self._is_tuple(args[0]):
            index = n.args[1]
            return _element(self.axes.get(args[0]), (index,)) if isinstance(index, int) else None
        main = self._main(args, value)
        in_axis = self.axes.get(main) if main is not None else None
        in_shape = self.shapes.get(main) if main is not None else None
        if not isinstance(in_axis, int):
            in_axis = None
        if not (isinstance(in_shape, tuple) and all(isinstance(d, int) for d in in_shape)):
            in_shape = None
        if n.op == "call_module":
            module = self.fetch_attr(n.target)
            return _nested_axes(value, lambda s: module_axis(module, in_axis, in_shape, s))
        tensor_args = tuple(self._value_of(a) for a in n.args)
        return _nested_axes(
            value,
            lambda s: function_axis(n.target, tensor_args, n.kwargs, in_axis, in_shape, s),
        )

    def _is_tuple(self, node: torch.fx.Node) -> bool:
        return isinstance(self.shapes.get(node), tuple) and any(
            isinstance(s, tuple) or s is None for s in self.shapes[node]
        )

    def _value_of(self, a: object) -> object:
        return self.env.get(a) if isinstance(a, torch.fx.Node) else a

    def _main(self, args: list[torch.fx.Node], value: object) -> torch.fx.Node | None:
        """The input whose channel axis the output carries: one of its shape, else the first
        with a known axis, else the first tensor."""
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else None
        tensors = [a for a in args if isinstance(self.env.get(a), torch.Tensor)]
        for pick in (
            lambda a: self.shapes.get(a) == shape and isinstance(self.axes.get(a), int),
            lambda a: isinstance(self.axes.get(a), int),
            lambda a: True,
        ):
            for a in tensors:
                if pick(a):
                    return a
        return None


def _flat(args: object) -> list[object]:
    if isinstance(args, tuple | list):
        return [x for a in args for x in _flat(a)]
    if isinstance(args, dict):
        return [x for a in args.values() for x in _flat(a)]
    return [args]


def _describe(n: torch.fx.Node) -> str:
    if n.op == "call_module":
        return str(n.target)
    target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "?")
    return f"{n.name}" if n.name == target else f"{n.name}: {target}"


class _HookTrace:
    """The module run with a forward hook on every module, for one forward."""

    def __init__(self, cap: Capture):
        self.cap = cap
        self.watch = _Watch()
        self.known: dict[int, tuple[torch.Tensor, object]] = {}  # id → (tensor, axis)
        self.axes: dict[str, object] = {}  # module name → axis of its first call's output
        self.values: dict[str, object] = {}  # captured layer → output
        self.by_base: dict[str, list[str]] = {}
        for n, (base, _) in cap.index.items():
            self.by_base.setdefault(base, []).append(n)

    def trace(self, x: torch.Tensor):
        handles = [
            m.register_forward_hook(self._hook(name), with_kwargs=True)
            for name, m in self.cap.module.named_modules()
            if name
        ]
        self._remember(x, _input_axis(x))
        try:
            self.cap.model_output(x)
        finally:
            for h in handles:
                h.remove()
        self.watch.check("after the last module returned")
        axes = {
            n: _element(self.axes.get(base), self.cap.index[n][1])
            for base, names in self.by_base.items()
            for n in names
        }
        return dict(self.values), dict(self.watch.written), axes

    def _remember(self, value: object, axes: object) -> None:
        if isinstance(value, torch.Tensor):
            self.known[id(value)] = (value, axes)
        elif isinstance(value, tuple | list) and isinstance(axes, tuple):
            for v, a in zip(value, axes, strict=False):
                self._remember(v, a)

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: object) -> None:
            self.watch.check(f"by the time '{name}' returned")
            if name not in self.axes:
                axes = self._axes(module, [*_flat(args), *_flat(kwargs)], out)
                self.axes[name] = axes
                self._remember(out, axes)
                for layer in self.by_base.get(name, ()):
                    if layer not in self.values:
                        value = _select_value(out, self.cap.index[layer][1])
                        self.values[layer] = value
                        self.watch.add(layer, value)

        return hook

    def _axes(self, module: nn.Module, inputs: list[object], out: object) -> object:
        tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
        main = next((t for t in tensors if id(t) in self.known), tensors[0] if tensors else None)
        in_axis = self.known[id(main)][1] if main is not None and id(main) in self.known else None
        in_shape = tuple(main.shape) if main is not None else None

        def rule(shape: tuple[int, ...]) -> object:
            return module_axis(
                module, in_axis if isinstance(in_axis, int) else None, in_shape, shape
            )

        if isinstance(out, torch.Tensor) and id(out) in self.known:
            return self.known[id(out)][1]  # the same tensor as an input's or a child's
        return _nested_axes(out, rule)


def _select_value(out: object, index: tuple[int, ...]) -> object:
    for i in index:
        if not isinstance(out, tuple | list) or i >= len(out):
            return IndexError(f"{type(out).__name__} has no element {i}")
        out = out[i]
    return out


@torch.no_grad()
def model_output_layers(
    capture: Capture, outputs: Mapping[str, torch.Tensor], example: torch.Tensor
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
    module: nn.Module, input_shape: Sequence[int], *, method: Method = "auto"
) -> tuple[list[LayerInfo], str]:
    """Every capturable layer with its kind, per-sample output shape, layout and whether it
    is cloned at capture (None shape: not one tensor; a tuple output's tensors follow as
    rows of their own, ``name[i]``), from a probe with zeros; and the method used."""
    cands = candidates(module, method)
    example = torch.zeros((1, *input_shape), device=_module_device(module))
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
        found, _ = probe(cap, example, strict=False)
    except OptionError:
        raise
    except Exception as e:
        raise CaptureError(
            f"a forward pass of one sample of shape {tuple(example.shape[1:])} "
            f"failed: {type(e).__name__}: {e}. Check --input-shape."
        ) from e
    finally:
        cap.close()
    return found


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
