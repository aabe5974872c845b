"""The zarr-settings benchmark in its tiny mode, so that it cannot rot (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
SETTINGS = {
    "defaults",
    "write_empty_chunks=True",
    "async.concurrency=1",
    "async.concurrency=32",
    "codec_pipeline.batch_size=4",
    "codec_pipeline.batch_size=16",
    "threading.max_workers=1",
    "threading.max_workers=2",
    "threading.max_workers=4",
}


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> dict:
    """main() of benchmarks/bench_zarr.py on tiny data; stores, results: all in tmp_path."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ beside it
    spec = importlib.util.spec_from_file_location("bench_zarr", BENCHMARKS / "bench_zarr.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_zarr", bench)  # its dataclasses look it up there
    spec.loader.exec_module(bench)
    out = tmp_path / "res"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    bench.main(["--tiny", "--machine", "test", "--out", str(out), "--scratch", str(scratch), *args])
    assert {p.name for p in out.iterdir()} == {"zarr-settings-test.json", "zarr-settings-test.md"}
    assert list(scratch.iterdir()) == []  # its temporary stores are gone
    return json.loads((out / "zarr-settings-test.json").read_text())


def _ok_numbers(row: dict) -> None:
    assert row["status"] == "ok", row
    for key in ("mb", "wall_s", "mb_s", "cpu_s", "cpu_s_per_gb", "cpu_per_wall", "ratio"):
        assert row[key] > 0, (key, row)
    assert row["chunks"] == 4  # 2 row blocks × 2 layers, one whole chunk each


@pytest.mark.slow
def test_zarr_settings_benchmark_runs_in_tiny_mode(tmp_path, monkeypatch, capsys):
    result = _run(tmp_path, monkeypatch)
    rows = result["results"]
    python_rows = [r for r in rows if r["pipeline"] == "zarr-python"]
    assert {(r["codec"], r["writers"], r["setting"]) for r in python_rows} == {
        (codec, w, s) for codec in ("none", "lz4", "zstd") for w in (1, 2) for s in SETTINGS
    }
    for row in python_rows:
        _ok_numbers(row)

    zarrs_rows = [r for r in rows if r["pipeline"] == "zarrs"]
    assert {(r["codec"], r["writers"], r["setting"]) for r in zarrs_rows} == {
        (codec, w, s)
        for codec in ("none", "lz4", "zstd")
        for w in (1, 2)
        for s in ("defaults", "write_empty_chunks=True")
    }
    if result["meta"]["zarrs"] is None:  # not installed: recorded, not measured
        assert {r["status"] for r in zarrs_rows} == {"unavailable"}
    else:
        for row in zarrs_rows:
            if row["codec"] == "lz4":  # zarrs has no numcodecs.lz4: said, never measured
                assert row["status"] == "unsupported" and "lz4" in row["note"]
            else:
                _ok_numbers(row)

    kills = {(k["pipeline"], k["codec"]): k for k in result["kill_mid_write"]}
    assert set(kills) == {(p, c) for p in ("zarr-python", "zarrs") for c in ("none", "zstd")}
    for codec in ("none", "zstd"):  # whether the kill lands mid-write is timing: not asserted
        assert kills["zarr-python", codec]["status"] in ("ok", "not caught")
    out = capsys.readouterr().out
    assert "| codec | writers | pipeline | setting | MB/s |" in out  # the table is printed


@pytest.mark.slow
def test_zarrs_rows_are_recorded_as_unavailable_without_zarrs(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zarrs", None)  # `import zarrs` raises ImportError
    result = _run(tmp_path, monkeypatch, "--codecs", "none", "--writers", "1")
    zarrs_rows = [r for r in result["results"] if r["pipeline"] == "zarrs"]
    assert len(zarrs_rows) == 2  # write_empty_chunks False and True
    assert all(r["status"] == "unavailable" and "zarrs" in r["note"] for r in zarrs_rows)
    assert result["meta"]["zarrs"] is None
    kills = [k["status"] for k in result["kill_mid_write"] if k["pipeline"] == "zarrs"]
    assert kills == ["unavailable", "unavailable"]
    for row in result["results"]:
        if row["pipeline"] == "zarr-python":
            _ok_numbers(row)
