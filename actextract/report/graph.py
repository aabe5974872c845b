"""The model's structure as a picture: its torch.fx graph drawn with Graphviz, the chosen layers
highlighted; and the summary and graph files of a store's model that the report links.

Nodes carry the names ``actextract layers`` lists (:mod:`actextract.model.fxgraph`:
``layer1.0.relu_1``), each with its kind (module class or function) and per-sample output
shape; a module that is not itself a node (``layer1``, ``layer1.0``) is a box around its nodes.
A model fx cannot trace (captured with forward hooks) is drawn as its module tree instead, and
the graph's title says so.

The format follows the file's suffix: ``.dot`` is Graphviz's text and needs nothing else;
``.svg`` and ``.png`` are drawn by Graphviz's ``dot`` program, which must be on PATH.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.fx import Graph, Node

from actextract.data.inputs import shape_text
from actextract.data.samples import BadSample
from actextract.errors import ActextractError, GraphvizError, OptionError
from actextract.model.capture import Candidates, Method, select_layers
from actextract.model.discover import LayerTable, list_layers
from actextract.model.fxgraph import trace
from actextract.model.text import format_layer_summary
from actextract.model.zoo import load_model
from actextract.report.rebuild import RebuildError, open_inputs, rebuild_model

if TYPE_CHECKING:
    import graphviz

    from actextract.store import Store

__all__ = [
    "FORMATS",
    "GraphvizError",
    "ModelFiles",
    "draw_graph",
    "graph_format",
    "layer_graph",
    "model_graph",
    "write_graph",
    "write_model_files",
]

log = logging.getLogger(__name__)

FORMATS = {".svg": "svg", ".png": "png", ".dot": "dot"}  # suffix → format
SUMMARY_FILE = "model-summary.txt"  # what the report writes beside index.html
GRAPH_STEM = "model-graph"

# Colours: plain nodes grey, highlighted ones amber with a bold outline, inputs/outputs blue.
# ``class`` becomes the SVG element's class, so a page or a test can find the highlighted nodes.
_PLAIN = {"style": "rounded,filled", "fillcolor": "#f2f2f2", "color": "#8c8c8c"}
_CHOSEN = {
    "style": "rounded,filled,bold",
    "fillcolor": "#ffc857",
    "color": "#b35900",
    "penwidth": "2.5",
    "class": "selected",
}
_IO = {"shape": "ellipse", "style": "filled", "fillcolor": "#d6e6f5", "color": "#4a7bb7"}
_BOX = {"style": "rounded,dashed", "color": "#a6a6a6", "fontcolor": "#595959"}
_BOX_CHOSEN = {**_CHOSEN, "fillcolor": "#fff1d0"}
_MAX_TITLE_NAMES = 8


@dataclass(frozen=True)
class ModelFiles:
    """What :func:`write_model_files` wrote into the report folder: (file name, title) pairs,
    or, when the model could not be rebuilt, why not."""

    files: tuple[tuple[str, str], ...] = ()
    note: str | None = None


def draw_graph(
    model: str | nn.Module,
    out: str | Path,
    *,
    layers: Sequence[str] | str | None = None,
    input_shape: Sequence[int] | None = None,
    weights: str | Path | None = None,
    capture: Method = "auto",
    trust_checkpoint: bool = False,
) -> Path:
    """Draw ``model``'s graph into ``out`` (.svg, .png or .dot, by its suffix), ``layers``
    (names or globs, as ``extract`` takes them; default: none) highlighted. Returns ``out``.
    The suffix and the ``dot`` program are checked before the model is loaded."""
    graph_format(out)
    graph = model_graph(
        model,
        layers=layers,
        input_shape=input_shape,
        weights=weights,
        capture=capture,
        trust_checkpoint=trust_checkpoint,
    )
    return write_graph(graph, out)


def model_graph(
    model: str | nn.Module,
    *,
    layers: Sequence[str] | str | None = None,
    input_shape: Sequence[int] | None = None,
    weights: str | Path | None = None,
    capture: Method = "auto",
    trust_checkpoint: bool = False,
) -> graphviz.Digraph:
    """The Graphviz graph :func:`draw_graph` writes. Shapes come from one forward pass of a
    (1, *input_shape) zero tensor on the CPU, as ``actextract layers`` finds them."""
    loaded = load_model(model, weights=weights, trust_checkpoint=trust_checkpoint)
    shape = input_shape or loaded.input_shape
    table = _table(loaded.module, loaded.spec, shape, capture, loaded.tokenizer)
    return layer_graph(loaded.module, table, layers)


def layer_graph(
    module: nn.Module, table: LayerTable, layers: Sequence[str] | str | None = None
) -> graphviz.Digraph:
    """``module``'s graph with the names, kinds and shapes of ``table`` (its
    :func:`~actextract.model.discover.list_layers`): the fx graph, or the module tree when ``table``
    was captured with hooks. ``layers``: names or globs to highlight."""
    chosen = _select(table, layers)
    if table.method == "fx":
        return _fx_graph(module, table, chosen)
    return _module_tree(module, table, chosen)


def graph_format(out: str | Path) -> str:
    """``out``'s format from its suffix; for svg and png, ``dot`` must be on PATH."""
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise OptionError(
            f"cannot draw a graph into '{out}': the format follows the file's suffix, and "
            f"'{suffix or 'no suffix'}' is not one of {', '.join(FORMATS)}."
        )
    if FORMATS[suffix] != "dot" and shutil.which("dot") is None:
        raise GraphvizError(_no_dot(out))
    return FORMATS[suffix]


