"""The benchmark harness in a tiny mode, so that it cannot rot (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench_extract.py"


def test_benchmark_runs_end_to_end_in_tiny_mode(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_extract", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(
        [
            "--model", "digits-cnn", "--dataset", "synthetic:32:1:28:28", "--layers", "conv1,fc1",
            "--batch-size", "8", "--device", "cpu", "--repeats", "1", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    result = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    assert set(result["methods"]) == {"forward", "hooks_npsave", "actextract"}
    assert result["images"] == 32
    assert "device→host" in capsys.readouterr().out
