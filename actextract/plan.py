"""Plan: one real sample through the capture decides each layer's array (shape, reduction,
dtype), and the provenance a new store records."""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import torch

from actextract import __version__
from actextract.capture import model_output_layers, probe
from actextract.decode import DeviceDecoder
from actextract.engine import RunOptions, autocast, check_bad, device_inputs
from actextract.errors import OptionError
from actextract.models import LoadedModel
from actextract.reduce import STORAGE_DTYPES, Reducer, parse_reductions, reduced_shape
from actextract.source import Preprocess, Sample, Source
from actextract.store import ArraySpec, StoreOptions

__all__ = ["plan_arrays", "provenance", "state_sha256"]


def plan_arrays(
    cap,
    source: Source,
    rows: range,
    options: RunOptions,
    reduce: str | Mapping[str, str] | None,
    store_options: StoreOptions,
    decoder: DeviceDecoder | None,
) -> tuple[list[ArraySpec], Reducer]:
    """Probe one real sample through the capture: per-layer shapes, reductions, array specs."""
    example = first_sample(source, rows, options.on_bad_sample, decoder)
    x = device_inputs(example.input.unsqueeze(0), options)
    with autocast(options.device, options.precision):
        outputs = probe(cap, x)
        final = model_output_layers(cap, outputs, x)
    plan = parse_reductions(reduce, cap.names)
    arrays = []
    for name, out in outputs.items():
        shape = tuple(out.shape[1:])
        arrays.append(
            ArraySpec(
                name,
                reduced_shape(name, shape, plan[name]),
                cap.kinds.get(name, ""),
                plan[name],
                shape,
                model_output=name in final and plan[name] == "none",
            )
        )
    # On a GPU the cast to the storage dtype happens before the copy to the host (half the bytes
    # over the bus for float16); on the CPU the copy into the host buffer casts, in one pass.
    cast = STORAGE_DTYPES[store_options.dtype] if options.device.type != "cpu" else None
    return arrays, Reducer(plan, cast)


def first_sample(
    source: Source, rows: range, policy: str, decoder: DeviceDecoder | None = None
) -> Sample:
    for i in rows[:100]:
        item = source.dataset[i]
        if decoder is not None and isinstance(item, Sample):
            item = decoder.decode_sample(item)
        if isinstance(item, Sample):
            return item
        check_bad([item], policy)
    raise OptionError(
        f"none of the first {min(100, len(rows))} samples of '{source.spec}' "
        "could be loaded; check the dataset."
    )


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 of the module's parameters and buffers (names, dtypes, shapes, values): the
    weights a run used, also when no checkpoint file names them."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def provenance(
    loaded: LoadedModel,
    source: Source,
    method: str,
    precision: str,
    options: RunOptions,
    batch_size: int,
) -> dict[str, Any]:
    import numpy
    import torchvision
    import zarr

    return {
        "software": {
            "actextract": __version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "zarr": zarr.__version__,
            "numpy": numpy.__version__,
            "python": platform.python_version(),
        },
        "model": {
            "spec": loaded.spec,
            "weights": loaded.weights,
            "weights_sha256": loaded.weights_sha256,
            "state_sha256": state_sha256(loaded.module),
            "capture": method,
        },
        "dataset": {
            "spec": source.spec,
            "transform": source.transform,
            "n": len(source),
            "classes": list(source.classes) if source.classes else None,
            "preprocess": _preprocess_attrs(source.preprocess),
            "decode": "gpu" if source.encoded else "cpu",
        },
        "precision": precision,
        "device": str(options.device),
        "batch_size": batch_size,
    }


def _preprocess_attrs(pre: Preprocess | None) -> dict[str, Any] | None:
    if pre is None:
        return None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(pre).items()}