def write_graph(graph: graphviz.Digraph, out: str | Path) -> Path:
    """The one place a graph becomes a file: Graphviz's text for .dot, else ``dot``'s
    drawing. Returns ``out``."""
    import graphviz

    out = Path(out)
    fmt = graph_format(out)
    if fmt == "dot":
        data = graph.source.encode("utf-8")
    else:
        try:
            data = graph.pipe(format=fmt)
        except graphviz.ExecutableNotFound:
            raise GraphvizError(_no_dot(out)) from None
        except graphviz.CalledProcessError as e:
            err = (e.stderr or b"").decode(errors="replace").strip()
            raise GraphvizError(
                f"Graphviz's dot failed to draw '{out}': {err or e}. Write a .dot file "
                "instead and look at it, or draw it with 'dot -Tsvg'."
            ) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out


def write_model_files(store: Store, out: str | Path) -> ModelFiles:
    """For the report: the summary table (``model-summary.txt``, at the store's dtype) and the
    graph (``model-graph.svg``, or ``.dot`` without the ``dot`` program; the store's layers
    highlighted) of the model rebuilt from the store's attributes, written into ``out``. When
    the model cannot be rebuilt nothing is written and the result's ``note`` says why."""
    attrs = store.attrs
    layers = [*store.layers, *(n for n in store.stats_layers() if n not in store.layers)]
    try:
        module, spec, own_shape = _rebuild(attrs)
        capture = (attrs.get("model") or {}).get("capture")
        method: Method = capture if capture in ("fx", "hooks") else "auto"
        table = _table(module, spec, _input_shape(attrs, own_shape), method)
        summary = format_layer_summary(table, attrs.get("dtype") or "float16", store.n or None)
        graph = layer_graph(module, table, layers)
    except ActextractError as e:
        log.info("no model summary or graph in the report: %s", e)
        return ModelFiles(note=str(e))
    out = Path(out)
    (out / SUMMARY_FILE).write_text(summary + "\n", encoding="utf-8")
    path = out / f"{GRAPH_STEM}.dot"
    if shutil.which("dot"):
        try:
            path = write_graph(graph, out / f"{GRAPH_STEM}.svg")
        except GraphvizError as e:
            log.warning("%s; the report links the graph's .dot instead", e)
    if path.suffix == ".dot":
        write_graph(graph, path)
    return ModelFiles(((SUMMARY_FILE, "summary"), (path.name, "graph (stored layers in amber)")))


def _no_dot(out: str | Path) -> str:
    return (
        f"cannot draw '{out}': Graphviz's 'dot' program is not on PATH (the graphviz Python "
        "package draws .svg and .png with it). Install Graphviz: 'apt-get install graphviz' "
        "(Debian, Ubuntu), 'brew install graphviz' (macOS) or 'conda install graphviz'. A .dot "
        "file needs no program: write one and draw it later with 'dot -Tsvg FILE.dot -o "
        "FILE.svg'."
    )


