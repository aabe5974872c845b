"""The store: a run's Zarr v3 store on disk, and everything that knows its layout.

Its public face: :func:`open_store` (read), :func:`create_store` and the one create/reopen
path behind it (:mod:`~actextract.store.opening`), :class:`Store` (a run's row blocks),
:class:`EpochStore` (a Recorder's epochs), both on the read-only :class:`StoreReader`.
Behind it: ``layout`` (the schema: arrays, chunks, codecs), ``location`` (local folders and
fsspec URLs), ``lock`` (one writer at a time), ``integrity`` (the quick check every reader
runs), ``parts`` (the statistics' completion records), ``xarray`` (arrays as xarray objects),
``tokens`` (a text run's real tokens, one row each).
The schema is described once, in ``docs/store-format.md``. This package imports nothing of
actextract's above the ground floor (``core``, ``errors``).
"""

from actextract.store.base import BlockReader, StoreReader
from actextract.store.epochs import EpochStore, EpochView
from actextract.store.layout import FORMAT_VERSION, ArraySpec, StoreOptions, choose_chunk_rows
from actextract.store.location import Location
from actextract.store.opening import check_output, create_store, open_store
from actextract.store.run import Store
from actextract.store.tokens import (
    iter_token_blocks,
    sample_tokens,
    token_activations,
    token_table,
)
from actextract.store.xarray import to_xarray

__all__ = [
    "FORMAT_VERSION",
    "ArraySpec",
    "BlockReader",
    "EpochStore",
    "EpochView",
    "Location",
    "Store",
    "StoreOptions",
    "StoreReader",
    "check_output",
    "choose_chunk_rows",
    "create_store",
    "iter_token_blocks",
    "open_store",
    "sample_tokens",
    "to_xarray",
    "token_activations",
    "token_table",
]
