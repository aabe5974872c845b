"""Capture: which layers, and a callable that returns their outputs for a batch.

Names are fx node names as torchvision's ``get_graph_node_names`` gives them
(``layer1.0.relu_1``, ``flatten``; :mod:`actextract.model.fxgraph` says where ours differ) and
module names (``layer3``, containers included: their output is the output of the module's last
node). Globs follow path rules (:mod:`actextract.core.names`). An output that is a tuple is reached
by index: ``lstm[0]``, ``lstm[1][0]``. In a Hugging Face transformers model, a module whose
output is a tuple or a ``ModelOutput`` (attention: output and weights; older blocks: hidden
states and cache) gives its element 0 by default, the hidden states; ``name[1]`` the others.

torch.fx is the default. A model fx cannot trace (data-dependent control flow, ...) falls
back to forward hooks on modules, and the log says so; then only module names can be
captured. A module called twice is captured at its first call on both paths (``name_1`` is
the fx name of the second call).

Nothing of the model is changed: no module is switched out of place. What the probe
(:mod:`actextract.model.probe`) finds written in place after it is captured is cloned right where
it is produced (a ``clone`` node after it on fx, in the hook on hooks); on the hooks path, where
the graph is unknown, every batch also checks the captured outputs' version counters and a
batch whose output changed after capture is computed again with that layer cloned. An output
whose batch axis is not the first comes back with it moved to the front.
"""

from __future__ import annotations

import difflib
import logging
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from actextract.core.names import match_names, wider_hint
from actextract.data.inputs import Inputs, attention_mask, batch_len, call
from actextract.errors import CaptureError, LayerNotFoundError, option
from actextract.model.elements import (  # re-exported: the capture's names for its callers
    check_outputs,
    from_transformers,
    select_element,
    sequence,
    split_index,
    tensor_paths,
)
from actextract.model.fxgraph import Traced, graph_returning, set_outputs, trace

__all__ = [
    "Candidates",
    "Capture",
    "build_capture",
    "candidates",
    "check_outputs",
    "follows",
    "from_transformers",
    "select_element",
    "select_layers",
    "split_index",
    "tensor_paths",
]

log = logging.getLogger(__name__)

Method = Literal["auto", "fx", "hooks"]


@dataclass(frozen=True)
class Candidates:
    """Every name that can be captured from a model, in graph order, and how."""

    names: tuple[str, ...]
    kinds: dict[str, str]
    method: Literal["fx", "hooks"]
    fx_error: str | None  # why fx could not trace, when it could not
    alias: dict[str, str]  # fx: container module → its last node (the same tensor)
    traced: Traced | None = None  # fx: the graph the names are of


def candidates(module: nn.Module, method: Method = "auto") -> Candidates:
    """List what can be captured. ``method='auto'`` tries fx and falls back to hooks."""
    modules = dict(module.named_modules())
    modules.pop("", None)
    kinds = {name: type(m).__name__ for name, m in modules.items()}
    fx_error = None
    if method != "hooks":
        try:
            traced = trace(module)
        except Exception as e:  # fx raises many types (TraceError, TypeError, ...) on failure
            fx_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if method == "fx":
                raise CaptureError(
                    f"torch.fx cannot trace {type(module).__name__} ({fx_error}); "
                    "use --capture hooks (capture='hooks'; module names only)."
                ) from None
            # transformers models do not trace: hooks are their path, not a fallback to warn of
            log.log(
                logging.INFO if from_transformers(module) else logging.WARNING,
                "torch.fx cannot trace %s (%s); capturing with forward hooks on modules instead",
                type(module).__name__,
                fx_error,
            )
        else:
            nodes = list(traced.nodes)
            alias = _container_nodes(nodes, modules)
            order = sorted(
                [(i, 0, 0, n) for i, n in enumerate(nodes)]
                + [(nodes.index(last), 1, -c.count("."), c) for c, last in alias.items()]
            )
            return Candidates(
                tuple(n for *_, n in order),
                {n: kinds.get(n) or _node_kind(n, kinds) for n in [*nodes, *modules]},
                "fx",
                None,
                alias,
                traced,
            )
    return Candidates(tuple(_post_order(list(modules))), kinds, "hooks", fx_error, {})