# -- what is drawn ---------------------------------------------------------------------------
def _table(
    module: nn.Module, spec: str, shape: Sequence[int] | None, capture: Method, tokenizer=None
) -> LayerTable:
    """The layers' table of ``module``: a probe with zeros of ``shape``, or for a model that
    reads text (``tokenizer``) with a tokenised sentence."""
    if not shape and tokenizer is None:
        raise OptionError(
            f"model '{spec}' implies no input shape; pass --input-shape, e.g. 3,224,224."
        )
    table = list_layers(module, input_shape=shape, capture=capture, tokenizer=tokenizer)
    return dataclasses.replace(table, model=spec)  # the spec, not 'python-object:...'


def _select(table: LayerTable, layers: Sequence[str] | str | None) -> list[str]:
    patterns = layers.split(",") if isinstance(layers, str) else list(layers or ())
    if not any(p.strip() for p in patterns):
        return []
    kinds = {r.name: r.kind for r in table.rows}
    method = "fx" if table.method == "fx" else "hooks"
    cands = Candidates(tuple(kinds), kinds, method, None, {})  # what extract resolves against
    return select_layers(patterns, cands, model_name=table.model)


def _digraph(title: str, rankdir: str) -> graphviz.Digraph:
    import graphviz

    return graphviz.Digraph(
        graph_attr={
            "label": title,
            "labelloc": "t",
            "labeljust": "l",
            "fontname": "Helvetica",
            "fontsize": "12",
            "rankdir": rankdir,
            "ranksep": "0.25",
            "nodesep": "0.2",
        },
        node_attr={"shape": "box", "fontname": "Helvetica", "fontsize": "9", "height": "0.3"},
        edge_attr={"arrowsize": "0.6", "color": "#777777"},
    )


def _label(name: str, kind: str, shape: tuple[int, ...] | None) -> str:
    return f"{name}\\n{kind}" + (f" {shape}" if shape is not None else "")  # \n: DOT's newline


def _title(table: LayerTable, what: str, chosen: list[str]) -> str:
    """Left-justified lines (DOT's ``\\l`` ends each): the model, what is drawn, the chosen."""
    lines = [f"{table.model}, input {shape_text(table.input_shape)}: {what}"]
    if chosen:
        more = len(chosen) - _MAX_TITLE_NAMES
        names = ", ".join(chosen[:_MAX_TITLE_NAMES]) + (f" and {more} more" if more > 0 else "")
        lines.append(f"highlighted: {names}")
    return "".join(f"{line}\\l" for line in lines)


def _fx_graph(module: nn.Module, table: LayerTable, chosen: list[str]) -> graphviz.Digraph:
    """Every fx node (inputs and output included) with an edge from each node it reads;
    modules that are not nodes are boxes (Graphviz clusters) around theirs."""
    graph, qualnames = _trace(module)
    rows = {r.name: r for r in table.rows}
    nodes = set(qualnames.values())
    boxes = [r.name for r in table.rows if r.name not in nodes]  # containers: layer1, layer1.0
    box_set, chosen_set = set(boxes), set(chosen)

    def inner(name: str) -> str:  # the innermost box around ``name``; "" for none
        parts = name.split(".")
        return next(
            (p for i in range(len(parts) - 1, 0, -1) if (p := ".".join(parts[:i])) in box_set),
            "",
        )

    members: dict[str, list[tuple[str, str, dict[str, str]]]] = {}
    ids: dict[Node, str] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            ids[node] = f"__input__{node.name}"
            shape = table.input_shape
            shape = tuple(shape.get(node.name, ())) if isinstance(shape, dict) else tuple(shape)
            members.setdefault("", []).append((ids[node], _label(node.name, "input", shape), _IO))
        elif node.op == "output":
            ids[node] = "__output__"
            arg = node.args[0] if node.args else None  # a Node, or a tuple/dict of them
            row = rows.get(qualnames[arg]) if isinstance(arg, Node) and arg in qualnames else None
            label = _label("output", "model output", row.shape if row else None)
            members.setdefault("", []).append((ids[node], label, _IO))
        elif node in qualnames:
            name = ids[node] = qualnames[node]
            row = rows.get(name)
            kind = row.kind if row else str(node.target)
            style = _CHOSEN if name in chosen_set else _PLAIN
            label = _label(name, kind, row.shape if row else None)
            members.setdefault(inner(name), []).append((name, label, style))
    children: dict[str, list[str]] = {}
    for box in boxes:
        children.setdefault(inner(box), []).append(box)

    def add(g: graphviz.Digraph, box: str) -> None:
        for node_id, label, attrs in members.get(box, []):
            g.node(node_id, label, **attrs)
        for child in children.get(box, []):
            with g.subgraph(name=f"cluster_{child}") as sub:
                row = rows[child]
                sub.attr(
                    label=_label(child, row.kind, row.shape),
                    fontsize="10",
                    **(_BOX_CHOSEN if child in chosen_set else _BOX),
                )
                add(sub, child)

    dot = _digraph(_title(table, "torch.fx graph", chosen), "TB")
    add(dot, "")
    for node in graph.nodes:
        for source in node.all_input_nodes:
            if source in ids and node in ids:
                dot.edge(ids[source], ids[node])
    return dot


