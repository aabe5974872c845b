"""Sources: dataset specs → a Dataset of samples with a row index and an id, and its loader.

Specs (``open_source``):

- ``digits``: scikit-learn's 1,797 handwritten 8×8 digits (shipped inside the package),
  upsampled to 1×28×28 and normalised; labels 0-9. The embedded default: nothing downloaded.
- ``folder:PATH``: class subfolders (ImageFolder: labels from folder names, images found
  anywhere below each) or a flat folder of images (label -1); the id is the path relative to
  PATH. A folder with both images at its top level and subfolders that hold images is refused
  (:class:`SourceError`): read as either kind, it would leave the other's images out.
  Subfolders with no image anywhere below them (``.ipynb_checkpoints``, ``notes/``) do not
  count; "image" is a file name ending in one of torchvision's ``IMG_EXTENSIONS``, any case,
  as ImageFolder finds them. Images of any mode reach the model
  with its channels (palette, RGBA, CMYK, ... converted by PIL: noted in the log and in the
  transform the store records); a truncated or corrupt file is a :class:`BadSample`, whatever
  PIL's ``LOAD_TRUNCATED_IMAGES`` says. With ``decode="gpu"`` the loader workers only read
  the files (JPEGs travel as bytes, other formats as pixels) and
  :class:`actextract.decode.DeviceDecoder` decodes and preprocesses them on the run's device.
- ``mnist:ROOT[:split]``, ``cifar10:ROOT``, ...: torchvision datasets already on disk
  (``download=False``); split ``train`` (default) or ``test``.
- ``synthetic:N:C:H:W``: N seeded random inputs, fed to the model as they are (benchmarks).
- ``python:module:callable``: a user Dataset (or a callable returning one); items are an input
  tensor or ``(input, label, ...)``, fed as they are.

Items and batches are described in :mod:`actextract.samples`; this module resolves specs.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from actextract._imports import call_object, load_object
from actextract.errors import OptionError, SourceError
from actextract.samples import (  # re-exported: the source stage's public names
    CONVERSIONS,
    BadSample,
    Batch,
    Preprocess,
    Sample,
    SampleDataset,
    Source,
    convert_image,
    make_loader,
    note_mode,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BadSample",
    "Batch",
    "Preprocess",
    "Sample",
    "Source",
    "check_decode",
    "make_loader",
    "open_source",
    "wrap_dataset",
]

log = logging.getLogger(__name__)

DECODE_MODES = ("cpu", "gpu")
JPEG_MAGIC = b"\xff\xd8\xff"  # SOI marker and the first byte of the next marker

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (torchvision class name, how the split is passed)
TORCHVISION_DATASETS: dict[str, tuple[str, str]] = {
    "mnist": ("MNIST", "train"),
    "fashionmnist": ("FashionMNIST", "train"),
    "kmnist": ("KMNIST", "train"),
    "qmnist": ("QMNIST", "train"),
    "cifar10": ("CIFAR10", "train"),
    "cifar100": ("CIFAR100", "train"),
    "svhn": ("SVHN", "split"),
    "stl10": ("STL10", "split"),
    "flowers102": ("Flowers102", "split"),
    "food101": ("Food101", "split"),
    "dtd": ("DTD", "split"),
    "imagenet": ("ImageNet", "split"),
}


class _ImageFiles(Dataset):
    """A flat folder of images: items are (``loader(path)``, -1), a PIL image by default."""

    def __init__(self, paths: Sequence[Path], loader: Callable[[str], Any] | None = None):
        self.paths = list(paths)
        self.loader = loader or _load_pil

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.loader(str(self.paths[index])), -1


class _Synthetic(Dataset):
    """N seeded standard-normal inputs of one shape; item i is the same whatever the worker."""

    def __init__(self, n: int, shape: tuple[int, ...], seed: int = 0):
        self.n, self.shape, self.seed = n, shape, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        if not 0 <= index < self.n:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return torch.randn(self.shape, generator=g), index % 10


def open_source(spec: str, preprocess: Preprocess | None = None, *, decode: str = "cpu") -> Source:
    """Resolve a dataset spec (see the module docstring). ``preprocess`` overrides the source's
    own defaults for image sources; synthetic and python sources are fed as they are.

    ``decode="gpu"`` (``folder:`` sources only) leaves decoding to the run's device: the
    source's items are undecoded and ``Source.encoded`` is True (see
    :class:`actextract.decode.DeviceDecoder`)."""
    preprocess = preprocess or Preprocess()
    kind, _, rest = spec.partition(":")
    kind = kind.lower()
    check_decode(decode)
    if decode == "gpu" and kind != "folder":
        raise SourceError(
            f"--dataset {spec}: --decode gpu only applies to folder: image datasets (JPEG files "
            "decoded on the device); drop --decode gpu (or pass --decode cpu) for this dataset."
        )
    if kind == "digits":
        return _digits(spec, preprocess)
    if kind == "folder":
        return _folder(spec, rest, preprocess, on_device=decode == "gpu")
    if kind == "synthetic":
        return _synthetic(spec, rest)
    if kind == "python":
        what = f"--dataset {spec}"
        base = load_object(rest, what=what, error=SourceError)
        dataset = base
        if callable(base) and not isinstance(base, Dataset):
            dataset = call_object(base, what=what, error=SourceError, returns="a Dataset")
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise SourceError(
                f"--dataset {spec} gave {type(dataset).__name__}, not a map-style "
                "Dataset with __len__ and __getitem__."
            )
        return wrap_dataset(dataset, spec=spec)
    if kind in TORCHVISION_DATASETS:
        return _torchvision(spec, kind, rest, preprocess)
    known = ["digits", "folder:PATH", "synthetic:N:C:H:W", "python:module:callable"]
    known += [f"{k}:ROOT" for k in TORCHVISION_DATASETS]
    raise SourceError(f"unknown dataset '{spec}'; use one of: {', '.join(known)}.")


def check_decode(decode: str) -> None:
    """``decode`` names where images are decoded: ``cpu`` (the loader's workers) or ``gpu``."""
    if decode not in DECODE_MODES:
        raise OptionError(f"--decode '{decode}' is not one of {', '.join(DECODE_MODES)}.")


def wrap_dataset(dataset: Any, *, spec: str | None = None) -> Source:
    """A user's own Dataset (items: tensor, or (tensor, label, ...)), fed as it is."""
    if isinstance(dataset, Source):
        return dataset
    classes = getattr(dataset, "classes", None)
    return Source(
        spec=spec or f"python-object:{type(dataset).__module__}.{type(dataset).__qualname__}",
        dataset=SampleDataset(dataset, transform=None, ids=None),
        transform="as given by the dataset",
        classes=tuple(map(str, classes)) if classes is not None else None,
    )


def _digits(spec: str, preprocess: Preprocess) -> Source:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)  # (N,1,8,8) [0,1]
    # The digits' own statistics at the size they are fed, so that a model trained on them
    # sees zero-mean, unit-std inputs.
    size = preprocess.over(Preprocess(resize=28, crop=0))
    sized = Preprocess(resize=size.resize, crop=size.crop).transform()(images)
    own = Preprocess(
        channels=1, resize=28, crop=0, mean=(float(sized.mean()),), std=(float(sized.std()),)
    )
    pre = preprocess.over(own)
    base = list(zip(images, digits.target.tolist(), strict=True))
    return Source(
        spec,
        SampleDataset(base, transform=pre.transform(), ids=None),
        transform=_describe(pre),
        classes=tuple(str(c) for c in range(10)),
        preprocess=pre,
    )


