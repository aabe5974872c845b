"""Equivalence: what the store holds equals a plain forward pass of the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from _fixtures import N_SAMPLES, FailsAt, SeededImages, reference, tiny_cnn, untraceable

import actextract
from actextract.errors import BadSampleError

ALL = ["conv1", "bn1", "relu", "block.0", "block.1", "block", "pool", "flatten", "fc"]
FP16 = {"rtol": 2e-3, "atol": 2e-3}


@pytest.mark.parametrize("capture", ["fx", "hooks"])
def test_tiny_cnn_matches_forward(tmp_path, capture):
    model, data = tiny_cnn(), SeededImages()
    layers = ALL if capture == "fx" else [n for n in ALL if n not in ("flatten",)]
    store = actextract.extract(
        model,
        data,
        layers=layers,
        out=tmp_path / "run.zarr",
        batch_size=4,
        device="cpu",
        capture=capture,
    )
    ref = reference(tiny_cnn(), data.x)
    assert store.attrs["model"]["capture"] == capture
    assert store.layers == layers
    for name in layers:
        np.testing.assert_allclose(store[name][:], ref[name].numpy(), **FP16, err_msg=name)
    assert store.labels[:].tolist() == data.labels
    assert store.ids[:].tolist() == [str(i) for i in range(N_SAMPLES)]
    assert store.complete


def test_in_place_relu_does_not_overwrite_the_captured_batchnorm(tmp_path):
    store = actextract.extract(
        tiny_cnn(),
        SeededImages(),
        layers=["bn1"],
        out=tmp_path / "r.zarr",
        dtype="float32",
        device="cpu",
    )
    assert (store["bn1"][:] < 0).any(), "bn1 was read after the in-place ReLU"


@pytest.mark.parametrize("capture", ["fx", "hooks"])
def test_reductions_and_float32(tmp_path, capture):
    data = SeededImages()
    store = actextract.extract(
        tiny_cnn(),
        data,
        layers="conv1,block.1,fc",
        reduce="conv1=mean,block.*=max",
        dtype="float32",
        out=tmp_path / "r.zarr",
        batch_size=5,
        chunk_rows=7,
        device="cpu",
        capture=capture,
    )
    ref = reference(tiny_cnn(), data.x)
    np.testing.assert_allclose(store["conv1"][:], ref["conv1"].mean((2, 3)).numpy(), atol=1e-5)
    np.testing.assert_allclose(store["block.1"][:], ref["block.1"].amax((2, 3)).numpy(), atol=1e-5)
    np.testing.assert_allclose(store["fc"][:], ref["fc"].numpy(), atol=1e-5)
    assert store["conv1"].shape == (N_SAMPLES, 4)
    assert store["conv1"].metadata.dimension_names == ("sample", "channel")
    # chunk_rows 7 is no multiple of batch 5: blocks are assembled across batches
    assert store.chunk_rows == 7 and store.done().tolist() == [True, True, True]


def _resnet_reference(model, x):
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        l3 = model.layer3(model.layer2(model.layer1(h)))
        return {"layer3": l3, "avgpool": model.avgpool(model.layer4(l3))}


@pytest.mark.parametrize("capture", ["fx", "hooks"])
def test_resnet18_matches_forward(tmp_path, capture):
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    data = SeededImages(n=6, shape=(3, 32, 32))
    ref = _resnet_reference(model, data.x)
    store = actextract.extract(
        model,
        data,
        layers=["layer3", "avgpool"],
        device="cpu",
        out=tmp_path / "plain.zarr",
        batch_size=4,
        capture=capture,
    )
    assert store["layer3"].shape == (6, 256, 2, 2)
    for name in ("layer3", "avgpool"):
        np.testing.assert_allclose(store[name][:], ref[name].numpy(), **FP16, err_msg=name)
    pooled = actextract.extract(
        model,
        data,
        layers=["layer3"],
        reduce="layer3=mean",
        device="cpu",
        out=tmp_path / "mean.zarr",
        capture=capture,
    )
    np.testing.assert_allclose(pooled["layer3"][:], ref["layer3"].mean((2, 3)).numpy(), **FP16)
    assert pooled.labels[:].tolist() == data.labels


def test_untraceable_model_falls_back_to_hooks(tmp_path, caplog):
    data = SeededImages()
    store = actextract.extract(
        untraceable(), data, layers=["bn1", "block"], device="cpu", out=tmp_path / "r.zarr"
    )
    assert "capturing with forward hooks" in caplog.text
    assert store.attrs["model"]["capture"] == "hooks"
    ref = reference(untraceable(), data.x)
    np.testing.assert_allclose(store["block"][:], ref["block"].numpy(), **FP16)


def test_fx_only_name_on_untraceable_model_says_why(tmp_path):
    with pytest.raises(actextract.LayerNotFoundError, match="fx could not trace"):
        actextract.extract(
            untraceable(), SeededImages(), layers=["flatten"], device="cpu", out=tmp_path / "r.zarr"
        )
    assert not (tmp_path / "r.zarr").exists()


def test_bf16_autocast_on_cpu_stays_close(tmp_path):
    data = SeededImages()
    store = actextract.extract(
        tiny_cnn(),
        data,
        layers=["fc"],
        precision="bf16",
        device="cpu",
        out=tmp_path / "r.zarr",
        channels_last=True,
    )
    ref = reference(tiny_cnn(), data.x)["fc"].numpy()
    np.testing.assert_allclose(store["fc"][:], ref, rtol=5e-2, atol=5e-2)
    assert store.attrs["precision"] == "bf16"


def test_limit_takes_the_first_rows(tmp_path):
    store = actextract.extract(
        tiny_cnn(), SeededImages(), layers=["fc"], limit=5, device="cpu", out=tmp_path / "r.zarr"
    )
    assert store["fc"].shape == (5, 5) and store.ids[:].tolist() == ["0", "1", "2", "3", "4"]


def test_workers_give_the_same_store(tmp_path):
    a = actextract.extract(
        "digits-cnn",
        "digits",
        layers=["pool2"],
        limit=96,
        batch_size=32,
        device="cpu",
        out=tmp_path / "a.zarr",
    )
    torch.manual_seed(0)
    b = actextract.extract(
        a.attrs["model"]["spec"],
        "digits",
        layers=["pool2"],
        limit=96,
        batch_size=32,
        num_workers=2,
        device="cpu",
        out=tmp_path / "b.zarr",
    )
    assert a.ids[:].tolist() == b.ids[:].tolist()
    assert a.labels[:].tolist() == b.labels[:].tolist()
    assert b.complete


def test_a_bad_sample_stops_the_run_and_the_store_is_not_complete(tmp_path):
    with pytest.raises(BadSampleError, match=r"sample 9 \('9'\).*corrupt record 9.*--on-bad"):
        actextract.extract(
            tiny_cnn(),
            FailsAt(9),
            layers=["fc"],
            batch_size=4,
            chunk_rows=4,
            device="cpu",
            out=tmp_path / "r.zarr",
        )
    store = actextract.open_store(tmp_path / "r.zarr")
    assert store.status == "failed" and not store.complete
    assert "corrupt record 9" in store.attrs["error"]
    assert not store.done()[2]  # the block holding row 9 was never marked done


def test_skip_leaves_the_row_empty_and_lists_it(tmp_path):
    data = FailsAt(9)
    store = actextract.extract(
        tiny_cnn(),
        data,
        layers=["fc"],
        on_bad_sample="skip",
        batch_size=4,
        device="cpu",
        out=tmp_path / "r.zarr",
    )
    assert store.complete
    fc = store["fc"][:]
    assert np.isnan(fc[9]).all() and not np.isnan(np.delete(fc, 9, axis=0)).any()
    assert store.labels[9] == -1 and store.ids[9] == "9"
    assert store.attrs["skipped"] == [{"index": 9, "id": "9", "error": "OSError: corrupt record 9"}]
    assert store.attrs["summary"]["skipped"] == 1
    ref = reference(tiny_cnn(), data.x)["fc"].numpy()
    np.testing.assert_allclose(np.delete(fc, 9, axis=0), np.delete(ref, 9, axis=0), **FP16)


def test_a_writer_error_stops_the_run_and_marks_the_store_failed(tmp_path, monkeypatch):
    from actextract.store import Store

    def disk_full(self, block, *args, **kwargs):
        raise OSError(f"No space left on device (block {block})")

    monkeypatch.setattr(Store, "write_rows", disk_full)
    with pytest.raises(OSError, match="No space left"):
        actextract.extract(
            tiny_cnn(),
            SeededImages(),
            layers=["fc"],
            batch_size=4,
            chunk_rows=4,
            device="cpu",
            out=tmp_path / "r.zarr",
        )
    monkeypatch.undo()
    store = actextract.open_store(tmp_path / "r.zarr")
    assert store.status == "failed" and "No space left" in store.attrs["error"]
    assert not store.done().any() and not store.complete


def test_compile_runs_the_compiled_code_once_for_every_batch_size(tmp_path, monkeypatch):
    """--compile: the short last batch is padded to the batch size, so dynamo compiles one
    graph, and the store equals the plain forward (eager backend here: fast, same graph)."""
    from torch._dynamo.testing import CompileCounter

    counter, real = CompileCounter(), torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn: real(fn, backend=counter))
    torch._dynamo.reset()
    data = SeededImages(n=10)  # batches of 4, 4 and 2
    store = actextract.extract(
        tiny_cnn(),
        data,
        layers=["bn1", "block", "fc"],
        reduce="bn1=mean",
        batch_size=4,
        compile=True,
        dtype="float32",
        device="cpu",
        out=tmp_path / "r.zarr",
    )
    assert counter.frame_count == 1
    ref = reference(tiny_cnn(), data.x)
    np.testing.assert_allclose(store["bn1"][:], ref["bn1"].mean((2, 3)).numpy(), atol=1e-5)
    for name in ("block", "fc"):
        np.testing.assert_allclose(store[name][:], ref[name].numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compile_with_inductor_matches_forward(tmp_path, monkeypatch):
    """The real torch.compile (inductor, C++ on the CPU; about half a minute); its cache goes
    to tmp_path."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    data = SeededImages(n=10)
    store = actextract.extract(
        tiny_cnn(),
        data,
        layers=["relu", "fc"],
        batch_size=4,
        compile=True,
        device="cpu",
        out=tmp_path / "r.zarr",
    )
    ref = reference(tiny_cnn(), data.x)
    for name in ("relu", "fc"):
        np.testing.assert_allclose(store[name][:], ref[name].numpy(), **FP16, err_msg=name)
    assert any((tmp_path / "inductor").iterdir())
