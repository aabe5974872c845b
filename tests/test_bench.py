"""The benchmark harness in a tiny mode, so that it cannot rot (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
METHODS = {
    "compute": ("ceiling", "hooks", "actextract"),
    "maps": ("ceiling", "hooks", "peer", "actextract", "actextract-float32"),
}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import does: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_end_to_end_in_tiny_mode(tmp_path, capsys):
    out, scratch = tmp_path / "results", tmp_path / "scratch"
    _load("bench_extract").main(
        ["--tiny", "--device", "cpu", "--out", str(out), "--tmp", str(scratch)]
    )
    lines = [json.loads(line) for line in (out / "bench-cpu-tiny.jsonl").read_text().splitlines()]
    header = lines[0]
    assert header["kind"] == "header" and header["device"] == "cpu" and header["tiny"]
    assert {"torch", "torchvision", "zarr", "actextract"} <= set(header["versions"])
    assert header["torch_threads"] >= 1 and header["date"]

    measured = [x for x in lines if x["kind"] == "measurement"]
    assert {(x["case"], x["method"]) for x in measured} == {
        *((case, method) for case, methods in METHODS.items() for method in methods),
        *(
            (case, method)
            for case in ("scale-32", "scale-64")
            for method in ("hooks", "actextract")
        ),
    }
    for x in measured:
        assert "skipped" not in x
        assert x["images_per_s"] > 0 and x["seconds"] > 0 and x["n"] in (32, 64)
        assert x["peak_rss_mb"] > 0 and "rss_growth_mb" in x
        assert x["cpu_user_s"] >= 0 and x["cpu_sys_s"] >= 0
        if x["method"].startswith("actextract"):
            assert {"vs_hooks", "mb_per_s", "disk_bytes", "loop_images_per_s"} <= set(x)
            assert set(x["split"]) == {"data_wait", "compute", "d2h", "write_wait"}
            assert x["bottleneck"] in x["split"]
            assert x["bytes_written"] > 0 and x["disk_bytes"] > 0
        if x["workload"] != "scale" and x["method"] != "ceiling":
            assert x["vs_ceiling"] > 0
        if x["method"] != "ceiling":  # each process's own counters: its writes, nothing else's
            assert 1.0 <= x["written_per_stored_byte"] < 1.5, x
            assert x["io"]["wchar"] >= x["stored_bytes"] > 0

    maps = {x["method"]: x for x in measured if x["case"] == "maps"}
    assert maps["actextract-float32"]["bytes_written"] == 2 * maps["actextract"]["bytes_written"]
    assert maps["actextract-float32"]["vs_peer"] > 0 and maps["peer"]["vs_hooks"] > 0

    # the kernel counts CPU time in scheduler ticks (4 ms at HZ=250): a tiny call of ~20 ms
    # may be given none, the whole suite of calls never
    assert sum(x["cpu_user_s"] for x in measured) > 0
    assert maps["actextract"]["vs_disk_plain"] > 0 and maps["actextract"]["vs_disk_fsync"] > 0
    disk = next(x for x in lines if x["kind"] == "disk")
    assert disk["plain_mb_per_s"] > 0 and disk["fsync_mb_per_s"] > 0
    scale = next(x for x in lines if x["kind"] == "scale")
    assert scale["n"] == [32, 64]
    assert "ratio" in scale["hooks"] and "ratio" in scale["actextract"]
    targets = {(x["case"], x["method"]): x for x in lines if x["kind"] == "target"}
    assert set(targets) == {
        ("compute", "actextract"),
        ("maps", "actextract"),
        ("maps", "actextract-float32"),
        ("scale", "actextract"),
    }
    assert all(t["met"] in (True, False) for t in targets.values())

    table = (out / "bench-cpu-tiny.md").read_text()
    for case in ("compute", "maps", "scale-32", "scale-64"):
        assert f"\n| {case} | digits-cnn" in table
    assert "| peer |" in table and "| actextract-float32 |" in table
    assert "page cache" in table and "RSS growth" in table
    assert list(scratch.iterdir()) == []  # every store and .npy deleted after its run
    assert "bench-cpu-tiny.md" in capsys.readouterr().out


def test_codec_benchmark_runs_in_tiny_mode(tmp_path, capsys):
    from _fixtures import SeededImages, tiny_cnn

    import actextract

    store = actextract.extract(
        tiny_cnn(), SeededImages(), layers=["relu", "fc"], out=tmp_path / "run.zarr", device="cpu"
    )
    _load("bench_codecs").main(
        [str(store.path), "--rows", "8", "--repeats", "1", "--out", str(tmp_path / "res")]
    )
    rows = json.loads((tmp_path / "res" / "codecs-run.json").read_text())["results"]
    assert {(r["layer"], r["codec"]) for r in rows} == {
        (layer, codec)
        for layer in ("relu", "fc")
        for codec in ("zstd", "lz4", "blosc-zstd", "blosc-lz4", "none")
    }
    assert all(r["ratio"] > 0 for r in rows)
    relu_none = next(r for r in rows if r["layer"] == "relu" and r["codec"] == "none")
    assert relu_none["zeros"] > 0.2  # a ReLU output holds zeros; the table reports them


def test_integrity_benchmark_runs_at_a_toy_size(tmp_path):
    out, scratch = tmp_path / "results", tmp_path / "scratch"
    scratch.mkdir()
    _load("bench_integrity").main(
        ["--n", "64", "--repeats", "1", "--out", str(out), "--tmp", str(scratch)]
    )
    result = json.loads((out / "integrity-cpu.json").read_text())
    assert set(result["median_s"]) == {"shipped", "no-crc32c", "no-nonfinite", "unchecked"}
    assert result["throughput_vs_unchecked"]["unchecked"] == 1.0
    assert "| shipped |" in (out / "integrity-cpu.md").read_text()


def test_stats_benchmark_runs_at_a_toy_size(tmp_path):
    out, scratch = tmp_path / "results", tmp_path / "scratch"
    scratch.mkdir()
    _load("bench_stats").main(
        ["--n", "64", "--repeats", "1", "--out", str(out), "--tmp", str(scratch)]
    )
    result = json.loads((out / "stats-cpu.json").read_text())
    assert set(result["median_s"]) == set(_load("bench_stats").VARIANTS)
    assert result["throughput_vs_output_only"]["output only"] == 1.0
    # the stored maps take the disk that the statistics do not
    assert result["disk_bytes"]["maps stored + averaged"] > result["disk_bytes"]["output only"]


def test_cluster_benchmark_runs_end_to_end_in_tiny_mode(tmp_path):
    out = tmp_path / "results"
    _load("bench_cluster").main(
        ["--n", "400", "--repeats", "1", "--out", str(out), "--tmp", str(tmp_path)]
    )
    result = json.loads((out / "cluster-cpu.json").read_text())
    assert set(result["median_s"]) == set(result["ari"]) and len(result["ari"]) == 5
    assert result["speed_vs_by_hand"][next(k for k in result["ari"] if "by hand" in k)] == 1.0
    assert all(v is None or 0.9 < v <= 1.0 for v in result["ari"].values())
    assert (out / "cluster-cpu.md").read_text().startswith("# Cost of clustering")


def test_token_benchmark_runs_end_to_end_in_tiny_mode(tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "results"
    _load("bench_tokens").main(["--tiny", "--out", str(out), "--tmp", str(tmp_path)])
    data = json.loads((out / "tokens-cpu-tiny.json").read_text())
    methods = {(r["docs"], r["method"]) for r in data["results"]}
    assert methods == {(d, m) for d in (20, 40) for m in ("forward", "hand", "actextract")}
    by = {(r["docs"], r["method"]): r for r in data["results"]}
    for d in (20, 40):  # every method saw every token of the packed corpus
        assert (
            by[(d, "hand")]["tokens"]
            == by[(d, "actextract")]["tokens"]
            == by[(d, "forward")]["tokens"]
        )
        assert by[(d, "actextract")]["disk_bytes"] > 0
    assert "÷ forward" in (out / "tokens-cpu-tiny.md").read_text()
