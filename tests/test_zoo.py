"""A model zoo through ``extract()``: every stored value is what the layer produced.

The reference (tests/_zoo.py) clones each module's output in a forward hook the moment it is
produced, so an in-place op later in forward() (``out += identity``, ``F.relu(x,
inplace=True)``) cannot change it. Extraction runs the same N samples in one batch, in
float32 on the CPU, so the stored arrays must equal the reference bitwise.

Also: ``extract()`` leaves the caller's model as it found it (train/eval flags, ``inplace``
attributes, hooks, weights and buffers), whether the run succeeds or fails.
"""

from __future__ import annotations

import pytest
import torch
from _fixtures import FailsAt, TinyCNN, tiny_cnn
from _zoo import TINY, ZOO, Images, N, batch, build, in_place_residual, mismatches, reference

import actextract
from actextract.errors import BadSampleError, LayerNotFoundError

# Bitwise: the same batch through the same kernels. Every layer that no in-place op reaches
# matched exactly when this was written; assert_close with rtol=0, atol=0 still reports the
# layer and its max abs error.
EXACT = {"rtol": 0.0, "atol": 0.0}
# torch.compile'd code may fuse and reorder float ops (1e-7 seen on tiny_cnn's bn1)
COMPILED = {"rtol": 1e-4, "atol": 1e-5}

