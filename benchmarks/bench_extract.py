"""The benchmark suite: actextract against the forward pass alone and against hand-written hooks.

On the same data, the same model (seeded random weights, built outside the clocks) and the
same precision, each workload times these methods:

- ``ceiling``: the forward pass alone, fed as actextract feeds it (its loader and batch size,
  pinned memory and ``non_blocking`` on CUDA, NHWC when the workload says so, autocast,
  inference mode, cuDNN autotuning on CUDA); nothing captured;
- ``hooks``: the tutorials' way: forward hooks appending ``out.detach().float().cpu().numpy()``
  to lists, then ``np.concatenate`` + ``np.save`` per layer (float32), the saves timed;
- ``peer``: a streaming peer's way: the same hooks, and every 8 batches one float32 ``.npy``
  part per layer, concatenated and saved synchronously from the loop;
- ``actextract``: ``actextract.extract`` into a Zarr store with its defaults (float16, no
  codec) but for what the workload names; its fx trace, probe, store creation and flush are
  timed, and its loop-only figures and time split come from the store's ``summary``;
- ``actextract-float32``: the same, storing float32 (the peer's bytes).

Workloads (``--workloads compute,maps,scale``; sizes for CPU / CUDA, ``--tiny`` for seconds):

- ``compute``: resnet18 (CPU) / resnet50 bf16 NHWC (CUDA) at 224², storing avgpool and layer4;
- ``maps``: digits-cnn storing every conv map; on CPU also ``maps-cold``, the same after
  idling into pages the host has taken back (bench_process.py); on CUDA also resnet50's
  layer1-4 maps; and the scratch disk's sequential write speed, plain (page cache, warm and
  cold) and with fsync (the device);
- ``scale``: RSS growth of hooks and actextract at N and 2N on the maps workload.

Every measurement is a process of its own (bench_process.py: forked from a server that has
only imported the libraries), which builds the case, warms its method up on two batches and
times one call; rounds are interleaved (ceiling, hooks, ..., ceiling, ...) ``--repeats``
times so that a machine's drift hits all, and the median counts. Ratios are throughputs:
``actextract/ceiling`` = ceiling's time ÷ actextract's. A thread samples the RSS every 5 ms,
``/proc/self/io`` gives the bytes each method passed to the kernel per byte it stored. Only
ratios within one run compare; absolute speeds are the machine's.

    .venv/bin/python benchmarks/bench_extract.py                       # all, CUDA if present
    .venv/bin/python benchmarks/bench_extract.py --workloads compute --repeats 1
    .venv/bin/python benchmarks/bench_extract.py --tiny --out /tmp/bench   # toy sizes

Writes ``<out>/bench-<device>.jsonl`` (a header line, then one object per measurement, target
and finding, appended as they come) and ``<out>/bench-<device>.md``; ``--tiny`` adds ``-tiny``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_tools, also when loaded by path
from bench_machine import MB, disk_write_mb_per_s, machine_header
from bench_process import Measurer, Run
from bench_report import markdown
from bench_tools import ACTEXTRACT, Case

WORKLOADS = ("compute", "maps", "scale")
DIGITS_MAPS = ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2")
RESNET_MAPS = ("layer1", "layer2", "layer3", "layer4")
GPU_WORKERS = 8  # loader processes on CUDA: synthetic 224² inputs cost ~3-10 ms each on a core
STAGES = ("data_wait", "compute", "d2h", "write_wait")  # the summary's split, `<stage>_s`
FLAT = (1.25, 32.0)  # RSS flat in N: growth(2N) ≤ 1.25 × growth(N), or at most 32 MB more
MAPS_METHODS = ("ceiling", "hooks", "peer", "actextract", "actextract-float32")
# (workload, device type) -> [(method, ratio field of its line, threshold)]
TARGETS = {
    ("compute", "cpu"): [("actextract", "vs_ceiling", 0.95)],
    ("compute", "cuda"): [("actextract", "vs_ceiling", 0.90)],
    ("maps", "cpu"): [("actextract", "vs_ceiling", 0.75), ("actextract-float32", "vs_peer", 1.2)],
    ("maps", "cuda"): [("actextract", "vs_hooks", 5.0), ("actextract", "vs_disk_plain", 0.8)],
}


def workload_cases(workload: str, device: str, tiny: bool) -> list[Case]:
    """The rows of ``workload`` on ``device`` ('cpu' or 'cuda'), at full or toy size."""
    return [case for case in all_cases(device, tiny) if case.workload == workload]


def all_cases(device: str, tiny: bool) -> list[Case]:
    """Every row: the issue's sizes for the CPU and for one CUDA GPU, or toy sizes."""
    digits = dict(model="digits-cnn", shape=(1, 28, 28))
    maps = dict(workload="maps", layers=DIGITS_MAPS, methods=MAPS_METHODS, **digits)
    scale = dict(workload="scale", layers=DIGITS_MAPS, methods=("hooks", "actextract"), **digits)
    compute = dict(workload="compute", layers=("avgpool", "layer4"), shape=(3, 224, 224))
    if tiny:
        cases = [
            Case("compute", "compute", layers=("pool2", "fc1"), n=64, batch_size=16, **digits),
            Case("maps", n=64, batch_size=16, **maps),
            *(Case(f"scale-{n}", n=n, batch_size=16, **scale) for n in (32, 64)),
        ]
        if device == "cuda":  # the full size's code path: bf16, NHWC, a resnet's block maps
            resnet = dict(model="resnet18", shape=(3, 64, 64), precision="bf16", channels_last=True)
            cases.insert(
                2, Case("maps-resnet", "maps", layers=RESNET_MAPS, n=16, batch_size=8, **resnet)
            )
        return cases
    if device == "cpu":
        return [
            Case("compute", model="resnet18", n=256, batch_size=32, **compute),
            Case("maps", n=20_000, batch_size=64, **maps),
            # the same after idling, into pages this machine's host has taken back
            Case(
                "maps-cold",
                n=20_000,
                batch_size=64,
                memory="cold",
                **{**maps, "methods": tuple(m for m in MAPS_METHODS if m != "hooks")},
            ),
            *(Case(f"scale-{n}", n=n, batch_size=64, **scale) for n in (5_000, 10_000)),
        ]
    gpu = dict(num_workers=GPU_WORKERS)
    fast = dict(precision="bf16", channels_last=True, **gpu)
    return [
        Case("compute", model="resnet50", n=10_000, batch_size=256, **compute, **fast),
        # 100,000 images: the hooks' float32 .npy files (26 GB) still fit the GPU machine's disk
        Case("maps", n=100_000, batch_size=1024, **maps, **gpu),
        # the GPU's codec default waits for this: CPU cores are idle there, the disk is not
        Case(
            "maps-lz4",
            n=100_000,
            batch_size=1024,
            codec="lz4",
            **{**maps, "methods": ("ceiling", "actextract")},  # the rest as in "maps"
            **gpu,
        ),
        # ~3 MB per image in float16: 4,096 images are a 12 GB store, 25 GB of .npy
        Case("maps-resnet50", "maps", "resnet50", 4_096, (3, 224, 224), RESNET_MAPS, 256, **fast),
        *(Case(f"scale-{n}", n=n, batch_size=1024, **scale, **gpu) for n in (50_000, 100_000)),
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--repeats", type=int, help="timed runs per method (default 3; --tiny 1)")
    p.add_argument("--tiny", action="store_true", help="toy sizes: the whole suite in seconds")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"), help="results folder")
    p.add_argument("--tmp", help="scratch folder (default: a temp folder, deleted at the end)")
    args = p.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if unknown := [w for w in args.workloads if w not in WORKLOADS]:
        p.error(f"--workloads: unknown {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    if args.repeats is None:
        args.repeats = 1 if args.tiny else 3
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats} must be a positive integer")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available on this machine; use --device cpu")
    return args


