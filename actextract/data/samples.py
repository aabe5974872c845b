"""Samples: what a source yields, how images become tensors, and how samples are batched.

Every item of a source's dataset is a :class:`Sample` or, when loading it failed, a
:class:`BadSample`; ``collate`` stacks the good ones into a :class:`Batch` and passes the bad
ones along, and the engine decides whether a bad sample stops the run.

A source whose images are decoded on the run's device (``Source.encoded``) batches with
``collate_encoded`` instead: its batches carry the undecoded samples packed in one
:class:`Encoded` buffer and ``inputs=None`` until :class:`actextract.data.decode.DeviceDecoder`
decodes them.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from actextract.data.inputs import Inputs, as_inputs, split_label
from actextract.data.rules import as_label, check_normalize

__all__ = [
    "BadSample",
    "Batch",
    "Encoded",
    "Preprocess",
    "Sample",
    "SampleDataset",
    "Source",
    "collate",
    "collate_encoded",
    "convert_image",
    "make_loader",
    "note_mode",
]

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


class Sample(NamedTuple):
    """One loaded sample. ``input``: (C, H, W) or any per-sample shape, float; or a tuple or
    dict of tensors (:mod:`actextract.data.inputs`)."""

    input: Inputs
    label: int
    index: int
    id: str


class BadSample(NamedTuple):
    """A sample that could not be loaded; ``error`` says why."""

    index: int
    id: str
    error: str


# Every item of an Encoded buffer starts at a multiple of this many bytes, so that a view of
# it can be reinterpreted as any dtype (a view's offset must be a multiple of its item size).
_ALIGN = 16


@dataclass
class Encoded:
    """The B undecoded samples of a batch, packed in one byte buffer so that one tensor, not B,
    crosses from a loader worker (each tensor costs a shared-memory segment and a file
    descriptor). Item i is a JPEG file's bytes, (N,) uint8, or pixels decoded in the worker,
    (C, H, W) (uint8 for 8-bit images)."""

    data: torch.Tensor  # (nbytes,) uint8
    items: list[tuple[int, torch.dtype, tuple[int, ...]]]  # (byte offset, dtype, shape) each

    @classmethod
    def pack(cls, tensors: Sequence[torch.Tensor]) -> Encoded:
        flat = [t.contiguous().reshape(-1).view(torch.uint8) for t in tensors]
        items, offset = [], 0
        for t, b in zip(tensors, flat, strict=True):
            items.append((offset, t.dtype, tuple(t.shape)))
            offset += -(-b.numel() // _ALIGN) * _ALIGN
        data = torch.empty(offset, dtype=torch.uint8)
        for (start, _, _), b in zip(items, flat, strict=True):
            data[start : start + b.numel()] = b
        return cls(data, items)

    def __len__(self) -> int:
        return len(self.items)

    def unpack(self) -> list[torch.Tensor]:
        """The items, as views of ``data`` (no copy)."""
        out = []
        for start, dtype, shape in self.items:
            nbytes = math.prod(shape) * dtype.itemsize
            out.append(self.data[start : start + nbytes].view(dtype).view(shape))
        return out


@dataclass
class Batch:
    """What the loader yields. ``inputs``: (B, ...) for the B good samples, or None. A batch of
    a source decoded on the device has ``encoded`` (its B samples, undecoded) and
    ``inputs=None`` until :class:`actextract.data.decode.DeviceDecoder` has run."""

    inputs: torch.Tensor | None
    labels: torch.Tensor  # (B,) int64
    indices: torch.Tensor  # (B,) int64, dataset rows
    ids: list[str]
    bad: list[BadSample] = field(default_factory=list)
    encoded: Encoded | None = None

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        # ``encoded`` stays pageable: nvJPEG reads JPEG bytes from host memory itself, outside
        # the stream bookkeeping of torch's pinned-memory cache, and pixels are rare.
        if self.inputs is None:
            return self
        return replace(self, inputs=self.inputs.pin_memory())


def collate(items: Sequence[Sample | BadSample], *, shape: tuple[int, ...] | None = None) -> Batch:
    """Stack the good samples into ``inputs`` (B, *shape); ``bad`` is sorted by index.

    ``shape``: the run's per-sample input shape (that of the first sample, which decided the
    layers' shapes); a sample of another shape becomes a BadSample. Without it, a sample whose
    shape differs from the batch's most common one does. Either message says how to make
    inputs one size."""
    good = [s for s in items if isinstance(s, Sample)]
    bad = [s for s in items if isinstance(s, BadSample)]
    if good:
        if shape is not None:
            common = tuple(shape)
            whose = "the run's"
            why = " (that of the first sample, which decided the layers' shapes)"
        else:
            common, _ = Counter(tuple(s.input.shape) for s in good).most_common(1)[0]
            whose, why = "the batch's", ""
        for s in good:
            if tuple(s.input.shape) != common:
                bad.append(
                    BadSample(
                        s.index,
                        s.id,
                        (
                            f"input shape {tuple(s.input.shape)} differs from {whose} "
                            f"{common}{why}; pass --resize and --crop to bring every input to "
                            "one size"
                        ),
                    )
                )
        good = [s for s in good if tuple(s.input.shape) == common]
    return Batch(
        inputs=torch.stack([s.input for s in good]) if good else None,
        labels=torch.tensor([s.label for s in good], dtype=torch.int64),
        indices=torch.tensor([s.index for s in good], dtype=torch.int64),
        ids=[s.id for s in good],
        bad=sorted(bad, key=lambda b: b.index),
    )


def collate_encoded(items: Sequence[Sample | BadSample]) -> Batch:
    """Pack the good samples' undecoded inputs into ``Batch.encoded`` (shapes may differ);
    ``inputs`` stays None until the device decoder has run."""
    good = [s for s in items if isinstance(s, Sample)]
    return Batch(
        inputs=None,
        labels=torch.tensor([s.label for s in good], dtype=torch.int64),
        indices=torch.tensor([s.index for s in good], dtype=torch.int64),
        ids=[s.id for s in good],
        bad=sorted((s for s in items if isinstance(s, BadSample)), key=lambda b: b.index),
        encoded=Encoded.pack([s.input for s in good]),
    )


class SampleDataset(Dataset):
    """Wraps a base dataset: item ``i`` becomes ``Sample(input, label, i, id)``, or a BadSample
    when reading or transforming it raised."""

    def __init__(self, base: Any, *, transform: Callable | None, ids: Sequence[str] | None):
        self.base = base
        self.transform = transform
        self.ids = ids

    def __len__(self) -> int:
        return len(self.base)

    def sample_id(self, index: int) -> str:
        return self.ids[index] if self.ids is not None else str(index)

    def __getitem__(self, index: int) -> Sample | BadSample:
        try:
            item = self.base[index]
            if isinstance(item, Mapping):  # a dict row: its label key is the label
                x, label = split_label(item)
                label = -1 if label is None else label
            elif isinstance(item, tuple | list):
                x, label = item[0], item[1]
            else:
                x, label = item, -1
            if self.transform is not None:
                x = self.transform(x)
            x = as_inputs(x)  # a tensor, or a tuple or dict of them
            label = as_label(label)  # an integer class index, or -1 (see actextract.data.rules)
        except Exception as e:  # any failure of user data becomes a reported bad sample
            log.debug("sample %d (%s) failed", index, self.sample_id(index), exc_info=True)
            return BadSample(index, self.sample_id(index), f"{type(e).__name__}: {e}")
        return Sample(x, label, index, self.sample_id(index))


@dataclass(frozen=True)
class Source:
    """A resolved dataset spec: the dataset, how it was made, what its labels mean."""

    spec: str
    dataset: SampleDataset
    transform: str  # human-readable, for the store's provenance
    classes: tuple[str, ...] | None = None
    # the settings behind ``transform`` for image sources (None: fed as given), kept in the
    # store so that a reader can rebuild the model's inputs (the renderer shows them)
    preprocess: Preprocess | None = None
    # items are undecoded (folder sources opened with decode="gpu"): the loader packs them
    # with ``collate_encoded`` and actextract.data.decode.DeviceDecoder makes the inputs
    encoded: bool = False

    def __len__(self) -> int:
        return len(self.dataset)


def make_loader(
    source: Source,
    rows: Sequence[int],
    *,
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int = 4,
    input_shape: tuple[int, ...] | None = None,
) -> DataLoader:
    """A DataLoader over ``rows`` of the source, in order, yielding :class:`Batch`.

    Workers are persistent (no re-fork per epoch) and each keeps ``prefetch_factor`` batches
    ready; ``pin_memory`` (CUDA only) lets the host→device copy run asynchronously. Batches of
    an encoded source carry ``encoded`` and no ``inputs`` (see ``collate_encoded``).

    ``input_shape``: the run's per-sample input shape, e.g. (3, 224, 224); a sample of another
    shape becomes a BadSample (see ``collate``). Samples of an encoded source are checked
    after decoding, by :class:`actextract.data.decode.DeviceDecoder` (its ``input_shape``).
    """
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor}
    collate_fn: Callable[[Sequence[Sample | BadSample]], Batch] = collate_encoded
    if not source.encoded:  # a partial of a module-level function: picklable for the workers
        shape = tuple(input_shape) if input_shape is not None else None
        collate_fn = partial(collate, shape=shape)
    return DataLoader(
        Subset(source.dataset, rows),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        drop_last=False,
        **extra,
    )
