"""What on-device statistics cost: per-class means (and more) of two feature-map layers,
computed during the pass (--stats), against storing the maps and averaging them afterwards
(the only way before), and against the pass that stores only the output layer.

    python benchmarks/bench_stats.py [--n 10000] [--repeats 3] [--device cpu]

Writes benchmarks/results/stats-<device>.json and .md (or under --out): per variant the median
seconds (extraction, plus the pass over the store that per-class averages need when the maps
are stored), the bytes on disk, and the throughput relative to the output-only pass.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import actextract
from actextract.stats.aggregate import layer_stats

RESULTS = Path(__file__).parent / "results"
MAPS = "conv1,conv2"  # digits-cnn's two convolutions: (32, 26, 26) and (64, 11, 11)

# name: (extract options, layers averaged afterwards from the stored maps)
VARIANTS: dict[str, tuple[dict, list[str]]] = {
    "output only": ({"layers": "fc1"}, []),
    "maps stored + averaged": ({"layers": f"{MAPS},fc1"}, MAPS.split(",")),
    "stats class-mean": (
        {"layers": MAPS, "store_layers": "fc1", "stats": "conv*=class-mean"},
        [],
    ),
    "stats class-mean,class-std": (
        {"layers": MAPS, "store_layers": "fc1", "stats": "conv*=class-std"},
        [],
    ),
    "stats all four kinds": (
        {
            "layers": MAPS,
            "store_layers": "fc1",
            "stats": "conv*=class-std,channel-hist,channel-mean",
        },
        [],
    ),
}


def one(variant: str, n: int, device: str, scratch: Path) -> tuple[float, int]:
    options, averaged = VARIANTS[variant]
    out = scratch / "run.zarr"
    t0 = time.perf_counter()
    store = actextract.extract(
        "digits-cnn",
        f"synthetic:{n}:1:28:28",
        out=out,
        batch_size=64,
        device=device,
        progress=False,
        overwrite=True,
        **options,
    )
    for layer in averaged:
        layer_stats(store, layer)
    seconds = time.perf_counter() - t0
    disk = store.disk_bytes()
    shutil.rmtree(out)
    return seconds, disk


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Folder for the results.")
    parser.add_argument("--tmp", type=Path, default=None, help="Scratch folder for the stores.")
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    disk: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-stats-", dir=args.tmp) as tmp:
        one("stats all four kinds", min(args.n, 1_000), args.device, Path(tmp))  # warm-up
        for _ in range(args.repeats):
            for variant in VARIANTS:  # interleaved: drifts of the machine hit every variant
                seconds, disk[variant] = one(variant, args.n, args.device, Path(tmp))
                times[variant].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["output only"]
    ratio = {k: round(base / v, 3) for k, v in med.items()}
    result = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "n": args.n,
        "layers": MAPS,
        "seconds": times,
        "median_s": med,
        "disk_bytes": disk,
        "throughput_vs_output_only": ratio,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"stats-{args.device}.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "".join(
        f"| {v} | {med[v]:.2f} | {ratio[v]:.3f} | {disk[v] / 1e6:.1f} |\n" for v in VARIANTS
    )
    (args.out / f"stats-{args.device}.md").write_text(
        f"# Cost of on-device statistics ({args.device}, {torch.get_num_threads()} threads)\n\n"
        f"digits-cnn on synthetic 1×28×28 inputs (10 classes), N={args.n:,}, batch 64, "
        f"per-class statistics of {MAPS}; median of {args.repeats}, variants interleaved. "
        "'maps stored + averaged' writes both layers in float16 and then reads them back for "
        "the per-class sums, as the renderer does without --stats.\n\n"
        "| variant | median s | throughput vs output only | MB on disk |\n|---|--:|--:|--:|\n"
        + rows
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
