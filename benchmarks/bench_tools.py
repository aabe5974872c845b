"""The pieces bench_extract.py measures with: the three methods, the peak-RSS sampler, the disk
and device→host bandwidth probes, and what the header records about the machine (the Markdown
tables are in bench_report.py).

Each method gets a prepared :class:`Bench` (model, source, device built once, outside the
clocks), the rows to run over and an empty folder for its output, and returns its extras. The
caller owns the clock, the RSS sampler and deleting the output.
"""

from __future__ import annotations

import ctypes
import datetime
import gc
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import torch
from torch import nn

import actextract
from actextract.core.devices import autocast
from actextract.data.source import Source, make_loader
from actextract.extraction.engine import RunOptions, cudnn_autotune, device_inputs

MB = 1e6


@dataclass(frozen=True)
class Case:
    """One configuration every method of a row runs on: same data, model and precision."""

    name: str  # the row: compute, maps, maps-resnet50, scale-5000, ...
    workload: str  # compute | maps | scale (what --workloads selects)
    model: str  # an actextract model spec, built once with seeded random weights
    n: int  # images
    shape: tuple[int, int, int]  # (C, H, W) of each synthetic input
    layers: tuple[str, ...]
    batch_size: int
    methods: tuple[str, ...] = ("ceiling", "hooks", "actextract")
    precision: str = "fp32"  # autocast of the forward, for every method
    channels_last: bool = False  # model and inputs NHWC, for every method
    dtype: str = "float16"  # actextract's storage dtype (its default); hooks save float32
    codec: str = "none"  # actextract's codec (its default)
    num_workers: int = 0  # loader processes, for every method

    @property
    def dataset(self) -> str:
        return "synthetic:{}:{}:{}:{}".format(self.n, *self.shape)


@dataclass(frozen=True)
class Bench:
    """A case made ready: the one model object and source that every method is handed."""

    case: Case
    device: torch.device
    model: nn.Module  # eval mode, on ``device``, NHWC when the case says so
    source: Source
    layer_elems: dict[str, int]  # per-image element count of each captured layer


# ---------------------------------------------------------------------------------- methods


def run_ceiling(b: Bench, rows: Sequence[int], out: Path) -> dict:
    """The forward pass alone: actextract's loader and input path, nothing captured."""
    _forward_all(b, rows)
    return {}


def run_hooks(b: Bench, rows: Sequence[int], out: Path) -> dict:
    """The tutorials' way: forward hooks append ``out.detach().float().cpu().numpy()`` to a
    list per layer; then ``np.concatenate`` and ``np.save`` per layer, (N, *shape) float32."""
    held: dict[str, list[np.ndarray]] = {name: [] for name in b.case.layers}

    def keep(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            held[name].append(output.detach().float().cpu().numpy())

        return hook

    handles = [
        b.model.get_submodule(name).register_forward_hook(keep(name)) for name in b.case.layers
    ]
    try:
        _forward_all(b, rows)
    finally:
        for handle in handles:
            handle.remove()
    for name in b.case.layers:
        np.save(out / f"{name}.npy", np.concatenate(held.pop(name)))
    return {}


def run_actextract(b: Bench, rows: Sequence[int], out: Path) -> dict:
    """``actextract.extract`` with its defaults but for what the case names; its fx trace,
    probe, store creation and flush are inside the caller's clock. ``rows``: range(k)."""
    if not (isinstance(rows, range) and rows.start == 0 and rows.step == 1):
        raise ValueError(f"actextract runs over the first rows, range(k), not {rows!r}")
    c = b.case
    store = actextract.extract(
        b.model,
        b.source,
        layers=list(c.layers),
        out=out / "run.zarr",
        batch_size=c.batch_size,
        num_workers=c.num_workers,
        device=b.device,
        precision=c.precision,
        dtype=c.dtype,
        codec=c.codec,
        channels_last=c.channels_last,
        limit=None if len(rows) == len(b.source) else len(rows),
        progress=False,
    )
    sync(b.device)  # extract returns after its flush; nothing should be queued, but be sure
    return {"summary": dict(store.attrs["summary"])}


METHODS: dict[str, Callable[[Bench, Sequence[int], Path], dict]] = {
    "ceiling": run_ceiling,
    "hooks": run_hooks,
    "actextract": run_actextract,
}


def _forward_all(b: Bench, rows: Sequence[int]) -> None:
    """Every batch of ``rows`` through the model as actextract feeds it: same loader and batch
    size, pinned memory and ``non_blocking`` on CUDA, NHWC inputs when the case says so,
    autocast, inference mode, cuDNN autotuning on CUDA. Outputs are dropped (hooks see them)."""
    c = b.case
    options = RunOptions(b.device, c.precision, c.channels_last)
    loader = make_loader(
        b.source,
        rows,
        batch_size=c.batch_size,
        num_workers=c.num_workers,
        pin_memory=b.device.type == "cuda",
    )
    with torch.inference_mode(), cudnn_autotune(b.device), autocast(b.device, c.precision):
        for batch in loader:
            b.model(device_inputs(batch.inputs, options))
    sync(b.device)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock stopped next sees all of it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def layer_elements(model: nn.Module, layers: Sequence[str], x: torch.Tensor) -> dict[str, int]:
    """Per-image element count of each layer's output, from one forward of ``x`` (1, C, H, W)."""
    elems: dict[str, int] = {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: elems.__setitem__(name, o[0].numel())
        )
        for name in layers
    ]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return elems


