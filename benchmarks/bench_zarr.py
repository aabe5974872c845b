"""zarr's own write settings, and the zarrs Rust codec pipeline, on actextract's write pattern:
each row block of each layer is one whole chunk written in one aligned call
(``arr[start:stop] = block``) from 1-4 writer threads, fill value NaN.

    python benchmarks/bench_zarr.py            # about 3 minutes on 2 cores
    python benchmarks/bench_zarr.py --tiny     # a few seconds: checks the harness, not speed
    pip install zarrs                          # to measure the zarrs rows (else: 'unavailable')

Data: digits-cnn's conv1 (~0% zeros) and relu1 (~50% zeros) for seeded random inputs, as
float16, in chunks of (768, 32, 26, 26) = 33 MB. Each measurement writes ``--blocks`` row blocks
of both layers into a fresh store (like ``Store.write_block``), the blocks shared among
``writers`` threads. Speeds are MB/s of raw data (into the page cache: nothing is fsynced); CPU
is user+sys seconds of the whole process (every zarr, codec and Rust thread) per GB of raw
data: on a small machine that is what competes with the model's forward pass.

Each process-wide setting runs in its own child process (``threading.max_workers`` is read once
per process, when zarr makes its thread pool; the codec pipeline is chosen when an array is
opened). Every setting is changed alone from zarr's defaults. A last check kills (SIGKILL) a
process in the middle of rewriting a chunk (codecs none and zstd, with zarr-python's pipeline
and with zarrs) and reports what is left on disk and what reading it back gives.

Writes benchmarks/results/zarr-settings-<machine>.json and .md, and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr

LAYERS = ("conv1", "relu1")
CODECS = ("none", "lz4", "zstd")
PIPELINES = {"zarr-python": None, "zarrs": "zarrs.ZarrsCodecPipeline"}
# one knob at a time, each away from zarr's default (10, 1 and None in zarr 3.1)
CONCURRENCY = (1, 32)
BATCH_SIZE = (4, 16)
MAX_WORKERS = (1, 2, 4)
NUMCODECS_WARNING = "Numcodecs codecs are not in the Zarr"  # lz4: as quiet_numcodecs()


@dataclass(frozen=True)
class Case:
    """One measurement: a pipeline, a codec, a number of writer threads, and the zarr settings
    that differ from the defaults (None: zarr's default)."""

    pipeline: str
    codec: str
    writers: int
    write_empty_chunks: bool = False
    concurrency: int | None = None  # async.concurrency
    max_workers: int | None = None  # threading.max_workers
    batch_size: int | None = None  # codec_pipeline.batch_size

    @property
    def setting(self) -> str:
        """What differs from the defaults, e.g. 'write_empty_chunks=True' or 'defaults'."""
        parts = [
            f"{name}={value}"
            for name, value in (
                ("write_empty_chunks", self.write_empty_chunks or None),
                ("async.concurrency", self.concurrency),
                ("threading.max_workers", self.max_workers),
                ("codec_pipeline.batch_size", self.batch_size),
            )
            if value is not None
        ]
        return ", ".join(parts) or "defaults"

    def zarr_config(self) -> dict[str, Any]:
        """The settings to hold while the arrays are created and written."""
        values = {
            "async.concurrency": self.concurrency,
            "codec_pipeline.batch_size": self.batch_size,
        }
        return {k: v for k, v in values.items() if v is not None}


def plan_cases(codecs: list[str], writers: list[int], zarrs: bool) -> list[Case]:
    """The matrix: write_empty_chunks both ways, then each knob alone, for every codec and
    writer count; zarrs with write_empty_chunks both ways (its other knobs are its own)."""
    cases = []
    for codec in codecs:
        for w in writers:
            cases += [Case("zarr-python", codec, w), Case("zarr-python", codec, w, True)]
            cases += [Case("zarr-python", codec, w, concurrency=c) for c in CONCURRENCY]
            cases += [Case("zarr-python", codec, w, batch_size=b) for b in BATCH_SIZE]
            cases += [Case("zarr-python", codec, w, max_workers=m) for m in MAX_WORKERS]
            if zarrs:
                cases += [Case("zarrs", codec, w), Case("zarrs", codec, w, True)]
    return cases


# -- data ------------------------------------------------------------------------------------
def make_activations(n: int, seed: int) -> dict[str, np.ndarray]:
    """digits-cnn's conv1 and relu1 for ``n`` seeded random inputs: (n, 32, 26, 26) float16."""
    import torch

    from actextract.model.capture import build_capture
    from actextract.model.zoo import load_model

    torch.manual_seed(seed)  # the model's initial weights
    module = load_model("digits-cnn").module
    # hooks: the same module outputs as fx, without seconds of tracing
    capture = build_capture(module, list(LAYERS), model_name="digits-cnn", method="hooks")
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for start in range(0, n, 256):
            x = torch.randn(min(256, n - start), 1, 28, 28, generator=gen)
            for name, act in capture(x).items():
                if name not in out:
                    out[name] = np.empty((n, *act.shape[1:]), dtype=np.float16)
                out[name][start : start + len(x)] = act.to(torch.float16).numpy()
    capture.close()
    return out


def compressors_json(codec: str) -> list[dict[str, Any]] | None:
    """actextract's compressors for ``codec`` (StoreOptions.compressors), as zarr JSON, so
    that the child processes need not import actextract (and torch)."""
    from actextract.store.layout import StoreOptions, quiet_numcodecs

    with quiet_numcodecs():
        comps = StoreOptions(codec=codec).compressors()
    return [c.to_dict() for c in comps] if comps else None


def zarrs_status() -> tuple[str | None, str]:
    """(version, '') when zarrs imports, else (None, why not)."""
    try:
        import zarrs
    except Exception as e:  # ImportError, or a broken build raising something else
        return None, f"zarrs is not importable ({type(e).__name__}: {e}); pip install zarrs"
    return str(getattr(zarrs, "__version__", "?")), ""


# -- child processes: one per process-wide setting -------------------------------------------
def configure_process(pipeline: str, max_workers: int | None) -> None:
    """Process-wide settings, before the first zarr call makes the event loop and pool."""
    warnings.filterwarnings("ignore", message=NUMCODECS_WARNING)
    settings: dict[str, Any] = {"threading.max_workers": max_workers}
    if PIPELINES[pipeline]:
        import zarrs  # noqa: F401  (registers nothing; the config below selects it)

        # strict: an array zarrs cannot handle raises instead of falling back to zarr-python
        settings |= {"codec_pipeline.path": PIPELINES[pipeline], "codec_pipeline.strict": True}
    zarr.config.set(settings)


def create_arrays(
    path: Path, case: Case, shapes: dict[str, tuple[int, ...]], rows: int, compressors: Any
) -> dict[str, zarr.Array]:
    """A store laid out as actextract's: acts/<layer> of (N, ...) in chunks of ``rows``."""
    group = zarr.open_group(zarr.storage.LocalStore(path), mode="w")
    return {
        name: group.create_array(
            f"acts/{name}",
            shape=shape,
            chunks=(rows, *shape[1:]),
            dtype="float16",
            fill_value=np.nan,
            compressors=compressors,
            config={"write_empty_chunks": case.write_empty_chunks},
        )
        for name, shape in shapes.items()
    }


def write_blocks(arrays: dict[str, zarr.Array], data: dict[str, np.ndarray], rows: int, w: int):
    """Every row block of every layer, one whole-chunk write each, from ``w`` threads (a block
    is one thread's job, its layers in turn, as Store.write_block)."""

    def write_block(b: int) -> None:
        sl = slice(b * rows, (b + 1) * rows)
        for name, arr in arrays.items():
            arr[sl] = data[name][sl]

    n_blocks = len(next(iter(data.values()))) // rows
    with ThreadPoolExecutor(max_workers=w, thread_name_prefix="writer") as pool:
        list(pool.map(write_block, range(n_blocks)))


def cpu_seconds() -> tuple[float, float]:
    """(user + sys, sys) seconds of this whole process, all threads."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, ru.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has been busy (and the hypervisor has stolen),
    from /proc/stat; 0 where there is none. Less this process's own: the others' load."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def chunk_files(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*") if p.is_file() and p.name != "zarr.json")


def measure(case: Case, data: dict[str, np.ndarray], job: dict[str, Any]) -> dict[str, Any]:
    """Median wall and CPU time of writing ``data`` as ``case`` says, over ``repeats``."""
    rows, scratch = job["chunk_rows"], Path(job["scratch"])
    shapes = {name: a.shape for name, a in data.items()}
    raw = sum(a.nbytes for a in data.values())
    walls, cpus, syss, others = [], [], [], []
    disk = chunks = 0
    for r in range(job["repeats"]):
        path = scratch / f"{case.pipeline}-{os.getpid()}-{r}.zarr"
        with zarr.config.set(case.zarr_config()):
            arrays = create_arrays(path, case, shapes, rows, job["compressors"][case.codec])
            pipe = arrays[LAYERS[0]].async_array.codec_pipeline
            if case.pipeline == "zarrs" and getattr(pipe, "impl", None) is None:
                raise RuntimeError(f"zarrs did not take the array ({type(pipe).__name__})")
            c0, s0, m0 = *cpu_seconds(), machine_busy_seconds()
            t0 = time.perf_counter()
            write_blocks(arrays, data, rows, case.writers)
            t1 = time.perf_counter()
            c1, s1, m1 = *cpu_seconds(), machine_busy_seconds()
            for name, arr in arrays.items():  # spot check: the first block reads back
                if not np.array_equal(arr[:rows], data[name][:rows], equal_nan=True):
                    raise RuntimeError(f"{name}: the data read back differ from those written")
        sizes = [p.stat().st_size for p in chunk_files(path)]
        disk, chunks = sum(sizes), len(sizes)
        shutil.rmtree(path)
        walls.append(t1 - t0)
        cpus.append(c1 - c0)
        syss.append(s1 - s0)
        others.append(max(0.0, (m1 - m0) - (c1 - c0)) / (t1 - t0))
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return {
        "mb": round(raw / 1e6, 1),
        "wall_s": round(wall, 3),
        "mb_s": round(raw / 1e6 / wall, 1),
        "cpu_s": round(cpu, 3),
        "sys_s": round(statistics.median(syss), 3),
        "cpu_s_per_gb": round(cpu / (raw / 1e9), 2),
        "cpu_per_wall": round(cpu / wall, 2),
        # cores that other processes (and the hypervisor) kept busy meanwhile: contention
        "others_per_wall": round(statistics.median(others), 2),
        "ratio": round(raw / max(1, disk), 2),
        "chunks": chunks,
    }


def warm_up(cases: list[Case], data: dict[str, np.ndarray], job: dict[str, Any]) -> None:
    """Untimed: one row block with the first case of each codec. A process's first large writes
    pay for the event loop, the thread pool and fresh memory (page faults); without this, the
    first case measured in each process reads 20-40% slow."""
    rows = job["chunk_rows"]
    first_block = {name: a[:rows] for name, a in data.items()}
    for codec in dict.fromkeys(c.codec for c in cases):
        case = next(c for c in cases if c.codec == codec)
        with contextlib.suppress(Exception):  # a codec zarrs does not take: said on its case
            measure(case, first_block, {**job, "repeats": 1})


def unsupported(case: Case, compressors: Any, scratch: Path) -> str | None:
    """Why zarrs does not take an array of ``case.codec``, or None when it does."""
    if case.pipeline != "zarrs":
        return None
    try:
        create_arrays(scratch / f"probe-{os.getpid()}.zarr", case, {"x": (1, 1)}, 1, compressors)
    except Exception as e:
        cause = e.__cause__ or e
        return f"{type(cause).__name__}: {cause}".strip(": ")
    finally:
        shutil.rmtree(scratch / f"probe-{os.getpid()}.zarr", ignore_errors=True)
    return None


def run_cases(job: dict[str, Any]) -> None:
    """Child: measure each case of ``job``; one JSON line per case on stdout."""
    configure_process(job["pipeline"], job["max_workers"])
    data = {name: np.load(path) for name, path in job["data"].items()}
    cases = [Case(**fields_) for fields_ in job["cases"]]
    warm_up(cases, data, job)
    for case in cases:
        comps = job["compressors"][case.codec]
        why = unsupported(case, comps, Path(job["scratch"]))
        if why:
            row = {"status": "unsupported", "note": why}
        else:
            try:
                row = {"status": "ok", "note": "", **measure(case, data, job)}
            except Exception as e:
                row = {"status": "failed", "note": f"{type(e).__name__}: {e}"}
        print(json.dumps({**asdict(case), **row}), flush=True)


def run_kill_child(job: dict[str, Any]) -> None:
    """Child: write every chunk of one array once, say the size of a whole chunk file, then
    rewrite them in turn until killed (or until ``seconds`` pass)."""
    configure_process(job["pipeline"], None)
    block = np.load(job["block"])
    rows, n_chunks = len(block), job["n_chunks"]
    arr = zarr.create_array(
        zarr.storage.LocalStore(job["path"]), shape=(rows * n_chunks, *block.shape[1:]),
        chunks=block.shape, dtype="float16", fill_value=np.nan, compressors=job["compressors"],
    )  # fmt: skip
    for i in range(n_chunks):
        arr[i * rows : (i + 1) * rows] = block
    full = max(p.stat().st_size for p in chunk_files(Path(job["path"])))
    print(f"ready {full}", flush=True)
    end = time.monotonic() + job["seconds"]
    i = 0
    while time.monotonic() < end:
        arr[(i % n_chunks) * rows : (i % n_chunks + 1) * rows] = block
        i += 1


def child(job: dict[str, Any], scratch: Path) -> subprocess.Popen:
    """This file run as a child process on ``job``; its stderr goes to a file in scratch."""
    job_path = scratch / f"job-{time.monotonic_ns()}.json"
    job_path.write_text(json.dumps(job))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(job_path)]
    with (scratch / f"{job_path.stem}.err").open("w") as err:  # the child keeps its own copy
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)


def stderr_tail(proc: subprocess.Popen) -> str:
    name = proc.args[-1].removesuffix(".json") + ".err"
    lines = Path(name).read_text().strip().splitlines()
    return lines[-1] if lines else ""


def run_group(
    pipeline: str, max_workers: int | None, cases: list[Case], job: dict[str, Any], scratch: Path
) -> list[dict[str, Any]]:
    """One child process for the cases that share process-wide settings; rows as they come."""
    proc = child(
        {**job, "kind": "cases", "pipeline": pipeline, "max_workers": max_workers,
         "cases": [asdict(c) for c in cases]},
        scratch,
    )  # fmt: skip
    rows = []
    for line in proc.stdout or ():
        row = json.loads(line)
        rows.append(row)
        print(format_row(row), flush=True)
    rc = proc.wait()
    done = {case_of(r) for r in rows}
    for case in cases:  # a child that died leaves its remaining cases as failed, not missing
        if case not in done:
            why = f"child process exited {rc}: {stderr_tail(proc)}"
            rows.append({**asdict(case), "status": "failed", "note": why})
    return rows


# -- what a kill in the middle of a chunk write leaves -------------------------------------
def kill_mid_write(
    pipeline: str, codec: str, block: np.ndarray, scratch: Path, n_chunks: int, seconds: float
) -> dict[str, Any]:
    """SIGKILL a process while it rewrites a chunk (all of them were written whole once), then
    list the files left and read every chunk back with zarr-python's own pipeline."""
    path = scratch / f"kill-{pipeline}-{codec}.zarr"
    block_path = scratch / "kill-block.npy"
    np.save(block_path, block)
    proc = child(
        {"kind": "kill", "pipeline": pipeline, "block": str(block_path), "path": str(path),
         "compressors": compressors_json(codec), "n_chunks": n_chunks, "seconds": seconds + 5},
        scratch,
    )  # fmt: skip
    head = {"pipeline": pipeline, "codec": codec}
    ready = (proc.stdout.readline() if proc.stdout else "").split()
    if not ready or ready[0] != "ready":
        proc.wait()
        return {**head, "status": "failed", "note": stderr_tail(proc)}
    full, seen = int(ready[1]), None
    end = time.monotonic() + seconds
    while seen is None and time.monotonic() < end and proc.poll() is None:
        for root, _, names in os.walk(path / "c"):
            for name in names:
                file = os.path.join(root, name)
                try:
                    size = os.stat(file).st_size
                except FileNotFoundError:  # a temp file renamed away meanwhile
                    continue
                if name.endswith(".partial") or size < full:
                    os.kill(proc.pid, signal.SIGKILL)
                    seen = {"file": os.path.relpath(file, path), "size": size}
                    break
            if seen:
                break
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    files = {str(p.relative_to(path)): p.stat().st_size for p in sorted(chunk_files(path))}
    arr = zarr.open_array(zarr.storage.LocalStore(path, read_only=True), mode="r")
    rows, reads = len(block), {}
    for i in range(n_chunks):
        try:
            back = arr[i * rows : (i + 1) * rows]
        except Exception as e:
            reads[i] = f"error: {type(e).__name__}: {str(e)[:120]}"
            continue
        if np.array_equal(back, block):
            reads[i] = "ok"
        elif np.isnan(back).all():
            reads[i] = "fill (no chunk)"
        else:
            reads[i] = "garbage: read without error but differs from what was written"
    truncated = {k: v for k, v in files.items() if not k.endswith(".partial") and v != full}
    partial = [k for k in files if k.endswith(".partial")]
    verdict = (
        f"{len(truncated)} chunk(s) left truncated in place ({truncated}, whole: {full})"
        if truncated
        else "no chunk truncated"
    ) + f"; {len(partial)} '.partial' temp file(s) left behind"
    shutil.rmtree(path)
    return {
        **head,
        "status": "ok" if seen else "not caught",
        "seen_mid_write": seen,
        "chunk_bytes": full,
        "files_after_kill": files,
        "reads_with_zarr_python": reads,
        "verdict": verdict,
    }


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, where there is one. (bench_tools.cpu_name does
    the same, but importing it would load torch into every child process: 4x the run time.)"""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "cpu"
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or "cpu"


# -- report ----------------------------------------------------------------------------------
def case_of(row: dict[str, Any]) -> Case:
    return Case(**{f.name: row[f.name] for f in fields(Case)})


def format_row(r: dict[str, Any]) -> str:
    head = f"{r['pipeline']:>11} {r['codec']:>5} w{r['writers']}  {case_of(r).setting:<34}"
    if r["status"] != "ok":
        return f"{head} {r['status']}: {r['note']}"
    return (
        f"{head} {r['mb_s']:8.1f} MB/s  {r['cpu_s_per_gb']:6.2f} CPU s/GB  "
        f"cpu/wall {r['cpu_per_wall']:.2f}  others {r['others_per_wall']:.2f}"
    )


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]], kills: list[dict]) -> str:
    def key(r: dict[str, Any]) -> tuple:
        return (CODECS.index(r["codec"]) if r["codec"] in CODECS else 9, r["writers"])

    base = {
        (r["codec"], r["writers"]): r
        for r in rows
        if r["pipeline"] == "zarr-python" and r["setting"] == "defaults" and r["status"] == "ok"
    }
    defaults = ", ".join(f"{k}={v}" for k, v in meta["zarr_defaults"].items())
    lines = [
        f"# zarr write settings on actextract's write pattern ({meta['machine']})",
        "",
        f"{meta['data']}. zarr {meta['zarr']}, numcodecs {meta['numcodecs']}, zarrs "
        f"{meta['zarrs'] or 'unavailable'}; {meta['cpus']} CPUs, load average "
        f"{meta['loadavg_before']} before, {meta['loadavg_after']} after.",
        "",
        "MB/s: raw data per second of wall time; CPU s/GB: user+sys seconds of the whole "
        "process per GB of raw data; CPU/wall: cores this process kept busy; others: cores that "
        "other processes kept busy meanwhile (a shared machine's noise); ×: speed against "
        "zarr-python's defaults for the same codec and writers; ratio: raw / on disk. zarr's "
        f"defaults: {defaults}.",
        "",
        "| codec | writers | pipeline | setting | MB/s | × | CPU s/GB | CPU/wall | others "
        "| ratio |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=key):
        if r["status"] != "ok":
            lines.append(
                f"| {r['codec']} | {r['writers']} | {r['pipeline']} | {r['setting']} | "
                f"{r['status']}: {r['note']} | | | | | |"
            )
            continue
        b = base.get((r["codec"], r["writers"]))
        rel = f"{r['mb_s'] / b['mb_s']:.2f}" if b else ""
        lines.append(
            f"| {r['codec']} | {r['writers']} | {r['pipeline']} | {r['setting']} | {r['mb_s']} | "
            f"{rel} | {r['cpu_s_per_gb']} | {r['cpu_per_wall']} | {r.get('others_per_wall', '')} | "
            f"{r['ratio']} |"
        )
    lines += ["", "## Killed (SIGKILL) in the middle of a chunk write", ""]
    for k in kills:
        what = f"- {k['pipeline']}, codec {k['codec']}"
        if k.get("status") not in ("ok", "not caught"):
            lines.append(f"{what}: {k['status']}: {k.get('note', '')}")
            continue
        reads = ", ".join(f"chunk {i}: {v}" for i, v in k["reads_with_zarr_python"].items())
        lines.append(
            f"{what}: {k['status']} (seen mid-write: {k['seen_mid_write']}); "
            f"{k['verdict']}. Read back with zarr-python: {reads}."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny data: runs in seconds")
    p.add_argument("--blocks", type=int, default=4, help="row blocks written per measurement")
    p.add_argument("--chunk-rows", type=int, default=768, help="rows per chunk (33 MB a layer)")
    p.add_argument("--writers", default="1,2", help="writer thread counts, comma-separated")
    p.add_argument("--codecs", default=",".join(CODECS), help="codecs, comma-separated")
    p.add_argument("--repeats", type=int, default=1, help="repeats per case (median kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scratch", help="folder for the stores written (default: a temp folder)")
    p.add_argument("--machine", help="name in the results' file names (default: arch-Ncpu)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run a child job
    args = p.parse_args(argv)
    if args.worker:
        job = json.loads(Path(args.worker).read_text())
        (run_cases if job["kind"] == "cases" else run_kill_child)(job)
        return
    if args.tiny:
        args.blocks, args.chunk_rows = 2, 16
    writers = [int(w) for w in args.writers.split(",")]
    codecs = args.codecs.split(",")
    version, why_not = zarrs_status()
    cases = plan_cases(codecs, writers, zarrs=version is not None)
    machine = args.machine or f"{platform.machine()}-{os.cpu_count()}cpu"
    loadavg_before = [round(x, 2) for x in os.getloadavg()]

    t0 = time.perf_counter()
    data = make_activations(args.blocks * args.chunk_rows, args.seed)
    print(f"  [activations in {time.perf_counter() - t0:.1f} s]")
    zeros = {name: round(float((a == 0).mean()), 3) for name, a in data.items()}
    mb = sum(a.nbytes for a in data.values()) / 1e6
    shape = (args.chunk_rows, *data[LAYERS[0]].shape[1:])
    desc = (
        f"digits-cnn {', '.join(f'{k} ({v:.0%} zeros)' for k, v in zeros.items())}, float16, "
        f"chunks {shape} = {np.prod(shape) * 2 / 1e6:.1f} MB, {args.blocks} row blocks × "
        f"{len(data)} layers = {mb:.0f} MB per measurement"
    )
    print(desc)
    with tempfile.TemporaryDirectory(prefix="bench-zarr-", dir=args.scratch) as tmp:
        scratch = Path(tmp)
        paths = {}
        for name, a in data.items():
            paths[name] = str(scratch / f"data-{name}.npy")
            np.save(paths[name], a)
        job = {
            "data": paths,
            "chunk_rows": args.chunk_rows,
            "repeats": args.repeats,
            "scratch": str(scratch),
            "compressors": {c: compressors_json(c) for c in codecs},
        }
        rows: list[dict[str, Any]] = []
        groups: dict[tuple[str, int | None], list[Case]] = {}
        for case in cases:
            groups.setdefault((case.pipeline, case.max_workers), []).append(case)
        for (pipeline, max_workers), group in groups.items():
            t0 = time.perf_counter()
            rows += run_group(pipeline, max_workers, group, job, scratch)
            print(
                f"  [{pipeline}, threading.max_workers={max_workers}: {len(group)} cases in "
                f"{time.perf_counter() - t0:.1f} s]"
            )
        if version is None:
            rows += [
                {**asdict(Case("zarrs", c, w, wec)), "status": "unavailable", "note": why_not}
                for c in codecs
                for w in writers
                for wec in (False, True)
            ]
        # a whole 33 MB chunk (tiny: 8 MB, and a kill that may come too late to land mid-write)
        kill_rows, kill_chunks, kill_s = (192, 2, 1.0) if args.tiny else (768, 4, 10.0)
        block = np.resize(data["relu1"][:kill_rows], (kill_rows, *shape[1:]))
        kills = []
        for pipeline in PIPELINES:
            for codec in ("none", "zstd"):
                if pipeline == "zarrs" and version is None:
                    kills.append(
                        {"pipeline": pipeline, "codec": codec, "status": "unavailable",
                         "note": why_not}
                    )  # fmt: skip
                else:
                    t0 = time.perf_counter()
                    kills.append(
                        kill_mid_write(pipeline, codec, block, scratch, kill_chunks, kill_s)
                    )
                    print(
                        f"  [kill mid-write, {pipeline}, {codec}: {kills[-1]['status']} in "
                        f"{time.perf_counter() - t0:.1f} s]"
                    )
    for r in rows:
        r["setting"] = case_of(r).setting

    meta = {
        "machine": machine,
        "platform": f"{platform.machine()}, {cpu_model()}",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "zarr": zarr.__version__,
        "numcodecs": numcodecs.__version__,
        "numpy": np.__version__,
        "zarrs": version,
        "zarrs_unavailable": why_not or None,
        "zarr_defaults": {
            "array.write_empty_chunks": zarr.config.get("array.write_empty_chunks"),
            "async.concurrency": zarr.config.get("async.concurrency"),
            "threading.max_workers": zarr.config.get("threading.max_workers"),
            "codec_pipeline.batch_size": zarr.config.get("codec_pipeline.batch_size"),
        },
        "data": desc,
        "zeros": zeros,
        "chunk_shape": list(shape),
        "blocks": args.blocks,
        "mb_per_case": round(mb, 1),
        "repeats": args.repeats,
        "tiny": args.tiny,
        "loadavg_before": loadavg_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"zarr-settings-{machine}"
    result = {"meta": meta, "results": rows, "kill_mid_write": kills}
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    table = markdown(meta, rows, kills)
    (out / f"{name}.md").write_text(table)
    print(table)
    print(f"wrote {out / name}.json and .md")


if __name__ == "__main__":
    main()