def _folder(spec: str, path: str, preprocess: Preprocess, *, on_device: bool = False) -> Source:
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(path).expanduser()
    if not path or not root.is_dir():
        raise SourceError(
            f"--dataset {spec}: folder '{root}' does not exist or is not a directory."
        )
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    if files:
        _check_flat(spec, root, files)
    pre = preprocess.over(Preprocess(channels=3))
    # decoded on the device: the workers only read (and, for non-JPEGs, decode) the files
    transform = None if on_device else pre.transform()
    loader = partial(_load_encoded if on_device else _load_pil, channels=pre.channels)
    described = _describe(pre, pil=True)
    if on_device:
        described = (
            "decode on the run's device (JPEG: torchvision.io.decode_jpeg; other formats: PIL "
            f"in the loader) → {described}"
        )
    if files:
        ids = [p.relative_to(root).as_posix() for p in files]
        return Source(
            spec,
            SampleDataset(_ImageFiles(files, loader), transform=transform, ids=ids),
            transform=described,
            preprocess=pre,
            encoded=on_device,
        )
    try:
        folder = ImageFolder(str(root), loader=loader)
    except (FileNotFoundError, RuntimeError) as e:
        raise SourceError(
            f"--dataset {spec}: no images found in '{root}' ({e}). A folder source holds image "
            f"files ({', '.join(IMG_EXTENSIONS)}) directly, or in one subfolder per class."
        ) from None
    ids = [Path(p).relative_to(root).as_posix() for p, _ in folder.samples]
    return Source(
        spec,
        SampleDataset(folder, transform=transform, ids=ids),
        transform=described,
        classes=tuple(folder.classes),
        preprocess=pre,
        encoded=on_device,
    )


