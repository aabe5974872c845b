"""The table makers of scripts/perf_tables.py: ``make_NAME(page, x)`` is the text of the
region ``NAME-x`` on ``page``, from its file in benchmarks/results/ (``make_bench`` reads
``bench-x.jsonl``, ``make_stats`` reads ``stats-x.json``, and so on): a table, then a line
that names the file (a link relative to ``page``) and what was measured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


class RegionError(Exception):
    """A region that cannot be made: no such kind, or its result file is missing."""


def _need(path: Path) -> Path:
    if not path.exists():
        raise RegionError(f"{path.relative_to(ROOT)} is not there (run its benchmark first)")
    return path


# -- number formats ------------------------------------------------------------------------
def num(x: float | None, digits: int = 1) -> str:
    """1,234.5 style; '–' for no value."""
    return "–" if x is None else f"{x:,.{digits}f}"


def mb(x: float) -> str:
    return f"{x:,.0f}"


def ratio(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def table(head: list[str], align: list[str], rows: list[list[str]]) -> str:
    marks = {"l": "---", "r": "--:"}
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def source(page: Path, path: Path, note: str) -> str:
    link = os.path.relpath(path, page.parent).replace(os.sep, "/")
    return f"From [`{path.relative_to(ROOT).as_posix()}`]({link}): {note}"


# -- bench_extract.py: bench-<device>.jsonl ---------------------------------------------------
def _bench(path: Path) -> tuple[dict, dict, dict, dict]:
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    header = next(x for x in lines if x["kind"] == "header")
    runs = {(x["case"], x["method"]): x for x in lines if x["kind"] == "measurement"}
    targets = {
        (x["case"], x.get("method", "actextract")): x for x in lines if x["kind"] == "target"
    }
    extra = {x["kind"]: x for x in lines if x["kind"] in ("scale", "disk")}
    return header, runs, targets, extra


def _machine(header: dict) -> str:
    v = header["versions"]
    gpu = "" if header["device"] != "cpu" else ", no GPU"
    return (
        f"{header['device_name']}{gpu}, {header['torch_threads']} torch threads; "
        f"torch {v['torch']}, zarr {v['zarr']}, actextract {v['actextract']}; "
        f"{header['date'][:10]}; median of {header['repeats']} (scale: 1 run)"
    )


def _what(run: dict) -> str:
    shape = run["dataset"].split(":")[2:]  # synthetic:N:C:H:W
    size = f"{shape[1]}²" if len(shape) == 3 and shape[1] == shape[2] else "×".join(shape)
    per_sample = run["bytes_written"] / run["n"] / 1000 if run.get("bytes_written") else None
    per = f" ({per_sample:,.1f} KB a sample in {run['dtype']})" if per_sample else ""
    return (
        f"{run['model']}, {size}, `{','.join(run['layers'])}`{per}, {run['n']:,} images, "
        f"batch {run['batch_size']}"
    )


def make_bench(page: Path, device: str) -> str:
    path = RESULTS / f"bench-{device}.jsonl"
    header, runs, targets, extra = _bench(_need(path))
    rows = []
    cases = dict.fromkeys(case for case, _ in runs)
    for case in cases:
        methods = {m: x for (c, m), x in runs.items() if c == case and "skipped" not in x}
        if case.startswith("scale") or "actextract" not in methods:
            continue
        what = f"{case}: {_what(methods['actextract'])}"
        for method, x in methods.items():
            target = targets.get((case, method))
            vs = {k: ratio(x.get(f"vs_{k}")) for k in ("ceiling", "hooks", "peer")}
            if target:
                field = target["target"].split("/")[1].split(" ")[0]
                vs[field] += f" (target {target['threshold']:.2f})"
            io = f"{x['written_per_stored_byte']:.2f}" if "written_per_stored_byte" in x else "–"
            rows.append(
                [
                    what,
                    method,
                    num(x["images_per_s"]),
                    vs["ceiling"],
                    vs["hooks"],
                    vs["peer"],
                    mb(x["rss_growth_mb"]),
                    f"{x['cpu_user_s']:.1f} + {x['cpu_sys_s']:.1f}",
                    io,
                ]
            )
            what = ""
    scale = extra.get("scale")
    if scale:
        n0, n1 = scale["n"]
        growth = "; ".join(
            f"{m} {mb(scale[m]['rss_growth_mb'][0])} → {mb(scale[m]['rss_growth_mb'][1])} MB"
            for m in ("hooks", "actextract")
        )
        rows.append(
            [f"scale: the maps job at {n0:,} and {n1:,} images", "", "", "", "", "", growth, "", ""]
        )
    head = [
        "workload",
        "method",
        "img/s",
        "× ceiling",
        "× hooks",
        "× peer",
        "peak RSS growth MB",
        "CPU s, user + sys",
        "bytes written / stored",
    ]
    body = table(head, list("llrrrrrrr"), rows)
    return body + "\n\n" + source(page, path, _machine(header) + ".")


def make_bench_loop(page: Path, device: str) -> str:
    path = RESULTS / f"bench-{device}.jsonl"
    _, runs, _, extra = _bench(_need(path))

    def part(split: dict, k: str) -> str:
        return f"{split[k]['s']:.3f} s ({split[k]['pct']:.0f} %)"

    rows = []
    for (case, method), a in runs.items():
        if "split" not in a:
            continue
        split = a["split"]
        rows.append(
            [
                case,
                method,
                f"{a['loop_seconds']:.3f}",
                num(a["loop_images_per_s"]),
                ratio(a.get("loop_vs_ceiling"), 3),
                part(split, "data_wait"),
                part(split, "compute"),
                part(split, "d2h"),
                part(split, "write_wait"),
                f"{a['summary'].get('write_cpu_s', 0):.2f}",
                f"{a['mb_per_s']:,.1f}",
            ]
        )
    head = [
        "workload",
        "method",
        "loop s",
        "loop img/s",
        "loop / ceiling",
        "waiting for data",
        "compute",
        "device→host",
        "waiting for the writer",
        "writers' CPU s",
        "MB/s written",
    ]
    body = table(head, list("llrrrrrrrrr"), rows)
    disk = extra.get("disk")
    if disk:
        body += (
            f"\n\nThe scratch disk took {disk['bytes'] / 1e6:,.0f} MB in "
            f"{disk['block_bytes'] / 1e6:,.2g} MB blocks at {disk['plain_mb_per_s']:,.0f} MB/s "
            f"into the page cache and {disk['fsync_mb_per_s']:,.0f} MB/s with fsync (the "
            "device)."
        )
    return body + "\n\n" + source(page, path, "actextract's loop, `store.attrs['summary']`.")


# -- the smaller benchmarks: <name>-<machine>.json --------------------------------------------
def _json(path: Path) -> dict:
    return json.loads(_need(path).read_text())


def make_clones(page: Path, device: str) -> str:
    path = RESULTS / f"clones-{device}.json"
    d = _json(path)
    rows = []
    for variant, s in d["median_s"].items():
        err = d["max_abs_error_first_batch"][variant]
        rows.append(
            [
                variant,
                ", ".join(d["cloned"][variant]) or "–",
                f"{s:.2f}",
                f"{d['median_loop_s'][variant]:.2f}",
                ratio(d["throughput_vs_clones_off"][variant], 3),
                " / ".join(f"{err[k]:.2f}".rstrip("0").rstrip(".") for k in sorted(err)),
            ]
        )
    head = [
        "variant",
        "cloned",
        "median s",
        "loop s",
        "throughput vs clones off",
        "max error " + " / ".join(sorted(next(iter(d["max_abs_error_first_batch"].values())))),
    ]
    note = (
        f"digits-cnn, N = {d['n']:,}, batch {d['batch_size']}, storing "
        f"`{','.join(d['layers'])}`; {device}, {d['torch_threads']} threads."
    )
    return table(head, list("llrrrr"), rows) + "\n\n" + source(page, path, note)


INTEGRITY = {
    "shipped": "shipped: crc32c on every chunk and the NaN/Inf row check",
    "no-crc32c": "without the crc32c checksums",
    "no-nonfinite": "without the NaN/Inf row check",
    "unchecked": "without either",
}


def make_integrity(page: Path, device: str) -> str:
    path = RESULTS / f"integrity-{device}.json"
    d = _json(path)
    rows = [
        [INTEGRITY.get(v, v), f"{s:.2f}", ratio(d["throughput_vs_unchecked"][v], 3)]
        for v, s in d["median_s"].items()
    ]
    note = f"digits-cnn, `{d['layers']}`, N = {d['n']:,}; {device}, {d['torch_threads']} threads."
    return (
        table(["variant", "median s", "throughput vs unchecked"], list("lrr"), rows)
        + "\n\n"
        + source(page, path, note)
    )


STATS = {
    "output only": "storing only the output layer",
    "maps stored + averaged": "storing both maps, then averaging them per class (the way "
    "without `--stats`)",
    "stats class-mean": "`--stats class-mean`",
    "stats class-mean,class-std": "`--stats class-std` (mean and std)",
    "stats all four kinds": "all four kinds",
}


def make_stats(page: Path, device: str) -> str:
    path = RESULTS / f"stats-{device}.json"
    d = _json(path)
    rows = [
        [
            STATS.get(v, v),
            f"{s:.2f}",
            ratio(d["throughput_vs_output_only"][v]),
            f"{d['disk_bytes'][v] / 1e6:,.1f} MB",
        ]
        for v, s in d["median_s"].items()
    ]
    note = (
        f"digits-cnn on {d['n']:,} synthetic inputs, statistics of `{d['layers']}`; {device}, "
        f"{d['torch_threads']} threads."
    )
    return (
        table(["variant", "median s", "throughput", "on disk"], list("lrrr"), rows)
        + "\n\n"
        + source(page, path, note)
    )


def make_cluster(page: Path, device: str) -> str:
    path = RESULTS / f"cluster-{device}.json"
    d = _json(path)
    rows = []
    for v, s in d["median_s"].items():
        ari = d["ari"][v]
        rows.append(
            [
                v,
                f"{s:.2f}",
                ratio(d["speed_vs_by_hand"][v]),
                f"{d['peak_rss_added_mb'][v]:,.0f} MB",
                "-" if ari is None else f"{ari:.3f}",
            ]
        )
    shape = "×".join(str(x) for x in d["shape"])
    note = (
        f"{d['n']:,} rows of ({shape}) float16 ({d['layer_mb_float16']:,.0f} MB), k = {d['k']}; "
        f"{device}, {d['torch_threads']} threads."
    )
    head = ["variant", "median s", "speed vs by hand", "peak memory added", "ARI"]
    return table(head, list("lrrrr"), rows) + "\n\n" + source(page, path, note)


def make_codecs(page: Path, name: str) -> str:
    path = RESULTS / f"codecs-{name}.json"
    d = _json(path)
    layers: dict[str, dict] = {}
    for r in d["results"]:
        layers.setdefault(r["layer"], {"mb": r["mb"], "zeros": r["zeros"]})[r["codec"]] = r
    first = next(iter(layers.values()))
    codecs = [c for c in ("zstd", "lz4", "blosc-zstd", "blosc-lz4") if c in first]
    rows = []
    for layer, x in layers.items():
        rows.append(
            [f"`{layer}`", f"{x['mb']:.2f}", f"{x['zeros']:.0%}"]
            + [f"{x[c]['ratio']:.2f}" for c in codecs]
            + [" / ".join(f"{x[c]['write_mb_s']:,.0f}" for c in ("none", *codecs) if c in x)]
        )
    head = (
        ["layer", "MB", "zeros"]
        + [f"ratio {c}" for c in codecs]
        + ["write MB/s (" + " / ".join(("none", *codecs)) + ")"]
    )
    m = d["meta"]
    note = f"{m['model']} (`{m['store']}`), {m['dtype']}, {m['rows']} rows a layer; {m['machine']}."
    return (
        table(head, ["l", "r", "r"] + ["r"] * (len(codecs) + 1), rows)
        + "\n\n"
        + source(page, path, note)
    )


def make_tokens(page: Path, device: str) -> str:
    """benchmarks/bench_tokens.py's table, as its own results page has it."""
    import importlib.util

    path = RESULTS / f"tokens-{device}.json"
    d = _json(path)
    spec = importlib.util.spec_from_file_location(
        "bench_tokens", ROOT / "benchmarks" / "bench_tokens.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    note = bench.describe(d["header"]) + f" {d['header']['device']}, {d['header']['date']}."
    return bench.summary_table(d["results"]).rstrip() + "\n\n" + source(page, path, note)


def make_zarr_settings(page: Path, machine: str) -> str:
    path = RESULTS / f"zarr-settings-{machine}.json"
    d = _json(path)
    columns = sorted(
        {(r["codec"], r["writers"]) for r in d["results"]},
        key=lambda cw: (
            ["none", "lz4", "zstd"].index(cw[0]) if cw[0] in ("none", "lz4", "zstd") else 9,
            cw,
        ),
    )
    settings: dict[tuple[str, str], dict] = {}
    for r in d["results"]:
        settings.setdefault((r["pipeline"], r["setting"]), {})[(r["codec"], r["writers"])] = r

    def cell(r: dict | None) -> str:
        if r is None:
            return ""
        if r["status"] != "ok":
            return "cannot"
        return f"{r['mb_s']:,.0f} ({r['cpu_s_per_gb']:.1f})"

    rows = [
        [f"{pipe}: `{setting}`"] + [cell(by.get(c)) for c in columns]
        for (pipe, setting), by in settings.items()
    ]
    head = ["pipeline: setting"] + [f"{c}, {w} writer{'s' * (w > 1)}" for c, w in columns]
    m = d["meta"]
    note = (
        f"MB/s of raw data (CPU s per GB in parentheses); {m['data']}; zarr {m['zarr']}, "
        f"numcodecs {m['numcodecs']}, zarrs {m['zarrs']}; {m['platform']}, {m['cpus']} CPUs."
    )
    out = table(head, ["l"] + ["r"] * len(columns), rows) + "\n\n" + source(page, path, note)
    kills = d.get("kill_mid_write") or []
    if kills:
        krows = [
            [
                k["pipeline"],
                k["codec"],
                k["verdict"],
                ", ".join(f"{c}: {v}" for c, v in k["reads_with_zarr_python"].items()),
            ]
            for k in kills
        ]
        out += "\n\nKilled (SIGKILL) in the middle of a chunk write:\n\n" + table(
            ["pipeline", "codec", "after the kill", "read back with zarr-python"],
            list("llll"),
            krows,
        )
    return out
