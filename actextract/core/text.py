"""Words the terminal views share: sizes, the reason a layer is cloned, counts per layer."""

from __future__ import annotations

__all__ = ["human_bytes", "layer_counts", "samples_word", "written_by"]


def human_bytes(n: float) -> str:
    """1234567 → '1.2 MB' (decimal units, as disks are sold)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"


def written_by(clone: str) -> str:
    """What writes a cloned layer's output, from the reason recorded: "by 'relu'"."""
    return clone.removeprefix("written in place later, ")


def samples_word(attrs: dict) -> str:
    """What a run's rows are called in its summaries: samples of a text run (documents or
    packed windows), else images."""
    return "samples" if attrs.get("tokens") else "images"


def layer_counts(per_layer: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in per_layer.items())
