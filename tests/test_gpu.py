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


def test_cuda_pinned_ring_with_slow_writers_and_straddling_batches(tmp_path, monkeypatch):
    """The side-stream copies into pinned row-block buffers: exact under a ring as small as
    it can be, writers slower than the GPU, and batches that straddle row blocks (a block's
    write waits for the event of the last copy into it)."""
    import threading

    from actextract.store import Store

    write_rows = Store.write_rows

    def slow(self, *args, **kwargs):
        threading.Event().wait(0.02)
        return write_rows(self, *args, **kwargs)

    monkeypatch.setattr(Store, "write_rows", slow)
    data = SeededImages(n=50)
    store = actextract.extract(
        tiny_cnn(),
        data,
        layers=["bn1", "fc"],
        device="cuda",
        dtype="float32",
        batch_size=6,
        chunk_rows=4,
        host_buffers=3,
        writers=2,
        out=tmp_path / "r.zarr",
    )
    ref = reference(tiny_cnn(), data.x)
    assert store.complete
    for name in ("bn1", "fc"):
        np.testing.assert_allclose(store[name][:], ref[name].numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_cuda_compile_matches_cpu_forward(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    torch._dynamo.reset()
    data = SeededImages(n=20)  # batches of 8, 8 and 4 (padded)
    store = actextract.extract(
        tiny_cnn(),
        data,
        layers=["bn1", "block", "fc"],
        reduce="bn1=mean",
        device="cuda",
        compile=True,
        batch_size=8,
        out=tmp_path / "r.zarr",
    )
    ref = reference(tiny_cnn(), data.x)
    np.testing.assert_allclose(store["bn1"][:], ref["bn1"].mean((2, 3)).numpy(), atol=2e-3)
    for name in ("block", "fc"):
        np.testing.assert_allclose(store[name][:], ref[name].numpy(), rtol=2e-3, atol=2e-3)


def test_cuda_decode_gpu_extract_matches_the_cpu_decode(tmp_path):
    """--decode gpu end to end: nvJPEG + preprocessing on the GPU give the store the CPU
    path's workers give, up to the decoders' rounding; a broken JPEG is skipped by id."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "jpegs"
    for c in ("a", "b"):
        for i in range(5):
            (root / c).mkdir(parents=True, exist_ok=True)
            h, w = 40 + 3 * i, 48 - 2 * i
            y, x = np.mgrid[0:h, 0:w]
            img = np.stack([x * 255 / w, y * 255 / h, 128 + 0 * x], -1) + rng.normal(
                0, 4, (h, w, 3)
            )
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(
                root / c / f"{i}.jpg", quality=95
            )
    (root / "b" / "9.jpg").write_bytes(b"\xff\xd8\xff" + b"broken" * 10)
    kw = {
        "layers": ["layer1"],
        "reduce": "layer1=mean",
        "preprocess": actextract.Preprocess(resize=32, crop=32),
        "device": "cuda",
        "dtype": "float32",
        "batch_size": 4,
        "num_workers": 2,
        "on_bad_sample": "skip",
    }
    torch.manual_seed(0)
    cpu = actextract.extract("resnet18", f"folder:{root}", **kw, out=tmp_path / "cpu.zarr")
    torch.manual_seed(0)
    gpu = actextract.extract(
        "resnet18", f"folder:{root}", **kw, decode="gpu", out=tmp_path / "gpu.zarr"
    )
    assert gpu.attrs["dataset"]["decode"] == "gpu" and gpu.complete
    assert gpu.ids[:].tolist() == cpu.ids[:].tolist()
    assert [s["id"] for s in gpu.attrs["skipped"]] == ["b/9.jpg"]
    a, b = cpu["layer1"][:], gpu["layer1"][:]
    np.testing.assert_allclose(b, a, rtol=0.05, atol=0.05, equal_nan=True)


def test_cuda_counts_nonfinite_rows_like_the_cpu(tmp_path):
    """The flags are taken on the device after the cast and copied on the side stream with
    the rows: a value beyond float16's range counts, as on the CPU."""
    data = SeededImages(n=40)
    data.x[5, 0, 0, 0] = float("nan")
    data.x[17] *= 1e6  # finite in float32, Inf once stored as float16
    counts = {}
    for device in ("cpu", "cuda"):
        store = actextract.extract(
            tiny_cnn(),
            data,
            layers=["conv1", "fc"],
            device=device,
            batch_size=8,
            chunk_rows=16,
            out=tmp_path / f"{device}.zarr",
        )
        counts[device] = store.attrs["nonfinite"]
    assert counts["cuda"] == counts["cpu"] and counts["cpu"]["conv1"] == 2


def test_cuda_resume_continues_a_partial_store(tmp_path):
    data = SeededImages(n=64)
    kwargs = dict(layers=["bn1", "fc"], device="cuda", batch_size=8, chunk_rows=16)
    full = actextract.extract(tiny_cnn(), data, out=tmp_path / "full.zarr", **kwargs)
    part = actextract.extract(tiny_cnn(), data, out=tmp_path / "part.zarr", **kwargs)
    done = actextract.open_store(part.path, mode="r+")
    done._node("progress/done")[1:3] = 0
    done.update_attrs(status="interrupted")
    again = actextract.extract(tiny_cnn(), data, out=part.path, resume=True, **kwargs)
    assert again.complete
    for name in ("bn1", "fc"):
        assert again[name][:].tobytes() == full[name][:].tobytes()


def test_cuda_statistics_equal_numpy_on_the_stored_rows(tmp_path):
    """The sums run on the GPU (index_add, bincount): per-class means and standard deviations
    of the stored float32 rows, and every value in the histogram."""
    store = actextract.extract(
        tiny_cnn(),
        SeededImages(n=64),
        layers="conv1,fc",
        stats="conv1=class-mean,class-std,channel-hist,channel-mean;fc=class-std",
        device="cuda",
        dtype="float32",
        batch_size=8,
        chunk_rows=16,
        out=tmp_path / "r.zarr",
    )
    from actextract.stats.parts import read_stats

    assert store.complete
    labels = store.labels[:]
    for layer in ("conv1", "fc"):
        got, data = read_stats(store, layer), store[layer][:].astype(np.float64)
        for j, c in enumerate(got.classes.tolist()):
            rows = data[labels == c]
            assert got.counts[j] == len(rows)
            np.testing.assert_allclose(got.mean[j], rows.mean(0), rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(got.std[j], rows.std(0), rtol=1e-6, atol=1e-6)
    assert read_stats(store, "conv1").hist.sum() == store["conv1"][:].size
    means = store.row_array("stats/conv1/channel_means")[:]
    np.testing.assert_allclose(means, store["conv1"][:].mean(axis=(2, 3)), rtol=1e-5, atol=1e-5)


def test_cuda_recorder_leaves_training_and_the_cuda_rng_as_they_were(tmp_path):
    """Dropout on the GPU draws from the CUDA generator, which a capture must restore."""
    import torch.nn.functional as F
    from test_recorder import N_PROBE, TrainNet

    def train(out):
        torch.manual_seed(0)
        torch.cuda.manual_seed(0)
        model = TrainNet().cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        rec = None
        if out is not None:
            rec = actextract.Recorder(
                model, layers="conv1,fc", probe=SeededImages(N_PROBE), out=out
            )
        for epoch in range(2):
            model.train()
            for _ in range(3):
                x = torch.randn(8, 3, 8, 8, device="cuda")
                y = torch.randint(0, 3, (8,), device="cuda")
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if rec is not None:
                assert rec.capture(epoch)
        return model.state_dict(), torch.cuda.get_rng_state()

    plain, recorded = train(None), train(tmp_path / "train.zarr")
    assert all(torch.equal(plain[0][k], recorded[0][k]) for k in plain[0])
    assert torch.equal(plain[1], recorded[1])
    store = actextract.open_store(tmp_path / "train.zarr")
    assert store.epochs() == [0, 1] and store.attrs["device"].startswith("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("capture", ["fx", "hooks"])
@pytest.mark.parametrize("name", ["resnet18", "densenet121", "swin_t", "vit_b_16"])
def test_the_zoo_on_cuda_stores_what_each_layer_produced(name, capture, tmp_path, monkeypatch):
    """On the GPU too: every module called once (clones where later code writes in place,
    moved to the device with the caller's model left on the CPU), in float32, against hooks
    that clone each output as it is produced on the same device. cuDNN may pick other kernels
    for the run than for the reference (TF32 off, so that they differ by rounding only): a
    float tolerance."""
    from _zoo import ZOO, Images, batch, build, mismatches
    from _zoo import reference as zoo_reference

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = build(name)
    data = Images(ZOO[name].shape)
    ref = zoo_reference(model.cuda(), batch(data).cuda())
    layers = ref.once()
    model.cpu()
    store = actextract.extract(
        model,
        data,
        layers=layers,
        out=tmp_path / "x.zarr",
        dtype="float32",
        capture=capture,
        batch_size=len(data),
        device="cuda",
        progress=False,
    )
    assert next(model.parameters()).device.type == "cpu"  # as the caller left it
    stored = {n: store[n][:] for n in layers}
    want = {n: ref.outputs[n].cpu() for n in layers}
    assert not mismatches(stored, want, rtol=1e-3, atol=1e-4)
    assert store.attrs["device"].startswith("cuda")
