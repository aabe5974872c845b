"""Capture: which layers, and a callable that returns their outputs for a batch.

Names are those of torchvision's ``get_graph_node_names`` (fx nodes such as ``layer1.0.relu_1``
or ``flatten``) and module names (``layer3``, containers included: their output is the output
of the module's last node). Globs (``layer*.conv2``, ``features.*``) expand in graph order.

``create_feature_extractor`` (torch.fx) is the default. A model fx cannot trace (data-dependent
control flow, ...) falls back to forward hooks on modules, and the log says so; then only module
names can be captured. A module called twice is captured at its first call on both paths
(``name_1`` is the fx name of the second call).
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from actextract.errors import CaptureError, LayerNotFoundError

__all__ = ["Capture", "LayerInfo", "build_capture", "layer_table", "probe", "select_layers"]

log = logging.getLogger(__name__)

Method = Literal["auto", "fx", "hooks"]


@dataclass(frozen=True)
class LayerInfo:
    """One capturable layer. ``shape``: per sample, e.g. (C, H, W); ``kind``: module class
    or the function an fx node calls."""

    name: str
    kind: str
    shape: tuple[int, ...] | None = None
    params: tuple[int, int] = (0, 0)  # (trainable, total) of the module, its children included
    nested: bool = False  # a container: its parameters are also its children's rows'

    def bytes_per_sample(self, dtype: torch.dtype) -> int:
        return math.prod(self.shape or ()) * dtype.itemsize


@dataclass(frozen=True)
class Candidates:
    """Every name that can be captured from a model, in graph order, and how."""

    names: tuple[str, ...]
    kinds: dict[str, str]
    method: Literal["fx", "hooks"]
    fx_error: str | None  # why fx could not trace, when it could not
    alias: dict[str, str]  # fx: container module → its last node (the same tensor)


def _fx_node_names(module: nn.Module) -> list[str]:
    from torchvision.models.feature_extraction import get_graph_node_names

    _, eval_nodes = get_graph_node_names(module)
    inputs = set(inspect.signature(module.forward).parameters)
    return [n for n in eval_nodes if n not in inputs]


def candidates(module: nn.Module, method: Method = "auto") -> Candidates:
    """List what can be captured. ``method='auto'`` tries fx and falls back to hooks."""
    modules = dict(module.named_modules())
    modules.pop("", None)
    kinds = {name: type(m).__name__ for name, m in modules.items()}
    fx_error = None
    if method != "hooks":
        training = module.training  # tracing switches train/eval, and a failure leaves it so
        try:
            nodes = _fx_node_names(module)
        except Exception as e:  # fx raises many types (TraceError, TypeError, ...) on failure
            fx_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if method == "fx":
                raise CaptureError(
                    f"torch.fx cannot trace {type(module).__name__} ({fx_error}); "
                    "use --capture hooks (module names only)."
                ) from None
            log.warning(
                "torch.fx cannot trace %s (%s); capturing with forward hooks on modules instead",
                type(module).__name__,
                fx_error,
            )
        else:
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
            )
        finally:
            module.train(training)
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
    """Resolve names and globs to capturable names, in graph order, without duplicates."""
    patterns = [p.strip() for p in patterns if p and p.strip()]
    if not patterns:
        raise LayerNotFoundError(
            f"no layers given; run 'actextract layers {model_name}' to see the names."
        )
    return match_names(
        patterns,
        cands.names,
        lambda pat: LayerNotFoundError(_not_found(pat, cands, model_name)),
    )


def match_names(
    patterns: Iterable[str], names: Sequence[str], not_found: Callable[[str], Exception]
) -> list[str]:
    """Names and globs → ``names`` they match, in the order of ``names``, without duplicates;
    a pattern that matches nothing raises ``not_found(pattern)``."""
    chosen: set[str] = set()
    for pat in patterns:
        hits = [pat] if pat in names else []
        if not hits and any(c in pat for c in "*?["):
            hits = fnmatch.filter(names, pat)
        if not hits:
            raise not_found(pat)
        chosen.update(hits)
    return [n for n in names if n in chosen]


def _not_found(pat: str, cands: Candidates, model_name: str) -> str:
    close = difflib.get_close_matches(pat, cands.names, n=4, cutoff=0.5)
    where = f"layer '{pat}' is not in {model_name}"
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

    On the hooks path the hooks stay on the module until :meth:`close`.
    """

    def __init__(self, module: nn.Module, names: Sequence[str], cands: Candidates):
        self.module, self.names, self.method = module, list(names), cands.method
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._outputs: dict[str, object] = {}
        self.kinds = {n: cands.kinds.get(n, "?") for n in self.names}
        # fx returns one output per node: a container is read from its last node
        self._node_of = {n: cands.alias.get(n, n) for n in self.names}
        if self.method == "fx":
            from torchvision.models.feature_extraction import create_feature_extractor

            nodes = dict.fromkeys(self._node_of.values())
            self._fn = create_feature_extractor(module, return_nodes={n: n for n in nodes})
            self._fn.eval()
            _disable_inplace_after(self._fn)
        else:
            _disable_inplace(module)  # the order of calls is unknown without a graph
            self._fn = module
            modules = dict(module.named_modules())
            self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(_mod: nn.Module, _inp: object, out: object) -> None:
            self._outputs.setdefault(name, out)  # first call wins, as fx's plain node name

        return hook

    def raw(self, x: torch.Tensor) -> dict[str, object]:
        """Whatever the layers output, unchecked."""
        if self.method == "fx":
            out = self._fn(x)
            return {n: out[node] for n, node in self._node_of.items()}
        self._outputs = {}
        try:
            self._fn(x)
            return self._outputs
        finally:
            self._outputs = {}

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.raw(x)
        missing = [n for n in self.names if n not in outputs]
        if missing:
            raise CaptureError(
                f"layers {missing} produced no output in the forward pass "
                "(modules that forward() never calls)."
            )
        bad = [
            f"{n} ({type(outputs[n]).__name__})"
            for n in self.names
            if not isinstance(outputs[n], torch.Tensor)
        ]
        if bad:
            raise CaptureError(
                f"layers {', '.join(bad)} do not output a single tensor; choose "
                "a layer inside them (see 'actextract layers')."
            )
        return {n: outputs[n] for n in self.names}  # type: ignore[misc]

    def model_output(self, x: torch.Tensor) -> object:
        """The model's own output for ``x``; hooks, if any, keep nothing of this call."""
        try:
            return self.module(x)
        finally:
            self._outputs = {}

    def close(self) -> None:
        """Remove the hooks this capture put on the module."""
        for h in self._handles:
            h.remove()
        self._handles = []


