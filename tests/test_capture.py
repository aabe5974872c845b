"""Layer names, globs, the fx/hooks choice, and shape probing."""

from __future__ import annotations

import pytest
import torch
from _fixtures import tiny_cnn, untraceable

from actextract.capture import (
    Capture,
    build_capture,
    candidates,
    layer_table,
    model_output_layers,
    probe,
    select_layers,
)
from actextract.errors import CaptureError, LayerNotFoundError

NAMES = ("conv1", "bn1", "relu", "block.0", "block.1", "block", "pool", "flatten", "fc")


def test_fx_names_in_graph_order_with_containers_after_their_last_node():
    cands = candidates(tiny_cnn())
    assert cands.method == "fx" and cands.names == NAMES
    assert cands.kinds["block"] == "Sequential" and cands.kinds["flatten"] == "flatten()"


def test_hooks_names_are_modules_in_the_same_order():
    cands = candidates(tiny_cnn(), "hooks")
    assert cands.names == tuple(n for n in NAMES if n != "flatten")


def test_globs_expand_in_graph_order_without_duplicates():
    cands = candidates(tiny_cnn())
    assert select_layers(["fc", "block.*", "conv?", "fc"], cands, model_name="tiny") == [
        "conv1",
        "block.0",
        "block.1",
        "fc",
    ]


def test_unknown_and_empty_selections():
    cands = candidates(tiny_cnn())
    with pytest.raises(LayerNotFoundError, match="'bn2' is not in tiny; close matches: bn1"):
        select_layers(["bn2"], cands, model_name="tiny")
    with pytest.raises(LayerNotFoundError, match="no layers given"):
        select_layers([" "], cands, model_name="tiny")
    with pytest.raises(LayerNotFoundError, match=r"'layer\*'"):
        select_layers(["layer*"], cands, model_name="tiny")


def test_forcing_fx_on_an_untraceable_model_is_an_error():
    with pytest.raises(CaptureError, match=r"cannot trace Untraceable.*--capture hooks"):
        candidates(untraceable(), "fx")
    assert not untraceable().training


def test_container_and_its_last_node_together_on_fx():
    cap = build_capture(tiny_cnn(), ["block", "block.1"], model_name="tiny")
    out = cap(torch.randn(2, 3, 8, 8))
    assert torch.equal(out["block"], out["block.1"])


def test_probe_shapes_and_a_wrong_input_shape():
    cap = build_capture(tiny_cnn(), ["pool", "fc"], model_name="tiny")
    outputs = probe(cap, torch.zeros(1, 3, 8, 8))
    assert {n: tuple(t.shape[1:]) for n, t in outputs.items()} == {"pool": (8, 4, 4), "fc": (5,)}
    with pytest.raises(CaptureError, match=r"one sample of shape \(3, 12, 12\) failed"):
        probe(cap, torch.zeros(1, 3, 12, 12))


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_model_output_layers_finds_the_logits(method):
    model = tiny_cnn()
    cap = Capture(model, ["pool", "block", "fc"], candidates(model, method))
    x = torch.randn(1, 3, 8, 8)
    assert model_output_layers(cap, probe(cap, x), x) == {"fc"}
    cap.close()


def test_hooks_are_removed_on_close():
    model = tiny_cnn()
    cap = Capture(model, ["conv1"], candidates(model, "hooks"))
    assert model.conv1._forward_hooks
    cap.close()
    assert not model.conv1._forward_hooks


def test_layer_table_shapes():
    rows, method = layer_table(tiny_cnn(), (3, 8, 8))
    shapes = {r.name: r.shape for r in rows}
    assert method == "fx" and shapes["block"] == (8, 8, 8) and shapes["flatten"] == (128,)
    assert rows[0].bytes_per_sample(torch.float16) == 4 * 8 * 8 * 2


def test_fx_capture_computes_nothing_past_the_last_requested_layer():
    cap = build_capture(tiny_cnn(), ["bn1"], model_name="tiny")
    assert cap.method == "fx"
    called = [n.target for n in cap._fn.graph.nodes if n.op == "call_module"]
    assert called == ["conv1", "bn1"]  # block, pool and fc are pruned from the graph


def test_in_place_modules_stay_in_place_before_the_first_captured_node():
    model = tiny_cnn()  # relu is in place, right after bn1
    build_capture(model, ["block", "fc"], model_name="tiny")
    assert model.relu.inplace  # runs before anything captured exists: left as it is
    model = tiny_cnn()
    cap = build_capture(model, ["bn1", "fc"], model_name="tiny")
    assert not model.relu.inplace  # would overwrite the captured bn1
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        out = cap(x)
        torch.testing.assert_close(out["bn1"], model.bn1(model.conv1(x)))
    model = tiny_cnn()
    build_capture(model, ["block"], model_name="tiny", method="hooks")
    assert not model.relu.inplace  # hooks: the order of calls is unknown, all turned off
