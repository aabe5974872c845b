"""Strings in a store: ids and JSON records as fixed-width UTF-8, the form every Zarr v3
reader shares (store format 7 on), and the reader that gives them back as Python strings.

Variable-length strings are not a Zarr v3 core data type: zarr-python writes them in an
extension (``string`` / ``vlen-utf8``) that tensorstore and other readers refuse. From format
7 a column of k strings is a ``(k, width)`` uint8 array: each row the string's UTF-8 bytes,
padded with NUL bytes (0, the fill value) to ``width``; an unwritten row reads as "". The
array's attributes say so (``{"encoding": "utf-8", "width": W, "padding": "nul"}``). A fixed
width keeps every row block's chunk its own (processes write disjoint blocks), where an
offsets + bytes pair would tie each row to the rows before it.

:class:`TextArray` reads either form (format 7's bytes, or an older store's ``str`` array)
like the ``(k,)`` string array older stores gave: indexing returns NumPy ``StringDType``
arrays (a 0-d one for an integer index), as zarr-python returns its own strings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import zarr

from actextract.errors import StoreError

__all__ = [
    "DEFAULT_ID_WIDTH",
    "ERROR_CHARS",
    "RECORD_MIN_BYTES",
    "SKIPPED_INDEX_BYTES",
    "SKIPPED_RECORD_MAX",
    "SKIPPED_ROW_BYTES",
    "TextArray",
    "decode",
    "encode",
    "fit_json",
    "is_fixed",
    "json_rows",
    "skipped_width",
    "text_attrs",
    "width_for",
]

DEFAULT_ID_WIDTH = 256  # bytes of UTF-8 per id: a relative path of a file name's length
SKIPPED_ROW_BYTES = 256  # a block's skipped record: room per row beside the id (index, error)
# ... but at most this per block (a block of many rows would otherwise allocate, write and
# read back a record of chunk_rows × (id_width + 256) bytes, mostly padding, for every
# block), and at least SKIPPED_INDEX_BYTES per row, room for each row's index alone
SKIPPED_RECORD_MAX = 1 << 20
SKIPPED_INDEX_BYTES = 32  # '{"index": 12345678901}, ' with room to spare
ERROR_CHARS = 160  # a skipped sample's error, cut to this when a block's record would not fit
RECORD_MIN_BYTES = 4096  # a recording's per-epoch record (weights sha256, time, per layer)
STRINGS = np.dtypes.StringDType()


def width_for(ids: Iterable[str] | None, least: int = DEFAULT_ID_WIDTH) -> int:
    """The ``id_width`` a store needs for ``ids`` (a dataset's, when known before it is
    created): the longest one's UTF-8 bytes, and at least ``least``."""
    return max([least, *(len(str(i).encode("utf-8")) for i in ids or ())])


def text_attrs(width: int) -> dict[str, Any]:
    """The attributes of a fixed-width string array: how its bytes read back."""
    return {"encoding": "utf-8", "width": int(width), "padding": "nul"}


def is_fixed(arr: Any) -> bool:
    """Whether ``arr`` holds strings as fixed-width UTF-8 rows (format 7 on), not as zarr's
    variable-length strings."""
    return len(arr.shape) == 2 and np.dtype(arr.dtype) == np.uint8


def encode(values: Sequence[str], width: int, what: str = "id") -> np.ndarray:
    """``values`` as (len(values), width) uint8 rows of UTF-8, NUL-padded; a StoreError
    naming the first value that does not fit (or holds a NUL character, which padding would
    eat)."""
    data = [str(v).encode("utf-8") for v in values]
    for value, raw in zip(values, data, strict=True):
        if len(raw) > width:
            raise StoreError(
                f"the {what} {str(value)[:120]!r} is {len(raw)} bytes in UTF-8; this store "
                f"keeps each {what} in {width} bytes (fixed when it was created). Shorten "
                f"the samples' {what}s (paths relative to a closer root), or write a new "
                f"store whose {what}_width has room for them."
            )
        if b"\x00" in raw:
            raise StoreError(f"the {what} {str(value)[:120]!r} holds a NUL character.")
    if not data:
        return np.zeros((0, width), np.uint8)
    return np.array(data, dtype=f"S{width}").view(np.uint8).reshape(len(data), width)


