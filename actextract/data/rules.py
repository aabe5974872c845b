"""Rules for inputs that would otherwise pass silently or fail vaguely: each one either takes
the input under a documented rule or refuses it with an error that names the input and the fix.

- Labels (:func:`as_label`): integers pass (Python, numpy or torch, a one-element tensor
  included; ``True``/``False`` are 1/0), as does a float with no fraction (``3.0`` is class 3);
  None is "no label" (-1). A fraction, NaN or Inf, a string or a multi-element label refuses
  the sample, naming the value.
- Normalisation (:func:`check_normalize`): ``--mean`` and ``--std`` have one value each, or one
  per channel of the images after ``--channels``; a std is positive; neither comes alone.
- Output (:func:`actextract.store.location.check_out`): ``--out`` is not empty, and no file
  stands where a folder of its path must be; checked before the model and data are loaded.
- Input channels (:func:`channels_hint`): when the probe's forward fails, a first convolution
  that takes another number of channels than the inputs have is named.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from torch import nn

from actextract.errors import OptionError, option

__all__ = ["as_label", "channels_hint", "check_normalize"]

_INT64 = (-(2**63), 2**63 - 1)


def as_label(value: Any) -> int:
    """A sample's label as the integer class index it stands for (None: -1, no label); a
    ValueError naming the value and the fix when it stands for none."""
    if value is None:
        return -1
    label = value
    if hasattr(value, "shape") and hasattr(value, "item"):  # a tensor, numpy array or scalar
        size = math.prod(value.shape)
        if size != 1:
            raise ValueError(
                f"label {_shown(value)} has {size} values, not one; a label is one integer "
                "class index: map one-hot or multi-label targets to a class index (e.g. with a "
                "target_transform taking the argmax), or give None for no label"
            )
        label = value.item()
    if isinstance(label, numbers.Integral):  # int, bool, numpy and torch integers
        number = int(label)
    elif isinstance(label, numbers.Real) and math.isfinite(label) and float(label).is_integer():
        number = int(label)  # 3.0 is class 3
    else:
        if isinstance(label, str | bytes):
            what = "a string"
        elif isinstance(label, numbers.Real):
            what = "not finite" if not math.isfinite(label) else "has a fraction"
        else:
            what = type(label).__name__
        raise ValueError(
            f"label {_shown(value)} ({what}) is not an integer class index; map the dataset's "
            "labels to integer class indices (e.g. with a target_transform), or give None for "
            "no label"
        )
    if not _INT64[0] <= number <= _INT64[1]:
        raise ValueError(f"label {number} does not fit in int64; map labels to class indices")
    return number


def _shown(value: Any) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def check_normalize(
    channels: int | None, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
) -> None:
    """``mean`` and ``std`` (the run's, given or the model's and dataset's defaults) fit the
    images after ``--channels``: one value, or one per channel; std positive; both or none."""
    if (mean is None) != (std is None):
        given, missing = ("mean", "std") if std is None else ("std", "mean")
        raise OptionError(
            f"{option(given)} is set and {option(missing)} is not (nor by the model's "
            f"defaults): normalisation needs both; pass {option(missing)} too, or neither."
        )
    if mean is None or std is None:
        return
    if any(not (math.isfinite(s) and s > 0) for s in std) or not all(map(math.isfinite, mean)):
        raise OptionError(
            f"--mean {_values(mean)} --std {_values(std)}: give finite values for "
            f"{option('mean')} and {option('std')}, and std values above 0 (the normalisation "
            "divides by them)."
        )
    if channels is None or (len(mean) in (1, channels) and len(std) in (1, channels)):
        return
    s = "s" if channels > 1 else ""
    other = f", or --channels {len(mean)}" if len(mean) == len(std) == 4 - channels else ""
    raise OptionError(
        f"{option('channels')}, {option('mean')} and {option('std')} do not fit: "
        f"--channels {channels} makes images of {channels} channel{s}, but --mean has "
        f"{len(mean)} value{'s' * (len(mean) > 1)} ({_values(mean)}) and --std {len(std)} "
        f"({_values(std)}) (where not given: the model's or the dataset's defaults); give "
        f"--mean and --std {channels} value{s} each"
        + (" (or one each, for every channel)" if channels > 1 else "")
        + f"{other}."
    )


def _values(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:.4g}" for v in values)


def channels_hint(module: nn.Module, input_shape: tuple[int, ...]) -> str | None:
    """What to say when the probe's forward failed and the model's first convolution takes
    another number of channels than the inputs (``input_shape`` per sample) have."""
    try:
        name, conv = next(
            (n, m) for n, m in module.named_modules() if isinstance(m, nn.modules.conv._ConvNd)
        )
        want, spatial = int(conv.in_channels), conv.weight.ndim - 2
    except Exception:  # no convolution, or a lazy one: nothing to say
        return None
    if len(input_shape) != spatial + 1 or input_shape[0] == want or want <= 0:
        return None
    have = input_shape[0]
    fix = (
        f"pass --channels {want} (channels={want}; with --mean and --std of {want} "
        f"value{'s' * (want > 1)}, or one each) to convert the images"
        if want in (1, 3)
        else f"give the model inputs of {want} channels"
    )
    return (
        f"the inputs have {have} channel{'s' * (have > 1)} and the model's first convolution "
        f"'{name}' ({type(conv).__name__}) takes {want}: {fix}, or use a model made for "
        "these inputs"
    )
