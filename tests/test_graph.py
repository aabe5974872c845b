"""The model's graph (``actextract layers MODEL --graph FILE``) and the report's links to the
model's summary and graph: the chosen layers and only they are highlighted, every format, the
errors without Graphviz's ``dot``, and stores whose model cannot be rebuilt."""

from __future__ import annotations

import json
import re
import shutil
from html import unescape
from pathlib import Path

import pytest
from _fixtures import SeededImages, digits_run, tiny_cnn, untraceable

import actextract
from actextract.cli.commands import main
from actextract.errors import OptionError
from actextract.report.graph import GraphvizError, draw_graph, model_graph

needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None,
    reason="Graphviz's 'dot' is not on PATH (apt-get install graphviz; .ci/run installs it)",
)
DIGITS_LAYERS = ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "dropout", "fc1"]


def statements(dot: str) -> dict[str, str]:
    """Node (``name [...]``) and cluster (``subgraph cluster_name {`` then its ``label=``
    line) statements of a .dot text → {name: its attributes}."""
    found: dict[str, str] = {}
    lines = dot.splitlines()
    for i, line in enumerate(lines):
        node = re.match(r'\s*"?([^\s"\[]+)"?\s+\[(.*)\]$', line)
        if node and node.group(1) not in ("graph", "node", "edge"):
            found[node.group(1)] = node.group(2)
        box = re.match(r'\s*subgraph "?cluster_([^\s"]+)"? \{$', line)
        if box:  # the cluster's attributes follow on their own lines
            body = []
            for attr in lines[i + 1 :]:
                if "[" in attr or "subgraph" in attr or "}" in attr:
                    break
                body.append(attr.strip())
            found[box.group(1)] = " ".join(body)
    return found


def highlighted(dot: str) -> set[str]:
    return {name for name, attrs in statements(dot).items() if "class=selected" in attrs}


