"""Trim: a padded text batch computed at the length of its real tokens, and its outputs put
back at the run's length.

A text run's samples are padded to one length T (``--max-length``), so that every layer has one
shape and the store one row size. A batch of short documents would still cost the forward T
tokens each: :meth:`Trim.cut` keeps only the columns between the batch's first and last real
token (the padding on either side that no sample of the batch needs), and :meth:`Trim.put_back`
pads each output back to its planned shape at those columns, with zeros where the columns were
cut. What the real tokens see is unchanged: the padding cut is padding every sample masks out,
and the positions of a left-padded batch are counted from its real tokens either way
(:func:`~actextract.data.inputs.with_positions`). A batch is cut the same way in every run
(it depends on the batch alone), so a resumed, sharded or torchrun run writes the same bytes.

:func:`plan_trim` decides at the probe whether a model may be trimmed: every captured layer's
shape must follow the length (each axis of T tokens becomes one of the shorter length, and no
other axis changes). A layer that does otherwise (a convolution over the tokens, a fixed-size
position table) keeps the run at T, and says so in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from actextract.data.inputs import Inputs, attention_mask
from actextract.model.capture import follows

__all__ = ["Trim", "plan_trim"]

log = logging.getLogger(__name__)

Span = tuple[int, int]  # the columns [lo, hi) of the padded length a cut batch keeps


@dataclass(frozen=True)
class Trim:
    """``length``: the run's T; ``rows`` and ``layers``: {key: planned per-sample shape} of
    the row arrays and of the layer outputs the statistics sum."""

    length: int
    rows: Mapping[str, tuple[int, ...]]
    layers: Mapping[str, tuple[int, ...]]

    def cut(self, x: Inputs) -> tuple[Inputs, Span | None]:
        """The batch without the columns that are padding in every sample, and the span kept
        (None: nothing to cut, ``x`` as it is). On the host: the span is read from the mask."""
        mask = attention_mask(x)
        if mask is None or mask.shape[1] != self.length or not isinstance(x, dict):
            return x, None
        real = torch.nonzero(mask.any(0)).flatten()
        if not len(real):
            return x, None
        lo, hi = int(real[0]), int(real[-1]) + 1
        if (lo, hi) == (0, self.length):
            return x, None
        return self.columns(x, (lo, hi)), (lo, hi)

    def columns(self, x: dict[str, torch.Tensor], span: Span) -> dict[str, torch.Tensor]:
        """The batch's columns ``span`` of every tensor that has the run's length."""
        lo, hi = span
        return {
            k: v[:, lo:hi].contiguous() if v.ndim >= 2 and v.shape[1] == self.length else v
            for k, v in x.items()
        }

    def put_back(
        self, acts: Mapping[str, torch.Tensor], raw: Mapping[str, torch.Tensor], span: Span
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The row arrays ``acts`` and the layer outputs ``raw`` of a cut batch at their
        planned shapes (:meth:`_padded`)."""
        return self._padded(acts, self.rows, span), self._padded(raw, self.layers, span)

    def _padded(
        self, outputs: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]], span: Span
    ) -> dict[str, torch.Tensor]:
        """Each (B, *shape) output at its planned shape: every axis of T tokens that the cut
        made ``hi - lo`` long padded with zeros, ``lo`` columns before and ``T - hi`` after."""
        lo, hi = span
        out = {}
        for key, t in outputs.items():
            want, got = shapes.get(key), tuple(t.shape[1:])
            if want is None or got == want:
                out[key] = t
                continue
            pads: list[int] = []
            for g, w in zip(reversed(got), reversed(want), strict=True):  # F.pad: last axis first
                pads += [lo, self.length - hi] if (g, w) == (hi - lo, self.length) else [0, 0]
            out[key] = F.pad(t, pads)
        return out

    def mask(self, x: Inputs, span: Span | None) -> torch.Tensor | None:
        """The batch's attention mask at the run's length (0 in the columns cut)."""
        mask = attention_mask(x)
        if mask is None or span is None:
            return mask
        return F.pad(mask, [span[0], self.length - span[1]])


def plan_trim(
    cap,
    example: Inputs,
    rows: Mapping[str, tuple[int, ...]],
    layers: Mapping[str, tuple[int, ...]],
    length: int,
) -> Trim | None:
    """A :class:`Trim` for this capture when every captured layer's shape follows the length
    (see the module docstring), tried on ``example`` (1, T) cut to its real tokens (to its
    first half when all T are real); None when some layer does not, or the inputs are not
    text. ``rows``, ``layers``: as :class:`Trim` takes them."""
    mask = attention_mask(example)
    if mask is None or mask.shape[1] != length or length < 2:
        return None
    trim = Trim(length, dict(rows), dict(layers))
    cut, span = trim.cut(example)
    if span is None:  # every token real: try the first half
        span = (0, length // 2)
        cut = trim.columns(example, span)  # type: ignore[arg-type]
    with cap.grad_mode():
        try:
            got = cap.raw(cut, verify=False)  # unchecked: the shapes are looked at below
        except Exception as e:  # the model wants its full length: keep it
            log.info("batches keep all %d tokens: the model fails on fewer (%s)", length, e)
            return None
    n = span[1] - span[0]
    for name in cap.names:
        t, axis = got.get(name), cap.batch_axes.get(name)
        if not isinstance(t, torch.Tensor):
            continue  # not a tensor at the probe either, or the run says so
        t = t.movedim(axis, 0) if axis else t
        want, have = tuple(cap.shapes.get(name) or ()), tuple(t.shape[1:])
        if not follows(have, want, length, n):
            log.info(
                "batches keep all %d tokens: layer '%s' is %s at %d tokens, not %s with its "
                "token axes shortened",
                length,
                name,
                have,
                n,
                want,
            )
            return None
    return trim
