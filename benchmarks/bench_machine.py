"""The machine a benchmark runs on: the peak-RSS sampler, the process's I/O counters, the disk
and device→host bandwidth probes, and what a result's header records about the machine.
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
from contextlib import suppress
from pathlib import Path

import numpy as np
import psutil
import torch

import actextract
from actextract.extraction.transfer import usable_cores

MB = 1e6
IO_FIELDS = ("rchar", "wchar", "read_bytes", "write_bytes", "syscr", "syscw")


def process_io() -> dict[str, int]:
    """This process's I/O counters (``/proc/self/io``, every thread): bytes read and written
    through system calls (``rchar``, ``wchar``), bytes sent to or fetched from storage
    (``read_bytes``, ``write_bytes``, counted when a page is dirtied) and the calls
    (``syscr``, ``syscw``); {} where the kernel has no such file."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return {}
    values = dict(line.split(": ") for line in text.splitlines() if ": " in line)
    return {k: int(values[k]) for k in IO_FIELDS if k in values}


def settle_page_cache(limit: int = 64 << 20, timeout: float = 120.0) -> float:
    """Flush every dirty page to the disks and wait (at most ``timeout`` seconds) until less
    than ``limit`` bytes are dirty or under writeback, so that each measurement starts from a
    quiet page cache: a method that follows one which left gigabytes to write back would
    otherwise be throttled to the disk's speed for the other's bytes. Seconds it took."""
    start = time.perf_counter()
    os.sync()
    while time.perf_counter() - start < timeout:
        if _meminfo("Dirty") + _meminfo("Writeback") < limit:
            break
        time.sleep(0.1)
    return time.perf_counter() - start


def warm_free_memory(nbytes: int, spare: int = 2 << 30) -> int:
    """Touch ``nbytes`` of fresh memory (at most all but ``spare`` of what is available) and
    give it back. On a virtual machine whose host takes back the pages its guest frees (free
    page reporting, as here) a page the guest has not touched lately costs a fault on the
    host: the page cache took 0.6 GB/s of writes on such pages against 5 GB/s on pages freed
    a moment before. Touching the memory first gives every measurement the warm pages a long
    run has (its page cache recycles its own), whatever the method before it wrote or freed.
    Returns the bytes touched."""
    n = max(0, min(nbytes, psutil.virtual_memory().available - spare))
    if n:
        block = np.empty(n, np.uint8)
        block.fill(1)  # every page written, so every page faulted in
        del block
        release_free_memory()
    return n


def _meminfo(field: str) -> int:
    """A /proc/meminfo figure in bytes (0 where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


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


def disk_write_mb_per_s(
    folder: Path, total: int, block: int = 1 << 20, cold_after: float | None = None
) -> dict:
    """Sequential write speed of ``folder``'s disk: ``total`` random bytes in ``block``-byte
    writes, once with ``fsync`` at the end (what the device takes) and once without into warm
    memory (what the page cache takes, as the store's un-fsynced writes, in the state every
    measurement starts from: :func:`warm_free_memory`). ``cold_after``: also once more after
    that many idle seconds, when a host that takes back free pages has taken them. MB/s of
    each; the files are deleted."""
    data = memoryview(np.random.default_rng(0).bytes(min(block, total)))
    result = {}
    runs = [("fsync", True), ("plain", False)]  # fsync first: a clean cache
    if cold_after is not None:
        runs.append(("plain_cold", False))
    for name, flush in runs:
        settle_page_cache()
        if name == "plain":
            warm_free_memory(total)
        if name == "plain_cold":
            time.sleep(cold_after)
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
        "cpu_cores_usable": usable_cores(),
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