def run_case(
    case: Case, repeats: int, measurer: Measurer
) -> tuple[dict[str, list[Run]], dict[str, str]]:
    """``repeats`` interleaved rounds of the case's methods, each call a process of its own;
    a method that would not fit is left out after its first try, with the reason."""
    runs: dict[str, list[Run]] = {m: [] for m in case.methods}
    skipped: dict[str, str] = {}
    for r in range(repeats):
        for method in case.methods:
            if method in skipped:
                continue
            run, why = measurer.measure(case, method)
            if run is None:
                skipped[method] = why or "?"
                log(f"{case.name}: {method} skipped: {why}")
                continue
            runs[method].append(run)
            log(f"{case.name}: {method} {r + 1}/{repeats}: {run.seconds:.3f} s")
    return {m: rs for m, rs in runs.items() if rs}, skipped


def measurement_lines(
    c: Case, runs: dict[str, list[Run]], skipped: dict, device: str, disk: dict | None
) -> list[dict]:
    """One JSON object per method of the case: times, throughput, ratios, MB/s, disk, RSS,
    CPU seconds, the bytes passed to the kernel per byte stored, and for actextract its
    loop-only figures and time split."""
    median = {m: statistics.median(r.seconds for r in rs) for m, rs in runs.items()}
    lines = []
    for method in c.methods:
        line = {
            "kind": "measurement", "workload": c.workload, "case": c.name, "method": method,
            "device": device, "model": c.model, "layers": list(c.layers), "dataset": c.dataset,
            "n": c.n, "batch_size": c.batch_size, "precision": c.precision,
            "channels_last": c.channels_last, "num_workers": c.num_workers, "codec": c.codec,
        }  # fmt: skip
        if method in skipped:
            lines.append({**line, "skipped": skipped[method]})
            continue
        rs, s = runs[method], median[method]
        mid = min(rs, key=lambda r: abs(r.seconds - s))  # the run the median stands for
        line |= {
            "repeats": len(rs),
            "seconds": round(s, 4),
            "seconds_all": [round(r.seconds, 4) for r in rs],
            "images_per_s": round(c.n / s, 1),
            "disk_bytes": mid.disk_bytes,
            "peak_rss_mb": round(max(r.peak_rss for r in rs) / MB, 1),
            "rss_growth_mb": round(max(r.rss_growth for r in rs) / MB, 1),
            # the profile of where CPU time went: user (forward, casts, codecs) and system
            # (the kernel: page-cache copies of the writes, page faults of fresh memory)
            "cpu_user_s": round(mid.cpu[0], 3),
            "cpu_sys_s": round(mid.cpu[1], 3),
            "io": mid.io,
            "warmed_bytes": mid.warmed,
        }
        for other in ("ceiling", "hooks", "peer"):  # throughput ratios: other's time ÷ this
            if other in median and other != method:
                line[f"vs_{other}"] = round(median[other] / s, 3)
        if method in ("hooks", "peer"):
            line["mb_per_s"] = round(mid.disk_bytes / MB / s, 1)  # float32 .npy bytes
            line |= io_per_byte(mid.io, mid.disk_bytes)
        if method in ACTEXTRACT:
            line |= actextract_figures(mid.summary, method, c, median.get("ceiling"), disk)
            line |= io_per_byte(mid.io, mid.summary["bytes_written"])
        lines.append(line)
    return lines


