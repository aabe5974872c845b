"""Stats: dataset-scale statistics of a layer (``--stats``).

``accumulate`` sums them on the device during the pass (class means and deviations, channel
histograms); ``parts`` commits the sums into the store and writes the totals when it is
sealed, and reads them back (:func:`read_stats`); ``aggregate`` sums up a stored layer block
by block for the pictures (:func:`summarize`). Their completion records are the store's
(:mod:`actextract.store.parts`).
"""

from actextract.stats.accumulate import Accumulator, LayerStatsSpec, parse_stats
from actextract.stats.aggregate import LayerStats, layer_stats, summarize
from actextract.stats.parts import ClassStats, PartWriter, read_stats

__all__ = [
    "Accumulator",
    "ClassStats",
    "LayerStats",
    "LayerStatsSpec",
    "PartWriter",
    "layer_stats",
    "parse_stats",
    "read_stats",
    "summarize",
]
