"""What `actextract cluster` costs, against the way it is done by hand (the whole layer read
into memory, then scikit-learn's PCA and KMeans) and against one plain read of the layer.

    python benchmarks/bench_cluster.py [--n 50000] [--repeats 3] [--device cpu]

The store is synthetic: N rows of (64, 8, 8) float16 maps (4,096 features) around ten random
centres (an offset per channel and a pattern within), noise of 3 times their spread, in chunks
of 1,024 rows. Writes benchmarks/results/cluster-<device>.json and .md (or
under --out): per variant the median seconds, the peak resident memory it added, the adjusted
Rand index against the centres the rows came from, and the time relative to the by-hand way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_tools, also when loaded by path
from bench_machine import PeakRSS

import actextract
from actextract.store import ArraySpec, StoreOptions, create_store

RESULTS = Path(__file__).parent / "results"
SHAPE, K, PCA, CHUNK = (64, 8, 8), 10, 32, 1024


def make_store(path: Path, n: int) -> np.ndarray:
    """The synthetic store; returns each row's centre (the truth the scores use)."""
    rng = np.random.default_rng(0)
    # each centre: an offset per channel (what --pool mean keeps) and a pattern within it
    channel = rng.normal(0, 1.0, (K, SHAPE[0], 1, 1))
    centres = (channel + rng.normal(0, 1.0, (K, *SHAPE))).reshape(K, -1).astype(np.float32)
    truth = rng.integers(0, K, n)
    store = create_store(
        path,
        n=n,
        arrays=[ArraySpec("maps", SHAPE)],
        options=StoreOptions(dtype="float16"),
        chunk_rows=CHUNK,
        attrs={},
    )
    for b in range(store.n_blocks):
        r = store.block_range(b)
        noise = rng.normal(0, 3.0, (len(r), centres.shape[1])).astype(np.float32)
        rows = (centres[truth[r.start : r.stop]] + noise).reshape(len(r), *SHAPE)
        store.write_block(b, {"maps": rows.astype(np.float16)}, truth[r.start : r.stop], list(r))
    store.seal()
    return truth


def read_only(path: Path, device: str) -> np.ndarray | None:
    """One pass over the layer, block by block: what every pass of the stream costs at least."""
    store = actextract.open_store(path)
    arr = store["maps"]
    for b in range(store.n_blocks):
        r = store.block_range(b)
        torch.from_numpy(arr[r.start : r.stop]).to(device).float().sum()
    return None


def by_hand(path: Path, device: str) -> np.ndarray:
    """What a tutorial does: the whole layer in memory, scikit-learn's PCA and KMeans."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA as SkPCA

    store = actextract.open_store(path)
    x = store["maps"][:].reshape(store.n, -1).astype(np.float32)
    projected = SkPCA(PCA, random_state=0).fit_transform(x)
    return KMeans(K, n_init=3, random_state=0).fit_predict(projected)


def ours(**options):
    def run(path: Path, device: str) -> np.ndarray:
        result = actextract.cluster(path, "maps", K, device=device, **options)
        return result["assignments"]

    return run


VARIANTS = {
    "read the layer once": read_only,
    "by hand: whole layer + sklearn PCA + KMeans": by_hand,
    f"actextract cluster --pca {PCA}": ours(pca=PCA),
    f"actextract cluster --pca {PCA}, nothing kept between passes": ours(pca=PCA, cache_bytes=0),
    "actextract cluster --pool mean": ours(pool="mean"),
}
BASE = "by hand: whole layer + sklearn PCA + KMeans"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Folder for the results.")
    parser.add_argument("--tmp", type=Path, default=None, help="Scratch folder for the store.")
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    added: dict[str, float] = {}
    ari: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-", dir=args.tmp) as tmp:
        path = Path(tmp) / "maps.zarr"
        truth = make_store(path, args.n)
        ours(pca=PCA)(path, args.device)  # warm-up
        for _ in range(args.repeats):
            for name, run in VARIANTS.items():  # interleaved: drifts hit every variant
                with PeakRSS() as rss:
                    t0 = time.perf_counter()
                    got = run(path, args.device)
                    times[name].append(time.perf_counter() - t0)
                added[name] = max(added.get(name, 0.0), (rss.peak - rss.start) / 1e6)
                ari[name] = None if got is None else float(adjusted_rand_score(truth, got))
        layer_mb = args.n * int(np.prod(SHAPE)) * 2 / 1e6
    med = {k: statistics.median(v) for k, v in times.items()}
    speed = {k: round(med[BASE] / v, 3) for k, v in med.items()}
    result = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "n": args.n,
        "shape": SHAPE,
        "layer_mb_float16": layer_mb,
        "k": K,
        "seconds": times,
        "median_s": med,
        "peak_rss_added_mb": added,
        "ari": ari,
        "speed_vs_by_hand": speed,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"cluster-{args.device}.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "".join(
        f"| {v} | {med[v]:.2f} | {speed[v]:.2f} | {added[v]:,.0f} | "
        f"{'-' if ari[v] is None else f'{ari[v]:.3f}'} |\n"
        for v in VARIANTS
    )
    (args.out / f"cluster-{args.device}.md").write_text(
        f"# Cost of clustering a stored layer ({args.device}, {torch.get_num_threads()} "
        "threads)\n\n"
        f"N={args.n:,} rows of {SHAPE} float16 ({layer_mb:,.0f} MB) around {K} centres; k={K}; "
        f"median of {args.repeats}, variants interleaved. 'speed' is the by-hand time over the "
        "variant's; 'memory' the peak resident memory the variant added.\n\n"
        "| variant | median s | speed vs by hand | memory MB | ARI |\n|---|--:|--:|--:|--:|\n"
        + rows
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
