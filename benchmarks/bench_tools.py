"""What bench_extract.py measures: the cases, and the ways of getting a case's activations
(the forward alone, the tutorials' hooks, a streaming peer, actextract and its float32
variant). The machine's side (RSS, I/O counters, bandwidths) is in bench_machine.py, one
process per measurement in bench_process.py, the Markdown tables in bench_report.py.

Each method gets a prepared :class:`Bench` (model, source, device built once, outside the
clocks), the rows to run over and an empty folder for its output, and returns its extras. The
caller owns the clock, the RSS sampler and deleting the output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

import actextract
from actextract.core.devices import autocast
from actextract.data.source import Preprocess, Source, make_loader, open_source
from actextract.extraction.engine import RunOptions, cudnn_autotune, device_inputs
from actextract.model.zoo import load_model


@dataclass(frozen=True)
class Case:
    """One configuration every method of a row runs on: same data, model and precision."""

    name: str  # the row: compute, maps, maps-resnet50, scale-5000, ...
    workload: str  # compute | maps | scale (what --workloads selects)
    model: str  # an actextract model spec, built once with seeded random weights
    n: int  # images
    shape: tuple[int, int, int]  # (C, H, W) of each synthetic input
    layers: tuple[str, ...]
    batch_size: int
    methods: tuple[str, ...] = ("ceiling", "hooks", "actextract")  # see METHODS
    precision: str = "fp32"  # autocast of the forward, for every method
    channels_last: bool = False  # model and inputs NHWC, for every method
    dtype: str = "float16"  # actextract's storage dtype (its default); hooks save float32
    codec: str = "none"  # actextract's codec (its default)
    num_workers: int = 0  # loader processes, for every method
    memory: str = "warm"  # warm: free memory touched before each call; cold: left to the host

    @property
    def dataset(self) -> str:
        return "synthetic:{}:{}:{}:{}".format(self.n, *self.shape)


@dataclass(frozen=True)
class Bench:
    """A case made ready: the one model object and source that every method is handed."""

    case: Case
    device: torch.device
    model: nn.Module  # eval mode, on ``device``, NHWC when the case says so
    source: Source
    layer_elems: dict[str, int]  # per-image element count of each captured layer


def prepare(case: Case, device: torch.device) -> Bench:
    """The model (seeded random weights, eval, on ``device``, NHWC if asked) and the source
    preprocessed as extract would, built once for every method of the case."""
    torch.manual_seed(0)
    loaded = load_model(case.model)
    source = open_source(case.dataset, Preprocess().over(loaded.preprocess))
    model = loaded.module.to(device)
    if case.channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = source.dataset[0].input.unsqueeze(0).to(device)
    return Bench(case, device, model, source, layer_elements(model, case.layers, x))


# ---------------------------------------------------------------------------------- methods


def run_ceiling(b: Bench, rows: Sequence[int], out: Path) -> dict:
    """The forward pass alone: actextract's loader and input path, nothing captured."""
    _forward_all(b, rows)
    return {}


