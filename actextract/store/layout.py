"""Layout: how a run's arrays are shaped, chunked and compressed, decided before writing.

``StoreOptions`` (dtype, codec, level, chunk rows) and ``ArraySpec`` (one layer's array) are
the store's schema decisions; ``choose_chunk_rows`` sizes a row block; ``build_store`` lays a
new store out (the schema is in :mod:`actextract.store.run`); ``schema`` and ``expected_metadata``
go back from a store's root attributes to what ``build_store`` was given and wrote (for
:mod:`actextract.store.integrity`).
"""

from __future__ import annotations

import datetime as _dt
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from actextract.core.axes import array_layout, dimension_names, reduced_shape, stored_layout
from actextract.errors import StoreError

__all__ = [
    "CODECS",
    "DEFAULT_LEVEL",
    "FORMAT_VERSION",
    "ArraySpec",
    "StoreOptions",
    "build_store",
    "checked_array",
    "choose_chunk_rows",
    "expected_metadata",
    "layer_arrays",
    "list_keys",
    "now",
    "quiet_numcodecs",
    "row_keys",
    "row_paths",
    "schema",
    "token_arrays",
    "token_dtype",
]

# 2: per-block records (progress/skipped, progress/nonfinite), crc32c; 3: stats/ and
# progress/parts (on-device statistics), row arrays other than acts/ (``row_arrays``);
# 4: each layer's layout, clone and batch axis (dimension names follow the layout);
# 5: tokens/ (a text run's attention mask and token ids, per sample, written with each block)
FORMAT_VERSION = 5
CODECS = ("zstd", "lz4", "blosc-zstd", "blosc-lz4", "none")
DEFAULT_LEVEL = {"zstd": 3, "blosc-zstd": 5, "blosc-lz4": 5}
TARGET_CHUNK_BYTES = 32 << 20  # rows per chunk aim at 16-64 MB for the largest layer
MAX_CHUNK_BYTES = 64 << 20


def now() -> str:
    """UTC time in ISO 8601, to the second (the store's timestamps)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class StoreOptions:
    """How arrays are laid out and compressed."""

    dtype: str = "float16"  # float16 | float32
    codec: str = "none"  # measured: compressing costs more CPU than it saves (README)
    level: int | None = None  # None: the codec's default
    chunk_rows: int | None = None  # None: chosen from the batch size and the largest layer

    def __post_init__(self) -> None:
        if self.dtype not in ("float16", "float32"):
            raise StoreError(
                f"--dtype '{self.dtype}' is not float16 or float32 (Zarr has no "
                "bfloat16; compute in bf16 with --precision bf16 instead)."
            )
        if self.codec not in CODECS:
            raise StoreError(f"--codec '{self.codec}' is not one of {', '.join(CODECS)}.")
        if self.level is not None and self.codec in ("lz4", "none"):
            raise StoreError(f"--level has no meaning for --codec {self.codec}; leave it out.")
        if self.chunk_rows is not None and self.chunk_rows <= 0:
            raise StoreError(f"--chunk-rows {self.chunk_rows} must be a positive integer.")

    def compressors(self) -> tuple[Any, ...]:
        """The bytes-to-bytes codecs: the compressor (if any), then a crc32c checksum of what
        it wrote, which catches a truncated or bit-flipped chunk when it is read."""
        return (*self._compressor(), Crc32cCodec())

    def _compressor(self) -> tuple[Any, ...]:
        from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

        level = self.level if self.level is not None else DEFAULT_LEVEL.get(self.codec)
        if self.codec == "zstd":
            return (ZstdCodec(level=level),)
        if self.codec == "lz4":
            from zarr.codecs.numcodecs import LZ4

            with quiet_numcodecs():
                return (LZ4(),)
        if self.codec.startswith("blosc-"):
            # byte shuffle groups the high and low bytes of float16/32 values: better ratios
            return (
                BloscCodec(
                    cname=self.codec.removeprefix("blosc-"),
                    clevel=level,
                    shuffle=BloscShuffle.shuffle,
                ),
            )
        return ()


@dataclass(frozen=True)
class ArraySpec:
    """One layer's array: ``shape`` per sample, as stored (after reduction); ``layout`` that
    of the layer's output (:mod:`actextract.core.axes`), ``clone`` why it is cloned at capture."""

    name: str
    shape: tuple[int, ...]
    kind: str = ""
    reduce: str = "none"
    output_shape: tuple[int, ...] | None = None  # before reduction
    model_output: bool = False  # the layer's output is the model's own output (its logits)
    path: str = ""  # the array's path when not acts/<name> (stats/<name>/channel_means)
    layout: str = ""  # of the layer's output; "": as stores before layouts (channels first)
    clone: str | None = None  # why the output is cloned where it is produced
    batch_axis: int = 0  # where the output's batch axis was (moved to the front)

    @property
    def array(self) -> str:
        """The array's path in the store."""
        return self.path or f"acts/{self.name}"

    @property
    def key(self) -> str:
        """How a run names the array: the layer for acts/<layer>, else its path."""
        return self.path or self.name

    @property
    def output_layout(self) -> str:
        return self.layout or stored_layout({"output_shape": self.output_shape or self.shape})

    def dimension_names(self) -> tuple[str, ...]:
        """As the layout names them: ("sample", "channel", "y", "x"), ("sample", "token",
        "feature"), ("sample", "y", "x", "channel"), ("sample", "feature"), ...; a pooled map
        keeps its ("sample", "channel")."""
        layout = self.output_layout
        if self.reduce in ("mean", "max") and layout in ("nchw", "nhwc"):
            return ("sample", "channel")
        return dimension_names(array_layout(layout, self.reduce), len(self.shape))


