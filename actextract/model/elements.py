"""Elements: which part of a module's output a layer is (``lstm[1][0]``: an element of a
tuple; element 0 of a transformers module's tuple or ``ModelOutput`` by default), and the
check that each layer gave one tensor."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from actextract.errors import CaptureError

__all__ = [
    "check_outputs",
    "from_transformers",
    "select_element",
    "sequence",
    "split_index",
    "tensor_paths",
]

_INDEX = re.compile(r"((?:\[\d+\])+)$")


def split_index(name: str) -> tuple[str, tuple[int, ...]]:
    """``lstm[1][0]`` → ("lstm", (1, 0)); a plain name → (name, ())."""
    m = _INDEX.search(name)
    if not m:
        return name, ()
    return name[: m.start()], tuple(int(i) for i in re.findall(r"\d+", m.group(1)))


def select_element(value: object, index: tuple[int, ...]) -> object:
    """``value[i][j]...`` (a ``ModelOutput`` read as its tuple); an index a tuple does not
    have is kept as the IndexError."""
    for i in index:
        items = sequence(value)
        if items is None or i >= len(items):
            return IndexError(f"{type(value).__name__} has no element {i}")
        value = items[i]
    return value


def sequence(value: object) -> tuple | list | None:
    """A tuple or list as it is, a transformers ``ModelOutput`` as its tuple of set fields."""
    if isinstance(value, tuple | list):
        return value
    to_tuple = getattr(value, "to_tuple", None)
    return to_tuple() if callable(to_tuple) and isinstance(value, Mapping) else None


def from_transformers(module: nn.Module) -> bool:
    """Whether ``module`` is a Hugging Face transformers model."""
    return any(c.__module__.startswith("transformers.") for c in type(module).__mro__)


def check_outputs(names: Sequence[str], outputs: Mapping[str, object]) -> None:
    """Every layer produced one tensor, or a CaptureError says which did not and what to
    capture instead (an element of a tuple by its index)."""
    missing = [n for n in names if n not in outputs]
    if missing:
        raise CaptureError(
            f"layers {missing} produced no output in the forward pass "
            "(modules that forward() never calls)."
        )
    bad = []
    for n in names:
        value = outputs[n]
        if isinstance(value, torch.Tensor):
            continue
        if isinstance(value, IndexError):
            bad.append(f"{n} ({value})")
            continue
        paths = tensor_paths(value)
        elements = f"; its tensors: {', '.join(n + p for p in paths[:6])}" if paths else ""
        bad.append(f"{n} ({type(value).__name__}{elements})")
    if bad:
        raise CaptureError(
            f"layers {'; '.join(bad)} do not output a single tensor; capture a tensor of the "
            "output by its index, or a layer inside it (see 'actextract layers')."
        )


def tensor_paths(value: object, prefix: str = "") -> list[str]:
    """The indices of the tensors inside nested tuples/lists: ``['[0]', '[1][0]', ...]``."""
    if isinstance(value, torch.Tensor):
        return [prefix]
    items = sequence(value)
    if items is not None:
        return [p for i, v in enumerate(items) for p in tensor_paths(v, f"{prefix}[{i}]")]
    return []
