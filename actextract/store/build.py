"""Build: a new store laid out on disk from a run's decisions (:mod:`actextract.store.layout`):
its row arrays, labels, ids, block records and a text run's ``tokens/`` (``build_store``), its
root attributes (``store_attrs``), and the metadata files that creation writes, rebuilt in
memory from the root attributes (``expected_metadata``, for :mod:`actextract.store.integrity`);
arrays written whole beside the row arrays (``checked_array``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from actextract.store.base import drop_consolidated
from actextract.store.layout import (
    DEFAULT_LEVEL,
    FORMAT_VERSION,
    ArraySpec,
    StoreOptions,
    fixed_strings,
    list_keys,
    now,
    quiet_numcodecs,
    schema,
    token_chunk,
)
from actextract.store.strings import DEFAULT_ID_WIDTH, skipped_width, text_attrs

__all__ = [
    "build_store",
    "checked_array",
    "counts_tokens",
    "create_labels",
    "create_text",
    "expected_metadata",
    "fixed_strings",
    "id_width",
    "store_attrs",
    "string_arrays",
    "token_arrays",
    "token_dtype",
]


def build_store(
    n: int,
    arrays: Sequence[ArraySpec],
    options: StoreOptions,
    chunk_rows: int,
    attrs: Mapping[str, Any],
) -> Callable[[zarr.abc.store.Store], None]:
    """What :meth:`Location.create` runs to lay out a new store (see the module docstring)."""

    def build(zstore: zarr.abc.store.Store) -> None:
        group = zarr.open_group(zstore, mode="w-")
        fill = np.nan  # an unwritten or skipped row reads as NaN, never as real zeros
        compressors = options.compressors()
        n_blocks = math.ceil(n / chunk_rows)
        with quiet_numcodecs():
            for spec in arrays:
                shape, chunks = (n, *spec.shape), (chunk_rows, *spec.shape)
                if spec.rows == "token":  # each block's region: room for all its T tokens
                    width = spec.shape[1:]
                    shape = (n_blocks * chunk_rows * spec.shape[0], *width)
                    chunks = (token_chunk(spec, options, chunk_rows), *width)
                group.create_array(
                    spec.array,
                    shape=shape,
                    chunks=chunks,
                    dtype=options.dtype,
                    fill_value=fill,
                    compressors=compressors,
                    dimension_names=spec.dimension_names(),
                )
        crc = (Crc32cCodec(),)
        create_labels(group, n, chunk_rows)
        # one chunk per block (of skipped): processes writing different blocks never touch
        # the same file; fixed-width UTF-8 from format 7 (actextract.store.strings)
        strings = string_arrays(n, chunk_rows, attrs)
        for path, (shape, chunks, dims, width) in strings.items():
            if width:
                create_text(group, path, shape, chunks, dims, width)
            else:  # zarr's variable-length strings (expected_metadata of an older store)
                group.create_array(
                    path,
                    shape=shape,
                    chunks=chunks,
                    dtype=str,
                    compressors=crc,
                    dimension_names=dims,
                )
        group.create_array(
            "progress/nonfinite",
            shape=(n_blocks, len(arrays)),
            chunks=(1, len(arrays)),
            dtype="int64",
            fill_value=0,
            compressors=crc,
            dimension_names=("block", "layer"),
        )
        group.create_array(
            "progress/done",
            shape=(n_blocks,),
            chunks=(1,),
            dtype="uint8",
            fill_value=0,
            compressors=crc,
            dimension_names=("block",),
        )
        tokens = attrs.get("tokens")
        if counts_tokens(attrs):  # the real tokens of each block: where its token rows end
            group.create_array(
                "progress/tokens",
                shape=(n_blocks,),
                chunks=(1,),
                dtype="int64",
                fill_value=0,
                compressors=crc,
                dimension_names=("block",),
            )
        for name in token_arrays(tokens):
            group.create_array(
                f"tokens/{name}",
                shape=(n, tokens["length"]),
                chunks=(chunk_rows, tokens["length"]),
                dtype=token_dtype(name)[0],
                fill_value=token_dtype(name)[1],  # a skipped row: no real tokens
                compressors=crc,
                dimension_names=("sample", "token"),
            )
        if attrs.get("stats"):
            group.require_group("progress/parts")  # each process's committed sums (stats.py)
        group.update_attributes(store_attrs(n, arrays, options, chunk_rows, attrs))

    return build


def create_labels(group: zarr.Group, n: int, chunk_rows: int) -> zarr.Array:
    """A run's ``labels`` array: a class index per sample, -1 where there is none (or the
    row was not written), checksummed."""
    return group.create_array(
        "labels",
        shape=(n,),
        chunks=(chunk_rows,),
        dtype="int64",
        fill_value=-1,
        compressors=(Crc32cCodec(),),
        dimension_names=("sample",),
    )


def create_text(
    group: zarr.Group,
    path: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dims: tuple[str, ...],
    width: int,
) -> zarr.Array:
    """A column of fixed-width UTF-8 strings (actextract.store.strings): uint8 rows of
    ``width`` bytes, NUL-padded, zstd-compressed (mostly padding) and checksummed."""
    return group.create_array(
        path,
        shape=shape,
        chunks=chunks,
        dtype="uint8",
        fill_value=0,
        compressors=(ZstdCodec(level=3), Crc32cCodec()),
        dimension_names=dims,
        attributes=text_attrs(width),
    )


def expected_metadata(attrs: Mapping[str, Any]) -> dict[str, bytes]:
    """{node path: its zarr.json} for every node below the root that creating a store with
    these attributes writes (built in memory, byte for byte as creation wrote it)."""
    specs, options = schema(attrs)
    memory = zarr.storage.MemoryStore()
    n, rows = int(attrs["n_samples"]), int(attrs["chunk_rows"])
    build_store(
        n,
        specs,
        options,
        rows,
        {k: attrs.get(k) for k in ("stats", "tokens", "format_version", "id_width")},
    )(memory)
    prototype = default_buffer_prototype()
    keys = sorted(k for k in list_keys(memory, "") if k.endswith("/zarr.json"))
    return {
        key.removesuffix("/zarr.json"): sync(memory.get(key, prototype=prototype)).to_bytes()
        for key in keys
    }


def counts_tokens(attrs: Mapping[str, Any]) -> bool:
    """Whether a store with these root attributes records each block's real tokens
    (``progress/tokens``): a text run's, from format 6 on (a store being built has no
    format yet: the current one's)."""
    return bool(attrs.get("tokens")) and int(attrs.get("format_version") or FORMAT_VERSION) >= 6