def _disable_inplace(module: nn.Module) -> None:
    """``ReLU(inplace=True)`` would overwrite the captured output of the layer before it
    (resnet's ``bn1`` would read as post-ReLU). Turning it off changes memory, not results."""
    for m in module.modules():
        if isinstance(getattr(m, "inplace", None), bool) and m.inplace:
            m.inplace = False


def _disable_inplace_after(fn: torch.fx.GraphModule) -> None:
    """On the fx path, in-place modules called only before the first captured node cannot
    touch a captured tensor (none exists yet) and stay in place: an out-of-place ReLU costs a
    fresh tensor per call, which slowed resnet18's forward on a CPU by 5-10 %. Modules called
    at or after it (an alias, a view or the tensor itself may be what they overwrite) are
    turned out of place."""
    nodes = list(fn.graph.nodes)
    returned = next(n for n in nodes if n.op == "output").args[0]  # {name: node}
    captured = set(returned.values() if isinstance(returned, dict) else returned)
    after = False
    for node in nodes:
        after = after or node in captured
        if after and node.op == "call_module":
            m = fn.get_submodule(node.target)
            if isinstance(getattr(m, "inplace", None), bool) and m.inplace:
                m.inplace = False


def build_capture(
    module: nn.Module, patterns: Iterable[str], *, model_name: str, method: Method = "auto"
) -> Capture:
    """Resolve ``patterns`` on ``module`` and build the capture (fx, or hooks as fallback)."""
    cands = candidates(module, method)
    names = select_layers(patterns, cands, model_name=model_name)
    return Capture(module, names, cands)


@torch.inference_mode()
def probe(capture: Capture, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """The captured layers' outputs for one forward of ``example`` (1, *input_shape) on the
    module's device; a failed forward becomes a CaptureError that says what to check."""
    try:
        outputs = capture(example)
    except CaptureError:
        raise
    except Exception as e:
        raise CaptureError(
            f"a forward pass of one sample of shape {tuple(example.shape[1:])} "
            f"failed: {type(e).__name__}: {e}. Check the input shape "
            "(--input-shape, or the dataset's transform)."
        ) from e
    return outputs


@torch.inference_mode()
def model_output_layers(
    capture: Capture, outputs: dict[str, torch.Tensor], example: torch.Tensor
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
    """Every capturable layer with its kind and per-sample output shape (None where the
    output is not one tensor), from one forward pass of zeros; and the method used."""
    cands = candidates(module, method)
    cap = Capture(module, cands.names, cands)
    example = torch.zeros((1, *input_shape), device=_module_device(module))
    try:
        with torch.inference_mode():
            outputs = cap.raw(example)
    except Exception as e:
        raise CaptureError(
            f"a forward pass of one sample of shape {tuple(input_shape)} "
            f"failed: {type(e).__name__}: {e}. Check --input-shape."
        ) from e
    finally:
        cap.close()
    rows = []
    for n in cands.names:
        out = outputs.get(n)
        shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else None
        params, nested = _parameters(module, n)
        rows.append(LayerInfo(n, cands.kinds.get(n, "?"), shape, params, nested))
    return rows, cands.method


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
