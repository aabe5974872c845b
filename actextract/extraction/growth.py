"""Growth: the rows of a run over an iterable (:mod:`actextract.data.streams`), whose count is
known only when the iterable ends.

The store is created with no rows. When a batch reaches past its last row block, the store
grows by whole blocks (:class:`~actextract.store.growth.Resizer`; doubling, at most ``AHEAD``
blocks past the rows: while it runs, its row count is a few blocks ahead of the rows written)
before the sink opens them, so every block but the last is written as in any run. When the iterable
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
from actextract.store.growth import Resizer

__all__ = ["AHEAD", "Growth"]

AHEAD = 16  # row blocks a store grows by at most beyond the rows that have come


class Growth:
    """A store that grows with the rows of a stream: :meth:`cover` each batch's rows before
    their blocks are opened, :meth:`end` once the stream has ended."""

    def __init__(self, store: Store):
        self.store = store
        self.resize = Resizer(store)
        self.rows = 0  # rows seen so far: the stream's rows are numbered in order

    def cover(self, indices: np.ndarray, bad: Sequence[BadSample] = ()) -> None:
        """Grow the store by whole row blocks to hold these rows: as many again as it has, at
        most ``AHEAD`` more than they need (a resize costs a metadata write per array)."""
        top = max([int(indices.max()) if len(indices) else -1, *(s.index for s in bad)]) + 1
        self.rows = max(self.rows, top)
        per, have = self.store.chunk_rows, self.store.n_blocks
        need = math.ceil(self.rows / per)
        if need > have:
            self.resize(max(need, have + min(max(have, 1), AHEAD)) * per)

    def end(self) -> None:
        """The stream has ended: the store's row count is the rows that came."""
        dataset = {**(self.store.attrs.get("dataset") or {}), "n": self.rows}
        self.resize(self.rows, dataset=dataset)

    def cut(self, blk: Block) -> None:
        """The block as the store's last (after :meth:`end`): its records cut to its rows."""
        rows = len(self.store.block_range(blk.block))
        extra = len(blk.labels) - rows
        if extra > 0:
            blk.labels, blk.ids = blk.labels[:rows], blk.ids[:rows]
            blk.tokens = {name: values[:rows] for name, values in blk.tokens.items()}
            blk.missing -= extra
