"""The Python API: ``extract``, ``list_layers``, ``open_store``.

``extract`` decides everything once (model, source, layers, shapes, store layout), refuses bad
input before anything is written, then hands the stages to :func:`actextract.engine.run`.
"""

from __future__ import annotations

import logging
import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actextract import __version__
from actextract.capture import (
    LayerInfo,
    Method,
    build_capture,
    layer_table,
    model_output_layers,
    probe,
)
from actextract.decode import DeviceDecoder
from actextract.engine import (
    RunOptions,
    autocast,
    check_bad,
    compiled,
    device_inputs,
    resolve_device,
    run,
)
from actextract.errors import OptionError
from actextract.models import LoadedModel, load_model
from actextract.reduce import STORAGE_DTYPES, Reducer, parse_reductions, reduced_shape
from actextract.sink import Sink
from actextract.source import (
    Preprocess,
    Sample,
    Source,
    check_decode,
    make_loader,
    open_source,
    wrap_dataset,
)
from actextract.store import (
    ArraySpec,
    Store,
    StoreOptions,
    check_output,
    choose_chunk_rows,
    create_store,
    open_store,
)
from actextract.text import format_summary
from actextract.transfer import ring_slots

__all__ = ["LayerTable", "extract", "list_layers", "open_store"]

log = logging.getLogger(__name__)

MAX_SKIPPED_IN_ATTRS = 10_000  # beyond this the store keeps the count; the ids array has all