@pytest.fixture
def no_dot(tmp_path, monkeypatch):
    """A PATH without Graphviz (or anything else)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("dot") is None


# -- the graph -------------------------------------------------------------------------------
def test_dot_highlights_the_chosen_layers_and_only_them(tmp_path):
    out = draw_graph("digits-cnn", tmp_path / "g.dot", layers="conv*,fc1")
    assert out == tmp_path / "g.dot"
    dot = out.read_text()
    nodes = statements(dot)
    assert set(DIGITS_LAYERS) <= set(nodes)  # every fx node, as 'actextract layers' names them
    assert highlighted(dot) == {"conv1", "conv2", "fc1"}
    assert "Conv2d (32, 26, 26)" in nodes["conv1"] and "flatten() (1600,)" in nodes["flatten"]
    assert "__input__x -> conv1" in dot and "fc1 -> __output__" in dot  # inputs and output
    assert "input (1, 28, 28)" in nodes["__input__x"] and "(10,)" in nodes["__output__"]
    assert "highlighted: conv1, conv2, fc1" in dot
    assert highlighted(draw_graph("digits-cnn", tmp_path / "none.dot").read_text()) == set()


def test_containers_are_boxes_and_names_resolve_as_extract_does():
    layers = ["layer1", "layer2.*.conv2", "fc"]
    dot = model_graph("resnet18", layers=layers, input_shape=(3, 32, 32)).source
    nodes = statements(dot)
    for name in ("conv1", "maxpool", "layer1.0.relu_1", "layer4.1.add", "avgpool", "flatten"):
        assert name in nodes and "class=selected" not in nodes[name]  # fx nodes
    assert {"layer1.0", "layer4", "layer4.0.downsample"} <= set(nodes)  # containers: boxes
    assert highlighted(dot) == {"layer1", "layer2.0.conv2", "layer2.1.conv2", "fc"}
    assert "Sequential (64, 8, 8)" in nodes["layer1"]  # a box's label: its output
    assert '"layer1.0.add" -> "layer1.0.relu_1"' in dot


def test_an_untraceable_model_is_drawn_as_its_module_tree(tmp_path):
    dot = draw_graph(
        untraceable(), tmp_path / "tree.dot", layers="block,fc", input_shape=(3, 8, 8)
    ).read_text()
    assert "module tree, not the data flow" in dot
    assert "__model__ -> block" in dot and 'block -> "block.0"' in dot
    assert highlighted(dot) == {"block", "fc"}
    assert set(statements(dot)) >= {"conv1", "bn1", "relu", "block.0", "block.1", "pool", "fc"}


@needs_dot
def test_svg_names_every_chosen_layer(tmp_path):
    svg = draw_graph(tiny_cnn(), tmp_path / "g.svg", layers="conv1,block,fc", input_shape=(3, 8, 8))
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    for name in ("conv1", "block", "fc"):
        assert f"<title>{name}</title>" in text or f"<title>cluster_{name}</title>" in text
    assert text.count('class="node selected"') == 2  # conv1, fc; block is a box
    assert text.count('class="cluster selected"') == 1


@needs_dot
def test_png(tmp_path):
    png = draw_graph("digits-cnn", tmp_path / "sub" / "g.PNG", layers="fc1")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_without_dot_svg_says_how_to_get_it_and_dot_still_works(tmp_path, no_dot, monkeypatch):
    with pytest.raises(GraphvizError) as err:
        draw_graph("digits-cnn", tmp_path / "g.svg")
    message = str(err.value)
    for hint in ("'dot'", "apt-get install graphviz", "brew install graphviz", "conda", ".dot"):
        assert hint in message
    assert not (tmp_path / "g.svg").exists()
    assert "conv1" in draw_graph("digits-cnn", tmp_path / "g.dot").read_text()
    # shutil.which fooled: graphviz's own ExecutableNotFound becomes the same error
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    with pytest.raises(GraphvizError, match="apt-get install graphviz"):
        draw_graph("digits-cnn", tmp_path / "g.png")


def test_unknown_suffix(tmp_path):
    for name in ("g.jpg", "graph"):
        with pytest.raises(OptionError, match=r"\.svg, \.png, \.dot"):
            draw_graph("digits-cnn", tmp_path / name)


# -- the command -----------------------------------------------------------------------------
def test_cli_layers_graph(runner, tmp_path):
    out = tmp_path / "g.dot"
    res = runner.invoke(main, ["layers", "digits-cnn", "--graph", str(out), "--layers", "conv*"])
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.output and "bytes/sample" not in res.output  # no table
    assert highlighted(out.read_text()) == {"conv1", "conv2"}
    res = runner.invoke(main, ["layers", "digits-cnn", "--graph", str(out), "--summary"])
    assert res.exit_code == 0 and "total params" in res.output
    for args, says in [
        (["--graph", str(out), "--layers", "conv3"], "close matches: conv2"),
        (["--graph", str(tmp_path / "g.gif")], "'.gif' is not one of"),
    ]:
        res = runner.invoke(main, ["layers", "digits-cnn", *args])
        assert res.exit_code == 2 and says in res.output, res.output


def test_cli_without_dot(runner, tmp_path, no_dot):
    res = runner.invoke(main, ["layers", "digits-cnn", "--graph", str(tmp_path / "g.svg")])
    assert res.exit_code == 2 and "apt-get install graphviz" in res.output


# -- the report ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_store(tmp_path_factory):
    """digits-cnn from a checkpoint on 20 digits: the model can be rebuilt."""
    return digits_run(tmp_path_factory.mktemp("digits"), "conv1,fc1", 20)


def links(html: str) -> list[str]:
    return re.findall(r"href='([^'#]+)'", html)


def test_report_links_the_models_summary_and_graph(digits_store, tmp_path):
    report = actextract.render(digits_store, tmp_path / "r", only="histograms")
    html = report.index.read_text()
    graph = "model-graph.svg" if shutil.which("dot") else "model-graph.dot"
    assert {"model-summary.txt", graph} <= set(links(html))
    summary = (report.out / "model-summary.txt").read_text()
    assert summary.startswith("digits-cnn: input (1, 28, 28)") and "total params" in summary
    assert "bytes/sample (float16)" in summary and "for 20 samples" in summary
    drawn = (report.out / graph).read_text()
    assert "conv1" in drawn and "fc1" in drawn and "selected" in drawn
    files = json.loads((report.out / "report.json").read_text())["files"]
    assert {"model-summary.txt", graph} <= set(files)  # a later render removes them


def test_report_without_dot_links_the_dot_file(digits_store, tmp_path, no_dot):
    report = actextract.render(digits_store, tmp_path / "r", only="histograms")
    assert "model-graph.dot" in links(report.index.read_text())
    assert highlighted((report.out / "model-graph.dot").read_text()) == {"conv1", "fc1"}


def test_a_model_that_cannot_be_rebuilt_is_one_line(digits_store, tmp_path):
    weights = digits_store.attrs["model"]["weights"]
    shutil.move(weights, tmp_path / "moved.pt")
    try:
        report = actextract.render(digits_store, tmp_path / "r", only="histograms")
    finally:
        shutil.move(tmp_path / "moved.pt", weights)
    html = unescape(report.index.read_text())
    assert re.search(
        r"No model summary or graph: the checkpoint '[^']*' the run used is gone", html
    )
    assert not (report.out / "model-summary.txt").exists()
    assert not [link for link in links(html) if link.startswith("model-")]


def test_stores_of_module_objects_and_recordings_render_with_the_note(tmp_path):
    run = actextract.extract(
        tiny_cnn(), SeededImages(8), layers="fc", out=tmp_path / "run.zarr", device="cpu"
    )
    rec = actextract.Recorder(
        tiny_cnn(), layers="fc", probe=SeededImages(8), out=tmp_path / "e.zarr"
    )
    rec.capture(0)
    for i, store in enumerate([run, actextract.open_store(tmp_path / "e.zarr")]):
        report = actextract.render(store, tmp_path / f"report{i}", only="histograms")
        assert "No model summary or graph: the model was a Module object" in (
            report.index.read_text()
        )


def test_a_python_spec_that_no_longer_imports(tmp_path):
    spec = tmp_path / "net.py"
    spec.write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from _fixtures import tiny_cnn as model\n"
    )
    store = actextract.extract(
        f"python:{spec}:model", "synthetic:8:3:8:8", layers="block", out=tmp_path / "run.zarr"
    )
    report = actextract.render(store, tmp_path / "r1", only="histograms")
    summary = (report.out / "model-summary.txt").read_text()
    assert "input (3, 8, 8)" in summary  # the dataset's first sample: the model implies none
    graph = next(report.out.glob("model-graph.*")).read_text()
    assert "block.0" in graph and "selected" in graph
    spec.unlink()
    report = actextract.render(store, tmp_path / "r2", only="histograms")
    assert "No model summary or graph: the model cannot be rebuilt" in unescape(
        report.index.read_text()
    )
