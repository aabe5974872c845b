"""Layer names, globs, the fx/hooks choice, the probe: shapes, clones, batch axes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from _fixtures import reference, tiny_cnn, untraceable
from torch import nn

from actextract.check import store_info
from actextract.errors import CaptureError, LayerNotFoundError
from actextract.model.capture import Capture, build_capture, candidates, select_layers
from actextract.model.probe import layer_table, model_output_layers, probe

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
    found, outputs = probe(cap, torch.zeros(1, 3, 8, 8))
    assert {n: tuple(t.shape[1:]) for n, t in outputs.items()} == {"pool": (8, 4, 4), "fc": (5,)}
    assert {n: (f.shape, f.layout) for n, f in found.items()} == {
        "pool": ((8, 4, 4), "nchw"),
        "fc": ((5,), "vector"),
    }
    with pytest.raises(CaptureError, match=r"one sample of shape \(3, 12, 12\) failed"):
        probe(cap, torch.zeros(1, 3, 12, 12))


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_model_output_layers_finds_the_logits(method):
    model = tiny_cnn()
    cap = Capture(model, ["pool", "block", "fc"], candidates(model, method))
    x = torch.randn(1, 3, 8, 8)
    assert model_output_layers(cap, probe(cap, x)[1], x) == {"fc"}
    cap.close()


def test_hooks_are_removed_on_close():
    model = tiny_cnn()
    cap = Capture(model, ["conv1"], candidates(model, "hooks"))
    assert model.conv1._forward_hooks
    cap.close()
    assert not model.conv1._forward_hooks


def test_layer_table_shapes_layouts_and_clones():
    rows, method = layer_table(tiny_cnn(), (3, 8, 8))
    by = {r.name: r for r in rows}
    assert method == "fx" and by["block"].shape == (8, 8, 8) and by["flatten"].shape == (128,)
    assert rows[0].bytes_per_sample(torch.float16) == 4 * 8 * 8 * 2
    assert by["block"].layout == "nchw" and by["fc"].layout == "vector"
    assert by["bn1"].clone == "written in place later, by 'relu'"  # ReLU(inplace=True)
    assert [r.name for r in rows if r.clone] == ["bn1"]


def test_fx_capture_computes_nothing_past_the_last_requested_layer():
    cap = build_capture(tiny_cnn(), ["bn1"], model_name="tiny")
    assert cap.method == "fx"
    called = [n.target for n in cap._fn.graph.nodes if n.op == "call_module"]
    assert called == ["conv1", "bn1"]  # block, pool and fc are pruned from the graph


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_only_outputs_written_later_are_cloned_and_the_model_stays_in_place(method):
    model = tiny_cnn()  # relu is in place, right after bn1
    cap = build_capture(model, ["bn1", "block", "fc"], model_name="tiny", method=method)
    x = torch.randn(2, 3, 8, 8)
    found, first = probe(cap, x[:1], x)
    assert {n for n, f in found.items() if f.clone} == {"bn1"}
    assert model.relu.inplace  # nothing of the model is switched out of place
    # the probe's outputs (histogram edges, the model-output check) are as produced too
    torch.testing.assert_close(first["bn1"], reference(model, x[:1])["bn1"], rtol=0, atol=0)
    with cap.grad_mode():
        out = cap(x)
    want = reference(model, x)
    for name in ("bn1", "block", "fc"):
        torch.testing.assert_close(out[name], want[name], rtol=0, atol=0)
    if method == "fx":  # the clone sits right after the captured node, before the ReLU
        code = cap._fn.code
        assert code.index("torch.clone(bn1)") < code.index("self.relu(bn1)")
    cap.close()


class WritesWhenLarge(nn.Module):
    """Writes its captured ``bn`` in place only for inputs of a large sum: a probe of small
    inputs does not see it (data-dependent control flow: fx cannot trace it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if x.sum() > 1000:
            y += 100.0
        return self.fc(y.flatten(1))


def test_hooks_check_every_batch_and_recompute_one_written_after_capture(caplog):
    torch.manual_seed(0)
    model = WritesWhenLarge().eval()
    cap = build_capture(model, ["bn", "fc"], model_name="w")
    assert cap.method == "hooks"
    small = torch.zeros(2, 3, 8, 8)
    found, _ = probe(cap, small[:1], small)
    assert not found["bn"].clone  # the probe did not take the writing path
    large = torch.ones(2, 3, 8, 8) * 10
    with caplog.at_level(logging.WARNING), cap.grad_mode():
        out = cap(large)
    with torch.no_grad():
        want = model.bn(model.conv(large))
    torch.testing.assert_close(out["bn"], want, rtol=0, atol=0)
    assert "written in place after they were captured" in caplog.text
    assert "bn" in cap.clones  # later batches clone it from the start
    cap.close()


class Recurrent(nn.Module):
    """An LSTM: output (B, T, H) and (h_n, c_n), each (layers, B, H): batch axis 1."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 5, num_layers=2, batch_first=True)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _out, (h, _c) = self.lstm(x)
        return self.fc(h[-1])


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_a_tuple_output_by_index_and_a_batch_axis_moved_to_the_front(method):
    torch.manual_seed(0)
    model = Recurrent().eval()
    cap = build_capture(model, ["lstm[0]", "lstm[1][0]"], model_name="rnn", method=method)
    x = torch.randn(4, 7, 3)
    found, _ = probe(cap, x[:1], x[:2])
    assert found["lstm[0]"].shape == (7, 5) and found["lstm[0]"].layout == "tokens"
    assert found["lstm[1][0]"].shape == (2, 5) and found["lstm[1][0]"].batch_axis == 1
    with cap.grad_mode():
        out = cap(x)
    with torch.no_grad():
        seq, (h, _) = model.lstm(x)
    assert torch.equal(out["lstm[0]"], seq)
    assert torch.equal(out["lstm[1][0]"], h.movedim(1, 0))  # (B, layers, H)
    cap.close()


def test_a_tuple_output_without_index_names_its_tensors():
    cap = build_capture(Recurrent().eval(), ["lstm"], model_name="rnn", method="hooks")
    with pytest.raises(CaptureError, match=r"lstm \(tuple; its tensors: lstm\[0\], lstm\[1\]\[0\]"):
        probe(cap, torch.randn(1, 7, 3))
    cap.close()


class Constant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale


def test_an_output_without_a_batch_axis_is_an_error_naming_it():
    cap = build_capture(Constant(), ["scale", "lin"], model_name="const")
    with pytest.raises(CaptureError, match=r"cannot store scale: its output is \(3,\) for one"):
        probe(cap, torch.randn(1, 3), torch.randn(2, 3))
    cap.close()


def test_an_output_whose_shape_changes_between_batches_is_an_error():
    cap = build_capture(Recurrent().eval(), ["lstm[0]"], model_name="rnn")
    probe(cap, torch.randn(1, 7, 3), torch.randn(2, 7, 3))
    with (
        pytest.raises(CaptureError, match=r"layer 'lstm\[0\]' output \(9, 5\) per sample"),
        cap.grad_mode(),
    ):
        cap(torch.randn(2, 9, 3))
    cap.close()


class WritesInStatements(nn.Module):
    """In-place statements whose results nothing uses: torchvision's feature extractor prunes
    them as dead code, and everything after them comes out wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y.add_(1)
        torch.relu_(y)
        y += 2
        return self.b(y)


def test_fx_keeps_in_place_statements_whose_results_are_unused():
    torch.manual_seed(0)
    model = WritesInStatements().eval()
    cap = build_capture(model, ["a", "b"], model_name="w", method="fx")
    x = torch.randn(4, 3)
    found, _ = probe(cap, x[:1], x[:2])
    assert found["a"].clone == "written in place later, by 'add_'"
    with cap.grad_mode():
        out = cap(x)
    with torch.no_grad():
        a = model.a(x)
        assert torch.equal(out["a"], a) and torch.equal(out["b"], model(x))


class TwoNorms(nn.Module):
    """Modules whose names end in _<n>, as ViT's encoder blocks' ln_1 and ln_2."""

    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(4), nn.LayerNorm(4)
        self.ln_2.weight.data.fill_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_2(self.ln_1(x) + 1)


def test_fx_names_modules_by_their_paths():
    cands = candidates(TwoNorms())
    assert [n for n in cands.names if n.startswith("ln")] == ["ln_1", "ln_2"]
    cap = build_capture(TwoNorms(), ["ln_1", "ln_2"], model_name="t", method="fx")
    x = torch.randn(2, 5, 4)
    probe(cap, x[:1], x)
    model = TwoNorms()
    with cap.grad_mode():
        out = cap(x)
    with torch.no_grad():
        assert torch.equal(out["ln_1"], model.ln_1(x))
        assert torch.equal(out["ln_2"], model(x))


def test_fx_reaches_the_modules_inside_torchvisions_containers():
    import torchvision

    cands = candidates(torchvision.models.mobilenet_v3_small())
    assert "features.0.0" in cands.names  # the Conv2d inside a Conv2dNormActivation
    assert "features.1.block.1.fc1" in cands.names  # inside a SqueezeExcitation


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_an_lstm_stored_by_extract_at_batch_four(method, tmp_path):
    """h_n is (layers, B, H): stored (N, layers, H), equal to the model's, at any batch size."""
    import actextract
    from actextract.check.text import format_info

    torch.manual_seed(0)
    model = Recurrent().eval()
    x = torch.randn(10, 7, 3)
    data = [(x[i], i % 2) for i in range(len(x))]
    store = actextract.extract(
        model,
        data,
        layers=["lstm[0]", "lstm[1][0]", "fc"],
        reduce="lstm[0]=mean",
        out=tmp_path / "rnn.zarr",
        dtype="float32",
        batch_size=4,
        capture=method,
        device="cpu",
        progress=False,
    )
    with torch.no_grad():
        seq, (h, _) = model.lstm(x)
        logits = model(x)
    np.testing.assert_array_equal(store["lstm[1][0]"][:], h.movedim(1, 0).numpy())
    np.testing.assert_allclose(store["lstm[0]"][:], seq.mean(1).numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(store["fc"][:], logits.numpy())
    specs = {s["name"]: s for s in store.attrs["layers"]}
    assert specs["lstm[1][0]"]["batch_axis"] == 1 and specs["lstm[0]"]["layout"] == "tokens"
    text = format_info(store_info(store))
    assert "batch axis moved to the front: lstm[1][0] (was axis 1)" in text


def test_a_star_means_the_direct_children_on_efficientnet():
    import torchvision

    cands = candidates(torchvision.models.efficientnet_b0())
    chosen = select_layers(["features.*"], cands, model_name="efficientnet_b0")
    assert chosen == [f"features.{i}" for i in range(9)]


def test_info_says_which_layers_are_cloned_and_why(tmp_path):
    from _fixtures import SeededImages

    import actextract
    from actextract.check.text import format_info

    store = actextract.extract(
        tiny_cnn(), SeededImages(), layers="bn1,block", out=tmp_path / "s.zarr", device="cpu"
    )
    assert {s["name"]: s["clone"] for s in store.attrs["layers"]} == {
        "bn1": "written in place later, by 'relu'",
        "block": None,
    }
    text = format_info(store_info(store))
    assert "cloned at capture (written in place later in the forward)\n    bn1: by 'relu'" in text