# ------------------------------------------------------------------------------ peak memory


class PeakRSS:
    """The largest resident set size of this process while the block runs, sampled by a
    thread every ``interval`` seconds (psutil). ``start`` is taken after ``gc.collect()`` and
    giving freed heap back to the system, so that ``peak - start`` is what the block added.
    The loader's worker processes are not counted."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.process = psutil.Process()
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)

    def __enter__(self) -> PeakRSS:
        release_free_memory()
        self.start = self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)


def release_free_memory() -> None:
    """Collect garbage and hand glibc's free heap back to the system: without it the next
    method reuses memory the last one freed and its RSS growth reads too low."""
    gc.collect()
    if platform.system() == "Linux":
        with suppress(OSError, AttributeError):  # not glibc (musl): growth may read low
            ctypes.CDLL("libc.so.6").malloc_trim(0)


# ------------------------------------------------------------------------------- bandwidths


def disk_write_mb_per_s(folder: Path, total: int, block: int = 32 << 20) -> dict:
    """Sequential write speed of ``folder``'s disk: ``total`` random bytes in ``block``-byte
    writes, once with ``fsync`` at the end (what the device takes) and once without (what the
    page cache takes, as the store's un-fsynced writes). MB/s of each; the files are deleted."""
    data = memoryview(np.random.default_rng(0).bytes(min(block, total)))
    result = {}
    for name, flush in (("fsync", True), ("plain", False)):  # fsync first: a clean cache
        path = folder / f"disk-bandwidth-{name}.bin"
        start = time.perf_counter()
        with open(path, "wb", buffering=0) as f:
            written = 0
            while written < total:
                written += f.write(data[: total - written])
            if flush:
                os.fsync(f.fileno())
        result[f"{name}_mb_per_s"] = round(total / MB / (time.perf_counter() - start), 1)
        path.unlink()
    result |= {"bytes": total, "block_bytes": len(data)}
    return result


def pinned_d2h_gb_per_s(device: torch.device, nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Device→host copy speed of a ``nbytes`` CUDA tensor into pinned host memory, GB/s (the
    median of ``repeats`` copies after one warm-up, timed with CUDA events)."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize(device)
    seconds = []
    for _ in range(repeats):
        begin = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        begin.record()
        dst.copy_(src, non_blocking=True)
        end.record()
        end.synchronize()
        seconds.append(begin.elapsed_time(end) / 1e3)  # elapsed_time is in milliseconds
    del src, dst
    torch.cuda.empty_cache()
    return round(nbytes / 1e9 / statistics.median(seconds), 2)


# ---------------------------------------------------------------------------------- machine


def machine_header(device: torch.device, scratch: Path) -> dict:
    """What a result depends on: device, software versions, threads, date, scratch disk."""
    import torchvision
    import zarr

    header = {
        "kind": "header",
        "device": device.type,
        "device_name": device_name(device),
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "zarr": zarr.__version__,
            "numpy": np.__version__,
            "actextract": actextract.__version__,
        },
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "scratch": str(scratch),
        "scratch_fs": filesystem_type(scratch),
        "scratch_free_gb": round(disk_free(scratch) / 1e9, 1),
    }
    if device.type == "cuda":
        header["cuda"] = torch.version.cuda
        header["d2h_pinned_gb_per_s"] = pinned_d2h_gb_per_s(device)
    return header


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA; on the CPU its model name and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} cores)"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (ext4, xfs, tmpfs, ...), or '?'."""
    path = path.resolve()
    best = None
    for part in psutil.disk_partitions(all=True):
        mount = Path(part.mountpoint)
        if path.is_relative_to(mount) and (best is None or len(mount.parts) > len(best[0].parts)):
            best = (mount, part.fstype)
    return best[1] if best else "?"


def disk_free(path: Path) -> int:
    return psutil.disk_usage(str(path)).free


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
