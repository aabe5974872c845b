"""Reduce: per-layer work on the device before the copy to host.

A layer's output (B, *shape) is kept whole (``none``), or pooled by its layout
(:mod:`actextract.core.axes`): ``mean``/``max`` over the spatial axes of maps (either channel
order) or over the tokens of token layers, to (B, C) or (B, D); ``cls`` keeps a token
layer's first token, ``last`` its last, ``tokens`` all of them; with the batch's attention
mask (text), mean and max take the real tokens only and cls and last the first and last real
ones, left or right padding alike. Then it is cast to the storage dtype (float16 or
float32: Zarr has no bfloat16). Doing both on the device shrinks what crosses to the host.
On the CPU there is no bus to cross: the copy into the host buffer casts, in the same pass
(``dtype=None`` here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from actextract.core.axes import REDUCTIONS, pool
from actextract.core.names import match_names
from actextract.errors import OptionError, option

__all__ = ["REDUCTIONS", "Reducer", "parse_reductions"]


def parse_reductions(spec: str | Mapping[str, str] | None, layers: Sequence[str]) -> dict[str, str]:
    """``'layer3=mean,encoder.**=cls'`` (globs by path rules; a bare ``mean`` means every
    layer) → a reduction for every layer, ``none`` where nothing matched. Whether each fits
    its layer's layout is checked at the probe (:func:`actextract.core.axes.reduced_shape`)."""
    if isinstance(spec, str):
        items = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            pat, sep, how = part.rpartition("=")
            items.append((pat.strip() if sep else "**", how.strip()))
    else:
        items = list((spec or {}).items())
    plan: dict[str, str] = dict.fromkeys(layers, "none")
    for pat, how in items:
        if how not in REDUCTIONS:
            raise OptionError(
                f"{option('reduce')} '{pat}={how}': '{how}' is not one of {', '.join(REDUCTIONS)}."
            )

        def not_found(p: str, how: str = how) -> Exception:
            return OptionError(
                f"{option('reduce')} '{p}={how}' matches none of the captured layers "
                f"({', '.join(layers)})."
            )

        for name in match_names([pat], layers, not_found):
            plan[name] = how
    return plan


@dataclass(frozen=True)
class Reducer:
    """``reducer(outputs) -> arrays``: for each array of ``plan`` ({key: reduction}), its
    layer's output (the layer is ``sources[key]``, else the key itself) pooled by its layout
    (``layouts[key]``) when the plan says so, cast to ``dtype`` (None: leave the dtype to the
    copy into the host buffer). Layers no array names (kept for statistics only) are left out.

    ``outputs``: {layer: (B, *shape)}; result: {key: (B, C), (B, D) or (B, *shape)}.
    """

    plan: Mapping[str, str]
    dtype: torch.dtype | None
    sources: Mapping[str, str] = field(default_factory=dict)
    layouts: Mapping[str, str] = field(default_factory=dict)

    def __call__(
        self, outputs: Mapping[str, torch.Tensor], mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``mask``: the batch's (B, T) attention mask, for token layers of T tokens."""
        out = {}
        for key, how in self.plan.items():
            t = outputs[self.sources.get(key, key)]
            if how not in ("none", "tokens"):
                t = pool(t, self.layouts[key], how, mask)
            out[key] = t if self.dtype is None else t.to(self.dtype)
        return out
