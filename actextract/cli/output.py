"""What ``--json`` prints: a command's result as plain JSON types, for a script to read from
stdout (the text formatters live beside the results, in the library)."""

from __future__ import annotations

import dataclasses
from typing import Any

from actextract.core.dtypes import STORAGE_DTYPES

__all__ = ["layers_json", "verify_json"]


def layers_json(table: Any, dtype: str, *, graph: str | None = None) -> dict[str, Any]:
    """``actextract layers --json``: the table's fields, and per layer its bytes per sample at
    the storage ``dtype``."""
    data = dataclasses.asdict(table)
    storage = STORAGE_DTYPES[dtype]
    for row, layer in zip(data["rows"], table.rows, strict=True):
        row["bytes_per_sample"] = layer.bytes_per_sample(storage) if layer.shape else None
    data["layers"] = data.pop("rows")
    data["dtype"] = dtype
    if graph is not None:
        data["graph"] = str(graph)
    return data


def verify_json(report: Any) -> dict[str, Any]:
    """``actextract verify --json``: the report's fields, and its state ('complete',
    'complete-but-unsealed', 'incomplete' or 'damaged') with ``ok`` and ``damaged``."""
    return {
        "state": report.state,
        "ok": report.ok,
        "damaged": report.damaged,
        "repairable": report.repairable,
        **dataclasses.asdict(report),
    }
