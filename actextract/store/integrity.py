"""Integrity: what a run's store must hold, derived from its root attributes, and the check
every reader runs before it trusts a store.

The root attributes (``zarr.json``) are the record of the run: they say which arrays exist and
their shapes, chunking and dtype, and a resume checks a new run against them. Every other
metadata file follows from them: :func:`~actextract.store.build.expected_metadata` rebuilds each
one as :func:`~actextract.store.build.build_store` wrote it, :func:`metadata_problems` compares the
store's with those (a file missing, unreadable, or disagreeing on shape, chunks or dtype) and
:func:`restore_metadata` writes them back. Attributes that disagree with every array, or with
themselves, are damage of the record itself: nothing can tell which side is true, and
``verify`` says so instead of advising a repair.

:func:`check` is the quick check of ``info``, ``render``, ``cluster`` and ``--resume``: the
metadata, then one listing of each row array's chunk keys against the completion records (a
done block must have every chunk: arrays are written with ``write_empty_chunks``, and zarr
reads a missing chunk as the fill value without a word), then the labels, the block records
and the statistics' parts and totals. ``verify`` reads every chunk on top of it (checksums).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.core.buffer import default_buffer_prototype
from zarr.core.metadata.v3 import ArrayV3Metadata
from zarr.core.sync import sync

from actextract.core.axes import reduced_shape, stored_layout
from actextract.errors import StoreError
from actextract.store import parts
from actextract.store.base import SLAB_BYTES, consolidate, drop_consolidated
from actextract.store.build import counts_tokens, expected_metadata, token_arrays
from actextract.store.layout import layer_arrays, list_keys, row_paths

if TYPE_CHECKING:
    from actextract.store.run import Store

__all__ = [
    "Damage",
    "MetaProblem",
    "check",
    "chunk_gaps",
    "damage_error",
    "is_damage",
    "metadata_problems",
    "restore_metadata",
    "undecodable",
]

RECORDS = ("progress/skipped", "progress/nonfinite", "progress/done")  # one chunk per block


@dataclass(frozen=True)
class MetaProblem:
    """The metadata file of ``path`` ('' for the root) is ``what``; ``repairable``: it can be
    rewritten from the root attributes (False: the root attributes themselves are wrong)."""

    path: str
    what: str
    repairable: bool = True


@dataclass
class Damage:
    """What :func:`check` found: metadata problems, and (array, first row, last row + 1,
    detail) for each done row range whose chunks are not all in the store."""

    metadata: list[MetaProblem] = field(default_factory=list)
    gaps: list[tuple[str, int, int, str]] = field(default_factory=list)
    stats: list[tuple[str, str]] = field(default_factory=list)  # (array, what) of the sums

    def __bool__(self) -> bool:
        return bool(self.metadata or self.gaps or self.stats)

    def lines(self) -> list[str]:
        out = [f"{p.path or 'zarr.json (root)'}: {p.what}" for p in self.metadata]
        out += [f"{array}: rows {a}-{b - 1}: {detail}" for array, a, b, detail in self.gaps]
        out += [f"{array}: {what}" for array, what in self.stats]
        return out


def metadata_problems(store: Store) -> list[MetaProblem]:
    """The metadata files of ``store`` that are missing, unreadable, or disagree with the root
    attributes (shape, chunks, dtype), and root attributes that disagree with the arrays or
    with themselves. [] for stores before per-block records (format 1), which keep no
    schema to check against, and for a Recorder's stores."""
    attrs = store.attrs
    if attrs.get("axis") == "epoch" or not store.has_records():
        return []
    root = _root_problems(attrs)
    if root:
        return root
    zstore = store.group.store
    found, rows_agree, rows_differ = [], 0, 0
    for path, want in expected_metadata(attrs).items():
        raw = sync(zstore.get(f"{path}/zarr.json", prototype=default_buffer_prototype()))
        if raw is None:
            found.append(MetaProblem(path, "metadata file (zarr.json) missing"))
            continue
        try:
            have = json.loads(raw.to_bytes())
        except ValueError as e:
            found.append(MetaProblem(path, f"metadata file (zarr.json) unreadable: {e}"))
            continue
        want = json.loads(want)
        differs = _differs(have, want)
        if want["node_type"] == "array" and not path.startswith("progress/"):  # a row array
            if _rows(have) == _rows(want):
                rows_agree += 1
            else:
                rows_differ += 1
        if differs:
            found.append(
                MetaProblem(path, f"metadata disagrees with the root attributes: {differs}")
            )
    if rows_differ and not rows_agree:
        return [
            MetaProblem(
                "",
                f"the root attributes n_samples ({attrs['n_samples']}) and chunk_rows "
                f"({attrs['chunk_rows']}) disagree with every array's rows and chunking",
                repairable=False,
            )
        ]
    if "acts" in store.group:  # a layer array that the attributes do not list
        listed = {s["name"] for s in attrs["layers"]}
        with warnings.catch_warnings():  # zarr warns of a folder without its zarr.json
            warnings.simplefilter("ignore")
            keys = set(store.group["acts"].array_keys())  # type: ignore[union-attr]
        unknown = sorted(keys - listed)
        found += [
            MetaProblem(
                "",
                f"acts/{name} is not among the layers of the root attributes",
                repairable=False,
            )
            for name in unknown
        ]
    return found


