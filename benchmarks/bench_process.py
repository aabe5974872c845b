"""One process per measurement: each timed call of a method runs in a process of its own,
forked from a server process that has imported torch, torchvision and actextract and run
nothing (multiprocessing's forkserver), so that a method's RSS, CPU seconds and I/O counters
(``/proc/self/io``) are its own, no method inherits another's heap, and a process starts in
milliseconds. Before each, every dirty page of the last one's writes goes to the disk
(``settle_page_cache``), so none is throttled for another's bytes. The process builds the
case's model and data (seeded, outside the clock), warms the method up on two batches, touches
as much free memory as the case's largest output (``warm_free_memory``: this machine's host
takes back pages its guest leaves free, and a write to such a page costs a fault on the host),
then times one call over all the rows. A case whose ``memory`` is ``cold`` instead waits
``COLD_IDLE`` seconds first, until the host has taken the free pages back: every method then
writes into pages the host must fault in again, as on this machine when it has been idle.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import resource
import shutil
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from bench_machine import (
    PeakRSS,
    disk_free,
    folder_bytes,
    process_io,
    settle_page_cache,
    warm_free_memory,
)
from bench_tools import METHODS, Bench, Case, prepare, sync

PRELOAD = ["bench_process", "bench_tools", "bench_machine", "actextract", "torchvision"]
COLD_IDLE = 20.0  # seconds idle before a "cold" call: the host has taken the free pages back


@dataclass(frozen=True)
class Run:
    """One timed call of one method."""

    seconds: float
    peak_rss: int  # bytes
    rss_growth: int  # bytes above the RSS at the call's start
    disk_bytes: int  # what the method left in its output folder
    summary: dict | None  # actextract's store.attrs["summary"]
    cpu: tuple[float, float]  # user and system CPU seconds of this process (every thread)
    io: dict[str, int]  # /proc/self/io counters over the call
    warmed: int = 0  # bytes of free memory touched just before (bench_machine.warm_free_memory)


class Measurer:
    """Measurements in processes of their own (see the module docstring); a context manager
    that owns the server process."""

    def __init__(self, device: str, scratch: Path):
        self.device, self.scratch = device, scratch
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)

    def __enter__(self) -> Measurer:
        return self

    def __exit__(self, *exc) -> None:
        from multiprocessing import forkserver

        with contextlib.suppress(AttributeError):  # a private API: else it ends with us
            forkserver._forkserver._stop()  # the server and its imports go with the run

    def call(self, fn, *args) -> object:
        """``fn(*args)`` in a fresh process; its return value, or its error raised here."""
        receive, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_child, args=(send, fn, args), daemon=True)
        proc.start()
        send.close()
        try:
            ok, value = receive.recv()
        except EOFError:
            proc.join()
            raise RuntimeError(f"the measuring process died (exit code {proc.exitcode})") from None
        proc.join()
        if not ok:
            raise RuntimeError(f"in the measuring process:\n{value}")
        return value

    def measure(self, case: Case, method: str) -> tuple[Run | None, str | None]:
        """One timed call of ``method`` over every row of ``case`` after its warm-up, in a
        process of its own: the run, or None and why it would not fit. Every call starts
        from a quiet page cache (the last one's writes on the disk)."""
        settle_page_cache()
        if case.memory == "cold":
            time.sleep(COLD_IDLE)
        return self.call(measure_case, case, method, self.device, self.scratch)  # type: ignore[return-value]


def _child(send, fn, args) -> None:
    try:
        send.send((True, fn(*args)))
    except BaseException:
        send.send((False, traceback.format_exc()))
    finally:
        send.close()


def measure_case(
    case: Case, method: str, device: str, scratch: Path
) -> tuple[Run | None, str | None]:
    """In the measuring process: prepare, check that it fits, warm up, measure."""
    b = prepare(case, torch.device(device))
    gc.collect()
    gc.freeze()  # the imports live on: the collections before each RSS baseline stay short
    why = wont_fit(b, method, scratch)
    if why:
        return None, why
    measure(b, method, warmup_rows(case, method), scratch)
    # the same warm memory for every method of the case: as much as the most it writes
    most = int(1.2 * case.n * sum(b.layer_elems.values()) * 4)
    warmed = warm_free_memory(most) if case.memory == "warm" else 0
    run = measure(b, method, range(case.n), scratch)
    return replace(run, warmed=warmed), None


def measure(b: Bench, method: str, rows: Sequence[int], scratch: Path) -> Run:
    """One call of ``method`` over ``rows``, timed, its peak RSS sampled; its output deleted."""
    out = scratch / method
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with PeakRSS() as rss:
        before = resource.getrusage(resource.RUSAGE_SELF)
        io = process_io()
        start = time.perf_counter()
        extra = METHODS[method](b, rows, out)
        sync(b.device)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        io = {k: v - io[k] for k, v in process_io().items()}
    disk = folder_bytes(out)
    shutil.rmtree(out)
    cpu = (after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime)
    return Run(seconds, rss.peak, rss.peak - rss.start, disk, extra.get("summary"), cpu, io)


def warmup_rows(case: Case, method: str) -> Sequence[int]:
    """Two batches; for ceiling, hooks and the peer also the last, shorter batch, so that
    cuDNN has tuned every batch shape before the clock starts (actextract's runs share the
    tuning)."""
    head = range(min(case.n, 2 * case.batch_size))
    if method.startswith("actextract") or case.n % case.batch_size == 0:
        return head
    return [*head, *range(max(len(head), case.n - case.n % case.batch_size), case.n)]


def wont_fit(b: Bench, method: str, scratch: Path) -> str | None:
    """Why ``method`` cannot run the whole case in this machine's free RAM or scratch disk."""
    import psutil

    per_image = sum(b.layer_elems.values())
    if method == "hooks":  # float32 lists, plus one layer concatenated; then all of it saved
        ram = b.case.n * (per_image + max(b.layer_elems.values())) * 4
        disk = b.case.n * per_image * 4
    elif method == "peer":  # memory a few batches; the .npy parts all of it in float32
        ram, disk = 0, b.case.n * per_image * 4
    elif method.startswith("actextract"):  # memory bounded; the store at most its raw size
        itemsize = 4 if method.endswith("float32") else np.dtype(b.case.dtype).itemsize
        ram, disk = 0, b.case.n * per_image * itemsize
    else:
        return None
    free_ram, free_disk = psutil.virtual_memory().available, disk_free(scratch)
    spare = "+10 % and 1 GB spare"
    if ram * 1.1 + 1e9 > free_ram:
        return f"needs ~{ram / 1e9:.2f} GB of RAM ({spare}), {free_ram / 1e9:.1f} GB available"
    if disk * 1.1 + 1e9 > free_disk:
        return f"needs ~{disk / 1e9:.2f} GB ({spare}) in {scratch}, {free_disk / 1e9:.1f} GB free"
    return None
