"""Folders: ``folder:PATH`` sources, image files in class subfolders or in one flat folder.

Class subfolders are read as torchvision's ImageFolder reads them (labels from the folder names,
sorted; images found anywhere below each); a flat folder's images get label -1; the id is the
path relative to PATH. A folder holding both images at its top and subfolders with images is
refused, naming both: read as either kind it would leave the other's images out. Subfolders
with no image anywhere below them (``.ipynb_checkpoints``, ``notes/``) do not count; "image"
is a file name ending in one of torchvision's ``IMG_EXTENSIONS``, in any case, as ImageFolder
finds them.

Images of any mode reach the model with its channels (palette, RGBA, CMYK, ... converted by
PIL, :func:`actextract.data.samples.convert_image`); a truncated or corrupt file is a
:class:`~actextract.data.samples.BadSample`, whatever PIL's ``LOAD_TRUNCATED_IMAGES`` says. With
``on_device`` the loader workers only read the files (JPEGs travel as bytes, other formats as
pixels) and :class:`actextract.data.decode.DeviceDecoder` decodes and preprocesses them on the
run's device.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from actextract.data.rules import check_normalize
from actextract.data.samples import Preprocess, SampleDataset, Source, convert_image, note_mode
from actextract.errors import SourceError, option

__all__ = ["JPEG_MAGIC", "JPEG_MODES", "open_folder"]

JPEG_MAGIC = b"\xff\xd8\xff"  # SOI marker and the first byte of the next marker


class _ImageFiles(Dataset):
    """A flat folder of images: items are (``loader(path)``, -1), a PIL image by default."""

    def __init__(self, paths: Sequence[Path], loader: Callable[[str], Any] | None = None):
        self.paths = list(paths)
        self.loader = loader or _load_pil

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.loader(str(self.paths[index])), -1


def open_folder(spec: str, path: str, preprocess: Preprocess, *, on_device: bool = False) -> Source:
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(path).expanduser()
    if not path or not root.is_dir():
        raise SourceError(
            f"{option('dataset')} {spec}: folder '{root}' does not exist or is not a directory."
        )
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    if files:
        _check_flat(spec, root, files)
    pre = preprocess.over(Preprocess(channels=3))
    # decoded on the device: the workers only read (and, for non-JPEGs, decode) the files
    check_normalize(pre.channels, pre.mean, pre.std)  # also where the device normalises
    transform = None if on_device else pre.transform()
    loader = partial(_load_encoded if on_device else _load_pil, channels=pre.channels)
    described = pre.describe(pil=True)
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
            f"{option('dataset')} {spec}: no images found in '{root}' ({e}). A folder source "
            f"holds image files ({', '.join(IMG_EXTENSIONS)}) directly, or in one subfolder per "
            "class."
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
        f"{option('dataset')} {spec}: folder '{root}' holds {_count(len(files), 'image')} at "
        f"its top level ({_some([p.name for p in files], 3)}) and "
        f"{_count(len(classes), 'subfolder')} with images "
        f"({_some([f'{c}/' for c in classes], 5)}); a folder source is either a flat folder of "
        "images or one subfolder of images per class, not both (read as either, this one would "
        "leave images out). Move the loose images into a class subfolder (or out of the "
        "folder), or point --dataset at a folder that holds only one kind."
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