def _check_flat(spec: str, root: Path, files: Sequence[Path]) -> None:
    """Refuse a folder that holds images at its top level (``files``) and also subfolders that
    hold images: ImageFolder would read the subfolders and drop the loose images, a flat read
    the reverse. Each subfolder is searched as ImageFolder searches a class folder (all the
    way down, following links) and only until its first image."""
    classes = sorted(
        entry.name for entry in os.scandir(root) if entry.is_dir() and _holds_images(entry.path)
    )
    if not classes:
        return
    raise SourceError(
        f"--dataset {spec}: folder '{root}' holds {_count(len(files), 'image')} at its top "
        f"level ({_some([p.name for p in files], 3)}) and {_count(len(classes), 'subfolder')} "
        f"with images ({_some([f'{c}/' for c in classes], 5)}); a folder source is either a "
        "flat folder of images or one subfolder of images per class, not both (read as either, "
        "this one would leave images out). Move the loose images into a class subfolder (or out "
        "of the folder), or point --dataset at a folder that holds only one kind."
    )


def _holds_images(folder: str) -> bool:
    """Whether a file under ``folder`` (at any depth) is an image by ImageFolder's rule; stops
    at the first."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    for _, _, names in os.walk(folder, followlinks=True):
        if any(has_file_allowed_extension(n, IMG_EXTENSIONS) for n in names):
            return True
    return False


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _some(names: Sequence[str], most: int) -> str:
    """The first ``most`` names, and how many more."""
    shown = ", ".join(names[:most])
    return f"{shown} and {len(names) - most} more" if len(names) > most else shown


def _load_pil(path: str, channels: int | None = None):
    """A PIL image in RGB, L or I;16, whatever the file's mode (see ``convert_image``: a
    palette image as colours, RGBA and CMYK as RGB); Preprocess then picks the channels. A
    truncated or corrupt file raises."""
    return _read_image(path, partial(_image, channels=channels, name=path), path)


def _load_encoded(path: str, channels: int | None = None) -> torch.Tensor:
    """For decoding on the device: a JPEG file's bytes, (N,) uint8; any other format decoded
    here with PIL and converted as ``_load_pil`` does, (C, H, W) as the CPU path's ToImage would
    make it (uint8 for 8-bit images)."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if data[: len(JPEG_MAGIC)] == JPEG_MAGIC:
        # decoded on the device straight into the model's channels: noted here, as PIL's are
        mode = JPEG_MODES.get(_jpeg_components(data))
        if mode:
            note_mode(mode, channels, path)
        return torch.frombuffer(data, dtype=torch.uint8)
    return _read_image(io.BytesIO(data), partial(_pixels, channels=channels, name=path), path)


# components of a JPEG frame → the mode PIL would open it in
JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_components(data: bytes | bytearray) -> int | None:
    """The number of colour components in a JPEG's frame header (SOFn), or None when the
    headers end before one (a damaged file: the decoder will say so)."""
    i = 2  # after SOI
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF:
            return data[i + 9] if i + 9 < len(data) else None
        if marker == 0xDA:  # start of scan: no frame header before it
            return None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _image(image: Any, channels: int | None, name: str) -> Any:
    out = convert_image(image, channels, name)
    return out.copy() if out is image else out  # the file's image is closed on return