def choose_chunk_rows(batch_size: int, max_bytes_per_sample: int, n: int) -> int:
    """Rows per chunk: a multiple of the batch size (or a divisor of it, for very large layers)
    that keeps the largest layer's chunk near 32 MB (at most), with the blocks as even as the
    batch size allows, so that the last one is not mostly padding."""
    per_sample = max(1, max_bytes_per_sample)
    if batch_size * per_sample <= MAX_CHUNK_BYTES:
        rows = batch_size * max(1, TARGET_CHUNK_BYTES // (batch_size * per_sample))
        # as many blocks as that needs, made even: the last chunk is stored whole (NaN past
        # the end), so 1,797 rows in blocks of 768 would store 2,304; in blocks of 640, 1,920
        blocks = math.ceil(n / rows)
        return batch_size * math.ceil(math.ceil(n / blocks) / batch_size)
    fits = [
        d
        for d in range(1, batch_size + 1)
        if batch_size % d == 0 and d * per_sample <= MAX_CHUNK_BYTES
    ]
    return max(fits, default=1)


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
        with quiet_numcodecs():
            for spec in arrays:
                group.create_array(
                    spec.array,
                    shape=(n, *spec.shape),
                    chunks=(chunk_rows, *spec.shape),
                    dtype=options.dtype,
                    fill_value=fill,
                    compressors=compressors,
                    dimension_names=spec.dimension_names(),
                )
        crc = (Crc32cCodec(),)
        group.create_array(
            "labels",
            shape=(n,),
            chunks=(chunk_rows,),
            dtype="int64",
            fill_value=-1,
            compressors=crc,
            dimension_names=("sample",),
        )
        group.create_array(
            "ids",
            shape=(n,),
            chunks=(chunk_rows,),
            dtype=str,
            compressors=crc,
            dimension_names=("sample",),
        )
        n_blocks = math.ceil(n / chunk_rows)
        # one chunk per block: processes writing different blocks never touch the same file
        group.create_array(
            "progress/skipped",
            shape=(n_blocks,),
            chunks=(1,),
            dtype=str,
            compressors=crc,
            dimension_names=("block",),
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


def schema(attrs: Mapping[str, Any]) -> tuple[list[ArraySpec], StoreOptions]:
    """The row arrays and storage options a run's root attributes describe (what
    :func:`~actextract.store.layout.build_store` was given)."""
    layers = {s["name"]: s for s in attrs["layers"]}
    stats = attrs.get("stats") or {}
    specs = []
    for path in row_paths(attrs):
        if path.startswith("acts/"):
            s = layers[path.removeprefix("acts/")]
            specs.append(
                ArraySpec(
                    s["name"],
                    tuple(s["shape"]),
                    s.get("kind", ""),
                    s.get("reduce", "none"),
                    tuple(s.get("output_shape") or s["shape"]),
                    bool(s.get("model_output")),
                    layout=s.get("layout") or "",
                    clone=s.get("clone"),
                    batch_axis=int(s.get("batch_axis", 0)),
                )
            )
        else:  # stats/<layer>/channel_means
            name = path.split("/")[1]
            kept = stats[name]
            layout = stored_layout(kept)
            shape = tuple(kept["shape"])
            specs.append(
                ArraySpec(
                    name,
                    reduced_shape(name, shape, layout, "mean", "--stats"),
                    kept.get("kind", ""),
                    "mean",
                    shape,
                    path=path,
                    layout=kept.get("layout") or "",
                )
            )
    codec = attrs.get("codec") or {}
    name = codec.get("name", "none")
    level = codec.get("level") if name not in ("lz4", "none") else None
    return specs, StoreOptions(dtype=attrs["dtype"], codec=name, level=level)


def expected_metadata(attrs: Mapping[str, Any]) -> dict[str, bytes]:
    """{node path: its zarr.json} for every node below the root that creating a store with
    these attributes writes (built in memory, byte for byte as creation wrote it)."""
    specs, options = schema(attrs)
    memory = zarr.storage.MemoryStore()
    n, rows = int(attrs["n_samples"]), int(attrs["chunk_rows"])
    build_store(
        n, specs, options, rows, {"stats": attrs.get("stats"), "tokens": attrs.get("tokens")}
    )(memory)
    prototype = default_buffer_prototype()
    keys = sorted(k for k in list_keys(memory, "") if k.endswith("/zarr.json"))
    return {
        key.removesuffix("/zarr.json"): sync(memory.get(key, prototype=prototype)).to_bytes()
        for key in keys
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


def list_keys(zstore: zarr.abc.store.Store, prefix: str) -> set[str]:
    """Every key of ``zstore`` under ``prefix``, in one listing."""

    async def keys() -> set[str]:
        return {key async for key in zstore.list_prefix(prefix)}

    return sync(keys())


def layer_arrays(attrs: Mapping[str, Any]) -> dict[str, str]:
    """{array path: layer name} of the layers stored in full (``acts/<layer>``)."""
    return {s.get("array") or f"acts/{s['name']}": s["name"] for s in attrs["layers"]}


def row_paths(attrs: Mapping[str, Any]) -> list[str]:
    """The paths of the arrays written per row block, in the order of
    ``progress/nonfinite``'s columns (stores before format 3: the layers)."""
    return list(attrs.get("row_arrays") or layer_arrays(attrs))


def row_keys(attrs: Mapping[str, Any]) -> list[str]:
    """The arrays written per row block, as a run names them (see :attr:`ArraySpec.key`), in
    the order of ``progress/nonfinite``'s columns."""
    return [p.removeprefix("acts/") for p in row_paths(attrs)]


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
    ``dims``: its dimension names, as xarray reads them."""
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


@contextmanager
def quiet_numcodecs() -> Iterator[None]:
    """numcodecs' LZ4 is outside the Zarr v3 spec; zarr warns on every use. We document it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr")
        yield
