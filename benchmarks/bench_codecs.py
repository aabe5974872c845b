"""Compression ratio and speed of each --codec on real activations, through zarr's own write
and read path (what a run gets), one row block per layer.

    python benchmarks/bench_codecs.py demo/digits.zarr      # after `make demo`

Writes benchmarks/results/codecs-<store>.json and .md. Speeds are MB/s of raw (uncompressed)
data, single-threaded per chunk as the writer threads see it; the ratios are what matters
across machines.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from actextract.store import open_store
from actextract.store.layout import CODECS, StoreOptions, quiet_numcodecs


def measure(data: np.ndarray, codec: str, scratch: Path, repeats: int) -> dict:
    """Median write and read times of ``data`` as one chunk with ``codec``; the ratio."""
    writes, reads = [], []
    disk = 0
    for i in range(repeats):
        path = scratch / f"{codec}-{i}.zarr"
        with quiet_numcodecs():
            arr = zarr.create_array(
                zarr.storage.LocalStore(path),
                shape=data.shape,
                chunks=data.shape,
                dtype=data.dtype,
                compressors=StoreOptions(dtype=str(data.dtype), codec=codec).compressors(),
                fill_value=np.nan,
            )
            t0 = time.perf_counter()
            arr[...] = data
            t1 = time.perf_counter()
            back = arr[...]
            t2 = time.perf_counter()
        if not np.array_equal(back, data, equal_nan=True):
            raise SystemExit(f"{codec}: data read back differ from data written")
        disk = sum(
            f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name != "zarr.json"
        )
        writes.append(t1 - t0)
        reads.append(t2 - t1)
        shutil.rmtree(path)
    mb = data.nbytes / 1e6
    return {
        "codec": codec,
        "ratio": round(data.nbytes / max(1, disk), 2),
        "write_mb_s": round(mb / statistics.median(writes), 1),
        "read_mb_s": round(mb / statistics.median(reads), 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store", help="an actextract store (e.g. demo/digits.zarr)")
    p.add_argument("--rows", type=int, default=512, help="rows per layer to compress")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    store = open_store(args.store)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-codecs-") as tmp:
        for layer in store.layers:
            data = np.asarray(store[layer][: min(args.rows, store.n)])
            zeros = float((data == 0).mean())
            for codec in CODECS:
                row = {"layer": layer, "mb": round(data.nbytes / 1e6, 2), "zeros": round(zeros, 3)}
                row.update(measure(data, codec, Path(tmp), args.repeats))
                results.append(row)
                print(
                    f"{layer:>10} {codec:>10}  zeros {zeros:5.1%}  ratio {row['ratio']:5.2f}  "
                    f"write {row['write_mb_s']:8.1f} MB/s  read {row['read_mb_s']:8.1f} MB/s"
                )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"codecs-{Path(args.store).stem}"
    meta = {
        "store": str(args.store),
        "model": store.attrs.get("model", {}).get("spec"),
        "dtype": store.attrs.get("dtype"),
        "rows": min(args.rows, store.n),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "zarr": zarr.__version__,
    }
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = [
        f"# Codecs on {meta['model']} activations ({meta['dtype']}, {meta['rows']} rows a layer)",
        "",
        "| layer | MB | zeros | codec | ratio | write MB/s | read MB/s |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['layer']} | {r['mb']} | {r['zeros']:.0%} | {r['codec']} | {r['ratio']} | "
        f"{r['write_mb_s']} | {r['read_mb_s']} |"
        for r in results
    ]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / name}.json and .md")


if __name__ == "__main__":
    main()
