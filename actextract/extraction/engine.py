"""Engine: the loop. Batches in, activations to the sink, timings and progress out.

Per batch: host→device (``non_blocking`` from pinned memory, or the GPU decoder), autocast
forward through the capture, reduce and cast on the device, then the sink says where the rows
go and the copies land straight in its row-block buffers (pinned, on a side stream:
:mod:`actextract.extraction.transfer`), whose writer threads compress and write while the next
batch computes; on a CPU whose cores the forward uses, the loop waits while they write instead
(turns: :mod:`actextract.extraction.sink`). The loop knows nothing of the Zarr layout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from actextract.core.devices import PRECISIONS, autocast
from actextract.data.inputs import (
    Inputs,
    attention_mask,
    batch_len,
    map_tensors,
    token_records,
)
from actextract.data.samples import BadSample, Batch
from actextract.errors import BadSampleError, OptionError, option
from actextract.extraction.blocks import Filled
from actextract.extraction.sink import Sink
from actextract.extraction.transfer import ToHost
from actextract.stats.parts import PartWriter

if TYPE_CHECKING:
    from actextract.model.trim import Trim

__all__ = [
    "RunOptions",
    "Summary",
    "check_bad",
    "compiled",
    "cudnn_autotune",
    "device_inputs",
    "merge_summaries",
    "run",
    "to_device",
]


@dataclass(frozen=True)
class RunOptions:
    """How the loop runs, decided once before it starts."""

    device: torch.device
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast)
    channels_last: bool = False
    on_bad_sample: str = "error"  # error | skip
    progress: bool | None = None  # None: a bar only on a terminal (tqdm's disable=None)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise OptionError(
                f"{option('precision')} '{self.precision}' is not one of {', '.join(PRECISIONS)}."
            )
        if self.on_bad_sample not in ("error", "skip"):
            raise OptionError(
                f"{option('on_bad_sample')} '{self.on_bad_sample}' is not 'error' or 'skip'."
            )


@dataclass
class Summary:
    """End-of-run numbers. On the CPU data wait, compute, device→host and write wait add up to
    about ``seconds``; on CUDA the copies run on a side stream beside the forward, and
    ``d2h`` is their GPU time, which overlaps ``compute``."""

    images: int = 0
    seconds: float = 0.0
    bytes_written: int = 0  # uncompressed activation bytes
    held_bytes: int = 0  # of those, written from the layer outputs themselves (CPU), not copied
    data_wait: float = 0.0  # waiting for the loader
    compute: float = 0.0  # forward, reduce, copy launch
    d2h: float = 0.0  # copies into the host ring (CUDA: GPU time of the side-stream copies)
    write_wait: float = 0.0  # waiting for a host buffer, the writers' turns, and the flush
    write_cpu: float = 0.0  # CPU seconds the writer threads spent (beside the loop or in turns)
    skipped: list[BadSample] = field(default_factory=list)
    nonfinite: dict[str, int] = field(default_factory=dict)  # rows with NaN/Inf, per layer

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        """Uncompressed activation megabytes written per second of the run."""
        return self.bytes_written / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "images": self.images,
            "skipped": len(self.skipped),
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 1),
            "bytes_written": self.bytes_written,
            "held_bytes": self.held_bytes,
            "mb_per_s": round(self.mb_per_s, 1),
            "data_wait_s": round(self.data_wait, 3),
            "compute_s": round(self.compute, 3),
            "d2h_s": round(self.d2h, 3),
            "write_wait_s": round(self.write_wait, 3),
            "write_cpu_s": round(self.write_cpu, 3),
            "nonfinite": dict(self.nonfinite),
        }


def merge_summaries(parts: list[dict]) -> dict:
    """One summary for the processes of a torchrun job (``Summary.as_dict`` each): counts and
    times add up, the run lasts as long as its slowest process, the rates are the job's."""
    seconds = max(p["seconds"] for p in parts)
    added = ("images", "skipped", "bytes_written", "held_bytes")
    out: dict = {k: sum(p.get(k, 0) for p in parts) for k in added}
    for k in ("data_wait_s", "compute_s", "d2h_s", "write_wait_s", "write_cpu_s"):
        out[k] = round(sum(p.get(k, 0) for p in parts) / len(parts), 3)  # per process, mean
    nonfinite: dict[str, int] = {}
    for p in parts:
        for layer, n in p.get("nonfinite", {}).items():
            nonfinite[layer] = nonfinite.get(layer, 0) + n
    return {
        **out,
        "seconds": seconds,
        "images_per_s": round(out["images"] / seconds, 1) if seconds > 0 else 0.0,
        "mb_per_s": round(out["bytes_written"] / 1e6 / seconds, 1) if seconds > 0 else 0.0,
        "nonfinite": nonfinite,
        "processes": len(parts),
    }


Outputs = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


