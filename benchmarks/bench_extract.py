"""Benchmark: actextract against a bare forward pass and hand-written hooks + ``np.save``.

Three ways of getting the chosen layers' activations for the whole dataset, in one run, on the
same model (seeded random weights), inputs, batches and device:

- ``forward``: the forward pass alone, nothing captured or copied (the upper bound);
- ``hooks_npsave``: the tutorials' way: forward hooks appending ``out.cpu().numpy()`` to lists,
  then ``np.concatenate`` and ``np.save`` per layer (float32), saves included in the time;
- ``actextract``: ``actextract.extract`` into a Zarr store. Model construction, probe and store
  creation are inside its time, as a user pays them; the other two build the model before the
  clock starts, and their ``setup_s`` says how long building takes.

Each method runs once to warm up, then ``--repeats`` times; the median wall time counts. Only
the ratios within one run mean anything: absolute speed depends on the machine.

    .venv/bin/python benchmarks/bench_extract.py --device cuda --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import actextract
from actextract.engine import autocast, resolve_device
from actextract.models import load_model
from actextract.source import Preprocess, Source, make_loader, open_source


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18", help="model spec (default: resnet18)")
    p.add_argument("--dataset", default="synthetic:512:3:64:64", help="dataset spec")
    p.add_argument("--layers", default="layer3,avgpool", help="comma-separated module names")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    p.add_argument("--out", default="benchmarks/results", help="folder for the JSON result")
    p.add_argument("--tmp", help="scratch folder (default: a temp folder, deleted at the end)")
    return p.parse_args(argv)


def build(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, Source]:
    """The seeded model in eval mode on ``device``, and the source preprocessed as extract
    would (the model's defaults for image sources; synthetic inputs as they are)."""
    torch.manual_seed(0)
    loaded = load_model(args.model)
    source = open_source(args.dataset, Preprocess().over(loaded.preprocess))
    return loaded.module.to(device), source


def batches(source: Source, args: argparse.Namespace, device: torch.device):
    """The loader extract uses: same rows, order, batch size and pinning."""
    return make_loader(
        source, range(len(source)), batch_size=args.batch_size, pin_memory=device.type == "cuda"
    )


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so the clock sees it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def setup_forward(args, device, scratch: Path) -> Callable[[], dict]:
    """Forward pass only: (N, C, H, W) inputs through the model, outputs dropped."""
    model, source = build(args, device)

    def timed() -> dict:
        with torch.inference_mode(), autocast(device, args.precision):
            for batch in batches(source, args, device):
                model(batch.inputs.to(device, non_blocking=True))
        sync(device)
        return {}

    return timed


def setup_hooks_npsave(args, device, scratch: Path) -> Callable[[], dict]:
    """Forward hooks collecting float32 numpy arrays per layer, then one ``.npy`` per layer."""
    model, source = build(args, device)
    names = args.layers.split(",")

    def timed() -> dict:
        outputs: dict[str, list[np.ndarray]] = {name: [] for name in names}

        def hook_for(name: str) -> Callable:
            def hook(module, inputs, out):
                outputs[name].append(out.detach().float().cpu().numpy())  # fp32: no-op float()

            return hook

        handles = [model.get_submodule(n).register_forward_hook(hook_for(n)) for n in names]
        try:
            with torch.inference_mode(), autocast(device, args.precision):
                for batch in batches(source, args, device):
                    model(batch.inputs.to(device, non_blocking=True))
        finally:
            for h in handles:
                h.remove()
        held = sum(a.nbytes for arrays in outputs.values() for a in arrays)  # the lists' peak
        paths = [scratch / f"{name}.npy" for name in names]
        for name, path in zip(names, paths, strict=True):
            np.save(path, np.concatenate(outputs.pop(name)))
        return {"host_bytes_held": held, "disk_bytes": sum(p.stat().st_size for p in paths)}

    return timed


def setup_actextract(args, device, scratch: Path) -> Callable[[], dict]:
    """``actextract.extract`` into ``scratch/run.zarr`` (float16 store, the default). The
    model is built inside the clock here, as a user pays it (the others' ``setup_s`` says how
    long building takes); the store's ``summary`` times the loop alone."""

    def timed() -> dict:
        torch.manual_seed(0)
        store = actextract.extract(
            args.model,
            args.dataset,
            layers=args.layers,
            out=scratch / "run.zarr",
            batch_size=args.batch_size,
            device=device,
            precision=args.precision,
            overwrite=True,
            progress=False,
        )
        sync(device)
        return {"disk_bytes": store.disk_bytes(), "summary": store.attrs["summary"]}

    return timed


METHODS = {"forward": setup_forward, "hooks_npsave": setup_hooks_npsave}
METHODS["actextract"] = setup_actextract


def measure(setup: Callable, args, device, scratch: Path) -> dict:
    """Set up (timed apart as ``setup_s``), one warm-up, then ``args.repeats`` timed calls;
    the last call's extras are kept."""
    start = time.perf_counter()
    timed = setup(args, device, scratch)
    setup_s = time.perf_counter() - start
    timed()
    times, extra = [], {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        extra = timed()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    median = statistics.median(times)
    return {
        "seconds": [round(t, 4) for t in times],
        "median_s": round(median, 4),
        "setup_s": round(setup_s, 4),
        **extra,
    }


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA, else the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or "cpu"


def main(argv: list[str] | None = None) -> None:
    """Run the three methods, print the table, write the JSON."""
    args = parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1:
        raise SystemExit("--repeats and --batch-size must be positive integers.")
    device = resolve_device(args.device)
    n = len(open_source(args.dataset))
    scratch = Path(args.tmp) if args.tmp else Path(tempfile.mkdtemp(prefix="bench-extract-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        results = {name: measure(fn, args, device, scratch) for name, fn in METHODS.items()}
    finally:
        if not args.tmp:
            shutil.rmtree(scratch, ignore_errors=True)

    base, hooks = results["forward"]["median_s"], results["hooks_npsave"]["median_s"]
    # model + source build, inside actextract's clock only; forward's setup also pays imports
    build_s = min(results["forward"]["setup_s"], results["hooks_npsave"]["setup_s"])
    print(
        f"{args.model} on {args.dataset}, layers {args.layers}, batch {args.batch_size}, "
        f"{device} ({device_name(device)}), {args.precision}, median of {args.repeats}"
    )
    print(
        f"{'method':<14}{'median s':>10}{'images/s':>11}{'t/forward':>11}{'t/hooks':>9}"
        f"{'disk MB':>9}"
    )
    for name, r in results.items():
        r["images_per_s"] = round(n / r["median_s"], 1)
        r["time_over_forward"] = round(r["median_s"] / base, 3)
        r["time_over_hooks_npsave"] = round(r["median_s"] / hooks, 3)
        disk = f"{r['disk_bytes'] / 1e6:.1f}" if "disk_bytes" in r else "-"
        print(
            f"{name:<14}{r['median_s']:>10.3f}{r['images_per_s']:>11,.1f}"
            f"{r['time_over_forward']:>11.2f}{r['time_over_hooks_npsave']:>9.2f}{disk:>9}"
        )
    s = results["actextract"]["summary"]
    print(
        f"actextract stages (last run): loop {s['seconds']:.3f} s = data {s['data_wait_s']:.3f}"
        f" + compute {s['compute_s']:.3f} + device→host {s['d2h_s']:.3f}"
        f" + write wait {s['write_wait_s']:.3f}; model "
        f"build {build_s:.3f} s (inside actextract's time, outside the others')"
    )

    report = {
        "params": {k: v for k, v in vars(args).items() if k not in ("out", "tmp")},
        "images": n,
        "torch": torch.__version__,
        "actextract": actextract.__version__,
        "device": str(device),
        "device_name": device_name(device),
        "methods": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{device.type}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', args.model)}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
