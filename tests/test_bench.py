"""The benchmark harness in a tiny mode, so that it cannot rot (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_end_to_end_in_tiny_mode(tmp_path, capsys):
    _load("bench_extract").main(
        [
            "--model", "digits-cnn", "--dataset", "synthetic:32:1:28:28", "--layers", "conv1,fc1",
            "--batch-size", "8", "--device", "cpu", "--repeats", "1", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    result = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    assert set(result["methods"]) == {"forward", "hooks_npsave", "actextract"}
    assert result["images"] == 32
    assert "device→host" in capsys.readouterr().out


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