def decode(rows: np.ndarray) -> np.ndarray:
    """(..., width) uint8 rows of NUL-padded UTF-8 → (...) ``StringDType`` strings."""
    rows = np.ascontiguousarray(rows, np.uint8)
    fixed = rows.view(f"S{rows.shape[-1]}")[..., 0]  # NumPy drops the trailing NULs
    return np.strings.decode(fixed, "utf-8").astype(STRINGS)


def skipped_width(chunk_rows: int, id_width: int) -> int:
    """Bytes of a block's record of skipped samples: room for each row's id and error, within
    SKIPPED_RECORD_MAX, and never less than each row's index alone."""
    full = chunk_rows * (id_width + SKIPPED_ROW_BYTES)
    return min(full, max(SKIPPED_RECORD_MAX, chunk_rows * SKIPPED_INDEX_BYTES))


def fit_json(value: Any, width: int, what: str) -> str:
    """``value`` as JSON of at most ``width`` bytes of UTF-8: a block's skipped samples have
    their ``error`` texts cut (to ERROR_CHARS, then out), then only their ``index`` is kept
    (their ids are in ``ids``; the reader puts them back), until it fits."""
    text = json.dumps(value, ensure_ascii=False)
    for cut in (ERROR_CHARS, 0, None):
        if len(text.encode("utf-8")) <= width:
            return text
        if not isinstance(value, list):
            break
        if cut is None:
            value = [{"index": s["index"]} for s in value]
        else:
            value = [{**s, "error": str(s.get("error", ""))[:cut]} for s in value]
        text = json.dumps(value, ensure_ascii=False)
    if len(text.encode("utf-8")) <= width:
        return text
    raise StoreError(f"the {what} is {len(text.encode())} bytes of JSON; it has room for {width}.")


class TextArray:
    """A stored column of strings (ids, per-block JSON records), read as a (k,) array of
    strings whatever its form (see the module docstring). ``array``: the zarr array."""

    def __init__(self, array: zarr.Array):
        self.array = array

    @property
    def fixed(self) -> bool:
        return is_fixed(self.array)

    @property
    def width(self) -> int | None:
        """Bytes per string (None: variable-length strings of an older store)."""
        return int(self.array.shape[1]) if self.fixed else None

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.array.shape[0]),)

    @property
    def chunks(self) -> tuple[int, ...]:
        return (int(self.array.chunks[0]),)

    @property
    def ndim(self) -> int:
        return 1

    @property
    def dtype(self) -> np.dtype:
        return STRINGS

    @property
    def path(self) -> str:
        return self.array.path

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, selection: Any) -> np.ndarray:
        if isinstance(selection, tuple):
            if len(selection) != 1:
                raise IndexError(f"a column of strings has one axis; got {selection!r}")
            (selection,) = selection
        if not self.fixed:
            return np.asarray(self.array[selection])
        if isinstance(selection, range):
            selection = slice(selection.start, selection.stop, selection.step)
        if isinstance(selection, int | np.integer | slice) or selection is Ellipsis:
            return decode(self.array[selection])
        index = np.asarray(selection)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        rows = self.array.get_orthogonal_selection((index.reshape(-1), slice(None)))
        return decode(rows).reshape(index.shape)

    def __setitem__(self, selection: Any, values: Any) -> None:
        """Write strings at ``selection`` (a slice or an integer) in the array's form."""
        count = None
        if isinstance(selection, slice):
            count = len(range(*selection.indices(len(self))))
        self.array[selection] = self.encoded(values, count=count)

    def encoded(self, values: Any, what: str = "id", *, count: int | None = None) -> Any:
        """``values`` (a string or a sequence of them) as the array stores them; one string
        given for ``count`` rows is each row's, as NumPy broadcasts it."""
        single = isinstance(values, str)
        if not self.fixed:
            return values if single else np.asarray(values, dtype=str)
        rows = encode([values] if single else list(values), self.width or 0, what)
        if single and count is not None:
            return np.broadcast_to(rows[0], (count, rows.shape[1]))
        return rows[0] if single else rows

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype)

    def __iter__(self):
        return iter(self[:])

    def __repr__(self) -> str:
        form = f"{self.width} bytes of UTF-8 each" if self.fixed else "variable-length"
        return f"<strings {self.path}: {len(self)}, {form}>"


def json_rows(texts: np.ndarray) -> list[Any]:
    """JSON texts (a record per row; "" where none) parsed; None for an empty one."""
    return [json.loads(t) if t else None for t in np.asarray(texts).tolist()]
