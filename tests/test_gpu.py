"""CUDA paths: pinned batches, the side-stream copy, autocast. Skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _fixtures import SeededImages, reference, tiny_cnn

import actextract

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_store_matches_cpu_forward(tmp_path, precision):
    data = SeededImages(n=64)
    store = actextract.extract(
        tiny_cnn(),
        data,
        layers=["bn1", "block", "fc"],
        device="cuda",
        precision=precision,
        batch_size=8,
        chunk_rows=16,
        num_workers=2,
        out=tmp_path / "r.zarr",
        channels_last=True,
    )
    assert store.attrs["device"].startswith("cuda") and store.complete
    assert [s["name"] for s in store.attrs["layers"] if s["model_output"]] == ["fc"]
    assert not torch.backends.cudnn.benchmark  # on during the run only
    assert store.attrs["summary"]["d2h_s"] > 0  # GPU time of the side-stream copies
    ref = reference(tiny_cnn(), data.x)
    tol = 2e-3 if precision == "fp32" else 5e-2
    for name in ("bn1", "block", "fc"):
        np.testing.assert_allclose(store[name][:], ref[name].numpy(), rtol=tol, atol=tol)


def test_cuda_resnet_reduced_on_the_device(tmp_path):
    torch.manual_seed(0)
    store = actextract.extract(
        "resnet18",
        "synthetic:256:3:64:64",
        layers="layer3,avgpool",
        reduce="layer3=mean",
        device="cuda",
        batch_size=64,
        out=tmp_path / "r.zarr",
    )
    assert store["layer3"].shape == (256, 256) and np.isfinite(store["layer3"][:]).all()
