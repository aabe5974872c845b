"""Trace: one forward of the capture watched step by step, for the probe
(:mod:`actextract.model.probe`): each captured output's version counter, and each step's channel
axis.

On fx the capture's graph runs node by node (a :class:`torch.fx.Interpreter`); on hooks the
module runs with a forward hook on every module, for this forward only. A captured output's
version counter is read when it is produced and after every later step, so the step that
writes it in place is named. The channel axis (of the whole (B, ...) tensor, the batch axis
first; None: unknown, :data:`~actextract.core.axes.LOST`: mixed into other axes) is followed from
the input through each step by the rules of :mod:`actextract.model.axisrules`, and
:func:`actextract.core.axes.layout_of` turns it into a layout.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from actextract.data.inputs import Inputs, positional
from actextract.model.axisrules import follow, function_axis, module_axis
from actextract.model.capture import Capture
from actextract.model.elements import select_element, sequence

__all__ = ["follow", "function_axis", "module_axis", "trace_forward"]  # the rules re-exported


def trace_forward(
    cap: Capture, x: Inputs, *, keep: bool = True
) -> tuple[dict[str, object], dict[str, str], dict]:
    """One forward of ``x`` watched step by step: {layer: output} (``keep``: each tensor as it
    was when produced, a copy; else as the forward left it), {layer: why it must be cloned}
    for the outputs written after capture, {layer: channel axis of its (B, ...) output (None:
    unknown)}."""
    trace = _FxTrace(cap, keep) if cap.method == "fx" else _HookTrace(cap, keep)
    return trace.trace(x)


class _Watch:
    """Captured outputs and their version counters as they were when produced (and, with
    ``keep``, a copy of each)."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.tensors: dict[str, tuple[torch.Tensor, int]] = {}
        self.written: dict[str, str] = {}
        self.kept: dict[str, torch.Tensor] = {}

    def add(self, name: str, value: object) -> None:
        if isinstance(value, torch.Tensor) and name not in self.tensors:
            self.tensors[name] = (value, value._version)
            if self.keep:
                self.kept[name] = value.detach().clone()

    def as_produced(self, values: Mapping[str, object]) -> dict[str, object]:
        return {n: self.kept.get(n, v) for n, v in values.items()}

    def check(self, by: str) -> None:
        for name, (t, version) in self.tensors.items():
            if name not in self.written and t._version != version:
                self.written[name] = f"written in place later, {by}"


def _nested_axes(value: object, rule) -> object:
    """``rule(shape)`` for a tensor; the same for each element of a tuple or list."""
    if isinstance(value, torch.Tensor):
        return rule(tuple(value.shape))
    items = sequence(value)  # a tuple or list, or a ModelOutput as its tuple
    return None if items is None else tuple(_nested_axes(v, rule) for v in items)


def _element(axes: object, index: tuple[int, ...]) -> object:
    for i in index:
        axes = axes[i] if isinstance(axes, tuple) and i < len(axes) else None
    return axes


def _input_axis(x: object) -> object:
    """The input's channel axis: second of (B, C, ...) images, none of (B,) or (B, T) ids."""
    return _nested_axes(x, lambda s: 1 if len(s) >= 3 else None)


class _FxTrace(torch.fx.Interpreter):
    """The capture's graph run node by node."""

    def __init__(self, cap: Capture, keep: bool):
        super().__init__(cap.graph_module)
        out = next(n for n in cap.graph_module.graph.nodes if n.op == "output")
        self.names: dict[torch.fx.Node, list[str]] = {}
        for name, node in out.args[0].items():
            self.names.setdefault(node, []).append(name)
        self.watch = _Watch(keep)
        self.axes: dict[torch.fx.Node, object] = {}
        self.shapes: dict[torch.fx.Node, object] = {}

    def trace(self, x: Inputs):
        outputs = self.run(*positional(self.module.forward, x))
        self.watch.check("after the last step of the forward")
        axes = {n: self.axes.get(node) for node, names in self.names.items() for n in names}
        return self.watch.as_produced(outputs), dict(self.watch.written), axes

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

    def __init__(self, cap: Capture, keep: bool):
        self.cap = cap
        self.watch = _Watch(keep)
        self.known: dict[int, tuple[torch.Tensor, object]] = {}  # id → (tensor, axis)
        self.axes: dict[str, object] = {}  # module name → axis of its first call's output
        self.values: dict[str, object] = {}  # captured layer → output
        self.elements: dict[str, tuple[int, ...]] = {}  # captured layer → its index in it

    def trace(self, x: torch.Tensor):
        handles = [
            m.register_forward_hook(self._hook(name), with_kwargs=True)
            for name, m in self.cap.module.named_modules()
            if name
        ]
        for t in _flat(x):
            self._remember(t, _input_axis(t))
        try:
            self.cap.model_output(x)
        finally:
            for h in handles:
                h.remove()
        self.watch.check("after the last module returned")
        axes = {
            n: _element(self.axes.get(base), self.elements.get(n, self.cap.index[n][1]))
            for base, names in self.cap.by_base.items()
            for n in names
        }
        return self.watch.as_produced(self.values), dict(self.watch.written), axes

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
                for layer in self.cap.by_base.get(name, ()):
                    if layer not in self.values:
                        self.elements[layer] = self.cap.element(layer, out)
                        value = select_element(out, self.elements[layer])
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