def run_hooks(b: Bench, rows: Sequence[int], out: Path) -> dict:
    """The tutorials' way: forward hooks append ``out.detach().float().cpu().numpy()`` to a
    list per layer; then ``np.concatenate`` and ``np.save`` per layer, (N, *shape) float32."""
    held: dict[str, list[np.ndarray]] = {name: [] for name in b.case.layers}

    def keep(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            held[name].append(output.detach().float().cpu().numpy())

        return hook

    handles = [
        b.model.get_submodule(name).register_forward_hook(keep(name)) for name in b.case.layers
    ]
    try:
        _forward_all(b, rows)
    finally:
        for handle in handles:
            handle.remove()
    for name in b.case.layers:
        np.save(out / f"{name}.npy", np.concatenate(held.pop(name)))
    return {}


PART_BATCHES = 8  # the streaming peer saves a part every this many batches


def run_peer(b: Bench, rows: Sequence[int], out: Path) -> dict:
    """A streaming peer's way: the same hooks, but every ``PART_BATCHES`` batches the kept
    arrays are concatenated and ``np.save``'d as one float32 ``.npy`` part per layer,
    synchronously from the loop; memory is a few batches whatever N."""
    held: dict[str, list[np.ndarray]] = {name: [] for name in b.case.layers}
    parts = 0

    def keep(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            held[name].append(output.detach().float().cpu().numpy())

        return hook

    def save(batch: int | None) -> None:
        nonlocal parts
        if batch is not None and (batch + 1) % PART_BATCHES:
            return
        if held[b.case.layers[0]]:
            for name in b.case.layers:
                np.save(out / f"{name}-{parts:05d}.npy", np.concatenate(held[name]))
                held[name].clear()
            parts += 1

    handles = [
        b.model.get_submodule(name).register_forward_hook(keep(name)) for name in b.case.layers
    ]
    try:
        _forward_all(b, rows, after=save)
    finally:
        for handle in handles:
            handle.remove()
    save(None)  # the last, shorter part
    return {}


def run_actextract(b: Bench, rows: Sequence[int], out: Path) -> dict:
    """``actextract.extract`` with its defaults but for what the case names; its fx trace,
    probe, store creation and flush are inside the caller's clock. ``rows``: range(k)."""
    if not (isinstance(rows, range) and rows.start == 0 and rows.step == 1):
        raise ValueError(f"actextract runs over the first rows, range(k), not {rows!r}")
    c = b.case
    store = actextract.extract(
        b.model,
        b.source,
        layers=list(c.layers),
        out=out / "run.zarr",
        batch_size=c.batch_size,
        num_workers=c.num_workers,
        device=b.device,
        precision=c.precision,
        dtype=c.dtype,
        codec=c.codec,
        channels_last=c.channels_last,
        limit=None if len(rows) == len(b.source) else len(rows),
        progress=False,
    )
    sync(b.device)  # extract returns after its flush; nothing should be queued, but be sure
    return {"summary": dict(store.attrs["summary"])}


def run_actextract_float32(b: Bench, rows: Sequence[int], out: Path) -> dict:
    """actextract as :func:`run_actextract`, storing float32: the peer's bytes."""
    return run_actextract(replace(b, case=replace(b.case, dtype="float32")), rows, out)


METHODS: dict[str, Callable[[Bench, Sequence[int], Path], dict]] = {
    "ceiling": run_ceiling,
    "hooks": run_hooks,
    "peer": run_peer,
    "actextract": run_actextract,
    "actextract-float32": run_actextract_float32,
}
ACTEXTRACT = ("actextract", "actextract-float32")  # the methods whose runs leave a summary


def _forward_all(b: Bench, rows: Sequence[int], after: Callable[[int], None] | None = None) -> None:
    """Every batch of ``rows`` through the model as actextract feeds it: same loader and batch
    size, pinned memory and ``non_blocking`` on CUDA, NHWC inputs when the case says so,
    autocast, inference mode, cuDNN autotuning on CUDA. Outputs are dropped (hooks see them);
    ``after(k)`` runs after batch k."""
    c = b.case
    options = RunOptions(b.device, c.precision, c.channels_last)
    loader = make_loader(
        b.source,
        rows,
        batch_size=c.batch_size,
        num_workers=c.num_workers,
        pin_memory=b.device.type == "cuda",
    )
    with torch.inference_mode(), cudnn_autotune(b.device), autocast(b.device, c.precision):
        for k, batch in enumerate(loader):
            b.model(device_inputs(batch.inputs, options))
            if after is not None:
                after(k)
    sync(b.device)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock stopped next sees all of it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def layer_elements(model: nn.Module, layers: Sequence[str], x: torch.Tensor) -> dict[str, int]:
    """Per-image element count of each layer's output, from one forward of ``x`` (1, C, H, W)."""
    elems: dict[str, int] = {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: elems.__setitem__(name, o[0].numel())
        )
        for name in layers
    ]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return elems