def id_width(attrs: Mapping[str, Any]) -> int:
    """Bytes of UTF-8 per id: the root attribute ``id_width``, or DEFAULT_ID_WIDTH."""
    return int(attrs.get("id_width") or DEFAULT_ID_WIDTH)


def string_arrays(
    n: int, chunk_rows: int, attrs: Mapping[str, Any]
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[str, ...], int]]:
    """{path: (shape, chunks, dimension names, width)} of a run's string arrays: ``ids``
    (a row per sample) and ``progress/skipped`` (a JSON record per block); width 0 where
    they are zarr's variable-length strings (stores before format 7)."""
    n_blocks = math.ceil(n / chunk_rows)
    if not fixed_strings(attrs):
        return {
            "ids": ((n,), (chunk_rows,), ("sample",), 0),
            "progress/skipped": ((n_blocks,), (1,), ("block",), 0),
        }
    width = id_width(attrs)
    record = skipped_width(chunk_rows, width)  # a block's JSON: its skipped samples
    return {
        "ids": ((n, width), (chunk_rows, width), ("sample", "id_byte"), width),
        "progress/skipped": ((n_blocks, record), (1, record), ("block", "record_byte"), record),
    }


def token_arrays(tokens: Mapping[str, Any] | None) -> list[str]:
    """The arrays under ``tokens/`` of a run whose ``tokens`` attribute is this: ``mask``,
    ``input_ids`` where the inputs had them, and the samples' records (a packed window's
    ``document`` and ``position``)."""
    if not tokens:
        return []
    ids = ["input_ids"] if tokens.get("input_ids") else []
    return ["mask", *ids, *tokens.get("records", [])]


def token_dtype(name: str) -> tuple[str, int]:
    """A ``tokens/`` array's dtype and fill value: the mask uint8 and 0 (no real token), the
    rest int32 and -1."""
    return ("uint8", 0) if name == "mask" else ("int32", -1)


def store_attrs(
    n: int,
    arrays: Sequence[ArraySpec],
    options: StoreOptions,
    chunk_rows: int,
    attrs: Mapping[str, Any],
) -> dict[str, Any]:
    """The root attributes of a new store: the run's provenance ``attrs`` and its layout."""
    return {
        **attrs,
        "format_version": FORMAT_VERSION,
        "id_width": id_width(attrs),  # bytes of UTF-8 per id (strings.py)
        "n_samples": n,
        "chunk_rows": chunk_rows,
        "dtype": options.dtype,
        "codec": {
            "name": options.codec,
            "level": options.level
            if options.level is not None
            else DEFAULT_LEVEL.get(options.codec),
        },
        "layers": [
            {
                "name": s.name,
                "kind": s.kind,
                "shape": list(s.shape),
                "output_shape": list(s.output_shape or s.shape),
                "reduce": s.reduce,
                "layout": s.output_layout,
                "clone": s.clone,
                "batch_axis": s.batch_axis,
                "model_output": s.model_output,
                "array": s.array,
                "rows": s.rows,
                **(
                    {"chunk_tokens": token_chunk(s, options, chunk_rows)}
                    if s.rows == "token"
                    else {}
                ),
            }
            for s in arrays
            if not s.path
        ],
        "row_arrays": [s.array for s in arrays],  # written per row block, in this order
        "status": "incomplete",
        "created": now(),
    }


def checked_array(group, path: str, shape, chunks, dtype, *, fill=0, dims=None) -> zarr.Array:
    """An array written whole beside the row arrays (statistics, clustering results), replacing
    any at ``path``: crc32c on every chunk, and every chunk written (a chunk of fill values
    too), so that a missing one is damage that ``verify`` sees, not a silent fill value. (The
    setting goes with the array: zarr's global config is shared with the writer threads.)
    ``dims``: its dimension names, as xarray reads them. A sealed store's consolidated
    metadata is dropped first (it would not list the array)."""
    drop_consolidated(group.store)
    return group.create_array(
        path,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=fill,
        compressors=(Crc32cCodec(),),
        overwrite=True,
        config={"write_empty_chunks": True},
        dimension_names=dims,
    )
