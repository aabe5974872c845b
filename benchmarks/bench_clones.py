"""What the clones at capture cost: the maps benchmark's job (bench_extract.py's ``maps`` row:
digits-cnn storing every conv map) with its ReLUs in place, as torchvision's models have
them, so that the probe finds conv1 and conv2 written later and clones them on every batch;
against the same job with the clones switched off (its conv maps are then wrong: timing only),
and against the plain digits-cnn, whose ReLUs are out of place (nothing to clone, what
bench_extract runs).

    python benchmarks/bench_clones.py [--n 20000] [--repeats 3] [--device cpu]

Writes benchmarks/results/clones-<device>.json and .md (or under --out): per variant the
median seconds of the whole call and of its loop, the throughput relative to the clones-off
run, which layers were cloned, and how far the clones-off run's maps are from the layers'.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extract import all_cases

import actextract
from actextract.model.capture import Capture
from actextract.model.zoo import DigitsCNN

RESULTS = Path(__file__).parent / "results"
VARIANTS = {
    "in-place ReLUs, clones (actextract)": (True, True),
    "in-place ReLUs, clones off (wrong maps)": (True, False),
    "out-of-place ReLUs (nothing to clone)": (False, True),
}


def model(inplace: bool) -> DigitsCNN:
    torch.manual_seed(0)  # the same weights in every variant
    m = DigitsCNN().eval()
    m.relu1.inplace = m.relu2.inplace = inplace
    return m


@contextmanager
def clones_off():
    """Every capture configured as the probe says, but with no clone (values wrong)."""
    configure = Capture.configure

    def without(self, *, clones=None, **kw):
        configure(self, clones={}, **kw)

    Capture.configure = without
    try:
        yield
    finally:
        Capture.configure = configure


def one(variant: str, case, n: int, device: str, scratch: Path) -> dict:
    inplace, clones = VARIANTS[variant]
    out = scratch / "run.zarr"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    with nullcontext() if clones else clones_off():
        store = actextract.extract(
            model(inplace),
            f"synthetic:{n}:{':'.join(map(str, case.shape))}",
            layers=list(case.layers),
            out=out,
            batch_size=case.batch_size,
            dtype="float32",
            device=device,
            progress=False,
        )
    seconds = time.perf_counter() - t0
    first = {name: store[name][: case.batch_size] for name in ("conv1", "conv2")}
    cloned = [s["name"] for s in store.attrs["layers"] if s.get("clone")]
    return {
        "seconds": seconds,
        "loop": store.attrs["summary"]["seconds"],
        "cloned": cloned,
        "first": first,
    }


def main(argv: list[str] | None = None) -> None:
    case = next(c for c in all_cases("cpu", False) if c.name == "maps")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=case.n)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Folder for the results.")
    parser.add_argument("--tmp", type=Path, default=None, help="Scratch folder for the stores.")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench-clones-", dir=args.tmp) as tmp:
        for variant in VARIANTS:  # warm-up
            one(variant, case, min(args.n, 1_000), args.device, Path(tmp))
        for _ in range(args.repeats):
            for variant in VARIANTS:  # interleaved: drifts of the machine hit every variant
                runs[variant].append(one(variant, case, args.n, args.device, Path(tmp)))
    med = {v: statistics.median(r["seconds"] for r in rs) for v, rs in runs.items()}
    loop = {v: statistics.median(r["loop"] for r in rs) for v, rs in runs.items()}
    base = "in-place ReLUs, clones off (wrong maps)"
    truth = runs["out-of-place ReLUs (nothing to clone)"][0]["first"]
    error = {
        v: {k: float(np.abs(rs[0]["first"][k] - truth[k]).max()) for k in truth}
        for v, rs in runs.items()
    }
    result = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "n": args.n,
        "batch_size": case.batch_size,
        "layers": list(case.layers),
        "seconds": {v: [r["seconds"] for r in rs] for v, rs in runs.items()},
        "median_s": med,
        "median_loop_s": loop,
        "throughput_vs_clones_off": {v: round(med[base] / s, 3) for v, s in med.items()},
        "cloned": {v: rs[0]["cloned"] if VARIANTS[v][1] else [] for v, rs in runs.items()},
        "max_abs_error_first_batch": error,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"clones-{args.device}.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "".join(
        f"| {v} | {', '.join(result['cloned'][v]) or '–'} | {med[v]:.2f} | {loop[v]:.2f} | "
        f"{result['throughput_vs_clones_off'][v]:.3f} | "
        f"{error[v]['conv1']:.3g} / {error[v]['conv2']:.3g} |\n"
        for v in VARIANTS
    )
    (args.out / f"clones-{args.device}.md").write_text(
        f"# Cost of the clones at capture ({args.device}, {torch.get_num_threads()} threads)\n\n"
        f"The maps job of bench_extract.py: digits-cnn on synthetic 1×28×28 inputs, "
        f"N={args.n:,}, batch {case.batch_size}, storing {', '.join(case.layers)} in float32; "
        f"median of {args.repeats}, variants interleaved. With in-place ReLUs the probe finds "
        "conv1 and conv2 written after capture and clones them where they are produced; "
        "'clones off' stores relu1/relu2's values as conv1/conv2 (the error column: max abs "
        "difference of the first batch's conv1 / conv2 from the layers' own values).\n\n"
        "| variant | cloned | median s | loop s | throughput vs clones off | error conv1 / conv2 |"
        "\n|---|---|--:|--:|--:|--:|\n" + rows
    )
    print(json.dumps({k: v for k, v in result.items() if k != "seconds"}, indent=2))


if __name__ == "__main__":
    main()
