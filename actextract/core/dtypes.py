"""Dtypes: what a store may hold. Zarr has no bfloat16, so bf16 compute is cast on the device
to one of these before the copy."""

from __future__ import annotations

import torch

__all__ = ["STORAGE_DTYPES"]

STORAGE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