def io_per_byte(io: dict[str, int], stored: int) -> dict:
    """What the process passed to the kernel per byte of activations it stored: written
    through system calls (``wchar``), and read (``rchar``)."""
    if not io or not stored:
        return {}
    return {
        "stored_bytes": stored,
        "written_per_stored_byte": round(io["wchar"] / stored, 3),
        "read_per_stored_byte": round(io["rchar"] / stored, 3),
    }


def actextract_figures(
    summary: dict, method: str, case: Case, ceiling_s: float | None, disk: dict | None
) -> dict:
    """actextract's loop-only throughput, raw MB/s, split and its largest stage."""
    loop = summary["seconds"]
    figures = {
        "dtype": "float32" if method.endswith("float32") else case.dtype,
        "bytes_written": summary["bytes_written"],  # raw (uncompressed) activation bytes
        "mb_per_s": summary["mb_per_s"],  # of the loop, as the summary reports it
        "loop_seconds": loop,
        "loop_images_per_s": summary["images_per_s"],
        "split": {
            stage: {
                "s": summary[f"{stage}_s"],
                "pct": round(100 * summary[f"{stage}_s"] / loop, 1) if loop else 0.0,
            }
            for stage in STAGES
        },
        "bottleneck": max(STAGES, key=lambda stage: summary[f"{stage}_s"]),
        "summary": summary,
    }
    if ceiling_s is not None and loop:
        figures["loop_vs_ceiling"] = round(ceiling_s / loop, 3)
    if disk is not None:
        for kind in ("plain", "fsync"):
            figures[f"vs_disk_{kind}"] = round(summary["mb_per_s"] / disk[f"{kind}_mb_per_s"], 3)
    return figures


