"""Extraction: a model over a dataset into a store, the way a batch travels.

``api`` is the entry (:func:`extract`, with its settings in one :class:`ExtractOptions`);
``plan`` runs the probe and decides each layer's array and the provenance; ``resume`` decides
which store a run writes (new, to finish, shared by shards); ``work`` deals row blocks to
shards and batches; ``engine`` is the loop (forward, reduce, device→host, hand-off, timings);
``transfer`` the pinned ring and its copies; ``sink`` the writer threads; ``distributed`` the
torchrun ranks; ``text`` the end-of-run summary.
"""

from actextract.extraction.api import extract, run_extraction
from actextract.extraction.options import ExtractOptions

__all__ = ["ExtractOptions", "extract", "run_extraction"]
