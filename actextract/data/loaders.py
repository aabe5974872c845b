"""Loaders: a user's own ``DataLoader`` as a run's source.

A ``DataLoader`` says which samples of its dataset come in which order (its sampler, or its
batch sampler) and how many at a time. A run takes both: row ``i`` of the store is the loader's
``i``-th sample, whose id is its index in the dataset (``"17"``), and the loader's batch size
and workers are the run's where ``extract`` is not given its own. The samples are batched by
actextract (its collate keeps each sample's index, id and label, and pads dict samples where
asked), not by the loader's ``collate_fn``.

A resumed or sharded run must see the same order again. A sampler that gives another order
each time it is listed (``shuffle=True``, seeded or not: a generator moves on as it is used) is
fine for one uninterrupted run, and refused for ``--resume``, ``--shard`` and torchrun with the
reason (:func:`check_repeatable`). A DataLoader over an ``IterableDataset`` gives its items
as they come (:mod:`actextract.data.streams`), unless the dataset is indexable too: then it is
read by index, 0 to ``len - 1``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data.dataloader import default_collate

from actextract.data.samples import SampleDataset, Source
from actextract.data.streams import is_stream, wrap_stream
from actextract.errors import OptionError, SourceError, option

__all__ = ["check_repeatable", "loader_options", "wrap_loader"]

log = logging.getLogger(__name__)


class _InOrder:
    """The dataset's samples in the loader's order: item ``i`` is ``dataset[order[i]]``."""

    def __init__(self, dataset: Any, order: np.ndarray):
        self.dataset, self.order = dataset, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[int(self.order[i])]


class _Ids(Sequence[str]):
    """Each row's id: its sample's index in the dataset."""

    def __init__(self, order: np.ndarray):
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i):  # type: ignore[override]
        return str(int(self.order[i]))


def _order(loader: DataLoader) -> np.ndarray:
    """The dataset indices the loader yields, in order (its batch sampler's, flattened)."""
    sampler = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
    flat: list[int] = []
    for item in sampler:
        if isinstance(item, list | tuple):
            flat.extend(int(i) for i in item)
        else:
            flat.append(int(item))
    return np.asarray(flat, np.int64)


def wrap_loader(loader: DataLoader, *, num_workers: int | None = None) -> Source:
    """The loader's samples, in its order, as a run's source (see the module docstring); over
    an IterableDataset, as it yields them, read by ``num_workers`` (default: the loader's)."""
    dataset = loader.dataset
    name = f"{type(dataset).__module__}.{type(dataset).__qualname__}"
    workers = loader.num_workers if num_workers is None else num_workers
    if is_stream(dataset):
        spec = f"python-object:DataLoader({name})"
        return wrap_stream(dataset, spec=spec, num_workers=workers, loader=loader)
    if not hasattr(dataset, "__getitem__"):
        raise SourceError(
            f"a DataLoader over {name}, which has no __getitem__: pass a map-style Dataset "
            "(with __len__ and __getitem__), an IterableDataset, or a DataLoader over one."
        )
    if isinstance(dataset, IterableDataset):  # an indexable one: the map-style dataset it is
        order = again = np.arange(len(dataset), dtype=np.int64)
    else:
        order = _order(loader)
        again = _order(loader)
    repeatable = ""
    if not np.array_equal(order, again):
        repeatable = (
            "the DataLoader's sampler gives another order each time it is listed (shuffle=True: "
            "even a seeded generator moves on); pass shuffle=False, or sampler= a fixed list "
            "of indices (e.g. torch.randperm(n, generator=torch.Generator().manual_seed(0)))"
        )
    if loader.collate_fn is not default_collate:
        log.info(
            "the DataLoader's collate_fn is not used: actextract batches the samples itself "
            "(dict samples of different lengths: max_length=)"
        )
    classes = getattr(dataset, "classes", None)
    return Source(
        spec=f"python-object:DataLoader({name})",
        dataset=SampleDataset(_InOrder(dataset, order), transform=None, ids=_Ids(order)),
        transform="as given by the dataset, in the DataLoader's order",
        classes=tuple(map(str, classes)) if classes is not None else None,
        repeatable=repeatable,
    )


def loader_options(dataset: Any, keywords: dict[str, Any]) -> None:
    """A DataLoader's batch size and workers for ``extract``'s keywords that do not say."""
    if isinstance(dataset, DataLoader):
        if "batch_size" not in keywords and dataset.batch_size:
            keywords["batch_size"] = dataset.batch_size
        if "num_workers" not in keywords:
            keywords["num_workers"] = dataset.num_workers


def check_repeatable(source: Source, *, resume: bool, shards: int) -> None:
    """A source whose order cannot be repeated is refused for a run that needs it again
    (``shards``: the run's processes, ``--shard`` or torchrun's)."""
    if source.repeatable and (resume or shards > 1):
        what = option("resume") if resume else option("shard")  # torchrun's ranks are shards
        raise OptionError(f"{what} needs the same samples in the same order: {source.repeatable}.")
