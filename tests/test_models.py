"""Model specs and checkpoints."""

from __future__ import annotations

import pytest
import torch
from _fixtures import TinyCNN, tiny_cnn

from actextract.errors import CheckpointError, ModelSpecError
from actextract.model.zoo import DigitsCNN, file_sha256, load_model


def test_torchvision_model_by_name_is_random_and_in_eval_mode():
    loaded = load_model("resnet18")
    assert not loaded.module.training
    assert loaded.input_shape == (3, 224, 224) and loaded.preprocess.crop == 224


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelSpecError, match=r"unknown model 'resnet19'.*resnet18"):
        load_model("resnet19")


def test_digits_cnn_shapes():
    out = DigitsCNN()(torch.zeros(2, 1, 28, 28))
    assert out.shape == (2, 10)


def test_state_dict_in_a_wrapper_with_prefixes(tmp_path):
    model = tiny_cnn()
    ckpt = tmp_path / "c.pt"
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, ckpt
    )
    loaded = load_model(f"python:{_fixtures_path()}:TinyCNN", weights=ckpt)
    assert torch.equal(loaded.module.conv1.weight, model.conv1.weight)
    assert loaded.weights_sha256 == file_sha256(ckpt)


def test_a_whole_pickled_module_only_when_trusted(tmp_path):
    ckpt = tmp_path / "whole.pt"
    torch.save(tiny_cnn(), ckpt)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_model("digits-cnn", weights=ckpt)
    loaded = load_model("digits-cnn", weights=ckpt, trust_checkpoint=True)
    assert isinstance(loaded.module, TinyCNN) and loaded.weights_format == "pickle"


def test_shape_mismatch_is_named(tmp_path):
    ckpt = tmp_path / "c.pt"
    state = DigitsCNN().state_dict()
    state["fc1.weight"] = torch.zeros(3, 1600)
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match=r"fc1.weight \(3, 1600\) vs \(10, 1600\)"):
        load_model("digits-cnn", weights=ckpt)


def test_missing_or_unreadable_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("digits-cnn", weights=tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_model("digits-cnn", weights=junk)


def _fixtures_path() -> str:
    from pathlib import Path

    return str(Path(__file__).parent / "_fixtures.py")