def extract(
    model: str | nn.Module,
    dataset: str | Source | torch.utils.data.Dataset,
    *,
    layers: Sequence[str] | str,
    out: str | Path,
    weights: str | Path | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    dtype: str = "float16",
    reduce: str | Mapping[str, str] | None = None,
    codec: str = "none",
    level: int | None = None,
    chunk_rows: int | None = None,
    overwrite: bool = False,
    on_bad_sample: str = "error",
    limit: int | None = None,
    capture: Method = "auto",
    channels_last: bool = False,
    preprocess: Preprocess | None = None,
    writers: int = 2,
    host_buffers: int | None = None,
    compile: bool = False,
    decode: str = "cpu",
    progress: bool | None = None,
) -> Store:
    """Run ``model`` over ``dataset`` and store the outputs of ``layers`` in a Zarr store.

    ``model``: a spec (``resnet18``, ``digits-cnn``, ``python:mod:fn``) or a Module.
    ``dataset``: a spec (``digits``, ``folder:PATH``, ``mnist:ROOT``, ``synthetic:N:C:H:W``,
    ``python:mod:fn``) or a Dataset whose items are a tensor or ``(tensor, label, ...)``.
    ``layers``: names or globs (``['layer3', 'avgpool']`` or ``'conv*,fc1'``).
    ``writers``: compress-and-write threads; ``host_buffers``: row blocks in the device→host
    ring (host memory is bounded by it; default: what one batch touches plus one per writer).
    ``compile``: ``torch.compile`` the capture and reductions (slow to start, faster per batch
    on a GPU; batches are padded to ``batch_size`` so that the shorter last one reuses the
    compiled code). ``decode="gpu"``: for ``folder:`` datasets on CUDA, the loader workers only
    read the files and JPEGs are decoded (nvJPEG), resized and normalised on the GPU.
    Returns the opened store; ``store[layer]`` is (N, *shape) in ``dtype``.
    """
    if batch_size <= 0:
        raise OptionError(f"--batch-size {batch_size} must be a positive integer.")
    if limit is not None and limit <= 0:
        raise OptionError(f"--limit {limit} must be a positive integer.")
    store_options = StoreOptions(dtype=dtype, codec=codec, level=level, chunk_rows=chunk_rows)
    options = RunOptions(resolve_device(device), precision, channels_last, on_bad_sample, progress)
    check_decode(decode)
    if decode == "gpu" and options.device.type != "cuda":
        raise OptionError(
            f"--decode gpu decodes JPEGs on a CUDA device, and this run is on "
            f"{options.device}; use --device cuda, or --decode cpu (decoding in the loader's "
            "workers)."
        )
    check_output(Path(out), overwrite)  # before any slow work: refuse early, touch nothing

    loaded = load_model(model, weights=weights)
    source = _open(dataset, (preprocess or Preprocess()).over(loaded.preprocess), decode)
    decoder = DeviceDecoder(source.preprocess, options.device) if source.encoded else None
    rows = range(min(len(source), limit) if limit else len(source))
    if len(rows) == 0:
        raise OptionError(f"dataset '{source.spec}' has no samples.")
    module = loaded.module.to(options.device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if isinstance(layers, str):
        layers = layers.split(",")
    cap = build_capture(module, layers, model_name=loaded.spec, method=capture)
    try:
        arrays, reducer = _plan(cap, source, rows, options, reduce, store_options, decoder)
        rows_per_chunk = store_options.chunk_rows or choose_chunk_rows(
            batch_size,
            max(math.prod(a.shape) * STORAGE_DTYPES[dtype].itemsize for a in arrays),
            len(rows),
        )
        slots = ring_slots(
            host_buffers, batch_size=batch_size, chunk_rows=rows_per_chunk, writers=writers
        )
        store = create_store(
            out,
            n=len(rows),
            arrays=arrays,
            options=store_options,
            chunk_rows=rows_per_chunk,
            overwrite=overwrite,
            attrs=_provenance(loaded, source, cap.method, precision, options, batch_size),
        )
        loader = make_loader(
            source,
            rows,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=options.device.type == "cuda",
        )

        def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
            return reducer(cap(x))

        if compile:
            forward = compiled(forward, batch_size, options)
        try:
            with Sink(
                store, slots=slots, writers=writers, pin=options.device.type == "cuda"
            ) as sink:
                summary = run(loader, forward, sink, options, total=len(rows), decode=decoder)
        except BaseException as e:
            store.update_attrs(status="failed", error=f"{type(e).__name__}: {e}")
            raise
    finally:
        cap.close()
    skipped = [{"index": b.index, "id": b.id, "error": b.error} for b in summary.skipped]
    store.finish(
        summary=summary.as_dict(),
        skipped=skipped[:MAX_SKIPPED_IN_ATTRS],
        skipped_count=len(skipped),
    )
    log.info("%s\n%s", store.path, format_summary(store.attrs))
    return store


def _open(dataset: str | Source | Any, preprocess: Preprocess, decode: str) -> Source:
    if isinstance(dataset, str):
        return open_source(dataset, preprocess, decode=decode)
    source = wrap_dataset(dataset)
    if decode == "gpu" and not source.encoded:
        raise OptionError(
            f"decode='gpu' applies to 'folder:PATH' dataset specs; a {type(dataset).__name__}"
            " object is fed as it is. Pass the folder spec, or leave decode at 'cpu'."
        )
    return source


def _plan(
    cap,
    source: Source,
    rows: range,
    options: RunOptions,
    reduce: str | Mapping[str, str] | None,
    store_options: StoreOptions,
    decoder: DeviceDecoder | None,
) -> tuple[list[ArraySpec], Reducer]:
    """Probe one real sample through the capture: per-layer shapes, reductions, array specs."""
    example = _first_sample(source, rows, options.on_bad_sample, decoder)
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


def _first_sample(
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


def _provenance(
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


@dataclass(frozen=True)
class LayerTable:
    """What ``actextract layers`` shows."""

    model: str
    input_shape: tuple[int, ...]
    method: str
    rows: list[LayerInfo]


def list_layers(
    model: str | nn.Module,
    *,
    input_shape: Sequence[int] | None = None,
    weights: str | Path | None = None,
    capture: Method = "auto",
) -> LayerTable:
    """Every capturable layer of ``model``: name, kind and per-sample output shape, found by
    one forward pass of a (1, *input_shape) zero tensor on the CPU."""
    loaded = load_model(model, weights=weights)
    shape = tuple(input_shape) if input_shape else loaded.input_shape
    if not shape:
        raise OptionError(
            f"model '{loaded.spec}' implies no input shape; pass --input-shape, e.g. 3,224,224."
        )
    rows, method = layer_table(loaded.module, shape, method=capture)
    return LayerTable(loaded.spec, shape, method, rows)