def _trace(module: nn.Module) -> tuple[Graph, dict[Node, str]]:
    """The eval-mode fx graph and each node's name, traced as the capture traces it
    (:mod:`actextract.model.fxgraph`), so that the names are those ``actextract layers`` lists."""
    traced = trace(module)
    return traced.graph, {node: name for name, node in traced.nodes.items()}


def _module_tree(module: nn.Module, table: LayerTable, chosen: list[str]) -> graphviz.Digraph:
    """The hooks path has no data flow to draw: each module with an edge to its children."""
    rows = {r.name: r for r in table.rows}
    chosen_set = set(chosen)
    what = (
        "its module tree, not the data flow: captured with forward hooks (torch.fx could not"
        " trace it, or --capture hooks)\\lan arrow goes from a module to its submodules"
    )
    dot = _digraph(_title(table, what, chosen), "LR")
    dot.node("__model__", _label(table.model, type(module).__name__, None), **_IO)
    for name, _ in module.named_modules():
        row = rows.get(name)
        if row is None:  # the model itself ("")
            continue
        style = _CHOSEN if name in chosen_set else _PLAIN
        dot.node(name, _label(name, row.kind, row.shape), **style)
        dot.edge(name.rpartition(".")[0] or "__model__", name)  # parent → child
    return dot


# -- a store's model -------------------------------------------------------------------------
def _rebuild(attrs: dict[str, Any]) -> tuple[nn.Module, str, tuple[int, ...] | None]:
    """The store's model, its spec, and the input shape it implies (None when unknown)."""
    model = attrs.get("model") or {}
    spec = str(model.get("spec") or "")
    if not spec:
        raise RebuildError("the store does not record its model.")
    if model.get("weights") or spec.startswith("python-object:"):
        return rebuild_model(attrs), spec, None  # checks the checkpoint against its sha256
    try:  # random weights are fine here: the summary and the graph show the structure only
        loaded = load_model(spec)
    except ActextractError as e:
        raise RebuildError(f"the model cannot be rebuilt: {e}") from None
    return loaded.module, spec, loaded.input_shape


def _input_shape(attrs: dict[str, Any], own: tuple[int, ...] | None) -> tuple[int, ...]:
    """The per-sample input shape the run fed: from the preprocessing when it fixes the size,
    else from the reopened dataset's first sample, else the model's own."""
    dataset = attrs.get("dataset") or {}
    pre = dataset.get("preprocess") or {}
    if pre.get("channels") and pre.get("crop"):
        return (int(pre["channels"]), int(pre["crop"]), int(pre["crop"]))
    try:
        item = open_inputs({**attrs, "n_samples": 0}, None).source.dataset[0]
        if not isinstance(item, BadSample):
            return tuple(item.input.shape)
    except (RebuildError, IndexError):  # an empty dataset has no first sample
        pass
    if own:
        return tuple(own)
    raise RebuildError(
        f"the input shape of the model is unknown: the dataset '{dataset.get('spec')}' cannot "
        "be reopened to look at a sample."
    )
