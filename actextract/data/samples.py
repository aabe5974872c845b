"""Samples: what a source yields, and how samples are batched (images become tensors in
:mod:`actextract.data.images`; inputs that are tuples or dicts batch in
:mod:`actextract.data.inputs`).

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
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from actextract.data.images import (  # re-exported: where the stages have taken them from
    Preprocess,
    convert_image,
    note_mode,
)
from actextract.data.inputs import (
    Inputs,
    Padding,
    SampleShape,
    WithRecords,
    as_inputs,
    map_tensors,
    pad_sample,
    per_sample_shape,
    shape_text,
    split_label,
    stack,
)
from actextract.data.rules import as_label

__all__ = [
    "BadSample",
    "Batch",
    "Encoded",
    "Preprocess",
    "Sample",
    "SampleDataset",
    "Source",
    "as_shape",
    "collate",
    "collate_encoded",
    "convert_image",
    "make_loader",
    "note_mode",
]

log = logging.getLogger(__name__)


class Sample(NamedTuple):
    """One loaded sample. ``input``: (C, H, W) or any per-sample shape, float; or a tuple or
    dict of tensors (:mod:`actextract.data.inputs`)."""

    input: Inputs
    label: int
    index: int
    id: str
    records: dict[str, torch.Tensor] | None = None  # kept by the store, not the model's input


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

    inputs: Inputs | None  # a tensor, or a tuple or dict of them (actextract.data.inputs)
    labels: torch.Tensor  # (B,) int64
    indices: torch.Tensor  # (B,) int64, dataset rows
    ids: list[str]
    bad: list[BadSample] = field(default_factory=list)
    encoded: Encoded | None = None
    records: dict[str, torch.Tensor] | None = None  # (B, T) each: a packed window's tokens

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        # ``encoded`` stays pageable: nvJPEG reads JPEG bytes from host memory itself, outside
        # the stream bookkeeping of torch's pinned-memory cache, and pixels are rare.
        if self.inputs is None:
            return self
        return replace(self, inputs=map_tensors(torch.Tensor.pin_memory, self.inputs))


def collate(items: Sequence[Sample | BadSample], *, shape: SampleShape | None = None) -> Batch:
    """Stack the good samples into ``inputs`` (B, *shape); ``bad`` is sorted by index.

    ``shape``: the run's per-sample input shape (that of the first sample, which decided the
    layers' shapes); a sample of another shape becomes a BadSample. Without it, a sample whose
    shape differs from the batch's most common one does. Either message says how to make
    inputs one size."""
    good = [s for s in items if isinstance(s, Sample)]
    bad = [s for s in items if isinstance(s, BadSample)]
    if good:
        shapes = [per_sample_shape(s.input) for s in good]
        if shape is not None:
            common = as_shape(shape)
            whose = "the run's"
            why = " (that of the first sample, which decided the layers' shapes)"
        else:
            by_text = {repr(sh): sh for sh in shapes}  # dict shapes do not hash
            common = by_text[Counter(repr(sh) for sh in shapes).most_common(1)[0][0]]
            whose, why = "the batch's", ""
        fix = (
            "pass --resize and --crop to bring every input to one size"
            if isinstance(good[0].input, torch.Tensor)
            else "pad or cut every sequence to one length (the tokenizer's padding='max_length')"
        )
        bad += [
            BadSample(
                s.index,
                s.id,
                f"input shape {shape_text(sh)} differs from {whose} {shape_text(common)}{why}; "
                f"{fix}",
            )
            for s, sh in zip(good, shapes, strict=True)
            if sh != common
        ]
        good = [s for s, sh in zip(good, shapes, strict=True) if sh == common]
    records = None
    if good and good[0].records is not None:
        records = {k: torch.stack([s.records[k] for s in good]) for k in good[0].records}
    return Batch(
        inputs=stack([s.input for s in good]) if good else None,
        labels=torch.tensor([s.label for s in good], dtype=torch.int64),
        indices=torch.tensor([s.index for s in good], dtype=torch.int64),
        ids=[s.id for s in good],
        bad=sorted(bad, key=lambda b: b.index),
        records=records,
    )


def as_shape(shape: Any) -> Any:
    """A run's per-sample input shape as :func:`per_sample_shape` gives it: a tuple of ints
    (from a list or ``torch.Size``), a tuple of them, or a dict of them."""
    if isinstance(shape, dict):
        return {k: tuple(v) for k, v in shape.items()}
    if len(shape) and not isinstance(shape[0], int):
        return tuple(tuple(v) for v in shape)
    return tuple(shape)


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

    def __init__(
        self,
        base: Any,
        *,
        transform: Callable | None,
        ids: Sequence[str] | None,
        pad: Padding | None = None,
    ):
        self.base = base
        self.transform = transform
        self.ids = ids
        self.pad = pad  # dict samples padded to one length (a tokenizer's, --max-length)

    def padded(self, pad: Padding) -> SampleDataset:
        """This dataset with every dict sample padded to ``pad.to`` tokens."""
        return SampleDataset(self.base, transform=self.transform, ids=self.ids, pad=pad)

    def __len__(self) -> int:
        return len(self.base)

    def sample_id(self, index: int) -> str:
        return self.ids[index] if self.ids is not None else str(index)

    def __getitem__(self, index: int) -> Sample | BadSample:
        return self.sample(index, lambda: self.base[index])

    def sample(self, index: int, read: Callable[[], Any]) -> Sample | BadSample:
        """Row ``index`` from the item ``read()`` gives (the base dataset's, or the next one
        an iterable yields), or a BadSample when reading or transforming it raised."""
        try:
            item = read()
            if isinstance(item, Mapping):  # a dict row: its label key is the label
                x, label = split_label(item)
                label = -1 if label is None else label
            elif isinstance(item, tuple | list) and len(item) == 1:  # (input,): no label
                x, label = item[0], -1
            elif isinstance(item, tuple | list):
                x, label = item[0], item[1]
            else:
                x, label = item, -1
            if self.transform is not None:
                x = self.transform(x)
            records = None
            if isinstance(x, WithRecords):  # what the store keeps of it, beside the inputs
                x, records = x.inputs, x.records
            x = as_inputs(x)  # a tensor, or a tuple or dict of them
            if self.pad is not None:
                x = pad_sample(x, self.pad)
            label = as_label(label)  # an integer class index, or -1 (see actextract.data.rules)
        except Exception as e:  # any failure of user data becomes a reported bad sample
            log.debug("sample %d (%s) failed", index, self.sample_id(index), exc_info=True)
            return BadSample(index, self.sample_id(index), f"{type(e).__name__}: {e}")
        return Sample(x, label, index, self.sample_id(index), records)


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
    records: tuple[str, ...] = ()  # what each sample carries for the store (packed text)
    repeatable: str = ""  # why the samples' order cannot be listed again ("": it can)
    # an iterable read once (actextract.data.streams.Stream): ``dataset`` holds only its first
    # samples, for the probe, and the run reads them all from here, its length unknown
    stream: Any = None

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
    input_shape: SampleShape | None = None,
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
        shape = as_shape(input_shape) if input_shape is not None else None
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
