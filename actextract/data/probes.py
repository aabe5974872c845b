"""Probes: the samples a :class:`actextract.Recorder` runs at every capture, as a Source.

A probe is a Dataset (items: a tensor, or (tensor, label, ...)), a DataLoader over one (its
dataset and batch size: its sampler is ignored, since every capture needs the same samples in
the same order), a dataset spec (``digits``, ``folder:PATH``, ...) or a Source; ``rows``
picks some of its samples, whose ids (dataset index or path) the store keeps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from actextract.data.inputs import check_one_tensor
from actextract.data.samples import BadSample, Sample, Source
from actextract.data.source import open_source, wrap_dataset
from actextract.errors import BadSampleError, OptionError

__all__ = [
    "Rows",
    "bad_sample_error",
    "first_sample",
    "known_ids",
    "probe_source",
    "select_rows",
]

log = logging.getLogger(__name__)


def probe_source(
    probe: Dataset | DataLoader | Source | str, rows: Sequence[int] | None = None
) -> tuple[Source, DataLoader | None]:
    """The probe as a Source (``rows`` of it), and the DataLoader it came in, if any."""
    loader = probe if isinstance(probe, DataLoader) else None
    if loader is not None:
        probe = loader.dataset
        if not isinstance(loader.sampler, SequentialSampler):
            log.log(
                logging.INFO if isinstance(loader.sampler, RandomSampler) else logging.WARNING,
                "the probe DataLoader's %s is ignored: every capture reads all %d samples of "
                "its dataset, in order, the same at every epoch (rows= picks a subset)",
                type(loader.sampler).__name__,
                len(probe),  # type: ignore[arg-type]
            )
    if isinstance(probe, str):
        source = open_source(probe)
    elif isinstance(probe, Source):
        source = probe
    elif hasattr(probe, "__getitem__") and hasattr(probe, "__len__"):
        source = wrap_dataset(probe)
    else:
        raise OptionError(
            f"probe is a {type(probe).__name__}; give a Dataset, a DataLoader over one, a "
            "dataset spec such as 'digits', or a Source."
        )
    if source.encoded:
        raise OptionError("a probe Source decoded on the device (decode='gpu') is not supported.")
    if rows is not None:
        source = select_rows(source, rows)
    if len(source) == 0:
        raise OptionError(f"the probe '{source.spec}' has no samples.")
    return source, loader


class Rows(Dataset):
    """Rows ``rows`` of a source's dataset as samples 0..len(rows)-1, their ids kept."""

    def __init__(self, base: Any, rows: list[int]):
        self.base, self.rows = base, rows

    def __len__(self) -> int:
        return len(self.rows)

    def sample_id(self, index: int) -> str:
        return self.base.sample_id(self.rows[index])

    def __getitem__(self, index: int) -> Sample | BadSample:
        return self.base[self.rows[index]]._replace(index=index)


def select_rows(source: Source, rows: Sequence[int]) -> Source:
    """The source restricted to ``rows`` (dataset indices, in the order given)."""
    rows = [int(r) for r in rows]
    n = len(source)
    outside = [r for r in rows if not 0 <= r < n]
    if not rows or outside or len(set(rows)) != len(rows):
        why = f"{outside[:5]} are outside 0..{n - 1}" if outside else "must be distinct"
        raise OptionError(
            f"rows= picks the probe samples of '{source.spec}' to record, {len(rows)} given: "
            f"{why if rows else 'none given'}."
        )
    return replace(source, dataset=Rows(source.dataset, rows))  # type: ignore[arg-type]


def first_sample(source: Source) -> Sample:
    """The probe's first sample (to plan the arrays with); a bad one is an error."""
    item = source.dataset[0]
    if isinstance(item, BadSample):
        raise bad_sample_error(item)
    check_one_tensor(item.input, "the first sample")
    return item


def bad_sample_error(bad: BadSample) -> BadSampleError:
    """The error for a probe sample that did not load: a capture needs them all."""
    return BadSampleError(
        f"probe sample {bad.index} ('{bad.id}') could not be loaded: {bad.error}. A recording "
        "needs every probe sample at every epoch; fix it, or leave it out with rows=."
    )


def known_ids(dataset: Any) -> Sequence[str] | None:
    """The ids a dataset names its samples by, where it lists them (a folder's paths, a
    table's id column; of the whole dataset under a row selection, so that every shard of a
    run picks the same ``id_width``); None where they are row numbers, which always fit."""
    while not hasattr(dataset, "ids") and hasattr(dataset, "base"):
        dataset = dataset.base  # probes.Rows: the rows of another dataset
    ids = getattr(dataset, "ids", None)
    return ids if isinstance(ids, list | tuple) else None  # not loaders._Ids: row numbers
