"""The terminal views of what a model offers to capture: ``actextract layers`` as a table,
and as a summary with parameters (``--summary``)."""

from __future__ import annotations

from typing import Any

from actextract.core.dtypes import STORAGE_DTYPES
from actextract.core.text import human_bytes, written_by
from actextract.data.inputs import shape_text

__all__ = ["format_layer_summary", "format_layer_table"]


def format_layer_table(table: Any, dtype: str, n_samples: int | None = None) -> str:
    """``actextract layers``: name, kind, shape, layout and bytes per sample at ``dtype``,
    and a note where the output is cloned at capture (and why), has its batch axis moved, or
    cannot be stored; with ``n_samples``, the projected uncompressed store size."""
    out: list[str] = []
    torch_dtype = STORAGE_DTYPES[dtype]
    out.append(_head(table))
    for pattern, count in (getattr(table, "matched", None) or {}).items():
        out.append(f"'{pattern}' matches {count} name{'s' if count != 1 else ''}")
    width = max([len(r.name) for r in table.rows] + [4])
    kind_w = max([len(r.kind) for r in table.rows] + [4])
    shapes = [_shape(r) for r in table.rows]
    shape_w = max([len(v) for v in shapes] + [18])
    out.append(
        f"{'name':<{width}}  {'kind':<{kind_w}}  {'shape':<{shape_w}}  {'layout':<7}"
        f"{'bytes/sample (' + dtype + ')':>22}  note"
    )
    for r, shape in zip(table.rows, shapes, strict=True):
        size = human_bytes(r.bytes_per_sample(torch_dtype)) if r.shape is not None else "-"
        line = f"{r.name:<{width}}  {r.kind:<{kind_w}}  {shape:<{shape_w}}  {r.layout:<7}{size:>22}"
        out.append(f"{line}  {_note(r, table, torch_dtype)}".rstrip())
    if n_samples:
        per = {r.name: r.bytes_per_sample(torch_dtype) for r in table.rows if r.shape}
        out.append(
            f"\nfor {n_samples:,} samples: {human_bytes(max(per.values(), default=0) * n_samples)} "
            f"for the largest layer; {human_bytes(sum(per.values()) * n_samples)} for all of "
            "them (uncompressed)"
        )
    if any(r.clone for r in table.rows):
        out.append(
            "clone: written in place later in the forward, so the output is copied where it is "
            "produced (only those layers pay the copy)"
        )
    return "\n".join(out)


def _shape(row: Any) -> str:
    if row.shape is not None:
        return str(row.shape)
    return "(no batch axis)" if row.problem and "batch" in row.problem else "(not a tensor)"


def _head(table: Any) -> str:
    """The table's first line: the model, what the probe ran on, and how layers are captured."""
    shape = shape_text(table.input_shape)
    with_ = getattr(table, "probed_with", None)
    tokens = getattr(table, "tokens", None)
    on = f" ({with_}" + (f", {tokens} real tokens)" if tokens is not None else ")") if with_ else ""
    how = "torch.fx" if table.method == "fx" else "forward hooks (module names only)"
    return f"{table.model}: input {shape}{on}, captured with {how}"


def _note(row: Any, table: Any = None, dtype: Any = None) -> str:
    """A layer's note in the table: why it is cloned, where its batch axis was, or why it
    cannot be stored; the bytes per token of a token layer of a text model's sample."""
    if row.shape is None:
        return row.problem or ""
    notes = []
    if getattr(table, "tokens", None) is not None and row.layout == "tokens" and dtype is not None:
        notes.append(f"{human_bytes(row.bytes_per_sample(dtype) // row.shape[0])}/token")
    if row.clone:
        notes.append(f"clone ({written_by(row.clone)})")
    if row.batch_axis:
        notes.append(f"batch axis {row.batch_axis} moved to the front")
    return "; ".join(notes)


def format_layer_summary(table: Any, dtype: str, n_samples: int | None = None) -> str:
    """``actextract layers --summary``, as torchinfo shows a model: layer, kind, output shape,
    parameters (trainable / total where they differ; a container's in parentheses, as they
    are its children's too) and bytes per sample at ``dtype``; then the totals."""
    torch_dtype = STORAGE_DTYPES[dtype]
    rows = [
        (
            r.name,
            r.kind,
            _shape(r),
            _params(r.params, r.nested),
            human_bytes(r.bytes_per_sample(torch_dtype)) if r.shape is not None else "-",
        )
        for r in table.rows
    ]
    head = ("layer", "kind", "output shape", "params", f"bytes/sample ({dtype})")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(5)]

    def line(row: tuple[str, ...]) -> str:  # names to the left, numbers to the right
        cells = enumerate(zip(row, widths, strict=True))
        return "  ".join(v.rjust(w) if i >= 3 else v.ljust(w) for i, (v, w) in cells).rstrip()

    rule = "=" * len(line(head))
    trainable, total = table.params
    per_sample = sum(r.bytes_per_sample(torch_dtype) for r in table.rows if r.shape is not None)
    out = [
        _head(table),
        rule,
        line(head),
        rule,
        *map(line, rows),
        rule,
        f"total params: {total:,} ({human_bytes(table.param_bytes)})",
        f"trainable params: {trainable:,}",
        f"non-trainable params: {total - trainable:,}",
        f"every row stored (--layers '**'): {human_bytes(per_sample)} per sample at {dtype}",
    ]
    if n_samples:
        out.append(
            f"for {n_samples:,} samples: {human_bytes(per_sample * n_samples)} (uncompressed)"
        )
    return "\n".join([*out, rule])


def _params(params: tuple[int, int], nested: bool) -> str:
    trainable, total = params
    text = f"{total:,}" if trainable == total else f"{trainable:,} / {total:,}"
    return f"({text})" if nested else text
