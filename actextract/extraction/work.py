"""Work: which row blocks a process writes and the batches that compute them.

Rows are cut into batches at multiples of ``batch_size`` from row 0 and into row blocks at
multiples of ``chunk_rows``; a *unit* is the smallest run of whole batches that covers whole
blocks (``lcm(batch_size, chunk_rows)`` rows, one block with the default chunk rows). Units are
dealt to shards in contiguous ranges, and a process only ever runs the full run's own batches:
a resumed or sharded run feeds the model exactly the batches an uninterrupted single process
would, so its activations are the same to the bit (batch composition can change a kernel's
choice of algorithm). Rows of a batch that fall in a block already done are computed but not
written (only when ``chunk_rows`` is not a multiple of ``batch_size``).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

from actextract.errors import OptionError, option

__all__ = ["Shard", "Work"]


@dataclass(frozen=True)
class Shard:
    """Process ``index`` of ``count`` (0-based, as torchrun's RANK of WORLD_SIZE)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise OptionError(
                f"--shard {self.index}/{self.count}: the number of shards must be at least 1; "
                f"give {option('shard')} as INDEX/COUNT, e.g. 0/4."
            )
        if not 0 <= self.index < self.count:
            raise OptionError(
                f"--shard {self.index}/{self.count}: the shard index counts from 0 and must "
                f"be below the number of shards: give {option('shard')} 0/{max(self.count, 2)} … "
                f"{max(self.count, 2) - 1}/{max(self.count, 2)}."
            )

    @classmethod
    def parse(cls, spec: str | Shard | None) -> Shard:
        if spec is None:
            return cls()
        if isinstance(spec, Shard):
            return spec
        index, sep, count = str(spec).partition("/")
        try:
            if not sep:
                raise ValueError
            i, n = int(index), int(count)
        except ValueError:
            raise OptionError(
                f"--shard '{spec}' is not of the form INDEX/COUNT, e.g. 0/4 for the first of 4 "
                f"processes; give {option('shard')} in that form."
            ) from None
        return cls(i, n)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class Work:
    """The row blocks and batches of a run of ``n`` rows."""

    n: int
    batch_size: int
    chunk_rows: int

    @property
    def unit_rows(self) -> int:
        return math.lcm(self.batch_size, self.chunk_rows)

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.n / self.chunk_rows)

    @property
    def n_units(self) -> int:
        return math.ceil(self.n / self.unit_rows)

    def blocks(self, shard: Shard = Shard()) -> list[int]:
        """The blocks of ``shard``: its contiguous range of units, so shards never overlap and
        together cover every block once (a shard may get none when units are few)."""
        lo = shard.index * self.n_units // shard.count
        hi = (shard.index + 1) * self.n_units // shard.count
        per_unit = self.unit_rows // self.chunk_rows
        return list(range(lo * per_unit, min(hi * per_unit, self.n_blocks)))

    def batches(self, blocks: Collection[int]) -> list[range]:
        """The run's batches (rows ``[k*batch_size, (k+1)*batch_size)``) that touch ``blocks``,
        in order."""
        wanted = set(blocks)
        out = []
        for b in sorted(wanted):
            first = b * self.chunk_rows // self.batch_size
            last = (min(self.n, (b + 1) * self.chunk_rows) - 1) // self.batch_size
            for k in range(first, last + 1):
                if not out or out[-1].start < k * self.batch_size:
                    out.append(range(k * self.batch_size, min(self.n, (k + 1) * self.batch_size)))
        return out
