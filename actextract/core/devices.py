"""Devices: the rules for ``device`` (``--device``), shared by extraction, recording and
clustering."""

from __future__ import annotations

import torch

from actextract.errors import OptionError

__all__ = ["resolve_device"]


def resolve_device(spec: str | torch.device) -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cuda:1`` is checked against the GPUs."""
    if str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise OptionError(f"--device '{spec}' is not auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(
                f"--device {spec}: CUDA is not available on this machine; use "
                "--device cpu (or auto)."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError(
                f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)."
            )
    elif device.type != "cpu":
        raise OptionError(f"--device '{spec}' is not supported; use auto, cpu or cuda[:N].")
    return device
