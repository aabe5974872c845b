"""The torch.fx graph of a model, named as torchvision names its nodes, and pruned so that it
computes every captured value exactly as the model does.

Two differences from ``torchvision.models.feature_extraction``:

- **Every module's node is named by its path as it is.** torchvision strips a trailing
  ``_<n>`` from every name before numbering repeated calls, so ViT's ``ln_1`` is named ``ln``
  and its ``ln_2`` is named ``ln_1``: asking for ``ln_1`` would store ``ln_2``. Here a module's
  first call is its path and its k-th further call ``<path>_<k>``, as torchvision numbers
  them; other nodes keep torchvision's names.
- **Nothing that writes in place is pruned.** torchvision's ``create_feature_extractor`` drops
  every node whose result is unused, and an in-place statement (``y.add_(1)``,
  ``torch.relu_(y)``, ``y += 1`` on a tensor) has an unused result: everything computed after
  it came out wrong. Here only the nodes after the last captured one are dropped, and then
  unused nodes that write nothing.

torchvision's container modules ``Conv2dNormActivation``, ``SqueezeExcitation`` and ``MLP`` are
traced through, so the modules inside them (EfficientNet's, MobileNet's, RegNet's, Swin's
and ViT's MLPs) have nodes of their own; its other ops stay single nodes, as there.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torchvision
from torch import fx, nn
from torchvision.models.feature_extraction import NodePathTracer

__all__ = ["Traced", "graph_returning", "set_outputs", "trace"]

_INPLACE_OPERATORS = {
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.ifloordiv,
    operator.imod,
    operator.ipow,
    operator.imatmul,
    operator.iand,
    operator.ior,
    operator.ixor,
    operator.ilshift,
    operator.irshift,
    operator.setitem,
}


def _traced_through() -> tuple[type, ...]:
    from torchvision.ops.misc import MLP, ConvNormActivation, SqueezeExcitation

    return (ConvNormActivation, MLP, SqueezeExcitation)


class _Tracer(NodePathTracer):
    """torchvision's tracer with module nodes named by their paths (see the module
    docstring) and torchvision's containers traced through."""

    def __init__(self) -> None:
        from torchvision.models.feature_extraction import _get_leaf_modules_for_ops

        through = _traced_through()
        leaves = [c for c in _get_leaf_modules_for_ops() if not issubclass(c, through)]
        super().__init__(autowrap_modules=(math, torchvision.ops), leaf_modules=leaves)

    def _get_node_qualname(self, module_qualname: str, node: fx.Node) -> str:
        if node.op != "call_module":
            return super()._get_node_qualname(module_qualname, node)
        taken = set(self.node_to_qualname.values())
        name, k = module_qualname, 0
        while name in taken:
            k += 1
            name = f"{module_qualname}_{k}"
        return name


@dataclass(frozen=True)
class Traced:
    """A model's graph in eval mode: ``nodes`` {name: node} in graph order (inputs left
    out), ``root`` the module the graph's ``call_module`` targets refer to."""

    graph: fx.Graph
    nodes: dict[str, fx.Node]
    root: nn.Module


def trace(module: nn.Module) -> Traced:
    """Trace ``module`` in eval mode (every module's train/eval flag is put back after)."""
    training = {m: m.training for m in module.modules()}
    module.eval()
    try:
        tracer = _Tracer()
        graph = tracer.trace(module)
    finally:
        for m, flag in training.items():
            m.training = flag
    nodes = {
        name: node
        for node, name in tracer.node_to_qualname.items()
        if node.op not in ("placeholder", "output")
    }
    return Traced(graph, nodes, tracer.root)


def graph_returning(traced: Traced) -> tuple[fx.GraphModule, dict[str, fx.Node]]:
    """A copy of the traced graph as a GraphModule that returns nothing yet, and its nodes by
    name (:func:`set_outputs` makes it return some)."""
    graph = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {}
    graph.graph_copy(traced.graph, mapping)
    graph.output({})
    gm = fx.GraphModule(traced.root, graph, type(traced.root).__name__)
    return gm, {name: mapping[node] for name, node in traced.nodes.items()}


def set_outputs(gm: fx.GraphModule, returned: dict[str, fx.Node]) -> None:
    """Make ``gm`` return {name: node}; drop the nodes after the last of them, then the nodes
    whose results nothing uses and that write nothing in place; recompile."""
    graph = gm.graph
    out = next(n for n in graph.nodes if n.op == "output")
    out.args = (returned,)
    order = {n: i for i, n in enumerate(graph.nodes)}
    last = max((order[n] for n in returned.values()), default=-1)
    for node in reversed([n for n in graph.nodes if order[n] > last and n is not out]):
        graph.erase_node(node)
    for node in reversed(list(graph.nodes)):  # last first: a chain of unused nodes goes too
        if not node.users and not _writes(node, gm):
            graph.erase_node(node)
    graph.lint()
    gm.recompile()


def _writes(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether ``node`` writes in place (or has another side effect): kept even unused."""
    if node.op in ("placeholder", "output"):
        return True
    if node.op == "call_method":
        name = str(node.target)
        return (name.endswith("_") and not name.endswith("__")) or node.is_impure()
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return (
            node.target in _INPLACE_OPERATORS
            or (name.endswith("_") and not name.endswith("__"))
            or node.kwargs.get("inplace") is True
            or node.is_impure()
        )
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        return getattr(module, "inplace", False) is True
    return False
