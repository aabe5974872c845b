"""Reductions and the storage cast."""

from __future__ import annotations

import pytest
import torch

from actextract.core.axes import reduced_shape
from actextract.errors import OptionError
from actextract.model.reduce import Reducer, parse_reductions

LAYERS = ["layer1", "layer2.0", "layer2.1", "fc"]


def test_parse_names_globs_and_a_bare_reduction():
    assert parse_reductions("layer1=mean,layer2.*=max", LAYERS) == {
        "layer1": "mean",
        "layer2.0": "max",
        "layer2.1": "max",
        "fc": "none",
    }
    assert parse_reductions("mean", ["a", "b"]) == {"a": "mean", "b": "mean"}
    assert parse_reductions(None, ["a"]) == {"a": "none"}


def test_bad_reductions():
    with pytest.raises(
        OptionError, match="'median' is not one of none, mean, max, cls, last, tokens"
    ):
        parse_reductions("layer1=median", LAYERS)
    with pytest.raises(OptionError, match="matches none of the captured layers"):
        parse_reductions("layer9=mean", LAYERS)
    with pytest.raises(OptionError, match=r"layout vector.*for vector choose from: none"):
        reduced_shape("fc", (1000,), "vector", "mean")


def test_reducer_pools_in_float32_and_casts():
    x = torch.randn(2, 3, 4, 4, dtype=torch.bfloat16)
    plan = {"a": "mean", "b": "max", "c": "none"}
    reducer = Reducer(plan, torch.float16, layouts=dict.fromkeys(plan, "nchw"))
    out = reducer({"a": x, "b": x, "c": x})
    assert out["a"].dtype == torch.float16 and out["a"].shape == (2, 3)
    torch.testing.assert_close(out["a"], x.float().mean((2, 3)).half())
    assert torch.equal(out["b"], x.amax((2, 3)).half())
    assert out["c"].shape == (2, 3, 4, 4)