def restore_metadata(store: Store, problems: Iterable[MetaProblem]) -> list[str]:
    """Rewrite the metadata files of ``problems`` (all repairable) from the root attributes;
    their chunks are left as they are (``verify`` then reads them). Returns the paths."""
    problems = list(problems)
    if not all(p.repairable for p in problems):
        raise StoreError(
            f"'{store.location}': the root attributes are damaged; nothing to restore."
        )
    expected = expected_metadata(store.attrs)
    prototype = default_buffer_prototype()
    paths = [p.path for p in problems]
    copied = drop_consolidated(store.group.store)  # a copy of what is rewritten
    for path in paths:
        sync(
            store.group.store.set(f"{path}/zarr.json", prototype.buffer.from_bytes(expected[path]))
        )
    store.forget_nodes()
    if copied:  # a sealed store: copied again, from the files as creation wrote them
        consolidate(store)
    return paths


def chunk_gaps(store: Store) -> list[tuple[str, int, int, str]]:
    """(array, first row, last row + 1, detail) of each run of done row blocks with a chunk
    missing in a row array (layers, channel means, labels, ids) or a block record; one
    listing of keys per array."""
    blocks = np.flatnonzero(store.done())
    names = layer_arrays(store.attrs)
    out = []
    tokens = [f"tokens/{a}" for a in token_arrays(store.attrs.get("tokens"))]
    records = _records(store)
    counts = _token_counts(store)
    for path in [*row_paths(store.attrs), "labels", "ids", *tokens, *records]:
        arr = store._node(path)
        keys = list_keys(store.group.store, f"{path}/")
        per_block = path in records
        missing = [
            b
            for b in blocks.tolist()
            if any(
                f"{path}/{arr.metadata.encode_chunk_key(c)}" not in keys
                for c in store.block_chunks(path, b, per_block=per_block, count=counts[b])
            )
        ]
        for first, last in _runs(missing):
            rows = (store.block_range(first).start, store.block_range(last).stop)
            what = "block" if first == last else "blocks"
            span = f"{first}" if first == last else f"{first}-{last}"
            out.append((names.get(path, path), *rows, f"chunks of done {what} {span} missing"))
    return out


def _records(store: Store) -> list[str]:
    """The block records written with each block (progress/done aside): skipped samples,
    non-finite rows and, in a text run, the real tokens."""
    return [*RECORDS[:2], *(["progress/tokens"] if counts_tokens(store.attrs) else [])]


def _token_counts(store: Store) -> list[int | None]:
    """Each block's real tokens (progress/tokens), where the token rows of a block end; 0
    where the record cannot be read (the record's damage is reported, and resets the block)."""
    if not counts_tokens(store.attrs):
        return [None] * store.n_blocks
    try:
        return store.token_counts().tolist()
    except Exception as e:
        if not is_damage(e):
            raise
        return [0] * store.n_blocks


def check(store: Store) -> Damage:
    """The quick check: metadata, then done blocks without their chunks (see the module
    docstring), then the small arrays readers read whole (labels, the block records) are
    read; the ids and the row arrays' chunks are left to ``verify``."""
    damage = Damage(metadata_problems(store))
    if not damage.metadata and store.attrs.get("axis") != "epoch" and store.has_records():
        damage.gaps = chunk_gaps(store)
        damage.gaps += _unreadable(store, ["labels"], per_block=False)  # ids: N strings
        damage.gaps += _unreadable(store, _records(store), per_block=True)
        damage.stats = parts.problems(store)
    return damage