def target_lines(lines: list[dict], device: str) -> list[dict]:
    """The case's targets, met or not, with the method's dominant stage where not met."""
    by_method = {line["method"]: line for line in lines}
    workload = lines[0]["workload"]
    out = []
    for method, field, threshold in TARGETS.get((workload, device), []):
        line = by_method.get(method, {})
        value = line.get(field)
        met = None if value is None else value >= threshold
        other = field.removeprefix("vs_")
        what = (
            f"{method}/{other}"
            if field != "vs_disk_plain"
            else f"{method} MB/s ÷ disk MB/s (page cache)"
        )
        out.append(
            {
                "kind": "target", "workload": workload, "case": lines[0]["case"],
                "method": method, "target": f"{what} ≥ {threshold:g}", "value": value,
                "threshold": threshold, "met": met,
                "bottleneck": line.get("bottleneck") if met is False else None,
            }
        )  # fmt: skip
    return out


def scale_lines(lines: list[dict]) -> list[dict]:
    """RSS growth at N and 2N per method, its ratio, and the 'flat in N' target."""
    runs = [line for line in lines if line.get("workload") == "scale" and "rss_growth_mb" in line]
    ns = sorted({line["n"] for line in runs})
    if len(ns) != 2:
        return []
    finding = {"kind": "scale", "workload": "scale", "n": ns}
    for method in ("hooks", "actextract"):
        growth = [
            next((x["rss_growth_mb"] for x in runs if x["method"] == method and x["n"] == n), None)
            for n in ns
        ]
        if None not in growth:
            ratio = round(growth[1] / max(growth[0], 1.0), 2)  # 1 MB floor: no division by ~0
            finding[method] = {"rss_growth_mb": growth, "ratio": ratio}
    out = [finding]
    if "actextract" in finding:
        g1, g2 = finding["actextract"]["rss_growth_mb"]
        met = g2 <= FLAT[0] * g1 or g2 - g1 <= FLAT[1]
        out.append(
            {
                "kind": "target", "workload": "scale", "case": "scale", "method": "actextract",
                "target": f"actextract RSS growth 2N/N ≤ {FLAT[0]:g} (or ≤ {FLAT[1]:g} MB more)",
                "value": finding["actextract"]["ratio"], "threshold": FLAT[0], "met": met,
                "bottleneck": None,
            }
        )  # fmt: skip
    return out


class Results:
    """The run's JSON lines, appended to the .jsonl as they come (a run cut short keeps what
    it measured); the .md table is rewritten from them after every case."""

    def __init__(self, out: Path, stem: str, header: dict):
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl, self.md = out / f"{stem}.jsonl", out / f"{stem}.md"
        self.lines: list[dict] = []
        self.jsonl.write_text("")
        self.add([header])

    def add(self, lines: list[dict]) -> None:
        self.lines += lines
        with self.jsonl.open("a") as f:
            f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        self.md.write_text(markdown(self.lines))


def log(message: str) -> None:
    print(message, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the chosen workloads; write the .jsonl and the .md; print the table."""
    args = parse_args(argv)
    device = torch.device(args.device)
    scratch = Path(args.tmp or tempfile.mkdtemp(prefix="bench-extract-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        with Measurer(device.type, scratch) as measurer:
            header = measurer.call(machine_header, device, scratch)  # CUDA only in children
            header |= {"workloads": args.workloads, "repeats": args.repeats, "tiny": args.tiny}
            stem = f"bench-{device.type}" + ("-tiny" if args.tiny else "")
            results = Results(Path(args.out), stem, header)
            for workload in args.workloads:
                disk = None
                if workload == "maps":
                    size, idle = ((8 << 20), None) if args.tiny else ((2 << 30), 30.0)
                    disk = disk_write_mb_per_s(scratch, size, cold_after=idle)
                    results.add([{"kind": "disk", "workload": "maps", **disk}])
                for case in workload_cases(workload, device.type, args.tiny):
                    repeats = 1 if workload == "scale" else args.repeats  # RSS, not time
                    runs, skipped = run_case(case, repeats, measurer)
                    lines = measurement_lines(case, runs, skipped, device.type, disk)
                    results.add(lines + target_lines(lines, device.type))
                if workload == "scale":
                    results.add(scale_lines(results.lines))
    finally:
        if not args.tmp:
            shutil.rmtree(scratch, ignore_errors=True)
    print(results.md.read_text())
    log(f"wrote {results.jsonl} and {results.md}")


if __name__ == "__main__":
    main()