# 2-5 s a case on an idle 2-core CPU, 8-11 s on a busy one: vgg11's 130M parameters,
# densenet121's 432 and maxvit_t's 642 stored layers
SLOW = {"vgg11", "densenet121", "maxvit_t"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # timm builds random weights; never fetch any


def extract(model, dataset, layers, capture, out, *, batch_size=N):
    return actextract.extract(
        model,
        dataset,
        layers=list(layers),
        out=out,
        dtype="float32",
        capture=capture,
        batch_size=batch_size,
        device="cpu",
        progress=False,
    )


def check(store, ref, layers, what: str, tol=EXACT) -> None:
    bad = mismatches({n: store[n][:] for n in layers}, {n: ref.outputs[n] for n in layers}, **tol)
    if bad:
        pytest.fail(
            f"{what}: {len(bad)} of {len(layers)} layers are not what the layer produced:\n  "
            + "\n  ".join(bad)
        )


def _cases():
    for name in ZOO:
        for capture in ("fx", "hooks"):
            marks = [pytest.mark.slow] if name in SLOW else []
            yield pytest.param(name, capture, marks=marks, id=f"{name}-{capture}")


@pytest.mark.parametrize(("name", "capture"), list(_cases()))
def test_every_module_called_once_is_stored_as_produced(name, capture, tmp_path):
    """All modules forward() calls exactly once, containers included (those whose output is
    not one tensor with the batch first, such as MultiheadAttention's tuple, are left out)."""
    model = build(name)
    data = Images(ZOO[name].shape)
    ref = reference(model, batch(data))
    layers = ref.once()
    store = extract(model, data, layers, capture, tmp_path / "x.zarr")
    check(store, ref, layers, f"{name} ({capture})")


# Layers whose output a later op of forward() overwrites in place.
HAZARDS = [
    # densenet's forward ends with F.relu(features, inplace=True)
    ("densenet121", ("features.norm5", "classifier"), "fx"),
    ("densenet121", ("features.norm5", "classifier"), "hooks"),
    ("densenet121", ("features.norm5",), "fx"),
    ("densenet121", ("features.norm5",), "hooks"),
    # BasicBlock: bn1 then ReLU(inplace=True); bn2 then out += identity
    ("resnet18", ("layer1.0.bn2",), "hooks"),
    ("resnet18", ("bn1",), "hooks"),
    ("resnet18", ("layer1.0.bn2",), "fx"),
    ("resnet18", ("bn1",), "fx"),
    # BasicConv2d: bn then F.relu(x, inplace=True), a function, not a module
    ("googlenet", ("conv1.bn",), "fx"),
    ("googlenet", ("conv1.bn",), "hooks"),
    # MBConv in eval: StochasticDepth returns its input, then result += input
    ("efficientnet_b0", ("features.2.1.block",), "hooks"),
]


@pytest.mark.parametrize(
    ("name", "layers", "capture"),
    [
        pytest.param(
            *h,
            id=f"{h[0]}-{'+'.join(h[1])}-{h[2]}",
            marks=[pytest.mark.slow] if h[0] in SLOW else [],
        )
        for h in HAZARDS
    ],
)
def test_a_layer_overwritten_in_place_later_is_stored_as_produced(name, layers, capture, tmp_path):
    model = build(name)
    data = Images(ZOO[name].shape)
    ref = reference(model, batch(data))
    store = extract(model, data, layers, capture, tmp_path / "x.zarr")
    check(store, ref, layers, f"{name} ({capture})")


@pytest.mark.parametrize("module", ["ln_1", "ln_2"])
def test_the_fx_name_of_a_module_is_that_module(module, tmp_path):
    """torchvision's fx node names drop a trailing ``_N`` (vit's module ``ln_1`` is node
    ``ln``, module ``ln_2`` is node ``ln_1``): a module name must still mean the module."""
    name = "vit_b_16"
    layers = [f"encoder.layers.encoder_layer_0.{module}"]
    model = build(name)
    data = Images(ZOO[name].shape)
    ref = reference(model, batch(data))
    store = extract(model, data, layers, "fx", tmp_path / "x.zarr")
    check(store, ref, layers, f"{name} (fx)")


@pytest.mark.parametrize("capture", ["auto", "hooks"])
def test_an_untraceable_model_with_an_in_place_residual(capture, tmp_path):
    model = in_place_residual()
    data = Images(TINY)
    ref = reference(model, batch(data))
    layers = ref.once()
    assert "bn2" in layers
    store = extract(model, data, layers, capture, tmp_path / "x.zarr")
    check(store, ref, layers, f"InPlaceResidual ({capture})")


@pytest.mark.parametrize("capture", ["fx", "hooks"])
def test_a_compiled_model_is_captured_under_its_own_names(capture, tmp_path, monkeypatch):
    """``torch.compile(model)`` holds the model as ``_orig_mod``: the layers keep the names
    they have in ``model``. Compiling is lazy, so an extractor that unwraps it compiles nothing.
    Should it compile (about 17 s on a CPU), inductor's cache goes under tmp_path, but not its
    precompiled headers: $TMPDIR/torchinductor_<user>, fixed when torch is imported."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    model = tiny_cnn()
    data = Images(TINY)
    ref = reference(model, batch(data))
    layers = ref.once()
    store = extract(torch.compile(model), data, layers, capture, tmp_path / "x.zarr")
    assert sorted(store.layers) == sorted(layers)
    check(store, ref, layers, f"torch.compile(TinyCNN) ({capture})", COMPILED)


# ---------------------------------------------------------------------------- the caller's model


def _state(model: torch.nn.Module) -> dict[str, object]:
    """What an extraction must not change: per module its train flag, ``inplace`` and hooks;
    every parameter and buffer; the global module hooks."""
    from torch.nn.modules import module as nn_module

    return {
        "modules": {
            name: {
                "training": m.training,
                "inplace": getattr(m, "inplace", None),
                "forward hooks": len(m._forward_hooks),
                "forward pre-hooks": len(m._forward_pre_hooks),
            }
            for name, m in model.named_modules()
        },
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "global hooks": (
            len(nn_module._global_forward_hooks),
            len(nn_module._global_forward_pre_hooks),
        ),
    }


def _changes(before: dict, after: dict) -> list[str]:
    out = [
        f"{name or '<root>'}.{key}: {was} -> {now}"
        for name, attrs in before["modules"].items()
        for key, was in attrs.items()
        if (now := after["modules"][name][key]) != was
    ]
    out += [k for k, v in before["tensors"].items() if not torch.equal(v, after["tensors"][k])]
    if before["global hooks"] != after["global hooks"]:
        out.append(
            f"global (forward, pre) hooks: {before['global hooks']} -> {after['global hooks']}"
        )
    return out


class Interrupted(FailsAt):
    """Ctrl-C while the loader reads sample ``bad``."""

    def __getitem__(self, i: int):
        if i == self.bad:
            raise KeyboardInterrupt
        return super().__getitem__(i)


RUNS = {
    "ok": (("bn1", "relu", "fc"), None, None),
    "unknown layer": (("bn1", "no_such_layer"), None, LayerNotFoundError),
    "bad sample": (("bn1", "relu", "fc"), 2, BadSampleError),
    "ctrl-c": (("bn1", "relu", "fc"), -2, KeyboardInterrupt),
}


@pytest.mark.parametrize("capture", ["fx", "hooks"])
@pytest.mark.parametrize("run", list(RUNS))
def test_extract_leaves_the_callers_model_as_it_was(run, capture, tmp_path):
    """A model in train mode, with an in-place ReLU: after a run, finished or failed, every
    flag, hook and tensor is as before."""
    layers, bad, error = RUNS[run]
    torch.manual_seed(0)
    model = TinyCNN().train()
    if bad is None:
        data = Images(TINY)
    else:
        data = (Interrupted if bad < 0 else FailsAt)(abs(bad), n=N, shape=TINY)
    before = _state(model)
    if error is None:
        extract(model, data, layers, capture, tmp_path / "x.zarr", batch_size=1)
    else:
        with pytest.raises(error):
            extract(model, data, layers, capture, tmp_path / "x.zarr", batch_size=1)
    changed = _changes(before, _state(model))
    if changed:
        pytest.fail(f"extract ({run}, {capture}) changed the model:\n  " + "\n  ".join(changed))


@pytest.mark.parametrize("capture", ["fx", "hooks"])
def test_a_model_in_train_mode_is_extracted_in_eval_mode(capture, tmp_path):
    """BatchNorm with its running statistics, as ``model.eval()`` would compute."""
    model = tiny_cnn()
    data = Images(TINY)
    ref = reference(model, batch(data))
    layers = ref.once()
    store = extract(model.train(), data, layers, capture, tmp_path / "x.zarr")
    check(store, ref, layers, f"TinyCNN in train mode ({capture})")


# ---------------------------------------------------------------------------- layouts
LAYOUTS = {
    "resnet18": {"layer1": "nchw", "layer4.1.bn2": "nchw", "avgpool": "nchw", "fc": "vector"},
    "swin_t": {
        "features.0.0": "nchw",
        "features.1": "nhwc",
        "features.2": "nhwc",
        "norm": "nhwc",
        "permute": "nchw",
        "head": "vector",
    },
    "vit_b_16": {
        "conv_proj": "nchw",
        "encoder.layers.encoder_layer_0": "tokens",
        "encoder.layers.encoder_layer_0.mlp.0": "tokens",
        "encoder.ln": "tokens",
        "heads": "vector",
    },
    "convnext_tiny": {
        "features.1.0": "nchw",
        "features.1.0.block.2": "nhwc",
        "features.1.0.block.3": "nhwc",
        "features.1.0.block.6": "nchw",
        "classifier.0": "nchw",
    },
    "maxvit_t": {"stem": "nchw", "blocks.0": "nchw", "classifier.5": "vector"},
    "timm_vit_tiny": {"patch_embed": "tokens", "blocks.0": "tokens", "head": "vector"},
    # convnext_atto's MLPs are 1x1 convolutions (conv_mlp) and its norms LayerNorm2d
    "timm_convnext_atto": {"stages.0": "nchw", "stages.0.blocks.0.norm": "nchw"},
    "timm_resnet18": {"layer1": "nchw", "fc": "vector"},
}


@pytest.mark.parametrize("capture", ["fx", "hooks"])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_the_layout_of_each_family_is_inferred(name, capture, tmp_path):
    """The channel axis followed through the model: CNN maps channels first, Swin stages and
    ConvNeXt's MLPs channels last, transformer blocks tokens, heads vectors; also in the
    store's dimension names."""
    model = build(name)
    data = Images(ZOO[name].shape)
    layers = LAYOUTS[name]
    store = extract(model, data, layers, capture, tmp_path / "x.zarr")
    got = {spec["name"]: spec["layout"] for spec in store.attrs["layers"]}
    assert got == layers
    dims = {n: store[n].metadata.dimension_names for n in layers}
    assert all(
        dims[n][1 if got[n] != "nhwc" else -1] in ("channel", "feature", "token") for n in layers
    )


def test_reductions_follow_the_layout_against_numpy(tmp_path):
    """A Swin stage pools over its (H, W) to its C channels; a ViT block keeps its class
    token with cls, or averages its tokens with mean: the same as numpy on the full rows."""
    cases = {
        "swin_t": ("features.1", ("mean", "max"), (1, 2)),
        "vit_b_16": ("encoder.layers.encoder_layer_0", ("mean", "max", "cls"), (1,)),
    }
    for name, (layer, reductions, axes) in cases.items():
        model = build(name)
        data = Images(ZOO[name].shape)
        full = extract(model, data, [layer], "fx", tmp_path / f"{name}.zarr")[layer][:]
        for how in reductions:
            store = actextract.extract(
                model,
                data,
                layers=[layer],
                reduce=f"{layer}={how}",
                out=tmp_path / f"{name}-{how}.zarr",
                dtype="float32",
                batch_size=N,
                device="cpu",
                progress=False,
            )
            want = full[:, 0] if how == "cls" else getattr(full, how)(axis=axes)
            assert store[layer].shape == want.shape
            torch.testing.assert_close(
                torch.from_numpy(store[layer][:]), torch.from_numpy(want), rtol=1e-5, atol=1e-6
            )
            dims = store[layer].metadata.dimension_names
            assert dims == ("sample", "channel" if name == "swin_t" else "feature")