def _post_order(names: list[str]) -> list[str]:
    """Module names with each container after its children, as the graph order has them."""
    last = {
        m: max(i for i, n in enumerate(names) if n == m or n.startswith(m + ".")) for m in names
    }
    return sorted(names, key=lambda m: (last[m], -m.count(".")))


def _node_kind(node: str, kinds: dict[str, str]) -> str:
    """``layer1.0.relu_1`` → ReLU (second call of a module); ``flatten`` → flatten()."""
    base = re.sub(r"_\d+$", "", node)
    return kinds.get(base) or f"{base.rsplit('.', 1)[-1]}()"


def _container_nodes(nodes: list[str], modules: dict[str, nn.Module]) -> dict[str, str]:
    """Each module that is not itself a node (``layer1``, ``layer1.0``) → its last node, whose
    output is the module's. Modules that forward() never calls are left out."""
    last: dict[str, str] = {}
    node_set = set(nodes)
    for node in nodes:  # in graph order, so the last write wins
        parts = node.split(".")
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            if prefix in modules and prefix not in node_set:
                last[prefix] = node
    return last


def select_layers(patterns: Iterable[str], cands: Candidates, *, model_name: str) -> list[str]:
    """Resolve names and globs to capturable names, in graph order, without duplicates; a
    name with an index (``lstm[1]``) selects an element of a tuple output."""
    patterns = [p.strip() for p in patterns if p and p.strip()]
    if not patterns:
        raise LayerNotFoundError(
            f"no layers given: name them in {option('layers')}; run 'actextract layers "
            f"{model_name}' to see the names."
        )
    indexed = [p for p in patterns if split_index(p)[1] and split_index(p)[0] in cands.names]
    names = [*cands.names, *(p for p in indexed if p not in cands.names)]

    def not_found(pat: str) -> Exception:
        return LayerNotFoundError(_not_found(pat, cands, model_name))

    chosen = match_names(patterns, names, not_found)
    order = {n: i for i, n in enumerate(cands.names)}
    return sorted(chosen, key=lambda n: (order[split_index(n)[0]], split_index(n)[1]))


def _not_found(pat: str, cands: Candidates, model_name: str) -> str:
    close = difflib.get_close_matches(pat, cands.names, n=4, cutoff=0.5)
    where = f"layer '{pat}' is not in {model_name}" + wider_hint(pat, cands.names)
    if cands.method == "hooks" and cands.fx_error:
        where += (
            f" (fx could not trace it: {cands.fx_error}; only module names can be "
            "captured, with hooks)"
        )
    if close:
        hint = f"; close matches: {', '.join(close)}"
    else:  # nothing alike: show what names look like in this model
        n, first = len(cands.names), ", ".join(cands.names[:6])
        hint = f"; its layers: {first}" + (f" (and {n - 6} more)" if n > 6 else "")
    return f"{where}{hint}. Run 'actextract layers {model_name}' to list the names."


