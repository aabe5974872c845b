"""Layout: how a run's arrays are shaped, chunked and compressed, decided before writing.

``StoreOptions`` (dtype, codec, level, chunk rows) and ``ArraySpec`` (one layer's array) are
the store's schema decisions; ``choose_chunk_rows`` sizes a row block; ``schema`` goes back
from a store's root attributes to what :func:`actextract.store.build.build_store` was given
(the laying out itself, and the metadata it writes, are in :mod:`actextract.store.build`).
"""

from __future__ import annotations

import datetime as _dt
import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import zarr
from zarr.codecs import Crc32cCodec
from zarr.core.sync import sync

from actextract.core.axes import array_layout, dimension_names, reduced_shape, stored_layout
from actextract.errors import StoreError

__all__ = [
    "CODECS",
    "DEFAULT_LEVEL",
    "FORMAT_VERSION",
    "ArraySpec",
    "StoreOptions",
    "choose_chunk_rows",
    "fixed_strings",
    "layer_arrays",
    "list_keys",
    "now",
    "quiet_numcodecs",
    "row_keys",
    "row_paths",
    "schema",
    "token_chunk",
]

# 2: per-block records (progress/skipped, progress/nonfinite), crc32c; 3: stats/ and
# progress/parts (on-device statistics), row arrays other than acts/ (``row_arrays``);
# 4: each layer's layout, clone and batch axis (dimension names follow the layout);
# 5: tokens/ (a text run's attention mask and token ids, per sample, written with each block)
# 6: a text run's layers with one row per real token (``rows: token``), progress/tokens
# 7: strings (ids, progress/skipped, a recording's progress/records) as fixed-width UTF-8
#    uint8 rows that every Zarr v3 reader reads (store/strings.py); consolidated metadata
#    in the root zarr.json once sealed
FORMAT_VERSION = 7
CODECS = ("zstd", "lz4", "blosc-zstd", "blosc-lz4", "none")
DEFAULT_LEVEL = {"zstd": 3, "blosc-zstd": 5, "blosc-lz4": 5}
TARGET_CHUNK_BYTES = 32 << 20  # rows per chunk aim at 16-64 MB for the largest layer
MAX_CHUNK_BYTES = 64 << 20
TOKEN_CHUNK_BYTES = 4 << 20  # a token-row array's chunks: a block's last one is part padding
STORAGE_BYTES = {"float16": 2, "float32": 4}


def fixed_strings(attrs: Mapping[str, Any]) -> bool:
    """Whether a store with these root attributes keeps its strings (ids, block records) as
    fixed-width UTF-8 bytes, as every Zarr v3 reader reads them: from format 7 on (older
    stores hold zarr's variable-length strings)."""
    return int(attrs.get("format_version") or FORMAT_VERSION) >= 7


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
    chunk_tokens: int | None = None  # token rows per chunk of a token-row array (None: chosen)

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
        if self.chunk_tokens is not None and self.chunk_tokens <= 0:
            raise StoreError(f"--chunk-tokens {self.chunk_tokens} must be a positive integer.")

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
    rows: str = "sample"  # "token": a text run's (T, D) layer, one row per real token
    chunk_tokens: int = 0  # its token rows per chunk (0: not decided yet, see token_chunk)

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
        if self.rows == "token":
            return ("token", "feature")
        if self.reduce in ("mean", "max") and layout in ("nchw", "nhwc"):
            return ("sample", "channel")
        return dimension_names(array_layout(layout, self.reduce), len(self.shape))


def choose_chunk_rows(
    batch_size: int, max_bytes_per_sample: int, n: int, *, id_width: int = 0
) -> int:
    """Rows per chunk: a multiple of the batch size (or a divisor of it, for very large layers)
    that keeps the largest layer's chunk near 32 MB (at most), with the blocks as even as the
    batch size allows, so that the last one is not mostly padding. ``id_width``: the bytes of
    an id, whose chunk (fixed-width strings, a block's rows) is bounded as a layer's is."""
    per_sample = max(1, max_bytes_per_sample, id_width)
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


def token_chunk(spec: ArraySpec, options: StoreOptions, chunk_rows: int) -> int:
    """Token rows per chunk of a token-row array (``spec.rows == "token"``) whose row blocks
    have room for ``chunk_rows × T`` of them: as recorded, else ``--chunk-tokens`` (which must
    divide that), else the largest divisor whose chunk stays within ``TOKEN_CHUNK_BYTES``.
    A divisor, so that no chunk straddles two blocks; small, because a block's last chunk is
    the one with padding after its tokens."""
    if spec.chunk_tokens:
        return spec.chunk_tokens
    capacity = chunk_rows * spec.shape[0]
    small = [d for d in range(1, math.isqrt(capacity) + 1) if capacity % d == 0]
    divisors = sorted({*small, *(capacity // d for d in small)})
    if options.chunk_tokens is not None:
        if capacity % options.chunk_tokens:
            near = [d for d in divisors if d > 1][:8]
            raise StoreError(
                f"--chunk-tokens {options.chunk_tokens} does not divide a row block's "
                f"{capacity} token rows ({chunk_rows} rows × {spec.shape[0]} tokens), so a "
                f"chunk would hold two blocks' tokens; choose a divisor: "
                f"{', '.join(map(str, near))}, ..."
            )
        return options.chunk_tokens
    row_bytes = math.prod(spec.shape[1:]) * STORAGE_BYTES[options.dtype]
    fits = max(1, TOKEN_CHUNK_BYTES // max(1, row_bytes))
    return max(d for d in divisors if d <= fits)


def schema(attrs: Mapping[str, Any]) -> tuple[list[ArraySpec], StoreOptions]:
    """The row arrays and storage options a run's root attributes describe (what
    :func:`~actextract.store.build.build_store` was given)."""
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
                    rows=s.get("rows", "sample"),
                    chunk_tokens=int(s.get("chunk_tokens", 0)),
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


@contextmanager
def quiet_numcodecs() -> Iterator[None]:
    """numcodecs' LZ4 is outside the Zarr v3 spec; zarr warns on every use. We document it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr")
        yield
