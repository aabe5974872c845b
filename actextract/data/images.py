"""Images: how a PIL image or an image tensor becomes the model's input tensor
(:class:`Preprocess`, a torchvision v2 pipeline), and the PIL modes converted on the way
(:func:`convert_image`; each conversion that is not the model's own is noted once per
process)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from actextract.data.rules import check_normalize

__all__ = ["CONVERSIONS", "Preprocess", "convert_image", "note_mode"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocess:
    """How images become input tensors. ``None`` leaves a step to the next default; ``0`` for
    ``resize`` or ``crop`` turns the step off."""

    channels: int | None = None  # 1 (grayscale) or 3 (RGB)
    resize: int | None = None  # shorter side, in pixels
    crop: int | None = None  # centre crop, square
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def over(self, base: Preprocess) -> Preprocess:
        """These settings, with ``base`` filling the ones left at None."""
        return Preprocess(
            **{k: v if v is not None else getattr(base, k) for k, v in asdict(self).items()}
        )

    def transform(self) -> Callable[[Any], torch.Tensor]:
        """A torchvision v2 pipeline: PIL image or (C, H, W) tensor → (C', H', W') float32."""
        from torchvision.transforms import v2

        check_normalize(self.channels, self.mean, self.std)
        steps: list[Any] = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        if self.channels == 3:
            steps.append(v2.RGB())
        elif self.channels == 1:
            steps.append(v2.Grayscale(num_output_channels=1))
        if self.resize:
            steps.append(v2.Resize(self.resize, antialias=True))
        if self.crop:
            steps.append(v2.CenterCrop(self.crop))
        if self.mean is not None and self.std is not None:
            steps.append(v2.Normalize(list(self.mean), list(self.std)))
        steps.append(v2.ToPureTensor())
        return v2.Compose(steps)

    def describe(self, *, pil: bool = False) -> str:
        """The steps as the store's provenance records them (``pil``: images PIL opened, and
        :func:`convert_image` converted to the model's channels)."""
        pre = self
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


# PIL image modes, by how they reach the tensor steps (ToImage, then RGB or Grayscale to the
# model's channel count). 8-bit RGB and grayscale go as they are, and 16-bit grayscale too:
# ToDtype scales it by 1/65535, where PIL's convert would clip it at 255. Any other mode is
# converted by PIL first, so that a palette image arrives as colours, not indices, and an RGBA
# or CMYK one as three channels.
_TO_L = frozenset({"1", "L", "LA", "I", "F"})
_TO_I16 = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_MODE_NAMES = {
    "1": "1-bit",
    "L": "grayscale",
    "LA": "grayscale+alpha",
    "P": "palette",
    "PA": "palette+alpha",
    "I": "32-bit integer",
    "F": "32-bit float",
    **dict.fromkeys(_TO_I16, "16-bit grayscale"),
}
CONVERSIONS = {  # what convert_image does, as the source's transform describes it
    3: "to_rgb(PIL: palette looked up, CMYK/YCbCr/LAB to RGB, alpha dropped; gray repeated)",
    1: "to_grayscale(PIL: palette looked up, alpha dropped; colour to luma)",
}
_noted: set[tuple[str, int]] = set()  # (mode, channels) noted by this process


def convert_image(image: Any, channels: int | None, name: str = "") -> Any:
    """A PIL image in the mode the tensor steps read right: RGB, L or I;16 (16-bit grayscale).

    A palette image becomes its colours; RGBA, CMYK, YCbCr, ... become RGB (alpha dropped);
    LA, 1-bit, 32-bit integer and float ones become L (PIL clips 32-bit values at 0-255).
    The first image of each mode that is not the model's (``channels``: 3 for RGB, 1 for
    grayscale) is noted in the log, once per process; ``name`` (its file) goes in the note.
    """
    mode = image.mode
    alpha = mode in _ALPHA or (mode == "P" and "transparency" in image.info)
    note_mode(mode, channels, name, alpha)
    target = "I;16" if mode in _TO_I16 else "L" if mode in _TO_L else "RGB"
    if mode == target:
        return image
    if mode == "P" and alpha:  # PIL warns when it drops a palette's transparency by itself
        image = image.convert("RGBA")
    return image.convert(target)


def note_mode(mode: str, channels: int | None, name: str, alpha: bool = False) -> None:
    """Note an image of ``mode`` that the model's ``channels`` make convert (once per mode and
    process), also for images decoded elsewhere (JPEGs decoded on the device)."""
    if channels in CONVERSIONS and mode not in ({"RGB"} if channels == 3 else {"L", *_TO_I16}):
        _note(mode, channels, name, alpha)


def _note(mode: str, channels: int, name: str, alpha: bool) -> None:
    key = f"{mode}+transparency" if mode == "P" and alpha else mode
    if (key, channels) in _noted:
        return
    _noted.add((key, channels))
    what = f"{mode} ({_MODE_NAMES[mode]})" if mode in _MODE_NAMES else mode
    if key != mode:
        what = f"{mode} (palette with transparency)"
    lossy = "; their alpha channel is dropped" if alpha else ""
    if mode in ("I", "F"):
        lossy = "; PIL clips their values to 0-255"
    log.log(
        logging.WARNING if lossy else logging.INFO,
        "%s images are converted to %s for the model's %d input channel%s%s (first: %s); the "
        "store's dataset.transform records the conversion",
        what,
        "RGB" if channels == 3 else "grayscale",
        channels,
        "s" if channels > 1 else "",
        lossy,
        name or "?",
    )
