"""Decode: batches of undecoded images → model inputs, on the run's device (``--decode gpu``).

A ``folder:`` source opened with ``decode="gpu"`` leaves decoding to this stage: its loader
workers only read the files, and each batch arrives with ``Batch.encoded`` (JPEG files as their
bytes, any other format as pixels the worker decoded) and no ``inputs``. :class:`DeviceDecoder`
decodes the batch's JPEGs in one ``torchvision.io.decode_jpeg`` call (nvJPEG, batched, on CUDA),
moves the other pixels to the device, and applies the source's :class:`Preprocess` steps there,
image by image (sizes differ), before stacking. The inputs equal the CPU path's up to the
decoders' rounding; a JPEG that does not decode becomes a :class:`BadSample`.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import torch

from actextract.data.samples import BadSample, Batch, Preprocess, Sample, collate, collate_encoded

__all__ = ["DeviceDecoder"]

log = logging.getLogger(__name__)

# torchvision's C++ errors start with "function, file.cpp:line, "; the reader wants the rest
_CPP_PREFIX = re.compile(r"^\w+, \S+\.(?:cpp|cu|h):\d+, ")


@dataclass(frozen=True)
class DeviceDecoder:
    """Decodes and preprocesses batches on ``device``; any device (the tests use the CPU).

    ``decoder(batch)``: a batch with ``encoded`` → the same batch with ``inputs``
    (B', C, H, W) float32 on ``device`` for the B' samples that could be used, ``encoded``
    None, and the others added to ``bad``. Batches without ``encoded`` pass unchanged.

    ``input_shape``: the run's per-sample input shape (C, H, W), that of the first sample
    (probed with ``decode_sample``); a decoded image of another shape becomes a BadSample, as
    in ``collate``. None: the batch's most common shape is kept, the others are bad.
    """

    preprocess: Preprocess
    device: torch.device
    input_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:  # accept "cuda:0" as well as torch.device("cuda:0")
        object.__setattr__(self, "device", torch.device(self.device))
        if self.input_shape is not None:  # a torch.Size as well as a tuple
            object.__setattr__(self, "input_shape", tuple(self.input_shape))

    def __call__(self, batch: Batch) -> Batch:
        if batch.encoded is None:
            return batch
        images = self._decode(batch.encoded.unpack())
        rows = zip(images, batch.labels.tolist(), batch.indices.tolist(), batch.ids, strict=True)
        items: list[Sample | BadSample] = []
        for image, label, index, id_ in rows:
            if isinstance(image, str):
                items.append(BadSample(index, id_, image))
                continue
            try:
                items.append(Sample(self._steps(image), label, index, id_))
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # what the CPU path's transform would also have refused
                items.append(BadSample(index, id_, f"{type(e).__name__}: {e}"))
        # collate stacks on the device, turns odd shapes into bad samples and sorts ``bad``
        out = collate([*items, *batch.bad], shape=self.input_shape)
        if out.inputs is not None and self._normalize is not None:
            out.inputs = self._normalize(out.inputs)
        return out

    def decode_sample(self, sample: Sample) -> Sample | BadSample:
        """One undecoded sample → ``Sample`` with ``input`` (C, H, W) float32 on ``device``, or
        the BadSample it turned out to be (for probing shapes before the run)."""
        batch = self(collate_encoded([sample]))
        if batch.inputs is None:
            return batch.bad[0]
        return Sample(batch.inputs[0], sample.label, sample.index, sample.id)

    @cached_property
    def _steps(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Per image: (C, H, W) pixels → float32 [0, 1], channels, resize, crop (the CPU
        path's steps; its Normalize runs once on the stacked batch, see ``_normalize``)."""
        return replace(self.preprocess, mean=None, std=None).transform()

    @cached_property
    def _normalize(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """(B, C, H, W) → normalised, or None when the preprocess has no mean/std."""
        from torchvision.transforms.v2 import functional as F

        mean, std = self.preprocess.mean, self.preprocess.std
        if mean is None or std is None:
            return None
        return lambda x: F.normalize(x, list(mean), list(std))

    @cached_property
    def _mode(self) -> Any:
        from torchvision.io import ImageReadMode

        return {3: ImageReadMode.RGB, 1: ImageReadMode.GRAY}.get(
            self.preprocess.channels or 0, ImageReadMode.UNCHANGED
        )

    @cached_property
    def _stream(self) -> torch.cuda.Stream | None:
        return torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def _decode(self, items: list[torch.Tensor]) -> list[torch.Tensor | str]:
        """JPEG bytes (N,) uint8 and pixels (C, H, W) → pixels on the device, or the error
        message of a JPEG that does not decode. All the JPEGs at once; one by one only when
        that raised, to find the culprits."""
        out: list[torch.Tensor | str] = [
            t.to(self.device, non_blocking=True) if t.ndim != 1 else "" for t in items
        ]
        jpegs = [i for i, t in enumerate(items) if t.ndim == 1]
        if not jpegs:
            return out
        try:
            decoded: list[torch.Tensor | str] = list(self._decode_jpegs([items[i] for i in jpegs]))
        except torch.OutOfMemoryError:
            raise
        except Exception:  # one bad file fails the whole call: find it
            log.debug("batched JPEG decode failed; decoding one by one", exc_info=True)
            decoded = [self._decode_one(items[i]) for i in jpegs]
        for i, image in zip(jpegs, decoded, strict=True):
            out[i] = image
        return out

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor | str:
        try:
            return self._decode_jpegs([data])[0]
        except torch.OutOfMemoryError:
            raise
        except Exception as e:
            error = e
        if self.device.type != "cpu":
            # nvJPEG refuses some files libjpeg-turbo reads (the CPU path would have used them)
            try:
                image = _decode_jpeg([data], self._mode, torch.device("cpu"))[0]
            except Exception:
                pass
            else:
                log.debug("decoded a JPEG on the CPU that %s refused: %s", self.device, error)
                return image.to(self.device)
        return f"JPEG does not decode ({_reason(error)}); the file may be truncated or corrupt"

    def _decode_jpegs(self, data: list[torch.Tensor]) -> list[torch.Tensor]:
        """JPEG bytes → (C, H, W) uint8 on the device, usable on the current stream."""
        stream = self._stream
        if stream is None:
            return _decode_jpeg(data, self._mode, self.device)
        # torchvision's CUDA decoder allocates its outputs on the current stream but writes
        # them from a private stream that does not wait for it: a block freed by queued work
        # could be overwritten before that work has run (pytorch/vision#9606). Decoding with
        # an idle stream of our own current, and recording the images' use on the compute
        # stream, keeps the allocator from handing out memory that is still being read.
        current = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(stream):
            images = _decode_jpeg(data, self._mode, self.device)
        current.wait_stream(stream)
        for image in images:
            image.record_stream(current)
        return images


def _decode_jpeg(data: list[torch.Tensor], mode: Any, device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they still work
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        return list(decode_jpeg(data, mode=mode, device=device))


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {_CPP_PREFIX.sub('', str(error).strip())}"
