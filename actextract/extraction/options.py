"""Options: every setting of one extraction, in one frozen object built and checked once at
the entry point (:func:`actextract.extract`, or the CLI through it) and passed whole.

Each field is named as the keyword of :func:`actextract.extract` and as the option of
``actextract extract`` (``batch_size`` ↔ ``--batch-size``, ``store`` ↔ ``--store``); the
preprocessing options (``resize``, ``crop``, ``mean``, ``std``, ``channels``) are keywords
too, gathered into :attr:`ExtractOptions.preprocess`.
"""

from __future__ import annotations

import dataclasses
import difflib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actextract.data.loaders import loader_options
from actextract.data.samples import Preprocess
from actextract.data.source import check_decode
from actextract.errors import OptionError, option
from actextract.extraction.blocks import check_nonfinite_policy
from actextract.extraction.work import Shard
from actextract.model.capture import Method
from actextract.stats.accumulate import DEFAULT_BINS
from actextract.store.layout import StoreOptions
from actextract.store.location import check_out

__all__ = ["PREPROCESS", "ExtractOptions"]

PREPROCESS = tuple(f.name for f in dataclasses.fields(Preprocess))  # resize, crop, mean, ...
ALIASES = {"store_layers": "store"}  # an older keyword: the name it has now


@dataclass(frozen=True)
class ExtractOptions:
    """One extraction's settings (see :func:`actextract.extract` for what each one does)."""

    model: str | nn.Module
    dataset: Any  # a spec, a Source, or a torch Dataset
    layers: Sequence[str] | str
    out: str | Path
    store: Sequence[str] | str | None = None
    stats: str | Mapping[str, str | Sequence[str]] | None = None
    hist_bins: int = DEFAULT_BINS
    hist_range: tuple[float, float] | None = None
    stats_every: float = 300.0
    weights: str | Path | None = None
    trust_checkpoint: bool = False
    batch_size: int = 64
    num_workers: int = 0
    device: str | torch.device = "auto"
    precision: str = "fp32"
    dtype: str = "float16"
    reduce: str | Mapping[str, str] | None = None
    layout: str | Mapping[str, str] | None = None
    codec: str = "none"
    level: int | None = None
    chunk_rows: int | None = None
    chunk_tokens: int | None = None
    # the fsspec options of an ``out`` URL (endpoint, credentials: actextract.store.remote)
    storage_options: Mapping[str, Any] | None = None
    overwrite: bool = False
    resume: bool = False
    shard: str | Shard | None = None
    on_bad_sample: str = "error"
    on_nonfinite: str = "count"
    limit: int | None = None
    capture: Method = "auto"
    channels_last: bool = False
    preprocess: Preprocess = field(default_factory=Preprocess)
    writers: int | None = None  # None: default_writers(device)
    host_buffers: int | None = None
    compile: bool = False
    decode: str = "cpu"
    max_length: int | None = None  # text datasets: tokens per document (None: the tokenizer's)
    text_field: str = "text"  # text:FILE.jsonl: the field that holds each document
    pack: bool = False  # text datasets: documents joined and cut into max_length windows
    progress: bool | None = None

    def __post_init__(self) -> None:
        """The checks that need nothing loaded, so that a bad value fails before any slow
        work (the model, the data) and touches nothing."""
        if self.batch_size <= 0:
            raise OptionError(
                f"{option('batch_size')} {self.batch_size} must be a positive integer."
            )
        if self.writers is not None and self.writers <= 0:
            raise OptionError(f"{option('writers')} {self.writers} must be a positive integer.")
        if self.max_length is not None and self.max_length <= 0:
            raise OptionError(
                f"{option('max_length')} {self.max_length} must be a positive integer."
            )
        if self.limit is not None and self.limit <= 0:
            raise OptionError(f"{option('limit')} {self.limit} must be a positive integer.")
        if self.resume and self.overwrite:
            raise OptionError(
                f"{option('resume')} finishes the store at {option('out')} and "
                f"{option('overwrite')} replaces it; pass one of them."
            )
        check_nonfinite_policy(self.on_nonfinite)
        check_decode(self.decode)
        check_out(self.out)  # not empty, no file on the way

    @classmethod
    def from_keywords(cls, model: Any, dataset: Any, **keywords: Any) -> ExtractOptions:
        """The options from :func:`actextract.extract`'s keywords: the preprocessing ones go
        into ``preprocess`` (over a ``preprocess=`` given too), ``store_layers`` is read as
        ``store``; a keyword that is none of these is refused with the closest names."""
        for old, new in ALIASES.items():
            if old in keywords:
                if new in keywords:
                    raise OptionError(f"pass {new}= or its older name {old}=, not both.")
                keywords[new] = keywords.pop(old)
        steps = {k: keywords.pop(k) for k in PREPROCESS if k in keywords}
        if steps:
            given = keywords.get("preprocess") or Preprocess()
            keywords["preprocess"] = dataclasses.replace(given, **steps)
        elif keywords.get("preprocess") is None:
            keywords.pop("preprocess", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(keywords) - known)
        if unknown:
            names = sorted(known | set(PREPROCESS))
            close = difflib.get_close_matches(unknown[0], names, n=3)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise OptionError(
                f"extract() got an unknown keyword '{unknown[0]}'{hint}. Its keywords are the "
                "options of `actextract extract --help`, with _ for -."
            )
        loader_options(dataset, keywords)  # a DataLoader's batch size and workers
        if "layers" not in keywords:
            raise OptionError(f"extract() needs {option('layers')}.")
        if "out" not in keywords:
            raise OptionError(
                f"extract() needs {option('out')}: a folder or URL for the store, or out=None "
                "for a store in memory (it lasts as long as the process)."
            )
        if keywords["out"] is None:  # in memory: fsspec's memory filesystem, this process's
            keywords["out"] = f"memory://actextract-{uuid.uuid4().hex}/run.zarr"
        return cls(model, dataset, **keywords)

    @property
    def store_options(self) -> StoreOptions:
        """How the store is laid out: dtype, codec and level, chunk rows and tokens (None:
        chosen)."""
        return StoreOptions(
            dtype=self.dtype,
            codec=self.codec,
            level=self.level,
            chunk_rows=self.chunk_rows,
            chunk_tokens=self.chunk_tokens,
        )