class Capture:
    """``capture(x) -> {name: output}`` for the chosen layers; outputs are (B, ...) tensors.

    :meth:`configure` (the probe calls it) says which outputs are cloned where they are
    produced and which have their batch axis elsewhere. On the hooks path the hooks stay on
    the module until :meth:`close`; run it under :meth:`grad_mode`.
    """

    def __init__(self, module: nn.Module, names: Sequence[str], cands: Candidates):
        self.module, self.names, self.method = module, list(names), cands.method
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._outputs: dict[str, object] = {}
        self._versions: dict[str, int] = {}
        self.index = {n: split_index(n) for n in self.names}
        self.first_element = from_transformers(module)  # a tuple output's [0] by default
        self.by_base: dict[str, list[str]] = {}  # a module (or node) → the layers read from it
        for n, (base, _) in self.index.items():
            self.by_base.setdefault(base, []).append(n)
        self.kinds = {n: cands.kinds.get(self.index[n][0], "?") for n in self.names}
        self.clones: dict[str, str] = {}  # layer → why it is cloned at capture
        self.batch_axes: dict[str, int] = {}  # layer → where its batch axis is (moved to 0)
        self.shapes: dict[str, tuple[int, ...]] = {}  # per sample, as the probe found them
        self.tokens: int | None = None  # the probe's number of tokens (text)
        # fx returns one output per node: a container is read from its last node
        self._node_of = {n: cands.alias.get(b, b) for n, (b, _) in self.index.items()}
        if self.method == "fx":
            self._fn, nodes = graph_returning(cands.traced or trace(module))
            self._base_nodes = {node: nodes[node] for node in set(self._node_of.values())}
            self._added: list[torch.fx.Node] = []
            self._wire()
        else:
            self._fn = module
            modules = dict(module.named_modules())
            self._handles = [
                modules[base].register_forward_hook(self._hook(names))
                for base, names in self.by_base.items()
            ]

    # -- fx: the graph's outputs ---------------------------------------------------------------
    def _output_node(self) -> torch.fx.Node:
        return next(n for n in self._fn.graph.nodes if n.op == "output")

    def _wire(self) -> None:
        """The graph returns {layer: node}: the captured node, an element of it for an index,
        and a ``clone`` of it, right after it, for a layer the probe found written later."""
        graph, out = self._fn.graph, self._output_node()
        out.args = ({},)
        for node in reversed(self._added):
            graph.erase_node(node)
        self._added = []
        returned = {}
        for name in self.names:
            node = self._base_nodes[self._node_of[name]]
            for i in self.index[name][1]:
                with graph.inserting_after(node):
                    node = graph.call_function(operator.getitem, (node, i))
                self._added.append(node)
            if name in self.clones:
                with graph.inserting_after(node):
                    node = graph.call_function(torch.clone, (node,))
                self._added.append(node)
            returned[name] = node
        set_outputs(self._fn, returned)

    @property
    def graph_module(self) -> torch.fx.GraphModule:
        """The fx path's GraphModule (what the probe runs node by node)."""
        return self._fn

    # -- hooks ---------------------------------------------------------------------------------
    def _hook(self, names: list[str]):
        def hook(_mod: nn.Module, _inp: object, out: object) -> None:
            for name in names:
                if name in self._outputs:
                    continue  # first call wins, as fx's plain node name
                value = select_element(out, self.element(name, out))
                if isinstance(value, torch.Tensor):
                    if name in self.clones:
                        value = value.clone()
                    elif not value.is_inference():
                        self._versions[name] = value._version
                self._outputs[name] = value

        return hook

    def element(self, name: str, out: object) -> tuple[int, ...]:
        """The index of layer ``name`` in its module's output ``out``: the one it names, or
        element 0 of a transformers module's tuple (or ModelOutput) when it names none."""
        index = self.index[name][1]
        if not index and self.first_element and sequence(out) is not None:
            return (0,)
        return index

    def configure(
        self,
        *,
        clones: Mapping[str, str] | None = None,
        batch_axes: Mapping[str, int] | None = None,
        shapes: Mapping[str, tuple[int, ...]] | None = None,
        tokens: int | None = None,
    ) -> None:
        """What the probe found: layers to clone where they are produced (and why), batch
        axes to move to the front, each layer's per-sample shape, and the probe's number of
        tokens (text: a batch cut shorter, :mod:`actextract.model.trim`, has its layers' token
        axes as long as its own)."""
        self.tokens = tokens
        self.clones = dict(clones or {})
        self.batch_axes = {n: a for n, a in (batch_axes or {}).items() if a != 0}
        self.shapes = dict(shapes or {})
        if self.method == "fx":
            self._wire()

    def grad_mode(self):
        """The autograd mode to run this capture under: ``inference_mode`` on fx; on hooks
        ``no_grad``, which keeps the version counters each batch is checked with."""
        return torch.inference_mode() if self.method == "fx" else torch.no_grad()

    def raw(self, x: Inputs, *, verify: bool = True) -> dict[str, object]:
        """Whatever the layers output (cloned where configured), unchecked. On hooks,
        ``verify`` checks that nothing wrote a captured output after capture (and computes
        the batch again with it cloned where something did)."""
        if self.method == "fx":
            out = call(self._fn, x)
            return {n: out[n] for n in self.names}
        outputs = self._forward(x)
        if not verify:
            return outputs
        changed = [
            n
            for n, v in self._versions.items()
            if isinstance(outputs.get(n), torch.Tensor) and outputs[n]._version != v
        ]
        if changed and not torch.compiler.is_compiling():
            for n in changed:
                self.clones[n] = "written in place later in the forward (seen during the run)"
            log.warning(
                "%s: written in place after they were captured, on a batch whose path the "
                "probe did not take; computing the batch again with them cloned at capture",
                ", ".join(changed),
            )
            outputs = self._forward(x)
        return outputs

    def _forward(self, x: Inputs) -> dict[str, object]:
        self._outputs, self._versions = {}, {}
        try:
            call(self._fn, x)
            return self._outputs
        finally:
            self._outputs = {}

    def __call__(self, x: Inputs) -> dict[str, torch.Tensor]:
        """{layer: (B, *shape)} with each batch axis in front; a layer that is not one
        tensor, or whose shape is not the probe's, is a CaptureError."""
        outputs = self.raw(x)
        check_outputs(self.names, outputs)
        mask = attention_mask(x)
        cut = None  # a text batch cut shorter than the probe's (actextract.model.trim)
        if mask is not None and self.tokens is not None and mask.shape[1] != self.tokens:
            cut = int(mask.shape[1])
        result = {}
        for n in self.names:
            t = outputs[n]
            axis = self.batch_axes.get(n)
            t = t.movedim(axis, 0) if axis else t  # type: ignore[union-attr]
            want = self.shapes.get(n)
            have = tuple(t.shape[1:])  # type: ignore[union-attr]
            if want is not None and not follows(have, want, self.tokens, cut):
                raise CaptureError(
                    f"layer '{n}' output {tuple(t.shape[1:])} per sample for a batch of "  # type: ignore[union-attr]
                    f"{batch_len(x)}, and {want} at the probe: its shape changes from batch to "
                    "batch, which a store of fixed shapes cannot hold. Capture a layer of fixed "
                    "shape."
                )
            result[n] = t
        return result  # type: ignore[return-value]

    def model_output(self, x: Inputs) -> object:
        """The model's own output for ``x``; hooks, if any, keep nothing of this call."""
        try:
            return call(self.module, x)
        finally:
            self._outputs = {}

    def close(self) -> None:
        """Remove the hooks this capture put on the module."""
        for h in self._handles:
            h.remove()
        self._handles = []


def build_capture(
    module: nn.Module, patterns: Iterable[str], *, model_name: str, method: Method = "auto"
) -> Capture:
    """Resolve ``patterns`` on ``module`` and build the capture (fx, or hooks as fallback)."""
    cands = candidates(module, method)
    names = select_layers(patterns, cands, model_name=model_name)
    return Capture(module, names, cands)


def follows(
    have: tuple[int, ...], want: tuple[int, ...], tokens: int | None, cut: int | None
) -> bool:
    """Whether a layer's per-sample shape ``have`` is the probe's ``want``, or, for a batch
    cut to ``cut`` of the probe's ``tokens`` tokens, ``want`` with each axis of ``tokens``
    made ``cut`` long."""
    if have == want:
        return True
    if cut is None or len(have) != len(want):
        return False
    return all(h == w or (h == cut and w == tokens) for h, w in zip(have, want, strict=True))
