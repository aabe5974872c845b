"""What the integrity checks cost: the maps job as shipped, against the same job with the
crc32c checksum, the NaN/Inf row check, or both switched off, interleaved in one process.

    python benchmarks/bench_integrity.py [--n 10000] [--repeats 3] [--device cpu]

Writes benchmarks/results/integrity-<device>.json and .md (or under --out): the median time
of each variant and their ratios (the ratios are what carries across machines).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

import actextract
from actextract.extraction import transfer
from actextract.store import chunks, run

RESULTS = Path(__file__).parent / "results"
LAYERS = "conv1,relu1,pool1,conv2,relu2,pool2"  # the maps workload of bench_extract.py


VARIANTS = ("shipped", "no-crc32c", "no-nonfinite", "unchecked")


@contextmanager
def without(crc: bool, nonfinite: bool):
    """No checksum computed (``crc``: the chunks' four bytes stay 0, and the store is
    deleted unread), no row flagged and the check not run (``nonfinite``): the same write
    path otherwise, on the device and on the host."""
    saved = chunks._extend, chunks.nonfinite_rows, run.nonfinite_rows, transfer.nonfinite_rows
    if crc:
        chunks._extend = lambda value, data: value
    if nonfinite:
        chunks.nonfinite_rows = run.nonfinite_rows = lambda rows: np.zeros(len(rows), bool)
        transfer.nonfinite_rows = lambda t: torch.zeros(len(t), dtype=torch.bool, device=t.device)
    try:
        yield
    finally:
        chunks._extend, chunks.nonfinite_rows, run.nonfinite_rows, transfer.nonfinite_rows = saved


def one(variant: str, n: int, device: str, scratch: Path) -> float:
    out = scratch / f"{variant}.zarr"
    off = {
        "shipped": (False, False),
        "no-crc32c": (True, False),
        "no-nonfinite": (False, True),
        "unchecked": (True, True),
    }[variant]
    t0 = time.perf_counter()
    with without(*off):
        _extract(out, n, device)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out)
    return seconds


def _extract(out: Path, n: int, device: str) -> None:
    actextract.extract(
        "digits-cnn",
        f"synthetic:{n}:1:28:28",
        layers=LAYERS,
        out=out,
        batch_size=64,
        device=device,
        progress=False,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Folder for the results.")
    parser.add_argument("--tmp", type=Path, default=None, help="Scratch folder for the stores.")
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench-integrity-", dir=args.tmp) as tmp:
        # warm-up: imports, allocator, caches
        one("shipped", min(args.n, 1_000), args.device, Path(tmp))
        for _ in range(args.repeats):
            for variant in times:
                times[variant].append(one(variant, args.n, args.device, Path(tmp)))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: round(med["unchecked"] / v, 3) for k, v in med.items()}
    result = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "n": args.n,
        "layers": LAYERS,
        "seconds": times,
        "median_s": med,
        "throughput_vs_unchecked": ratio,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"integrity-{args.device}.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "".join(f"| {v} | {med[v]:.2f} | {ratio[v]:.3f} |\n" for v in VARIANTS)
    (args.out / f"integrity-{args.device}.md").write_text(
        f"# Cost of the integrity checks ({args.device}, {torch.get_num_threads()} threads)\n\n"
        f"digits-cnn, {LAYERS}, N={args.n:,}, float16, no compression, whole extract calls, "
        f"median of {args.repeats}, variants interleaved. shipped: crc32c on every chunk and "
        "the NaN/Inf row check.\n\n"
        "| variant | median s | throughput vs unchecked |\n|---|--:|--:|\n" + rows
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
