"""Decoding on the device (``--decode gpu``): folder sources whose workers only read files, and
the DeviceDecoder that turns their batches into the inputs the CPU path would have made."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from actextract.data.decode import DeviceDecoder
from actextract.data.samples import BadSample, Encoded, Preprocess, Sample, collate, collate_encoded
from actextract.data.source import IMAGENET_MEAN, IMAGENET_STD, open_source
from actextract.errors import OptionError, SourceError

PRE = Preprocess(resize=16, crop=16, mean=IMAGENET_MEAN, std=IMAGENET_STD)
CPU = torch.device("cpu")

# One 8-bit level, in normalised units. PIL (the CPU path) and torchvision.io.decode_jpeg both
# wrap libjpeg-turbo, but each bundles its own build, and nvJPEG rounds its IDCT and chroma
# upsampling differently again: decoders may disagree by a level on a pixel. (Here on the CPU
# they agree exactly; the rest of the pipeline is the same float code.)
LEVEL = 1 / 255 / min(IMAGENET_STD)


def _picture(w: int, h: int, seed: int, gray: bool = False) -> np.ndarray:
    """A smooth photo-like image (gradients plus mild noise), (h, w, 3) or (h, w) uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack(
        [
            128 + 100 * np.sin(x / rng.uniform(3, 8) + y / rng.uniform(4, 9)),
            255 * x / w,
            255 * (1 - y / h),
        ],
        -1,
    )
    img = (img + rng.normal(0, 6, img.shape)).clip(0, 255).astype(np.uint8)
    return img[..., 0] if gray else img


