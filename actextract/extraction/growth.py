"""Growth: the rows of a run over an iterable (:mod:`actextract.data.streams`), whose count is
known only when the iterable ends.

The store is created with no rows. When a batch reaches past its last row block, the store
grows by the whole blocks it needs (:func:`~actextract.store.growth.resize_rows`) before the
sink opens them, so every block but the last is written as in any run. When the iterable
ends, the store is cut to the rows that came, and the last block (partial, or whole) is the
last block of a store of that many rows: the sink writes it then, its rows, labels and ids
cut to that length (:meth:`Growth.cut`), exactly as a sized run writes its last block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from actextract.data.samples import BadSample
from actextract.extraction.blocks import Block
from actextract.store import Store
from actextract.store.growth import resize_rows

__all__ = ["Growth"]


class Growth:
    """A store that grows with the rows of a stream: :meth:`cover` each batch's rows before
    their blocks are opened, :meth:`end` once the stream has ended."""

    def __init__(self, store: Store):
        self.store = store
        self.rows = 0  # rows seen so far: the stream's rows are numbered in order

    def cover(self, indices: np.ndarray, bad: Sequence[BadSample] = ()) -> None:
        """Grow the store by the whole row blocks these rows need."""
        top = max([int(indices.max()) if len(indices) else -1, *(s.index for s in bad)]) + 1
        self.rows = max(self.rows, top)
        per = self.store.chunk_rows
        need = math.ceil(self.rows / per) * per
        if need > self.store.n:
            resize_rows(self.store, need)

    def end(self) -> None:
        """The stream has ended: the store's row count is the rows that came."""
        dataset = {**(self.store.attrs.get("dataset") or {}), "n": self.rows}
        resize_rows(self.store, self.rows, dataset=dataset)

    def cut(self, blk: Block) -> None:
        """The block as the store's last (after :meth:`end`): its records cut to its rows."""
        rows = len(self.store.block_range(blk.block))
        extra = len(blk.labels) - rows
        if extra > 0:
            blk.labels, blk.ids = blk.labels[:rows], blk.ids[:rows]
            blk.tokens = {name: values[:rows] for name, values in blk.tokens.items()}
            blk.missing -= extra
