"""Streams: an ``IterableDataset`` (or a ``DataLoader`` over one) as a run's source.

An iterable has no length and no index: its samples are read once, in the order it yields
them. Row ``i`` of the store is the ``i``-th sample, its id ``"i"`` (as a sized dataset
without ids gets), its label as a map-style dataset's item gives it (``(x, y)``: ``y``; ``x``
alone: -1). The first ``HEAD`` samples are read ahead for the probe (which decides the
layers' shapes before the store exists) and kept until the run takes them; the others are
read as the run goes, a batch at a time, never listed whole. The store grows by whole row
blocks as they come (:mod:`actextract.extraction.growth`).

With ``num_workers`` the iterable is read by that many DataLoader workers (a DataLoader's own
workers, ``worker_init_fn`` and multiprocessing context), each running it whole: as with any
DataLoader over an IterableDataset, the dataset must split its items between them itself
(``torch.utils.data.get_worker_info``); the rows are numbered in the order they arrive.

Its samples cannot be listed again, so a store's done blocks could not be matched to them:
``--resume``, ``--shard`` and torchrun are refused (``Source.repeatable`` says why). An
``IterableDataset`` that is also indexable (``__len__`` and ``__getitem__`` of its own) is the
map-style dataset it is, and none of this applies (:func:`is_stream`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import partial
from typing import Any

from torch.utils.data import DataLoader, Dataset, IterableDataset

from actextract.data.inputs import SampleShape
from actextract.data.samples import Batch, SampleDataset, Source, as_shape, collate

__all__ = ["HEAD", "Stream", "indexable", "is_stream", "stream_batches", "wrap_stream"]

HEAD = 16  # samples read ahead for the probe (it looks at 9 when the first two match)


def indexable(dataset: Any) -> bool:
    """Whether ``dataset`` has a length and items by index of its own (torch's ``Dataset``
    declares a ``__getitem__`` that only raises)."""
    cls = type(dataset)
    getitem = getattr(cls, "__getitem__", None)
    return hasattr(cls, "__len__") and getitem is not None and getitem is not Dataset.__getitem__


def is_stream(dataset: Any) -> bool:
    """An ``IterableDataset`` without an index (also inside a DataLoader): read as a stream."""
    if isinstance(dataset, DataLoader):
        dataset = dataset.dataset
    return isinstance(dataset, IterableDataset) and not indexable(dataset)


def _as_is(item: Any) -> Any:  # a DataLoader's collate_fn for items one at a time (picklable)
    return item


class Stream:
    """The items of an iterable, read once: the first ``HEAD`` ahead (:attr:`head`, for the
    probe), then the rest as :meth:`items` is iterated."""

    def __init__(self, dataset: Any, *, num_workers: int = 0, loader: DataLoader | None = None):
        self.dataset, self.num_workers, self.loader = dataset, num_workers, loader
        self.head: list[Any] = []
        self.ended = False  # the iterable has no more items
        self._it: Iterator[Any] | None = None
        self._taken = False

    def _reader(self) -> Iterator[Any]:
        if self.num_workers <= 0:
            return iter(self.dataset)
        like = self.loader
        extra: dict[str, Any] = {}
        if like is not None:  # the user's loader's worker settings
            extra = dict(
                worker_init_fn=like.worker_init_fn,
                multiprocessing_context=like.multiprocessing_context,
                generator=like.generator,
                timeout=like.timeout,
            )
        workers = DataLoader(
            self.dataset,
            batch_size=None,  # items one at a time, each as it is: actextract batches them
            num_workers=self.num_workers,
            collate_fn=_as_is,
            **extra,
        )
        return iter(workers)

    def read_ahead(self, count: int = HEAD) -> None:
        """Read items into :attr:`head` until it holds ``count`` or the iterable ends."""
        if self._taken:
            return
        if self._it is None:
            self._it = self._reader()
        while not self.ended and len(self.head) < count:
            try:
                self.head.append(next(self._it))
            except StopIteration:
                self.ended = True

    def items(self, limit: int | None = None) -> Iterator[tuple[int, Any]]:
        """``(row, item)`` for every item (the first ``limit``), the head's first; once only
        (the head is let go as it is given)."""
        if self._taken:
            raise RuntimeError("a stream's items are read once")
        self.read_ahead(1)
        self._taken = True
        rest: Iterator[Any] = iter(()) if self.ended or self._it is None else self._it
        every = itertools.chain(self.head, rest)  # the head's list goes once it is read
        self.head = []
        yield from enumerate(itertools.islice(every, limit))


class _Head:
    """The items read ahead, by index: what the probe reads of a stream."""

    def __init__(self, stream: Stream):
        self.stream = stream

    def __len__(self) -> int:
        self.stream.read_ahead()
        return len(self.stream.head)

    def __getitem__(self, i: int) -> Any:
        self.stream.read_ahead()
        return self.stream.head[i]


def wrap_stream(
    dataset: Any, *, spec: str, num_workers: int = 0, loader: DataLoader | None = None
) -> Source:
    """An iterable dataset (of ``loader``, when given) as a run's source (see the module
    docstring)."""
    stream = Stream(dataset, num_workers=num_workers, loader=loader)
    name = type(dataset).__name__
    classes = getattr(dataset, "classes", None)
    return Source(
        spec=spec,
        dataset=SampleDataset(_Head(stream), transform=None, ids=None),
        transform="as given by the dataset, in the order it yields them",
        classes=tuple(map(str, classes)) if classes is not None else None,
        repeatable=(
            f"the IterableDataset {name} is read once, as it comes: its samples cannot be "
            "listed again, so the row blocks a store has done could not be matched to them. "
            "Wrap it in a map-style Dataset (with __len__ and __getitem__), or write a new "
            "store (another out=/--out, or overwrite=True/--overwrite)"
        ),
        stream=stream,
    )


def stream_batches(
    source: Source,
    *,
    batch_size: int,
    pin_memory: bool = False,
    input_shape: SampleShape | None = None,
    limit: int | None = None,
) -> Iterator[Batch]:
    """The stream's samples as batches of ``batch_size`` rows (the last one shorter), row
    numbers from 0, made as :func:`~actextract.data.samples.make_loader`'s are (a sample of
    another shape than ``input_shape`` is a bad one)."""
    shape = as_shape(input_shape) if input_shape is not None else None
    batch = partial(collate, shape=shape)
    pending = []
    for row, item in source.stream.items(limit):
        pending.append(source.dataset.sample(row, partial(_as_is, item)))
        if len(pending) == batch_size:
            yield _pinned(batch(pending), pin_memory)
            pending = []
    if pending:
        yield _pinned(batch(pending), pin_memory)


def _pinned(batch: Batch, pin: bool) -> Batch:
    return batch.pin_memory() if pin else batch
