"""Reduce: per-layer work on the device before the copy to host.

A layer's output (B, C, *spatial) is kept whole (``none``), or pooled over its spatial dims
(``mean`` or ``max``) to (B, C); then cast to the storage dtype (float16 or float32: Zarr has
no bfloat16). Doing both on the device shrinks what crosses to the host. On the CPU there is no
bus to cross: the copy into the host buffer casts, in the same pass (``dtype=None`` here).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from actextract.errors import OptionError

__all__ = ["STORAGE_DTYPES", "Reducer", "parse_reductions", "reduced_shape"]

Reduction = Literal["none", "mean", "max"]
REDUCTIONS = ("none", "mean", "max")
STORAGE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def parse_reductions(
    spec: str | Mapping[str, str] | None, layers: Sequence[str]
) -> dict[str, Reduction]:
    """``'layer3=mean,layer4.*=max'`` (globs allowed; a bare ``mean`` means every layer) →
    a reduction for every layer, ``none`` where nothing matched."""
    if isinstance(spec, str):
        items = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            pat, sep, how = part.rpartition("=")
            items.append((pat.strip() if sep else "*", how.strip()))
    else:
        items = list((spec or {}).items())
    plan: dict[str, Reduction] = dict.fromkeys(layers, "none")
    for pat, how in items:
        if how not in REDUCTIONS:
            raise OptionError(
                f"--reduce '{pat}={how}': '{how}' is not one of {', '.join(REDUCTIONS)}."
            )
        hits = fnmatch.filter(layers, pat)
        if not hits:
            raise OptionError(
                f"--reduce '{pat}={how}' matches none of the captured layers ({', '.join(layers)})."
            )
        for name in hits:
            plan[name] = how  # type: ignore[assignment]
    return plan


def reduced_shape(name: str, shape: tuple[int, ...], how: Reduction) -> tuple[int, ...]:
    """(C, *spatial) → (C,) for mean/max; unchanged for none."""
    if how == "none":
        return shape
    if len(shape) < 2:
        raise OptionError(
            f"--reduce {name}={how}: layer '{name}' has shape {shape}, with no "
            "spatial dims to pool over; leave it at none."
        )
    return shape[:1]


@dataclass(frozen=True)
class Reducer:
    """``reducer(outputs) -> arrays``: for each array of ``plan`` ({key: reduction}), its
    layer's output (the layer is ``sources[key]``, else the key itself) pooled when the plan
    says so, cast to ``dtype`` (None: leave the dtype to the copy into the host buffer).
    Layers no array names (kept for statistics only) are left out.

    ``outputs``: {layer: (B, C, *spatial)}; result: {key: (B, C) or (B, C, *spatial)}.
    """

    plan: Mapping[str, Reduction]
    dtype: torch.dtype | None
    sources: Mapping[str, str] = field(default_factory=dict)

    def __call__(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, how in self.plan.items():
            t = outputs[self.sources.get(key, key)]
            if how != "none":
                dims = tuple(range(2, t.ndim))
                # accumulate in float32 so a mean over many fp16/bf16 values keeps its digits
                t = t.mean(dims, dtype=torch.float32) if how == "mean" else t.amax(dims)
            out[key] = t if self.dtype is None else t.to(self.dtype)
        return out
