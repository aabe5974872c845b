"""Every bad input answered: corrupt and truncated images, image modes the model does not take,
layer-name typos, and user modules (``python:`` specs) that fail to import or to run."""

from __future__ import annotations

import io
import logging
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _fixtures import tiny_cnn

import actextract
from actextract.data import images
from actextract.data.decode import DeviceDecoder
from actextract.data.samples import BadSample, Preprocess, Sample, collate, collate_encoded
from actextract.data.source import open_source
from actextract.errors import BadSampleError, LayerNotFoundError, ModelSpecError, SourceError
from actextract.model.capture import build_capture, candidates, select_layers
from actextract.model.zoo import DigitsCNN, load_model

TINY = Preprocess(resize=8, crop=8)  # TinyCNN takes (3, 8, 8)


@pytest.fixture(autouse=True)
def _fresh_notes(monkeypatch):
    """Each test sees the conversion notes as a fresh process would (they are once per
    process)."""
    monkeypatch.setattr(images, "_noted", set())


def _rgb(seed: int, size: tuple[int, int] = (12, 10)):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


def _encoded(image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def _as_rgb(path: Path):
    """What PIL's own ``convert("RGB")`` makes of the file: the reference for the inputs."""
    from PIL import Image

    with Image.open(path) as img, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a palette's transparency, dropped on purpose
        return img.convert("RGB")


# -- 1. corrupt and truncated image files ---------------------------------------------------


def _folder_with(tmp_path: Path, bad: dict[str, bytes]) -> Path:
    """Three good PNGs (a.png, c.png, e.png) and the ``bad`` files among them."""
    root = tmp_path / "imgs"
    root.mkdir()
    for name, seed in (("a.png", 0), ("c.png", 1), ("e.png", 2)):
        _rgb(seed).save(root / name)
    for name, data in bad.items():
        (root / name).write_bytes(data)
    return root


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP"])
@pytest.mark.parametrize("lenient", [False, True])
@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_a_truncated_image_is_a_bad_sample(tmp_path, monkeypatch, fmt, lenient, decode):
    """Even where other code has told PIL to load truncated images (it would fill the missing
    part with grey), and on the loader of ``--decode gpu`` (which decodes non-JPEGs itself)."""
    from PIL import ImageFile

    data = _encoded(_rgb(3, (40, 30)), fmt)
    root = _folder_with(tmp_path, {f"b.{fmt.lower()}": data[: len(data) * 3 // 4]})
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", lenient)
    src = open_source(f"folder:{root}", TINY, decode=decode)
    item = src.dataset[1]
    if decode == "gpu" and fmt == "JPEG":  # JPEG bytes travel undecoded: the decoder finds it
        item = DeviceDecoder(src.preprocess, torch.device("cpu")).decode_sample(item)
    assert isinstance(item, BadSample) and item.id == f"b.{fmt.lower()}"
    assert "truncated" in item.error
    assert ImageFile.LOAD_TRUNCATED_IMAGES is lenient  # the caller's setting is left as it was
    assert isinstance(src.dataset[0], Sample) and isinstance(src.dataset[2], Sample)


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
@pytest.mark.parametrize(
    "name, data, error",
    [
        ("b.png", b"this is a text file", "UnidentifiedImageError: cannot identify image file"),
        ("b.jpg", b"", "UnidentifiedImageError: cannot identify image file"),
        ("b.png", b"\x89PNG\r\n\x1a\n" + b"0" * 64, "OSError: Truncated File Read"),
    ],
    ids=["text", "empty", "png-header-only"],
)
def test_a_file_that_is_not_an_image_is_a_bad_sample(tmp_path, name, data, error, decode):
    root = _folder_with(tmp_path, {name: data})
    item = open_source(f"folder:{root}", TINY, decode=decode).dataset[1]
    assert isinstance(item, BadSample) and item.id == name
    assert item.error.startswith(error)
    if "identify" in error:  # the file is named, on both paths
        assert str(root / name) in item.error


def _broken_folder(tmp_path: Path) -> Path:
    """a, c, e: good; b.jpg: truncated JPEG; d.png: not an image (rows 1 and 3)."""
    data = _encoded(_rgb(4, (40, 30)), "JPEG")
    return _folder_with(tmp_path, {"b.jpg": data[: len(data) // 2], "d.png": b"not an image"})


def test_a_bad_file_stops_the_run_naming_it_and_how_to_go_on(tmp_path):
    root = _broken_folder(tmp_path)
    out = tmp_path / "x.zarr"
    with pytest.raises(BadSampleError) as info:
        actextract.extract(
            tiny_cnn(),
            f"folder:{root}",
            layers=["conv1"],
            out=out,
            preprocess=TINY,
            batch_size=2,
            device="cpu",
            progress=False,
        )
    message = str(info.value)
    assert "'b.jpg'" in message and "truncated" in message
    assert "--on-bad-sample skip" in message
    assert not out.exists() or actextract.open_store(out).status != "complete"


def test_skip_records_the_bad_files_and_leaves_their_rows_empty(tmp_path):
    root = _broken_folder(tmp_path)
    model = tiny_cnn()
    store = actextract.extract(
        model,
        f"folder:{root}",
        layers=["conv1", "fc"],
        out=tmp_path / "x.zarr",
        preprocess=TINY,
        on_bad_sample="skip",
        dtype="float32",
        batch_size=2,
        device="cpu",
        progress=False,
    )
    assert store.complete
    skipped = {s["id"]: s["error"] for s in store.attrs["skipped"]}
    assert set(skipped) == {"b.jpg", "d.png"}
    assert "truncated" in skipped["b.jpg"] and "cannot identify image file" in skipped["d.png"]
    assert list(store.ids[:]) == ["a.png", "b.jpg", "c.png", "d.png", "e.png"]
    assert store.labels[:].tolist() == [-1] * 5  # a flat folder has no labels
    fc = store["fc"][:]
    assert np.isnan(fc[[1, 3]]).all() and np.isfinite(fc[[0, 2, 4]]).all()
    with torch.no_grad():
        ref = model(torch.stack([TINY.transform()(_as_rgb(root / f"{n}.png")) for n in "ace"]))
    np.testing.assert_allclose(fc[[0, 2, 4]], ref.numpy(), rtol=1e-5, atol=1e-5)


# -- 1b. images of mixed sizes: the first sample's size is the run's -------------------------

ANY_SIZE = Preprocess(resize=0, crop=0)  # no resize, no crop: the files' own sizes
SMALL, LARGE = (12, 10), (14, 16)  # (width, height): inputs (3, 10, 12) and (3, 16, 14)


def _mixed_sizes(tmp_path: Path) -> Path:
    """a.png and f.png small, b-e.png large: the first sample is of the minority size, and so
    is the first batch of 4 (a-d) in its most common size."""
    root = tmp_path / "sizes"
    root.mkdir()
    for i, name in enumerate("abcdef"):
        _rgb(i, SMALL if name in "af" else LARGE).save(root / f"{name}.png")
    return root


def _any_size_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()


def _extract_sizes(root: Path, out: Path, model: torch.nn.Module, on_bad_sample: str):
    return actextract.extract(
        model,
        f"folder:{root}",
        layers=["1"],
        out=out,
        preprocess=ANY_SIZE,
        reduce="none",
        on_bad_sample=on_bad_sample,
        dtype="float32",
        batch_size=4,
        device="cpu",
        progress=False,
    )


def test_inputs_of_another_size_than_the_first_are_skipped(tmp_path):
    root = _mixed_sizes(tmp_path)
    model = _any_size_cnn()
    store = _extract_sizes(root, tmp_path / "x.zarr", model, "skip")
    assert store.complete
    skipped = {s["id"]: s["error"] for s in store.attrs["skipped"]}
    assert sorted(skipped) == ["b.png", "c.png", "d.png", "e.png"]
    assert skipped["b.png"].startswith(
        "input shape (3, 16, 14) differs from the run's (3, 10, 12) (that of the first sample"
    )
    acts = store["1"][:]
    assert acts.shape == (6, 4, 8, 10)
    assert np.isnan(acts[1:5]).all() and np.isfinite(acts[[0, 5]]).all()
    x = torch.stack([ANY_SIZE.transform()(_as_rgb(root / f"{n}.png")) for n in "af"])
    with torch.no_grad():
        np.testing.assert_allclose(acts[[0, 5]], model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_an_input_of_another_size_than_the_first_stops_the_run_naming_it(tmp_path):
    root = _mixed_sizes(tmp_path)
    with pytest.raises(BadSampleError) as info:
        _extract_sizes(root, tmp_path / "x.zarr", _any_size_cnn(), "error")
    message = str(info.value)
    assert "sample 1 ('b.png')" in message
    assert "differs from the run's (3, 10, 12)" in message
    assert "pass --resize and --crop to bring every input to one size" in message


def test_the_device_decoder_keeps_the_runs_shape(tmp_path):
    """--decode gpu with --crop 0: decoded images of several sizes meet at the device's stack."""
    root = tmp_path / "sizes"
    root.mkdir()
    _rgb(0, SMALL).save(root / "a.jpg")
    _rgb(1, LARGE).save(root / "b.png")  # pixels decoded in the loader
    _rgb(2, LARGE).save(root / "c.jpg")  # bytes decoded by the decoder
    enc = open_source(f"folder:{root}", ANY_SIZE, decode="gpu")
    batch = collate_encoded([enc.dataset[i] for i in range(3)])
    first = DeviceDecoder(enc.preprocess, "cpu").decode_sample(enc.dataset[0])
    out = DeviceDecoder(enc.preprocess, "cpu", input_shape=first.input.shape)(batch)
    assert out.ids == ["a.jpg"] and out.inputs.shape == (1, 3, 10, 12)
    assert [b.id for b in out.bad] == ["b.png", "c.jpg"]
    assert out.bad[0].error == (
        "input shape (3, 16, 14) differs from the run's (3, 10, 12) (that of the first sample, "
        "which decided the layers' shapes); pass --resize and --crop to bring every input to "
        "one size"
    )
    # without the run's shape: the batch's most common one, as before
    out = DeviceDecoder(enc.preprocess, "cpu")(collate_encoded([enc.dataset[i] for i in range(3)]))
    assert out.ids == ["b.png", "c.jpg"] and [b.id for b in out.bad] == ["a.jpg"]


# -- 2. image modes the model does not take: converted, and noted ---------------------------


def _mixed_modes(root: Path) -> list[str]:
    """One file per mode a folder may hold; returns their names in the source's order."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    base = _rgb(5)
    base.convert("L").save(root / "a_gray.png")
    base.convert("L").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "b_gray.png")
    base.convert("P").save(root / "c_palette.png")
    base.convert("RGBA").save(root / "d_rgba.png")
    alpha = np.asarray(base.convert("RGBA")).copy()
    alpha[..., 3] = 0  # fully transparent: the colours must still come through
    Image.fromarray(alpha).save(root / "e_clear_rgba.png")
    palette = base.convert("P")
    palette.info["transparency"] = bytes(range(256))  # a tRNS chunk: alpha per palette entry
    palette.save(root / "f_palette_alpha.png")
    base.convert("LA").save(root / "g_gray_alpha.png")
    base.convert("CMYK").save(root / "h_cmyk.jpg", quality=95)
    base.save(root / "i_rgb.png")
    return sorted(p.name for p in root.iterdir())


def test_every_mode_reaches_an_rgb_model_as_pil_converts_it(tmp_path, caplog):
    root = tmp_path / "modes"
    names = _mixed_modes(root)
    pre = Preprocess(channels=3, resize=0, crop=0)
    with caplog.at_level(logging.INFO, logger="actextract.data.images"):
        src = open_source(f"folder:{root}", pre)
        items = [src.dataset[i] for i in range(len(src))]
    for name, item in zip(names, items, strict=True):
        assert isinstance(item, Sample), item
        assert item.input.shape == (3, 10, 12), name  # RGBA and CMYK do not pass 4 channels
        expected = pre.transform()(_as_rgb(root / name))
        assert torch.equal(item.input, expected), name
    # a palette image arrives as its colours, not as its palette indices
    palette = items[names.index("c_palette.png")].input
    assert not torch.equal(palette[0], palette[1])
    # noted: the rule in the store's provenance, and one log line per mode, not per image
    assert src.transform.startswith("to_rgb(PIL: palette looked up")
    notes = [r for r in caplog.records if "are converted to RGB" in r.getMessage()]
    modes = sorted(r.getMessage().split(" images")[0] for r in notes)
    assert modes == [
        "CMYK",
        "L (grayscale)",
        "LA (grayscale+alpha)",
        "P (palette with transparency)",
        "P (palette)",
        "RGBA",
    ]
    assert "a_gray.png" in next(r.getMessage() for r in notes if r.getMessage().startswith("L "))
    for r in notes:  # a warning where something is lost (alpha), else information
        lossy = r.getMessage().startswith(("RGBA", "LA", "P (palette with"))
        assert (r.levelno == logging.WARNING) is lossy, r.getMessage()
        assert ("alpha channel is dropped" in r.getMessage()) is lossy


def test_every_mode_reaches_a_grayscale_model_as_one_channel(tmp_path, caplog):
    root = tmp_path / "modes"
    names = _mixed_modes(root)
    pre = Preprocess(channels=1, resize=0, crop=0)
    with caplog.at_level(logging.INFO, logger="actextract.data.images"):
        src = open_source(f"folder:{root}", pre)
        items = [src.dataset[i] for i in range(len(src))]
    for name, item in zip(names, items, strict=True):
        assert isinstance(item, Sample) and item.input.shape == (1, 10, 12), name
        # the luma of the colours PIL converts to (torchvision's weights sum to 0.9999, so a
        # gray pixel taken as it is and one weighed from RGB differ by up to 1e-4)
        expected = pre.transform()(_as_rgb(root / name))
        torch.testing.assert_close(item.input, expected, rtol=0, atol=2e-4)
    assert src.transform.startswith("to_grayscale(")
    notes = [r.getMessage() for r in caplog.records if "converted to grayscale" in r.getMessage()]
    assert sorted(m.split(" ")[0] for m in notes) == ["CMYK", "LA", "P", "P", "RGB", "RGBA"]


def test_16_bit_grayscale_keeps_its_range(tmp_path):
    """PIL's convert would clip 16-bit values at 255 (a white image); they are scaled instead."""
    from PIL import Image

    root = tmp_path / "deep"
    root.mkdir()
    values = (np.arange(120, dtype=np.uint16).reshape(10, 12) * 550).astype(np.uint16)
    Image.fromarray(values).save(root / "a.png")
    for channels in (3, 1):
        src = open_source(f"folder:{root}", Preprocess(channels=channels, resize=0, crop=0))
        x = src.dataset[0].input
        expected = torch.from_numpy(values.astype(np.float32) / 65535).expand(channels, -1, -1)
        assert x.shape == (channels, 10, 12)
        torch.testing.assert_close(x, expected)


def test_an_rgb_model_end_to_end_sees_the_converted_images(tmp_path, caplog):
    root = tmp_path / "modes"
    names = _mixed_modes(root)
    model = tiny_cnn()
    with caplog.at_level(logging.INFO, logger="actextract.data.images"):
        store = actextract.extract(
            model,
            f"folder:{root}",
            layers=["fc"],
            out=tmp_path / "x.zarr",
            preprocess=TINY,
            dtype="float32",
            batch_size=4,
            device="cpu",
            progress=False,
        )
    pre = TINY.over(Preprocess(channels=3))
    x = torch.stack([pre.transform()(_as_rgb(root / n)) for n in names])
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(store["fc"][:], ref, rtol=1e-5, atol=1e-5)
    assert store.attrs["dataset"]["transform"].startswith("to_rgb(")
    gray = [r for r in caplog.records if r.getMessage().startswith("L (grayscale)")]
    assert len(gray) == 1  # two grayscale files, one note


def test_the_device_decode_loader_converts_as_the_cpu_path_does(tmp_path):
    root = tmp_path / "modes"
    names = _mixed_modes(root)
    pre = Preprocess(channels=3, resize=6, crop=6)
    cpu = open_source(f"folder:{root}", pre)
    enc = open_source(f"folder:{root}", pre, decode="gpu")
    raw = enc.dataset[names.index("c_palette.png")].input
    assert raw.shape == (3, 10, 12) and raw.dtype == torch.uint8  # colours, decoded in the worker
    ref = collate([cpu.dataset[i] for i in range(len(names))])
    out = DeviceDecoder(enc.preprocess, torch.device("cpu"))(
        collate_encoded([enc.dataset[i] for i in range(len(names))])
    )
    assert out.ids == ref.ids and not out.bad
    # the CMYK JPEG goes through torchvision's decoder: a level apart at most
    torch.testing.assert_close(out.inputs, ref.inputs, rtol=0, atol=1 / 255 + 1e-6)


# -- 3. layer-name typos --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_a_layer_typo_names_close_matches_and_how_to_list_layers(method):
    cands = candidates(DigitsCNN(), method)
    with pytest.raises(LayerNotFoundError) as info:
        select_layers(["conv_1"], cands, model_name="digits-cnn")
    message = str(info.value)
    assert "layer 'conv_1' is not in digits-cnn" in message
    assert "close matches: conv1" in message
    assert "Run 'actextract layers digits-cnn'" in message


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_a_name_like_no_layer_shows_what_the_names_look_like(method):
    with pytest.raises(LayerNotFoundError) as info:
        build_capture(DigitsCNN(), ["layer5"], model_name="digits-cnn", method=method)
    message = str(info.value)
    assert "'layer5'" in message and "close matches" not in message
    # fx has one more name than hooks: flatten, a function
    more = 3 if method == "fx" else 2
    assert f"its layers: conv1, relu1, pool1, conv2, relu2, pool2 (and {more} more)" in message
    assert "actextract layers digits-cnn" in message


def test_a_layer_typo_stops_extract_before_anything_is_written(tmp_path):
    out = tmp_path / "x.zarr"
    with pytest.raises(KeyError, match=r"'poo1'.*close matches: pool1.*actextract layers"):
        actextract.extract(
            "digits-cnn",
            "digits",
            layers=["conv1", "poo1"],
            out=out,
            limit=4,
            device="cpu",
            progress=False,
        )
    assert not out.exists()


# -- 4. python: specs whose module fails ----------------------------------------------------


def _load(kind: str, spec: str):
    return load_model(spec) if kind == "model" else open_source(spec)


ERRORS = {"model": ModelSpecError, "dataset": SourceError}
GOOD = """
import torch
from torch import nn


def make():
    if {kind!r} == "model":
        return nn.Linear(2, 2)
    return [torch.zeros(2)] * 3


def raising():
    raise ValueError("bad config value 7")


def raising_in_torch():
    return nn.Linear(-1, 2)


NOT_CALLABLE = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """``write(text)`` → (file spec, module spec) of a fresh module holding ``text``, importable
    by name (tmp_path on sys.path) and removed from sys.modules afterwards."""
    monkeypatch.syspath_prepend(tmp_path)
    made: list[str] = []

    def write(text: str) -> tuple[Path, str]:
        name = f"ae_user_{uuid.uuid4().hex[:12]}"
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        made.append(name)
        return path, name

    yield write
    for name in made:
        sys.modules.pop(name, None)


def _specs(path: Path, name: str, attr: str = "make") -> list[str]:
    return [f"python:{path}:{attr}", f"python:{name}:{attr}"]


@pytest.mark.parametrize("kind", ["model", "dataset"])
def test_a_module_that_does_not_exist(kind, tmp_path):
    with pytest.raises(ERRORS[kind], match=r"cannot import module 'no_such_mod_xyz' \(No module"):
        _load(kind, "python:no_such_mod_xyz:make")
    with pytest.raises(ERRORS[kind], match="does not exist"):
        _load(kind, f"python:{tmp_path / 'missing.py'}:make")


@pytest.mark.parametrize("kind", ["model", "dataset"])
def test_a_module_importing_a_missing_package_names_that_package(kind, user_module):
    path, name = user_module("import os\nimport not_a_real_pkg\n\ndef make():\n    pass\n")
    for spec in _specs(path, name):
        with pytest.raises(ERRORS[kind]) as info:
            _load(kind, spec)
        message = str(info.value)
        assert spec in message
        assert "imports 'not_a_real_pkg', which is not installed" in message
        assert "No module named 'not_a_real_pkg'" in message
        assert f"{path}:2" in message  # the line of the import
        assert isinstance(info.value.__cause__, ModuleNotFoundError)
        assert name not in sys.modules


@pytest.mark.parametrize("kind", ["model", "dataset"])
@pytest.mark.parametrize(
    "source, line, original",
    [
        ("x = 1\nraise RuntimeError('boom')\n", 2, "RuntimeError: boom"),
        ("import torch\n\ny = undefined_name + 1\n", 3, "NameError: name 'undefined_name'"),
        ("def make(:\n    pass\n", 1, "SyntaxError: "),
        ("x = 1\n\n\ndef make():\n  return 1\n    return 2\n", 6, "IndentationError: "),
        ("from torch import no_such_name\n", 1, "ImportError: cannot import name 'no_such_name'"),
    ],
    ids=["RuntimeError", "NameError", "SyntaxError", "IndentationError", "ImportError"],
)
def test_a_module_raising_at_import_is_shown_with_its_file_and_line(
    kind, source, line, original, user_module, caplog
):
    path, name = user_module(source)
    for spec in _specs(path, name):
        caplog.clear()
        with (
            caplog.at_level(logging.DEBUG, logger="actextract.core.references"),
            pytest.raises(ERRORS[kind]) as info,
        ):
            _load(kind, spec)
        message = str(info.value)
        assert spec in message and f"{path}:{line}" in message and original in message
        assert info.value.__cause__ is not None  # chained: the traceback is kept
        assert original.startswith(type(info.value.__cause__).__name__)
        # -vv (debug) logs the user's traceback
        assert any(r.exc_info and r.levelno == logging.DEBUG for r in caplog.records)
        assert name not in sys.modules


@pytest.mark.parametrize("kind", ["model", "dataset"])
def test_sys_exit_at_import_does_not_end_the_program(kind, user_module):
    path, name = user_module("import sys\nsys.exit(2)\n")
    for spec in _specs(path, name):
        with pytest.raises(ERRORS[kind], match=r"called sys.exit\(2\).*__name__ == '__main__'"):
            _load(kind, spec)


@pytest.mark.parametrize("kind", ["model", "dataset"])
def test_a_missing_attribute_lists_what_the_module_defines(kind, user_module):
    path, name = user_module(GOOD.format(kind=kind))
    for spec in _specs(path, name, "mkae"):
        with pytest.raises(ERRORS[kind], match=r"has no attribute 'mkae'; it defines: .*make"):
            _load(kind, spec)


@pytest.mark.parametrize("kind", ["model", "dataset"])
def test_a_callable_that_raises_is_shown_with_its_file_and_line(kind, user_module):
    path, name = user_module(GOOD.format(kind=kind))
    for spec in _specs(path, name, "raising"):
        with pytest.raises(ERRORS[kind]) as info:
            _load(kind, spec)
        message = str(info.value)
        assert f"{spec}: calling raising() failed at {path}:13" in message
        assert "ValueError: bad config value 7" in message
        assert isinstance(info.value.__cause__, ValueError)
    # raised inside a library: the user's line, and where the library raised
    with pytest.raises(ERRORS[kind]) as info:
        _load(kind, f"python:{name}:raising_in_torch")
    message = str(info.value)
    assert f"at {path}:17 (raised in " in message and "torch" in message
    assert "negative dimension" in message


def test_a_working_spec_still_loads_and_a_non_callable_is_refused(user_module):
    path, name = user_module(GOOD.format(kind="model"))
    assert isinstance(load_model(f"python:{path}:make").module, torch.nn.Linear)
    with pytest.raises(ModelSpecError, match=r"type int, which cannot be called.*nn\.Module"):
        load_model(f"python:{name}:NOT_CALLABLE")
    path, name = user_module(GOOD.format(kind="dataset"))
    assert len(open_source(f"python:{name}:make")) == 3


@pytest.mark.parametrize(
    ("mode", "noted"), [("L", "L (grayscale)"), ("CMYK", "CMYK"), ("RGB", None)]
)
def test_jpegs_left_to_the_device_decoder_are_noted_like_pil_images(
    tmp_path, caplog, monkeypatch, mode, noted
):
    """--decode gpu: a JPEG's bytes go to the device, which decodes it into the model's
    channels; the loader reads its frame header to note the conversion as the CPU path does."""
    from PIL import Image

    import actextract.data.images

    monkeypatch.setattr(actextract.data.images, "_noted", set())
    root = tmp_path / "jpegs"
    root.mkdir()
    Image.new(mode, (12, 10)).save(root / "a.jpg")
    enc = open_source(f"folder:{root}", Preprocess(channels=3), decode="gpu")
    with caplog.at_level(logging.INFO, logger="actextract.data.images"):
        item = enc.dataset[0]
    assert item.input.dtype == torch.uint8 and item.input.ndim == 1  # the file's bytes
    notes = [r.getMessage() for r in caplog.records if "are converted to RGB" in r.getMessage()]
    assert notes == ([] if noted is None else [notes[0]])
    if noted:
        assert notes[0].startswith(noted) and "a.jpg" in notes[0]