def _pixels(image: Any, channels: int | None, name: str) -> torch.Tensor:
    from torchvision.transforms.v2.functional import pil_to_tensor

    return pil_to_tensor(convert_image(image, channels, name))


def _read_image(file: str | io.BytesIO, use: Callable[[Any], Any], name: str) -> Any:
    """``use(image)`` for the fully decoded image in ``file`` (the file ``name``). A truncated
    file raises OSError ("image file is truncated") even where other code has set PIL's
    LOAD_TRUNCATED_IMAGES, which would pass it on with its missing part grey or black."""
    from PIL import Image, ImageFile, UnidentifiedImageError

    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(file) as img:
            img.load()
            return use(img)
    except UnidentifiedImageError:
        raise UnidentifiedImageError(
            f"cannot identify image file '{name}': not an image, or a format PIL cannot read"
        ) from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def _torchvision(spec: str, kind: str, rest: str, preprocess: Preprocess) -> Source:
    import torchvision.datasets as tvd

    root_str, _, split = rest.partition(":")
    split = split or "train"
    cls_name, split_arg = TORCHVISION_DATASETS[kind]
    root = Path(root_str).expanduser()
    if not root_str or not root.is_dir():
        raise SourceError(
            f"--dataset {spec}: root folder '{root}' does not exist. Give the "
            f"folder that holds the {cls_name} files, e.g. {kind}:./data."
        )
    if split_arg == "train":
        if split not in ("train", "test"):
            raise SourceError(f"--dataset {spec}: split '{split}' is not 'train' or 'test'.")
        kwargs: dict[str, Any] = {"train": split == "train"}
    else:
        kwargs = {"split": split}
    if kind != "imagenet":
        kwargs["download"] = False
    try:
        base = getattr(tvd, cls_name)(str(root), **kwargs)
    except (RuntimeError, FileNotFoundError, OSError, ValueError) as e:
        raise SourceError(
            f"--dataset {spec}: torchvision's {cls_name} found no usable files under '{root}' "
            f"({e}). actextract never downloads: place the dataset there first (for example "
            f"with torchvision.datasets.{cls_name}('{root}', download=True) on a machine with "
            "internet)."
        ) from None
    pre = preprocess.over(Preprocess(channels=3))
    classes = getattr(base, "classes", None)
    return Source(
        spec,
        SampleDataset(base, transform=pre.transform(), ids=None),
        transform=_describe(pre),
        classes=tuple(map(str, classes)) if classes is not None else None,
        preprocess=pre,
    )


def _synthetic(spec: str, rest: str) -> Source:
    try:
        n, *shape = (int(v) for v in rest.split(":"))
    except ValueError:
        n, shape = 0, []
    if n <= 0 or not shape or any(d <= 0 for d in shape):
        raise SourceError(
            f"--dataset {spec}: expected synthetic:N:C:H:W with positive "
            "integers, e.g. synthetic:1024:3:224:224."
        )
    return Source(
        spec,
        SampleDataset(_Synthetic(n, tuple(shape)), transform=None, ids=None),
        transform="seeded standard normal, fed as is (label = index % 10)",
        classes=tuple(str(c) for c in range(10)),
    )


def _describe(pre: Preprocess, *, pil: bool = False) -> str:
    """``pil``: the images are PIL images the loader converted (``convert_image``)."""
    converted = pil and pre.channels in CONVERSIONS
    parts = [CONVERSIONS[pre.channels], "to_float[0,1]"] if converted else ["to_float[0,1]"]
    if pre.channels and not converted:
        parts.append("grayscale" if pre.channels == 1 else "rgb")
    if pre.resize:
        parts.append(f"resize({pre.resize})")
    if pre.crop:
        parts.append(f"center_crop({pre.crop})")
    if pre.mean is not None and pre.std is not None:
        mean = ", ".join(f"{m:.4g}" for m in pre.mean)
        std = ", ".join(f"{s:.4g}" for s in pre.std)
        parts.append(f"normalize(mean=[{mean}], std=[{std}])")
    return " → ".join(parts)
