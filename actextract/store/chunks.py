"""Chunks written where the rows lie: one row array's chunk of a block from its pieces, the
non-finite check and the crc32c checksum taken in the same pass as the write.

A block's rows of one array come as :class:`BlockRows`: pieces (the row block buffer of the
device→host ring, or on the CPU the layer's output tensors themselves) with gaps where a
sample was skipped. Under the default codec (``none``: the raw little-endian bytes, then
their crc32c, as zarr's ``BytesCodec`` + ``Crc32cCodec`` encode a chunk) on a local store,
:func:`write_chunk` writes the chunk file itself: piece by piece, ``PIECE_BYTES`` at a time,
each window checked for NaN/Inf, added to the checksum and handed to the kernel while it is in
the cache, then the four checksum bytes after it; the file is zarr's, byte for byte, and
zarr's own codec reads it. Nothing is concatenated and no byte is copied on the way but by
the kernel into its page cache. (Zarr's own path copies each chunk to append the checksum,
and writes it in one call, which the kernel takes several times slower than smaller writes:
docs/performance.md.) Any other codec, a remote store or a big-endian machine goes through
zarr with the rows assembled into one array.

Like zarr's ``LocalStore`` the file is written under a ``*.partial`` name and renamed into
place, so a killed writer never leaves a half-written chunk under a real name.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import crc32c
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec

__all__ = ["PIECE_BYTES", "BlockRows", "chunk_file", "nonfinite_rows", "write_chunk"]

PIECE_BYTES = 256 << 10  # measured: the kernel takes these 2-4x faster than whole chunks
# the exponent bits of each stored dtype: a value is NaN or Inf exactly when all are set
_EXPONENT = {
    np.dtype(np.float16): (np.dtype(np.uint16), 0x7C00),
    np.dtype(np.float32): (np.dtype(np.uint32), 0x7F800000),
}


@dataclass
class BlockRows:
    """One row array's rows of a block: ``pieces`` (first row in the block, a C-contiguous
    (k, *shape) array), in row order and not overlapping, of a block of ``rows`` rows; a row
    no piece covers holds the fill value (a skipped sample)."""

    rows: int
    pieces: list[tuple[int, np.ndarray]] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        """The bytes of the pieces (the rows that are not the fill value)."""
        return sum(piece.nbytes for _, piece in self.pieces)

    def array(self, arr: zarr.Array) -> np.ndarray:
        """The rows as one (rows, *shape) array of ``arr``'s dtype, the fill value where no
        piece is (for zarr's own write path, and for tests); a piece that is all the rows is
        returned as it is."""
        if len(self.pieces) == 1:
            start, piece = self.pieces[0]
            if start == 0 and len(piece) == self.rows and piece.dtype == arr.dtype:
                return piece
        out = np.full((self.rows, *arr.shape[1:]), arr.fill_value, arr.dtype)
        for start, piece in self.pieces:
            out[start : start + len(piece)] = piece
        return out

    def tokens(self, mask: np.ndarray) -> np.ndarray:
        """The real tokens of these rows, one row each, (``mask.sum()``, D): each piece's
        (k, T, D) rows where the block's ``mask`` (rows, T) is set, in order. A row no piece
        covers (a skipped sample) has no real token. The rows are in this thread's scratch
        space, valid until its next call: a block's worth, reused, not allocated per block."""
        mask = np.asarray(mask, bool)
        count = int(mask.sum())
        width = self.pieces[0][1].shape[2:] if self.pieces else ()
        dtype = self.pieces[0][1].dtype if self.pieces else np.dtype(np.float32)
        out = _scratch(count * math.prod(width), np.dtype(dtype)).reshape(count, *width)
        at = 0
        for start, piece in self.pieces:
            keep = mask[start : start + len(piece)].reshape(-1)
            k = int(keep.sum())
            flat = piece.reshape(len(keep), *width)
            np.compress(keep, flat, axis=0, out=out[at : at + k])
            at += k
        if at != count:  # a real token without its rows: never written as if it were there
            raise RuntimeError(f"{count} real tokens in the mask, {at} in the rows written")
        return out


def chunk_file(arr: zarr.Array, local: Path | None, block: int) -> Path | None:
    """The file of ``arr``'s chunk ``block`` along the rows (a row block's, or one of its
    token rows') when :func:`write_chunk` can write it as zarr would: a local store, chunks
    as wide as a row, the default codec, a little-endian machine. None where zarr must."""
    meta = arr.metadata
    if local is None or sys.byteorder != "little" or getattr(meta, "zarr_format", 3) != 3:
        return None
    if tuple(meta.codecs) != (BytesCodec(endian="little"), Crc32cCodec()):
        return None
    if np.dtype(arr.dtype) not in _EXPONENT or tuple(arr.chunks[1:]) != tuple(arr.shape[1:]):
        return None
    key = meta.encode_chunk_key((block,) + (0,) * (arr.ndim - 1))
    return local / arr.path / key


def write_chunk(
    arr: zarr.Array, path: Path, rows: BlockRows, flags: np.ndarray | None = None
) -> None:
    """Write ``arr``'s chunk file at ``path`` (:func:`chunk_file`): a chunk's rows, each
    piece's from the piece and every other the fill value, then their crc32c
    (little-endian), in one pass over the data. ``flags`` ((rows.rows,) bool), when given,
    is set where a piece's row holds a NaN or Inf."""
    dtype, row_shape = np.dtype(arr.dtype), tuple(arr.shape[1:])
    row_bytes = math.prod(row_shape) * dtype.itemsize
    fill_rows = _fill(arr.fill_value, dtype, row_shape, max(1, PIECE_BYTES // max(row_bytes, 1)))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{uuid.uuid4().hex}.partial")  # as zarr's LocalStore names it
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        crc, at = 0, 0
        for start, piece in [*rows.pieces, (arr.chunks[0], None)]:
            while at < start:  # rows no piece covers: the fill value
                k = min(start - at, len(fill_rows))
                crc = _write(fd, fill_rows[:k].reshape(-1).view(np.uint8), crc)
                at += k
            if piece is None:
                break
            if piece.dtype != dtype or piece.shape[1:] != row_shape or not piece.flags.c_contiguous:
                raise ValueError(
                    f"{path}: rows {start}+ are {piece.dtype} {piece.shape[1:]} (C-contiguous: "
                    f"{piece.flags.c_contiguous}); the array holds {dtype} {row_shape}"
                )
            flat = piece.reshape(-1).view(np.uint8)
            for first, count, lo, hi in _windows(len(piece), row_bytes):
                window = flat[lo:hi]
                if flags is not None:
                    flags[start + first : start + first + count] |= nonfinite_rows(
                        window.view(dtype).reshape(count, -1)
                    )
                crc = _write(fd, window, crc)
            at = start + len(piece)
        _write_all(fd, memoryview(np.array([crc], "<u4").view(np.uint8)))
    except BaseException:
        os.close(fd)
        partial.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(partial, path)


def nonfinite_rows(rows: np.ndarray) -> np.ndarray:
    """(k,) bool: the rows of ``rows`` (k, m) float16/float32 that hold a NaN or an Inf, with
    scratch space reused per thread, so that a window costs no allocation of its size.
    float32: numpy's ``isfinite`` (vectorised: twice the speed of the bits below); float16,
    which numpy's ``isfinite`` takes element by element, from the exponent bits (all set
    exactly for NaN and Inf)."""
    if rows.dtype == np.float32:
        finite = _scratch(rows.size, np.dtype(np.bool_)).reshape(rows.shape)
        np.isfinite(rows, out=finite)
        return ~finite.all(axis=1)
    utype, mask = _EXPONENT[rows.dtype]
    bits = rows.view(utype)
    masked = _scratch(bits.size, utype).reshape(bits.shape)
    equal = _scratch(bits.size, np.dtype(np.bool_)).reshape(bits.shape)
    np.bitwise_and(bits, mask, out=masked)
    np.equal(masked, mask, out=equal)
    return equal.any(axis=1)


def _windows(k: int, row_bytes: int) -> Iterator[tuple[int, int, int, int]]:
    """(first row, rows, first byte, end byte) windows of about PIECE_BYTES over ``k`` rows:
    whole rows where a row is smaller, else slices of one row."""
    if row_bytes == 0:
        return
    if row_bytes <= PIECE_BYTES:
        per = max(1, PIECE_BYTES // max(row_bytes, 1))
        for first in range(0, k, per):
            count = min(per, k - first)
            yield first, count, first * row_bytes, (first + count) * row_bytes
        return
    for row in range(k):
        for lo in range(0, row_bytes, PIECE_BYTES):
            yield row, 1, row * row_bytes + lo, row * row_bytes + min(row_bytes, lo + PIECE_BYTES)


def _write(fd: int, data: np.ndarray, crc: int) -> int:
    """Add ``data`` (uint8) to the checksum, then write it; the new checksum."""
    crc = _extend(crc, data)
    _write_all(fd, memoryview(data))
    return crc


def _write_all(fd: int, view: memoryview) -> None:
    while view.nbytes:
        view = view[os.write(fd, view) :]


def _extend(crc: int, data: np.ndarray) -> int:
    """The crc32c of what came before (``crc``) and ``data``. The ``crc32c`` package lets go
    of the GIL while it runs (google-crc32c's ``extend``, which zarr uses, holds it: two
    writer threads took turns at it); benchmarks/bench_integrity.py swaps it out."""
    return crc32c.crc32c(data, crc)


_local = threading.local()


def _scratch(size: int, dtype: np.dtype) -> np.ndarray:
    """This thread's scratch array of ``dtype`` and at least ``size`` elements."""
    arrays = _local.__dict__.setdefault("scratch", {})
    have = arrays.get(dtype.str)
    if have is None or have.size < size:
        have = arrays[dtype.str] = np.empty(size, dtype)
    return have[:size]


def _fill(fill: object, dtype: np.dtype, row_shape: tuple[int, ...], k: int) -> np.ndarray:
    """``k`` rows of the fill value, as zarr fills a chunk (``np.full``), reused per thread."""
    fills = _local.__dict__.setdefault("fills", {})  # a thread lives as long as its sink
    key = (dtype.str, row_shape, repr(fill), k)
    if key not in fills:
        fills[key] = np.full((k, *row_shape), fill, dtype)
    return fills[key]
