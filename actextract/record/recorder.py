"""Recorder: a fixed probe set through a model while it trains, one epoch at a time, into one
store with an epoch axis (seed 004: how features evolve during training).

::

    rec = actextract.Recorder(model, layers=["conv1", "layer1", "layer4"], probe=probe_loader,
                              out="train.zarr")
    for epoch in range(n):
        train_one_epoch(model)
        rec.capture(epoch)   # acts/<layer>[epoch] = the probe's outputs, in eval mode

Between captures the model carries nothing of the Recorder: each ``capture`` builds the
capture for that call only and removes it afterwards (no hook, no wrapper module), runs the
probe in eval mode without autograd, and restores what it touched — every
module's train/eval and ``inplace`` flag, the torch RNG (CPU and the model's CUDA device),
Python's ``random`` and NumPy's global RNG — so training goes on bit for bit as without it.
The layout is in :mod:`actextract.store.epochs`.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from actextract.core.devices import PRECISIONS, autocast
from actextract.core.dtypes import STORAGE_DTYPES
from actextract.core.versions import software
from actextract.data.probes import (
    Rows,
    bad_sample_error,
    first_sample,
    known_ids,
    probe_source,
)
from actextract.data.samples import Source, make_loader
from actextract.errors import OptionError, StoreError
from actextract.extraction.plan import layer_arrays, state_sha256
from actextract.model.capture import Capture, Method, build_capture
from actextract.model.probe import configure, model_output_layers, probe
from actextract.model.reduce import Reducer
from actextract.model.zoo import borrowed
from actextract.record.recording import open_recording
from actextract.store.base import consolidate
from actextract.store.build import store_attrs
from actextract.store.epochs import AXIS, EpochStore
from actextract.store.layout import (
    ArraySpec,
    StoreOptions,
    choose_chunk_rows,
    now,
    quiet_numcodecs,
)
from actextract.store.location import Location, writable
from actextract.store.strings import width_for

__all__ = ["Recorder", "preserved"]

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64


class Recorder:
    """Records ``layers`` of ``model`` on the same ``probe`` samples at chosen epochs into the
    store ``out``: ``acts/<layer>`` (epochs, N, *shape).

    ``probe``: a Dataset (items: tensor, or (tensor, label, ...)), a DataLoader (its dataset
    and batch size; its sampler is ignored: every capture reads the same samples in order), a
    dataset spec (``digits``, ``folder:PATH``, ...) or a :class:`~actextract.data.source.Source`;
    ``rows``: which of its samples (default: all). ``every``: ``"epoch"`` captures at every
    call, an int k at the epochs divisible by k. ``device``: where the probe runs (default:
    the model's). An existing recording at ``out`` of the same model class, probe, layers and
    settings is continued; another store is refused unless ``overwrite``. The model, the
    probe, the layers and the store are checked here, before training goes on.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: Sequence[str] | str,
        probe: Dataset | DataLoader | Source | str,
        out: str | Path,
        every: str | int = "epoch",
        rows: Sequence[int] | None = None,
        dtype: str = "float16",
        reduce: str | Mapping[str, str] | None = None,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        num_workers: int | None = None,
        codec: str = "none",
        overwrite: bool = False,
        capture: Method = "auto",
        precision: str = "fp32",
        storage_options: Mapping[str, Any] | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise OptionError(f"model is a {type(model).__name__}; a Recorder needs the nn.Module.")
        if every != "epoch" and (
            isinstance(every, bool) or not isinstance(every, int) or every < 1
        ):
            raise OptionError(f"every={every!r}: give 'epoch' or a positive number of epochs.")
        if precision not in PRECISIONS:
            raise OptionError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}.")
        self.model, self.every, self.precision, self.method = model, every, precision, capture
        self.patterns = layers.split(",") if isinstance(layers, str) else list(layers)
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.source, loader = probe_source(probe, rows)
        self.batch_size = (
            batch_size or (loader.batch_size if loader else None) or DEFAULT_BATCH_SIZE
        )
        if self.batch_size < 1:
            raise OptionError(f"batch_size {self.batch_size} must be a positive integer.")
        self.num_workers = (
            num_workers if num_workers is not None else (loader.num_workers if loader else 0)
        )
        self.options = StoreOptions(dtype=dtype, codec=codec)
        self.location = Location.parse(out, storage_options)
        arrays, names, method = self._plan(reduce)
        self.layers = names
        self.reducer = Reducer(
            {a.name: a.reduce for a in arrays},
            STORAGE_DTYPES[dtype],
            layouts={a.name: a.output_layout for a in arrays},
        )
        self.arrays = arrays
        self.store = self._open(arrays, method, overwrite)
        self._ids = np.asarray(self.store.ids[:], dtype=object)  # "" until the first capture

    def __repr__(self) -> str:
        return (
            f"Recorder({type(self.model).__name__}, layers={self.layers}, n={self.store.n}, "
            f"out='{self.location}', every={self.every!r})"
        )

    # -- capturing ---------------------------------------------------------------------------
    def capture(self, epoch: int) -> bool:
        """Run the probe set in eval mode and write its outputs as epoch ``epoch`` (an epoch
        already recorded is replaced). Returns False, having done nothing, at an epoch that
        ``every`` skips."""
        if isinstance(epoch, bool) or not isinstance(epoch, int | np.integer) or epoch < 0:
            raise OptionError(f"capture({epoch!r}): the epoch is a non-negative integer.")
        epoch = int(epoch)
        if self.every != "epoch" and epoch % self.every:
            return False
        started = time.perf_counter()
        store = self.store
        with writable(self.location, f"grow the recording to epoch {epoch}"):
            # first: its consolidated metadata goes (the arrays' shapes are about to change)
            store.update_attrs(status="incomplete", capturing=epoch)
            self._grow(epoch + 1)
            if store.done()[epoch]:
                log.info("epoch %d is already recorded in %s; capturing it again", epoch, store)
                store._node("progress/epochs")[epoch] = 0  # not trusted while it is rewritten
        try:
            with preserved(self.model, self.device):
                cap = build_capture(
                    self.model, self.layers, model_name=_name(self.model), method=self.method
                )
                try:
                    configure(cap, self.found)  # the plan's probe: clones and batch axes
                    with cap.grad_mode():
                        nonfinite = self._run(cap, epoch)
                finally:
                    cap.close()
        except BaseException as e:
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            try:
                store.update_attrs(status=status, error=f"epoch {epoch}: {type(e).__name__}: {e}")
            except Exception:  # the original error matters more
                log.debug("could not record the failed capture in %s", store, exc_info=True)
            raise
        record = {
            "state_sha256": state_sha256(self.model),
            "captured": now(),
            "seconds": round(time.perf_counter() - started, 3),
            "nonfinite": nonfinite,
        }
        with writable(self.location, f"record epoch {epoch}"):
            store.write_record(epoch, record)
            store._node("progress/epochs")[epoch] = 1  # only now is the epoch trusted
            store.update_attrs(status="complete", capturing=None, error=None, finished=now())
            consolidate(store)  # for xarray and zarr, as a run's store has once sealed
        if any(nonfinite.values()):
            log.warning("epoch %d: rows with NaN or Inf, per layer: %s", epoch, nonfinite)
        log.info("captured epoch %d of %s in %.2f s", epoch, self.location, record["seconds"])
        return True

    def _run(self, cap: Capture, epoch: int) -> dict[str, int]:
        """The probe through ``cap`` in batches; rows gather on the host into whole chunks
        (one row block), each written in one aligned call per array."""
        store = self.store
        loader = make_loader(
            self.source,
            range(store.n),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            input_shape=self.input_shape,
        )
        dtype = np.dtype(self.options.dtype)
        buffers = {a.name: np.empty((store.chunk_rows, *a.shape), dtype) for a in self.arrays}
        labels = np.full(store.chunk_rows, -1, np.int64)
        ids: list[str] = []
        nonfinite = dict.fromkeys(self.layers, 0)
        block, filled = 0, 0
        for batch in loader:
            if batch.bad:
                raise bad_sample_error(batch.bad[0])
            x = batch.inputs.to(self.device, non_blocking=True)
            with autocast(self.device, self.precision):
                outputs = self.reducer(cap(x))
            host = {k: v.cpu().numpy() for k, v in outputs.items()}
            start = 0
            while start < len(x):
                size = len(store.block_range(block))
                take = min(len(x) - start, size - filled)
                for k, buf in buffers.items():
                    buf[filled : filled + take] = host[k][start : start + take]
                labels[filled : filled + take] = batch.labels[start : start + take].numpy()
                ids += batch.ids[start : start + take]
                filled, start = filled + take, start + take
                if filled == size:
                    for k, n in self._write(epoch, block, buffers, labels, ids).items():
                        nonfinite[k] += n
                    block, filled, ids = block + 1, 0, []
        if block != store.n_blocks:
            raise StoreError(
                f"the probe yielded {block * store.chunk_rows + filled} samples, not its length "
                f"{store.n}; a probe Dataset must give len() samples, the same each epoch."
            )
        return nonfinite

    def _write(
        self, epoch: int, block: int, buffers: Mapping[str, np.ndarray], labels, ids: list[str]
    ) -> dict[str, int]:
        """Write one row block of epoch ``epoch`` (labels and ids the first time); returns the
        rows holding NaN or Inf, per layer."""
        span = self.store.block_range(block)
        rows = slice(span.start, span.stop)
        size = len(span)
        stored, given = self._ids[rows], np.asarray(ids, dtype=object)
        if (stored != "").any() and (stored != given).any():
            i = int(np.flatnonzero(stored != given)[0])
            raise StoreError(
                f"the probe changed: row {span.start + i} is sample '{ids[i]}' now and "
                f"'{stored[i]}' in '{self.location}'. A recording needs the same samples in the "
                "same order at every epoch; pass overwrite=True to start a new one."
            )
        counts = {}
        with writable(self.location, f"write epoch {epoch}, rows {span.start}-{span.stop}"):
            with quiet_numcodecs():
                for k, buf in buffers.items():
                    self.store._node(f"acts/{k}")[epoch, rows] = buf[:size]
                    sums = buf[:size].reshape(size, -1).sum(axis=1, dtype=np.float64)
                    counts[k] = int((~np.isfinite(sums)).sum())  # finite iff every value is
            if (stored == "").any():
                self.store._node("labels")[rows] = labels[:size]
                self.store.ids[rows] = ids  # in the store's form of strings
                self._ids[rows] = ids
        return counts

    def _grow(self, epochs: int) -> None:
        """Room for ``epochs`` epochs in every array; the completion flags grow last."""
        paths = [a.array for a in self.arrays] + ["progress/records", "progress/epochs"]
        for path in paths:
            arr = self.store._node(path)
            if arr.shape[0] < epochs:
                arr.resize((epochs, *arr.shape[1:]))

    # -- planning and opening ----------------------------------------------------------------
    def _plan(self, reduce: str | Mapping[str, str] | None) -> tuple[list[ArraySpec], list, str]:
        """One probe sample through a capture (the model left as it was): each layer's
        array, the resolved layer names, and the capture method."""
        example = first_sample(self.source)
        second = self.source.dataset[1] if len(self.source) > 1 else None
        with preserved(self.model, self.device):
            cap = build_capture(
                self.model, self.patterns, model_name=_name(self.model), method=self.method
            )
            try:
                x = example.input.unsqueeze(0).to(self.device)
                pair = None
                other = getattr(second, "input", None)
                if isinstance(other, torch.Tensor) and other.shape == x.shape[1:]:
                    pair = torch.stack([example.input, second.input]).to(self.device)
                with autocast(self.device, self.precision):
                    found, outputs = probe(cap, x, pair)
                    final = model_output_layers(cap, outputs, x)
            finally:
                cap.close()
        self.found = found
        self.input_shape = tuple(example.input.shape)
        arrays = layer_arrays(found, final, cap.names, reduce)
        return arrays, list(cap.names), cap.method

    def _open(self, arrays: list[ArraySpec], method: str, overwrite: bool) -> EpochStore:
        """Continue the recording at ``out`` (same run), or create it."""
        n, dtype = len(self.source), np.dtype(self.options.dtype)
        provenance = self._provenance(method)
        row = max(math.prod(a.shape) for a in arrays) * dtype.itemsize
        chunk_rows = choose_chunk_rows(self.batch_size, row, n, id_width=provenance["id_width"])
        attrs = store_attrs(n, arrays, self.options, chunk_rows, provenance)
        attrs.update(axis=AXIS, every=self.every)
        return open_recording(
            self.location,
            n=n,
            arrays=arrays,
            options=self.options,
            chunk_rows=chunk_rows,
            attrs=attrs,
            overwrite=overwrite,
        )

    def _provenance(self, method: str) -> dict[str, Any]:
        """A run's provenance (:func:`actextract.extraction.plan.provenance`), for a model whose
        weights change: each epoch's ``state_sha256`` is in its record instead."""
        source, model = self.source, self.model
        pre = source.preprocess
        return {
            "software": software(),
            "model": {
                "spec": f"python-object:{type(model).__qualname__}",
                "class": f"{type(model).__module__}.{type(model).__qualname__}",
                "weights": None,
                "parameters": sum(p.numel() for p in model.parameters()),
                "capture": method,
            },
            "dataset": {
                "spec": source.spec,
                "transform": source.transform,
                "n": len(source),
                "rows": source.dataset.rows if isinstance(source.dataset, Rows) else None,
                "classes": list(source.classes) if source.classes else None,
                "preprocess": {
                    k: list(v) if isinstance(v, tuple) else v for k, v in asdict(pre).items()
                }
                if pre
                else None,
                "decode": "cpu",
            },
            "precision": self.precision,
            "device": str(self.device),
            "batch_size": self.batch_size,
            "id_width": width_for(known_ids(source.dataset)),
        }


@contextmanager
def preserved(model: nn.Module, device: torch.device) -> Iterator[None]:
    """The model in eval mode; whatever a capture may change, as it was on the way in: each
    module's train/eval and ``inplace`` flag (:func:`actextract.model.zoo.borrowed`), and the RNG
    states: torch's on the CPU and on ``device``, Python's ``random`` and NumPy's global (a
    DataLoader draws a seed from torch's)."""
    python_rng, numpy_rng = random.getstate(), np.random.get_state()
    cuda: list[int] = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    try:
        with torch.random.fork_rng(devices=cuda), borrowed(model):
            yield
    finally:
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)


def _model_device(model: nn.Module) -> torch.device:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def _name(model: nn.Module) -> str:
    return type(model).__name__