def _save(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        Image.fromarray(array).save(path, quality=95)
    else:
        Image.fromarray(array).save(path)
    return path


@pytest.fixture
def jpegs(tmp_path) -> Path:
    """A flat folder: four JPEGs of different sizes (one grayscale) and a PNG."""
    root = tmp_path / "jpegs"
    _save(root / "a.jpg", _picture(40, 30, 0))
    _save(root / "b.jpg", _picture(33, 47, 1))
    _save(root / "c.jpg", _picture(36, 28, 2, gray=True))
    _save(root / "d.png", _picture(30, 30, 3))
    _save(root / "e.jpg", _picture(64, 48, 4))
    return root


def _both(spec: str, pre: Preprocess = PRE):
    """The source on the CPU path and on the decode-on-device path."""
    return open_source(spec, pre), open_source(spec, pre, decode="gpu")


def _decoded(src, rows, device=CPU):
    return DeviceDecoder(src.preprocess, device)(collate_encoded([src.dataset[i] for i in rows]))


def test_encoded_source_reads_bytes_and_records_its_preprocess(jpegs):
    cpu, enc = _both(f"folder:{jpegs}")
    assert enc.encoded and not cpu.encoded
    assert enc.preprocess == cpu.preprocess and enc.preprocess.channels == 3
    assert enc.transform.startswith("decode on the run's device") and cpu.transform in enc.transform
    a, d = enc.dataset[0], enc.dataset[3]
    assert a.id == "a.jpg" and d.id == "d.png"
    assert a.input.dtype == torch.uint8 and a.input.ndim == 1  # the file's bytes
    assert bytes(a.input.numpy()) == (jpegs / "a.jpg").read_bytes()
    assert d.input.dtype == torch.uint8 and d.input.shape == (3, 30, 30)  # PNG: pixels


def test_decoded_batch_equals_the_cpu_path(jpegs):
    cpu, enc = _both(f"folder:{jpegs}")
    rows = range(len(cpu))
    ref = collate([cpu.dataset[i] for i in rows])
    out = _decoded(enc, rows)
    assert out.encoded is None and not out.bad
    assert out.inputs.shape == ref.inputs.shape == (5, 3, 16, 16)
    assert out.inputs.dtype == torch.float32
    torch.testing.assert_close(out.inputs, ref.inputs, rtol=0, atol=LEVEL)
    assert out.ids == ref.ids == ["a.jpg", "b.jpg", "c.jpg", "d.png", "e.jpg"]
    assert torch.equal(out.labels, ref.labels) and torch.equal(out.indices, ref.indices)


def test_grayscale_model_and_class_folders(tmp_path):
    root = tmp_path / "classes"
    for c, cls in enumerate(["cat", "dog"]):
        for i in range(2):
            _save(root / cls / f"{i}.jpg", _picture(40 + 7 * i, 32, 10 * c + i, gray=i == 1))
    pre = Preprocess(channels=1, resize=12, crop=12, mean=(0.5,), std=(0.25,))
    cpu, enc = _both(f"folder:{root}", pre)
    ref = collate([cpu.dataset[i] for i in range(4)])
    out = _decoded(enc, range(4))
    assert enc.classes == cpu.classes == ("cat", "dog")
    assert out.ids == ["cat/0.jpg", "cat/1.jpg", "dog/0.jpg", "dog/1.jpg"]
    assert out.labels.tolist() == [0, 0, 1, 1] and out.inputs.shape == (4, 1, 12, 12)
    # GRAY decoding takes the JPEG's own luma, where the CPU path weighs the RGB the decoder
    # rebuilt from it (rounded and clipped): a few levels apart at most, under one on average
    level = 1 / 255 / 0.25
    diff = (out.inputs - ref.inputs).abs()
    assert diff.max() <= 4 * level and diff.mean() <= 0.5 * level


def test_a_broken_jpeg_becomes_a_bad_sample_and_the_rest_decodes(jpegs):
    data = (jpegs / "b.jpg").read_bytes()
    (jpegs / "b.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (jpegs / "f.jpg").write_bytes(b"\xff\xd8\xff" + b"not a jpeg" * 5)  # JPEG magic, then junk
    (jpegs / "g.jpg").write_bytes(b"garbage")  # no magic: PIL refuses it in the worker
    cpu, enc = _both(f"folder:{jpegs}")
    rows = range(len(enc))
    out = _decoded(enc, rows)
    ref = collate([cpu.dataset[i] for i in rows])
    assert [b.id for b in out.bad] == [b.id for b in ref.bad] == ["b.jpg", "f.jpg", "g.jpg"]
    assert [b.index for b in out.bad] == [1, 5, 6]
    assert "JPEG does not decode" in out.bad[0].error and "truncated" in out.bad[0].error
    assert "decode_jpeg.cpp" not in out.bad[0].error  # torchvision's source location is dropped
    assert "JPEG does not decode" in out.bad[1].error
    assert "cannot identify image file" in out.bad[2].error
    assert out.ids == ref.ids == ["a.jpg", "c.jpg", "d.png", "e.jpg"]
    assert out.indices.tolist() == [0, 2, 3, 4]
    torch.testing.assert_close(out.inputs, ref.inputs, rtol=0, atol=LEVEL)


def test_a_batch_with_nothing_usable_has_no_inputs(jpegs):
    for name in ("a.jpg", "b.jpg"):
        data = (jpegs / name).read_bytes()
        (jpegs / name).write_bytes(data[:200])
    enc = open_source(f"folder:{jpegs}", PRE, decode="gpu")
    out = _decoded(enc, [1, 0])
    assert out.inputs is None and out.encoded is None and out.ids == []
    assert [b.index for b in out.bad] == [0, 1]  # sorted by index
    assert out.labels.shape == out.indices.shape == (0,)
    empty = DeviceDecoder(PRE, CPU)(collate_encoded([BadSample(3, "x.jpg", "unreadable")]))
    assert empty.inputs is None and [b.id for b in empty.bad] == ["x.jpg"]


def test_odd_sizes_become_bad_samples_as_on_the_cpu_path(jpegs):
    pre = Preprocess(resize=16, crop=0)  # no crop: aspect ratios differ
    cpu, enc = _both(f"folder:{jpegs}", pre)
    ref = collate([cpu.dataset[i] for i in range(len(cpu))])
    out = _decoded(enc, range(len(enc)))
    assert out.ids == ref.ids and [b.id for b in out.bad] == [b.id for b in ref.bad]
    assert "pass --resize and --crop" in out.bad[0].error
    torch.testing.assert_close(out.inputs, ref.inputs, rtol=0, atol=1 / 255)


def test_decode_sample_for_probing(jpegs):
    (jpegs / "b.jpg").write_bytes((jpegs / "b.jpg").read_bytes()[:300])
    cpu, enc = _both(f"folder:{jpegs}")
    decoder = DeviceDecoder(enc.preprocess, "cpu")
    good = decoder.decode_sample(enc.dataset[0])
    assert isinstance(good, Sample) and good.input.shape == (3, 16, 16) and good.id == "a.jpg"
    torch.testing.assert_close(good.input, cpu.dataset[0].input, rtol=0, atol=LEVEL)
    bad = decoder.decode_sample(enc.dataset[1])
    assert isinstance(bad, BadSample) and bad.id == "b.jpg"


def test_batches_without_encoded_pass_through():
    batch = collate([Sample(torch.zeros(3, 4, 4), 0, 0, "a")])
    assert DeviceDecoder(PRE, CPU)(batch) is batch


@pytest.mark.parametrize("spec", ["digits", "synthetic:4:3:8:8", "mnist:/nowhere"])
def test_decode_gpu_is_only_for_folders(spec):
    with pytest.raises(SourceError, match="--decode gpu only applies to folder: image datasets"):
        open_source(spec, decode="gpu")


def test_unknown_decode_mode(jpegs, tmp_path):
    from _fixtures import SeededImages, tiny_cnn

    import actextract

    with pytest.raises(OptionError, match="--decode 'tpu' is not one of cpu, gpu"):
        open_source(f"folder:{jpegs}", decode="tpu")
    with pytest.raises(OptionError, match="--decode 'tpu' is not one of cpu, gpu"):
        actextract.extract(
            tiny_cnn(), SeededImages(), layers=["fc"], decode="tpu", out=tmp_path / "r.zarr"
        )


def test_encoded_packs_mixed_items_in_one_buffer():
    items = [
        torch.arange(5, dtype=torch.uint8),
        torch.arange(24, dtype=torch.int32).reshape(2, 3, 4),
        torch.zeros(0, dtype=torch.uint8),
        torch.full((1, 2, 3), 7, dtype=torch.uint8),
    ]
    packed = Encoded.pack(items)
    assert len(packed) == 4 and packed.data.ndim == 1
    for a, b in zip(packed.unpack(), items, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_and_decoder(jpegs, num_workers):
    from actextract.data.samples import make_loader

    (jpegs / "c.jpg").write_bytes((jpegs / "c.jpg").read_bytes()[:300])
    cpu, enc = _both(f"folder:{jpegs}")
    decoder = DeviceDecoder(enc.preprocess, CPU)
    loader = make_loader(enc, range(1, 5), batch_size=2, num_workers=num_workers)
    batches = [decoder(b) for b in loader]
    assert [b.indices.tolist() for b in batches] == [[1], [3, 4]]
    assert [[x.id for x in b.bad] for b in batches] == [["c.jpg"], []]
    ref = collate([cpu.dataset[i] for i in (1, 3, 4)])
    inputs = torch.cat([b.inputs for b in batches])
    torch.testing.assert_close(inputs, ref.inputs, rtol=0, atol=LEVEL)


@pytest.mark.gpu
def test_cuda_decode_matches_the_cpu_path(jpegs):
    (jpegs / "f.jpg").write_bytes(b"\xff\xd8\xff" + b"not a jpeg" * 5)
    cpu, enc = _both(f"folder:{jpegs}")
    rows = range(len(enc))
    ref = collate([cpu.dataset[i] for i in rows])
    for _ in range(3):  # again, with the decoder's stream and memory reused
        out = _decoded(enc, rows, torch.device("cuda"))
        assert out.inputs.device.type == "cuda" and out.ids == ref.ids
        assert [b.id for b in out.bad] == ["f.jpg"]
        # nvJPEG rounds differently from libjpeg-turbo: torchvision's own test allows a mean of
        # 2 levels on raw pixels; the max only guards against garbage
        diff = (out.inputs.cpu() - ref.inputs).abs()
        assert diff.mean() < 2 * LEVEL and diff.max() < 64 * LEVEL


def test_the_engine_runs_decoded_batches_into_the_store(tmp_path, jpegs):
    """The run loop with the decoder as its decode stage (on the CPU, as the GPU path runs
    it): the stored activations equal those of a CPU-path run, and a JPEG that does not
    decode is skipped with its id."""
    import actextract
    from actextract.data.samples import make_loader
    from actextract.extraction.engine import RunOptions, run
    from actextract.extraction.sink import Sink
    from actextract.model.capture import build_capture
    from actextract.model.zoo import load_model
    from actextract.store import create_store
    from actextract.store.layout import ArraySpec, StoreOptions

    (jpegs / "b.jpg").write_bytes((jpegs / "b.jpg").read_bytes()[:200])
    model, layer = load_model("resnet18").module.eval(), "layer1.0.conv1"
    kw = {"layers": [layer], "preprocess": PRE, "dtype": "float32", "chunk_rows": 2}
    ref = actextract.extract(
        model, f"folder:{jpegs}", **kw, on_bad_sample="skip", device="cpu", out=tmp_path / "a"
    )
    src = open_source(f"folder:{jpegs}", PRE, decode="gpu")
    store = create_store(
        tmp_path / "run.zarr",
        n=len(src),
        arrays=[ArraySpec(layer, tuple(ref[layer].shape[1:]))],
        options=StoreOptions(dtype="float32"),
        chunk_rows=2,
        attrs={},
    )
    cap = build_capture(model, [layer], model_name="resnet18")
    with Sink(store, slots=2, writers=1) as sink:
        summary = run(
            make_loader(src, range(len(src)), batch_size=2),
            lambda x: (cap(x), {}),  # the row arrays; no statistics
            sink,
            RunOptions(CPU, on_bad_sample="skip", progress=False),
            total=len(src),
            decode=DeviceDecoder(src.preprocess, CPU),
        )
    assert [b.id for b in summary.skipped] == ["b.jpg"] and store.done().all()
    got, want = store[layer][:], ref[layer][:]
    assert np.isnan(got[1]).all() and np.isnan(want[1]).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, equal_nan=True)
    assert store.ids[:].tolist() == ref.ids[:].tolist()
    assert store.labels[:].tolist() == ref.labels[:].tolist()


def test_decode_gpu_needs_a_cuda_device(tmp_path, jpegs):
    import actextract

    with pytest.raises(OptionError, match=r"--decode gpu .* on cpu; use --device cuda"):
        actextract.extract(
            "resnet18",
            f"folder:{jpegs}",
            layers=["layer1"],
            decode="gpu",
            device="cpu",
            out=tmp_path / "r.zarr",
        )
    assert not (tmp_path / "r.zarr").exists()
