"""Layouts: inference rules, overrides, reductions per layout against numpy, names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from actextract.core.axes import (
    LOST,
    check_layout,
    dimension_names,
    layout_of,
    parse_layouts,
    pool,
    reduced_shape,
    to_channels_first,
)
from actextract.errors import OptionError
from actextract.model.trace import follow, function_axis, module_axis


def test_layouts_from_the_channel_axis_and_the_rank():
    assert layout_of(0, 3) == "nchw" and layout_of(0, 2) == "nchw"  # (C, L) of a Conv1d
    assert layout_of(2, 3) == "nhwc" and layout_of(1, 2) == "tokens"
    assert layout_of(None, 1) == layout_of(LOST, 1) == "vector"
    assert layout_of(None, 2) == "tokens" and layout_of(None, 3) == "nchw"
    assert layout_of(LOST, 3) == "other" and layout_of(1, 3) == "other"


def test_module_rules():
    image = (2, 8, 5, 5)
    assert module_axis(nn.Conv2d(3, 8, 3), 1, (2, 3, 7, 7), image) == 1
    assert module_axis(nn.LayerNorm(8), 3, (2, 5, 5, 8), (2, 5, 5, 8)) == 3
    assert module_axis(nn.Linear(8, 4), None, None, (2, 10, 4)) == 2
    assert module_axis(nn.ReLU(), 3, (2, 5, 5, 8), (2, 5, 5, 8)) == 3  # follows its input

    class LayerNorm2d(nn.LayerNorm):  # torchvision's and timm's: a LayerNorm on NCHW
        pass

    assert module_axis(LayerNorm2d(8), 1, image, image) == 1
    norm = nn.Module()
    norm.data_format = "channels_last"  # Hugging Face's ConvNext norms say it themselves
    assert module_axis(norm, 1, image, image) == 3


def test_function_rules_move_and_keep_the_channel_axis():
    out = (2, 5, 5, 8)
    assert function_axis("permute", (None, 0, 2, 3, 1), {}, 1, (2, 8, 5, 5), out) == 3
    assert function_axis("transpose", (None, 1, 2), {}, 1, (2, 768, 196), (2, 196, 768)) == 2
    # ViT: (B, 768, 14, 14) → reshape (B, 768, 196): the axes up to the channel unchanged
    assert function_axis("reshape", (), {}, 1, (2, 768, 14, 14), (2, 768, 196)) == 1
    # the class token: (B, 197, 768)[:, 0] → (B, 768): the axes from the channel on unchanged
    assert function_axis("getitem", (), {}, 2, (2, 197, 768), (2, 768)) == 1
    # attention heads: (B, 197, 768) → (B, 197, 12, 64) mixes the channel axis
    assert function_axis("view", (), {}, 2, (2, 197, 768), (2, 197, 12, 64)) == LOST
    assert follow(2, (2, 197, 768), (2, 197, 12, 64), lost=None) is None  # unseen work


def test_overrides_are_checked_against_the_shape():
    assert parse_layouts("features.*=nhwc", ["features.0", "features.0.1", "fc"]) == {
        "features.0": "nhwc"
    }
    assert check_layout("f", "channels-last", (4, 4, 8)) == "nhwc"
    with pytest.raises(OptionError, match="'hwc' is not a layout"):
        parse_layouts("f=hwc", ["f"])
    with pytest.raises(OptionError, match=r"--layout fc=tokens: layer 'fc' has shape \(10,\)"):
        check_layout("fc", "tokens", (10,))
    with pytest.raises(OptionError, match="matches none of the captured layers"):
        parse_layouts("nope=nchw", ["f"])


@pytest.mark.parametrize(
    ("layout", "shape", "how", "axes"),
    [
        ("nchw", (3, 4, 5), "mean", (2, 3)),
        ("nchw", (3, 4, 5), "max", (2, 3)),
        ("nhwc", (4, 5, 3), "mean", (1, 2)),
        ("nhwc", (4, 5, 3), "max", (1, 2)),
        ("tokens", (6, 3), "mean", (1,)),
        ("tokens", (6, 3), "max", (1,)),
    ],
)
def test_pooling_per_layout_against_numpy(layout, shape, how, axes):
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(0))
    want = getattr(np, how)(x.numpy(), axis=axes)
    got = pool(x, layout, how)
    assert got.shape == (2, 3) and reduced_shape("x", shape, layout, how) == (3,)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_the_tokens_reductions():
    x = torch.randn(2, 6, 3)
    assert torch.equal(pool(x, "tokens", "cls"), x[:, 0])
    assert torch.equal(pool(x, "tokens", "tokens"), x)
    assert reduced_shape("t", (6, 3), "tokens", "cls") == (3,)
    assert reduced_shape("t", (6, 3), "tokens", "tokens") == (6, 3)


def test_a_reduction_that_does_not_fit_names_the_layer_its_layout_and_the_choices():
    with pytest.raises(
        OptionError,
        match=r"layer 'c' has shape \(3, 4, 5\) with layout nchw.*"
        r"for nchw choose from: none, mean, max",
    ):
        reduced_shape("c", (3, 4, 5), "nchw", "cls")
    with pytest.raises(OptionError, match=r"for other choose from: none.*--layout"):
        reduced_shape("o", (2, 3, 4, 5, 6), "other", "mean")


def test_dimension_names_and_the_channels_first_view():
    assert dimension_names("nchw", 3) == ("sample", "channel", "y", "x")
    assert dimension_names("nhwc", 3) == ("sample", "y", "x", "channel")
    assert dimension_names("tokens", 2) == ("sample", "token", "feature")
    assert dimension_names("vector", 1) == ("sample", "feature")
    assert dimension_names("other", 2) == ("sample", "dim1", "dim2")
    data = np.arange(2 * 4 * 5 * 3).reshape(2, 4, 5, 3)
    assert to_channels_first(data, "nhwc").shape == (2, 3, 4, 5)
    assert to_channels_first(data[:, 0], "tokens").shape == (2, 3, 5)
    assert to_channels_first(data, "nchw") is data