def run(
    loader: Iterable[Batch],
    forward: Callable[[torch.Tensor], Outputs],
    sink: Sink,
    options: RunOptions,
    *,
    total: int | None,
    decode: Callable[[Batch], Batch] | None = None,
    stats: PartWriter | None = None,
    grad_mode: Callable[[], AbstractContextManager] = torch.inference_mode,
    trim: Trim | None = None,
) -> Summary:
    """Push every batch of ``loader`` through ``forward`` (capture + reduce: the row arrays,
    and the layer outputs that ``stats`` sums on the device) into ``sink``, under
    ``grad_mode`` (the capture's: ``no_grad`` where it checks version counters).

    ``decode`` (:class:`actextract.data.decode.DeviceDecoder`) turns batches of undecoded images
    into inputs on the device, and may find bad samples among them. ``trim``
    (:class:`actextract.model.trim.Trim`): a text batch is computed at the length of its real
    tokens, and its outputs put back at the run's. ``total``: the rows to come (None: not
    known, a stream's; the bar counts without an end)."""
    summary = Summary()
    to_host = ToHost(options.device)
    bar = tqdm(
        total=total,
        unit="img",
        unit_scale=True,
        disable=None if options.progress is None else not options.progress,
        desc="extract",
        dynamic_ncols=True,
    )
    start = tick = time.perf_counter()
    with bar, grad_mode(), cudnn_autotune(options.device):
        for batch in loader:
            now = time.perf_counter()
            summary.data_wait += now - tick
            batch = decode(batch) if decode else batch
            tokens = token_records(batch.inputs, batch.records)  # text: mask, ids, from the host
            span = None
            if trim is not None and batch.inputs is not None:  # on the host: the padding cut
                cut, span = trim.cut(batch.inputs)
                batch = replace(batch, inputs=cut)
            batch = to_device(batch, options)
            if batch.bad:
                check_bad(batch.bad, options.on_bad_sample)
                summary.skipped.extend(batch.bad)
            acts, raw = {}, {}
            if batch.inputs is not None:
                with autocast(options.device, options.precision):
                    acts, raw = forward(batch.inputs)
                if span is not None:
                    acts, raw = trim.put_back(acts, raw, span)  # type: ignore[union-attr]
            indices = batch.indices.numpy()
            if stats is not None:
                bad = [s.index for s in batch.bad]
                mask = trim.mask(batch.inputs, span) if trim else attention_mask(batch.inputs)
                stats.add(raw, indices, batch.labels.numpy(), bad, mask)
            runs, waited = sink.place(indices, batch.bad)  # waits while every buffer is taken
            ready, copied = to_host(acts, runs, also=raw)
            waited += sink.filled(
                Filled(indices, batch.labels.numpy(), batch.ids, batch.bad, ready, tokens)
            )
            if stats is not None:
                waited += stats.maybe_commit()  # now and then, the sums so far to the store
            bar.update(len(batch.ids) + len(batch.bad))
            tick = time.perf_counter()
            summary.compute += tick - now - waited - copied  # forward, reduce, bookkeeping
            summary.write_wait += waited
            summary.d2h += copied
            summary.images += len(batch.ids)
        flush = time.perf_counter()
        sink.close()
        if stats is not None:
            stats.close()
        summary.write_wait += time.perf_counter() - flush
    summary.d2h += to_host.gpu_seconds()
    summary.seconds = time.perf_counter() - start
    summary.bytes_written = sink.bytes_written
    summary.held_bytes = to_host.held_bytes
    summary.write_cpu = sink.write_cpu
    summary.nonfinite = dict(sink.nonfinite)
    return summary


@contextmanager
def cudnn_autotune(device: torch.device) -> Iterator[None]:
    """cuDNN picks the fastest kernels for the run's fixed shapes (CUDA only); the caller's
    setting is restored afterwards."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def compiled(
    forward: Callable[[torch.Tensor], Outputs],
    batch_size: int,
    options: RunOptions,
) -> Callable[[torch.Tensor], Outputs]:
    """``torch.compile`` of capture + reduce (default mode: no CUDA graphs, whose output
    buffers the next batch would overwrite while the side stream still copies them). A batch
    shorter than ``batch_size`` (the last one, or one with bad samples removed) is padded with
    zeros and its outputs cut back, so it runs the compiled code instead of compiling again;
    in eval mode no sample sees another, so padding changes no output."""
    fn = torch.compile(forward)

    def call(x: Inputs) -> Outputs:
        n = batch_len(x)
        if n == batch_size:
            return fn(x)

        def padded(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t, t.new_zeros((batch_size - n, *t.shape[1:]))])

        acts, raw = fn(device_inputs(map_tensors(padded, x), options))
        return {k: v[:n] for k, v in acts.items()}, {k: v[:n] for k, v in raw.items()}

    return call


def to_device(batch: Batch, options: RunOptions) -> Batch:
    """The batch with its (B, ...) inputs on the device: non-blocking from pinned memory."""
    if batch.inputs is None:
        return batch
    return replace(batch, inputs=device_inputs(batch.inputs, options))


def device_inputs(inputs: Inputs, options: RunOptions) -> Inputs:
    """(B, ...) inputs (each tensor of a tuple or dict) → the device (non-blocking from pinned
    memory); NHWC when asked (4-d tensors only)."""

    def one(t: torch.Tensor) -> torch.Tensor:
        x = t.to(options.device, non_blocking=True)
        if options.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    return map_tensors(one, inputs)


def check_bad(bad: list[BadSample], policy: str) -> None:
    if policy == "skip":
        return
    first = bad[0]
    raise BadSampleError(
        f"sample {first.index} ('{first.id}') could not be used: {first.error}. Fix or remove "
        "it, or pass --on-bad-sample skip (on_bad_sample='skip') to leave its row empty (NaN, "
        "label -1) and go on."
    )