def _unreadable(store: Store, paths: list[str], per_block: bool) -> list[tuple[str, int, int, str]]:
    """(array, rows, what) of the done blocks of ``paths`` whose chunks do not decode: each
    array read whole (in slabs of SLAB_BYTES: a block's fixed-width record is mostly
    padding), then block by block only when that fails."""
    out = []
    done = np.flatnonzero(store.done()).tolist()
    for path in paths:
        arr = store._node(path)
        row = max(1, math.prod(arr.shape[1:]) * np.dtype(arr.dtype).itemsize)
        step = max(1, SLAB_BYTES // row)
        try:
            for lo in range(0, arr.shape[0], step):
                arr[lo : lo + step]
            continue
        except Exception as e:
            if not is_damage(e):
                raise
        for b in done:
            rows = store.block_range(b)
            try:
                arr[b : b + 1] if per_block else arr[rows.start : rows.stop]
            except Exception as e:
                if not is_damage(e):
                    raise
                out.append((path, rows.start, rows.stop, f"block {b}: {undecodable(e)}"))
    return out


def damage_error(store: Store, damage: Damage, consequence: str) -> StoreError:
    """The error of a reader that will not go on: what is damaged, why it stops
    (``consequence``) and what to run."""
    lines = damage.lines()
    more = f" (and {len(lines) - 4} more)" if len(lines) > 4 else ""
    mend = (
        "`verify --repair` then `extract ... --resume` mends it."
        if all(p.repairable for p in damage.metadata)
        else "its root attributes cannot be repaired: restore its zarr.json from a copy, or "
        "extract again into a new store (--overwrite)."
    )
    return StoreError(
        f"'{store.location}' is DAMAGED: {'; '.join(lines[:4])}{more}. {consequence} Run "
        f"`actextract verify {store.location}` for the whole picture; {mend}"
    )


def undecodable(e: Exception) -> str:
    """What a chunk read that failed means (zarr's Crc32cCodec raises "Stored and computed
    checksum do not match")."""
    if "checksum" in str(e):
        return "crc32c checksum mismatch: corrupt or truncated"
    return f"{type(e).__name__}: {e}"


def is_damage(e: BaseException) -> bool:
    """A read error that means a damaged chunk (not a bug, not an unreachable store)."""
    return isinstance(e, ValueError) and "checksum" in str(e)


def _root_problems(attrs: Mapping[str, Any]) -> list[MetaProblem]:
    """Root attributes that contradict themselves: a layer whose stored shape is not its
    output's after its reduction, an impossible sample count or chunking."""
    out = []
    for key in ("n_samples", "chunk_rows"):
        value = attrs.get(key)
        if not isinstance(value, int) or value <= 0:
            out.append(MetaProblem("", f"the root attribute {key} is {value!r}", repairable=False))
    for s in attrs.get("layers") or []:
        if s.get("array", f"acts/{s['name']}") != f"acts/{s['name']}":
            out.append(
                MetaProblem("", f"layer {s['name']} names the array {s['array']}", repairable=False)
            )
    if out:
        return out
    layers = [f"acts/{s['name']}" for s in attrs.get("layers") or []]
    listed = [p for p in attrs.get("row_arrays") or layers if p.startswith("acts/")]
    if sorted(listed) != sorted(layers):
        out.append(
            MetaProblem(
                "",
                f"the row arrays {listed} are not the layers {layers} of the root attributes",
                repairable=False,
            )
        )
        return out
    for s in attrs.get("layers") or []:
        try:
            want = reduced_shape(
                s["name"], tuple(s["output_shape"]), stored_layout(s), s.get("reduce", "none")
            )
        except Exception as e:
            want = f"unusable ({e})"
        if "output_shape" in s and tuple(s["shape"]) != want:
            out.append(
                MetaProblem(
                    "",
                    f"layer {s['name']}: stored shape {tuple(s['shape'])} does not follow from "
                    f"its output {tuple(s['output_shape'])} reduced by {s.get('reduce', 'none')}",
                    repairable=False,
                )
            )
    return out


def _differs(have: Mapping[str, Any], want: Mapping[str, Any]) -> str:
    """What decides where the bytes of a chunk go: the kind of node and, for an array, its
    shape, chunks and dtype (as zarr parses them: their JSON may be spelt differently)."""
    kind = have.get("node_type")
    if kind != want["node_type"]:
        return f"node type {json.dumps(kind)} (expected {json.dumps(want['node_type'])})"
    if kind != "array":
        return ""
    try:
        h = ArrayV3Metadata.from_dict(copy.deepcopy(dict(have)))
    except Exception as e:
        return f"unusable ({type(e).__name__}: {e})"
    w = ArrayV3Metadata.from_dict(copy.deepcopy(dict(want)))
    diffs = []
    for name, was, should in (
        ("shape", list(h.shape), list(w.shape)),
        ("chunks", list(h.chunks), list(w.chunks)),
        ("dtype", str(h.data_type.to_native_dtype()), str(w.data_type.to_native_dtype())),
    ):
        if was != should:
            diffs.append(f"{name} {json.dumps(was)} (expected {json.dumps(should)})")
    return "; ".join(diffs)


def _rows(meta: Mapping[str, Any]) -> tuple[Any, Any]:
    """(rows, rows per chunk) of an array's metadata."""
    chunks = ((meta.get("chunk_grid") or {}).get("configuration") or {}).get("chunk_shape")
    return (meta.get("shape") or [None])[0], (chunks or [None])[0]


def _runs(blocks: list[int]) -> list[tuple[int, int]]:
    """[1, 2, 3, 7] → [(1, 3), (7, 7)]."""
    out: list[tuple[int, int]] = []
    for _, run in itertools.groupby(enumerate(blocks), key=lambda ib: ib[1] - ib[0]):
        run = list(run)
        out.append((run[0][1], run[-1][1]))
    return out
