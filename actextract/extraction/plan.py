"""Plan: real samples through the capture (the probe) decide each layer's array (shape,
layout, reduction, dtype, clone), and the provenance a new store records."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import torch

from actextract.core.axes import parse_layouts, reduced_shape, reductions_for
from actextract.core.devices import autocast
from actextract.core.dtypes import STORAGE_DTYPES
from actextract.core.names import match_names
from actextract.core.versions import software
from actextract.data.decode import DeviceDecoder
from actextract.data.inputs import Inputs, SampleShape, per_sample_shape, stack
from actextract.data.probes import known_ids
from actextract.data.rules import channels_hint
from actextract.data.source import Preprocess, Sample, Source
from actextract.errors import CaptureError, OptionError, option
from actextract.extraction.engine import RunOptions, check_bad, device_inputs
from actextract.model.probe import LayerProbe, model_output_layers, probe
from actextract.model.reduce import Reducer, parse_reductions
from actextract.model.trim import Trim, plan_trim
from actextract.model.zoo import LoadedModel
from actextract.stats.accumulate import DEFAULT_BINS, hist_edges, parse_stats
from actextract.store import ArraySpec, StoreOptions, choose_chunk_rows, open_store
from actextract.store.location import Location
from actextract.store.strings import width_for

log = logging.getLogger(__name__)

__all__ = [
    "choose_outputs",
    "first_samples",
    "layer_arrays",
    "plan_arrays",
    "plan_cut",
    "provenance",
    "state_sha256",
    "token_rows",
    "token_stats",
]


def plan_arrays(
    cap,
    source: Source,
    rows: range,
    options: RunOptions,
    reduce: str | Mapping[str, str] | None,
    store_options: StoreOptions,
    decoder: DeviceDecoder | None,
    *,
    stored: Sequence[str] | None = None,
    stats: Mapping[str, Sequence[str]] | None = None,
    hist_bins: int = DEFAULT_BINS,
    hist_range: tuple[float, float] | None = None,
    layouts: str | Mapping[str, str] | None = None,
) -> tuple[list[ArraySpec], Reducer, dict[str, Any], SampleShape]:
    """Probe real samples through the capture (:func:`actextract.model.probe.probe`, which also
    configures it): the row arrays (``stored`` layers, default all, and the ``channel-mean``
    statistics), their reducer, the ``stats`` attributes of the store ({layer: kinds, output
    shape, layout, histogram edges}) and the per-sample input shape every sample must have."""
    if stats and source.stream is not None:
        raise OptionError(
            f"{option('stats')} sums each row block's rows as a whole, and an IterableDataset's "
            "row count is known only at its end: pass a map-style Dataset (with __len__ and "
            "__getitem__), or drop --stats and store the layers (--store) instead."
        )
    examples = first_samples(source, rows, options.on_bad_sample, decoder)
    single = device_inputs(stack([examples[0].input]), options)
    pair = device_inputs(stack([e.input for e in examples]), options)
    with autocast(options.device, options.precision):
        try:
            found, outputs = probe(
                cap,
                single,
                pair if len(examples) > 1 else None,
                layouts=parse_layouts(layouts, cap.names),
            )
        except CaptureError as e:  # a first convolution of other channels: say which
            first = examples[0].input
            hint = (
                channels_hint(cap.module, tuple(first.shape))
                if isinstance(first, torch.Tensor)
                else None
            )
            if hint is None or e.__cause__ is None:
                raise
            cause = (str(e.__cause__).splitlines() or [""])[0]  # fx adds the node and more
            raise OptionError(f"{hint} (the probe's forward failed: {cause}).") from e
        final = model_output_layers(cap, outputs, single)
    stored = list(cap.names if stored is None else stored)
    arrays = layer_arrays(found, final, stored, reduce)
    attrs: dict[str, Any] = {}
    for name, kinds in (stats or {}).items():
        layer = found[name]
        shape = layer.shape or ()
        entry: dict[str, Any] = {"kinds": list(kinds), "shape": list(shape), "kind": layer.kind}
        entry["layout"] = layer.layout
        if "channel-mean" in kinds:
            if reductions_for(layer.layout) == ("none",):
                raise OptionError(
                    f"{option('stats')} '{name}=channel-mean': layer '{name}' has shape {shape} "
                    f"with layout {layer.layout}, with no spatial axes or tokens to average over"
                    + (
                        f": its values are their own means; name it in {option('store')} instead."
                        if layer.layout == "vector"
                        else f"; set its layout with {option('layout')} '{name}=nchw|nhwc|tokens'."
                    )
                )
            spec = ArraySpec(
                name,
                reduced_shape(name, shape, layer.layout, "mean", option("stats")),
                layer.kind,
                "mean",
                shape,
                path=f"stats/{name}/channel_means",
                layout=layer.layout,
            )
            arrays.append(spec)
            entry["channel_means"] = spec.array
        if "channel-hist" in kinds:
            values = outputs[name].float()
            if hist_range is None and not torch.isfinite(values).any():
                values = finite_probe(cap, source, rows, options, decoder, name, examples[0])
            entry["edges"] = hist_edges(values, hist_bins, hist_range)
            entry["bins"] = hist_bins
            entry["range"] = list(hist_range) if hist_range else None
        attrs[name] = entry
    # On a GPU the cast to the storage dtype happens before the copy to the host (half the bytes
    # over the bus for float16); on the CPU the copy into the host buffer casts, in one pass.
    cast = STORAGE_DTYPES[store_options.dtype] if options.device.type != "cpu" else None
    reducer = Reducer(
        {a.key: a.reduce for a in arrays},
        cast,
        {a.key: a.name for a in arrays},
        {a.key: a.output_layout for a in arrays},
    )
    return arrays, reducer, attrs, per_sample_shape(examples[0].input)


def token_stats(stats: dict[str, Any], tokens: dict[str, Any] | None) -> None:
    """A text run's token layers are summed over their real tokens, padding left out: each
    token a row of (D,) features (``over: tokens``; their count per class is kept beside the
    samples'), so that class-mean, class-std and channel-hist are per feature over tokens.
    The channel means are the masked means per document already (the reduction's)."""
    if not tokens:
        return
    for entry in stats.values():
        if entry["layout"] == "tokens" and entry["shape"][:1] == [tokens["length"]]:
            entry["over"] = "tokens"  # the entry keeps the layer's (T, D) shape and layout


def token_rows(arrays: Sequence[ArraySpec], tokens: dict[str, Any] | None) -> list[ArraySpec]:
    """A text run's token layers stored with ``--reduce tokens`` get one row per real token
    (``rows: token``: the (n_tokens, D) layout sparse-autoencoder and probe training read);
    with ``none`` they stay padded, (N, T, D) beside the mask."""
    if not tokens:
        return list(arrays)
    return [
        replace(a, rows="token")
        if a.reduce == "tokens" and len(a.shape) == 2 and a.shape[0] == tokens["length"]
        else a
        for a in arrays
    ]


def plan_cut(
    cap,
    source: Source,
    rows: range,
    options: RunOptions,
    arrays: Sequence[ArraySpec],
    stats: Mapping[str, Any],
    tokens: dict[str, Any] | None,
    decoder: DeviceDecoder | None = None,
) -> Trim | None:
    """How a text run's batches are cut to their real tokens
    (:func:`~actextract.model.trim.plan_trim`, tried on the first sample); None for other
    runs, for models whose layers do not follow the length, and for runs that store or sum
    some layer with its padding (a token layer kept padded, ``--reduce none``): every value
    such a run stores is one the layer produced for the batch as padded, padding included."""
    if not tokens:
        return None
    length = tokens["length"]
    padded = [a.key for a in arrays if a.rows != "token" and length in a.shape]
    padded += [n for n, e in stats.items() if e.get("over") != "tokens" and length in e["shape"]]
    if padded:
        log.info(
            "batches keep all %d tokens: %s kept with the padding (a row per real token: "
            "--reduce tokens; one per document: mean, max, cls, last)",
            length,
            ", ".join(padded[:4]),
        )
        return None
    first = first_samples(source, rows, options.on_bad_sample, decoder)[0]
    x = device_inputs(stack([first.input]), options)
    layers = {name: tuple(entry["shape"]) for name, entry in stats.items()}
    with autocast(options.device, options.precision):
        return plan_trim(cap, x, {a.key: a.shape for a in arrays}, layers, tokens["length"])


def choose_outputs(
    captured: Sequence[str],
    full: Sequence[str] | None,
    stats: str | Mapping[str, str | Sequence[str]] | None,
) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """The captured layers written in full (``full``'s, else all) and each layer's
    statistics; every captured layer must be one or the other."""

    def not_found(pat: str) -> Exception:
        return OptionError(f"{option('store')} '{pat}' matches none of the captured layers.")

    stored = list(captured) if full is None else match_names(full, captured, not_found)
    wanted = parse_stats(stats, captured)
    idle = [n for n in captured if n not in stored and n not in wanted]
    if idle:
        raise OptionError(
            f"layer(s) {', '.join(idle)} would be computed and thrown away: neither "
            f"{option('store')} nor {option('stats')} names them. Add them to one of these, or "
            f"drop them from {option('layers')}."
        )
    return stored, wanted


def choose_chunk_rows_for(
    location: Location, o: Any, join: bool, arrays: Sequence[ArraySpec], n: int, id_width: int
) -> int:
    """Rows per chunk: as asked (``o``: the ExtractOptions), else the existing store's (when
    resuming or joining it), else chosen from the batch size and the largest row of a layer
    or an id (``id_width`` bytes: the ids' chunk is a block's too), ``n`` 0 when the rows are
    not known (a stream's)."""
    options = o.store_options
    if options.chunk_rows:
        return options.chunk_rows
    if (o.resume or join) and location.is_store():
        return open_store(location).chunk_rows
    per_sample = max(
        (math.prod(a.shape) * STORAGE_DTYPES[options.dtype].itemsize for a in arrays), default=1
    )
    return choose_chunk_rows(o.batch_size, per_sample, n or STREAM_ROWS, id_width=id_width)


def layer_arrays(
    found: Mapping[str, LayerProbe], final, names: Sequence[str], reduce
) -> list[ArraySpec]:
    """The arrays of the layers ``names`` stored in full, from what the probe ``found``:
    shape after the ``reduce`` plan (which must fit each layer's layout), layout, kind, why it
    is cloned, and whether it is the model's own output (``final``)."""
    plan = parse_reductions(reduce, names)
    arrays = []
    for name in names:
        layer = found[name]
        shape = layer.shape or ()
        arrays.append(
            ArraySpec(
                name,
                reduced_shape(name, shape, layer.layout, plan[name]),
                layer.kind,
                plan[name],
                shape,
                model_output=name in final and plan[name] == "none",
                layout=layer.layout,
                clone=layer.clone,
                batch_axis=layer.batch_axis,
            )
        )
    return arrays


def first_samples(
    source: Source, rows: range, policy: str, decoder: DeviceDecoder | None = None
) -> list[Sample]:
    """The first good sample of ``rows`` and, where there is one among the next few, a second
    of the same input shape (the probe runs them alone and together to find the batch axis)."""
    found: list[Sample] = []
    first_bad = None
    for i in rows[:100]:
        item = source.dataset[i]
        if decoder is not None and isinstance(item, Sample):
            item = decoder.decode_sample(item)
        if isinstance(item, Sample):
            if not found:
                found.append(item)
            elif per_sample_shape(item.input) == per_sample_shape(found[0].input):
                return [*found, item]
            if i - rows[0] >= 8:  # no second sample of this shape nearby: probe with one
                break
        elif not found:
            check_bad([item], policy)
            first_bad = first_bad or item
    if found:
        return found
    why = ""
    if first_bad is not None:
        why = f" (first: sample {first_bad.index} '{first_bad.id}', {first_bad.error})"
    raise OptionError(
        f"none of the first {min(100, len(rows))} samples of '{source.spec}' "
        f"could be loaded{why}; check the dataset."
    )


STREAM_ROWS = 1 << 40  # the row count a stream's chunk rows are chosen for: unknown, large
HIST_PROBE_ROWS = 64  # rows looked at for a default histogram range, at most


def finite_probe(cap, source, rows, options, decoder, layer: str, first: Sample) -> torch.Tensor:
    """The outputs of ``layer`` for the first batch of up to 8 samples among the next
    ``HIST_PROBE_ROWS`` rows that holds a finite value: where the probe sample's hold none
    (a NaN input), the default histogram range comes from these. None there: an OptionError
    that asks for --hist-range."""
    batch: list[Inputs] = []  # the inputs of samples shaped like the first
    shape = per_sample_shape(first.input)
    looked = rows[1:HIST_PROBE_ROWS]
    for k, i in enumerate(looked):
        item = source.dataset[i]
        if decoder is not None and isinstance(item, Sample):
            item = decoder.decode_sample(item)
        if isinstance(item, Sample) and per_sample_shape(item.input) == shape:
            batch.append(item.input)
        if batch and (len(batch) == 8 or k == len(looked) - 1):
            x = device_inputs(stack(batch), options)
            with cap.grad_mode(), autocast(options.device, options.precision):
                values = cap(x)[layer].float()
            if torch.isfinite(values).any():
                return values
            batch = []
    raise OptionError(
        f"--stats {layer}=channel-hist: the layer's outputs hold no finite value for the first "
        f"{len(looked) + 1} samples, so there is no range to default to; pass --hist-range LO,HI "
        "(hist_range=(LO, HI))."
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
    return {
        "software": software(),
        "model": {
            "spec": loaded.spec,
            "weights": loaded.weights,
            "weights_sha256": loaded.weights_sha256,
            "weights_format": loaded.weights_format,  # "pickle": --trust-checkpoint ran it
            "state_sha256": state_sha256(loaded.module),
            "capture": method,
        },
        "dataset": {
            "spec": source.spec,
            "transform": source.transform,
            "n": None if source.stream is not None else len(source),  # a stream's: at the end
            "classes": list(source.classes) if source.classes else None,
            "preprocess": _preprocess_attrs(source.preprocess),
            "decode": "gpu" if source.encoded else "cpu",
        },
        "precision": precision,
        "device": str(options.device),
        "batch_size": batch_size,
        "id_width": width_for(known_ids(source.dataset)),  # room for the longest id
    }


def _preprocess_attrs(pre: Preprocess | None) -> dict[str, Any] | None:
    if pre is None:
        return None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(pre).items()}
