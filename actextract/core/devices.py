"""Devices: the rules for ``device`` (``--device``), shared by extraction, recording and
clustering."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from actextract.errors import OptionError, option

__all__ = ["PRECISIONS", "autocast", "resolve_device"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str | torch.device) -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cuda:1`` is checked against the GPUs."""
    if str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise OptionError(
            f"--device '{spec}' is not auto, cpu, cuda or cuda:N; give {option('device')} one "
            "of these."
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(
                f"{option('device')} '{spec}': CUDA is not available on this machine; use "
                "cpu (or auto)."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError(
                f"{option('device')} '{spec}': this machine has {torch.cuda.device_count()} "
                "CUDA device(s)."
            )
    elif device.type != "cpu":
        raise OptionError(
            f"{option('device')} '{spec}' is not supported; use auto, cpu or cuda[:N]."
        )
    return device


def autocast(device: torch.device, precision: str):
    """The forward's autocast context: ``nullcontext`` for fp32 (see RunOptions' check)."""
    dtype = PRECISIONS[precision]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
