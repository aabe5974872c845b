"""Verify: read back every chunk of a run's store and say whether it is complete, unfinished or
damaged; with ``repair``, rewrite damaged metadata from the root attributes
(:mod:`actextract.store.integrity`) and mark the damaged row blocks not done so that a resume redoes
them. The report and its text are in :mod:`actextract.check.report`.

A chunk of a done block must exist (arrays are written with ``write_empty_chunks``, and zarr
reads a missing chunk as the fill value without a word) and decode (its crc32c checksum catches
bit flips and truncation: zarr raises ``ValueError``). Blocks not done are an unfinished run,
not damage; their chunks are not read, since a resume rewrites them.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from actextract.check.report import DAMAGE, EVERY_ARRAY, Problem, VerifyReport, format_verify
from actextract.clusters import results as clustering
from actextract.errors import OptionError, StoreError
from actextract.stats import parts as stats
from actextract.store import Store, StoreReader, lock, open_store, parts
from actextract.store.build import token_arrays
from actextract.store.integrity import (
    is_damage,
    metadata_problems,
    restore_metadata,
    undecodable,
)
from actextract.store.layout import list_keys, quiet_numcodecs
from actextract.store.location import writable

__all__ = ["Problem", "VerifyReport", "count_chunks", "format_verify", "verify"]

_KIND_ORDER = {"undecodable": 0, "missing": 1, "not-done": 2}

Entry = tuple[str, zarr.Array, bool]  # (name, array, indexed by block rather than by row)
Found = tuple[str, str, int, str]  # (kind, array name, block, detail)


def verify(
    store: Store | str | Path,
    *,
    progress: Callable[[int], None] | None = None,
    workers: int = 4,
    repair: bool = False,
    storage_options: Mapping[str, Any] | str | None = None,
) -> VerifyReport:
    """Read every chunk of every array of ``store``, block by block, ``workers`` chunks at a
    time (one chunk in memory per worker); ``progress(n)`` is called as ``n`` more chunks are
    checked, out of :func:`count_chunks`. First the metadata files are checked against the root
    attributes (:mod:`actextract.store.integrity`). ``repair`` (a store opened with mode 'r+')
    rewrites the missing or wrong ones from the root attributes, then marks the blocks with a
    missing or undecodable chunk not done: ``extract --resume`` redoes them. When the root
    attributes themselves are damaged nothing is read or repaired: the report says so.
    ``store``: an open store, or a path or URL (opened with mode 'r+' to ``repair``, with
    ``storage_options``)."""
    if not isinstance(store, StoreReader):  # a path or URL (a Recorder's store stays one)
        mode = "r+" if repair else "r"
        store = open_store(store, mode=mode, storage_options=storage_options)  # type: ignore[assignment]
    if workers < 1:
        raise OptionError(f"workers={workers} must be at least 1.")
    if repair and store.group.store.read_only:
        raise StoreError(f"'{store.location}' is open read-only; open it with mode='r+' to repair.")
    if repair:  # never while a run writes the store
        with lock.acquire(store.location, "verify --repair"):
            return _verify_and_repair(store, progress, workers, repair)
    return _verify_and_repair(store, progress, workers, repair)


def _verify_and_repair(
    store: Store, progress: Callable[[int], None] | None, workers: int, repair: bool
) -> VerifyReport:
    metadata = metadata_problems(store)
    restored: list[str] = []
    if repair and metadata and all(p.repairable for p in metadata):
        with writable(store.location, "rewrite the damaged metadata files"):
            restored = restore_metadata(store, metadata)
        metadata = metadata_problems(store)
    if not all(p.repairable for p in metadata) or any(
        p.path == "progress/done" for p in metadata
    ):  # nothing below can be trusted, or no block can be known done
        report = VerifyReport(str(store.location), store.status, _blocks(store), read=False)
        report.metadata, report.metadata_restored = metadata, restored
        return report
    report = _verify(store, progress, workers, repair, skip={p.path for p in metadata})
    report.metadata, report.metadata_restored = metadata, restored
    return report


def _blocks(store: Store) -> int:
    try:
        return store.n_blocks
    except Exception:  # the root's sample count or chunk rows are unusable
        return 0


def _verify(
    store: Store,
    progress: Callable[[int], None] | None,
    workers: int,
    repair: bool,
    skip: set[str],
) -> VerifyReport:
    tick = progress or (lambda n: None)
    entries, found = _arrays(store, skip)
    done_entry, rest = entries[0], entries[1:]
    report = VerifyReport(str(store.location), store.status, store.n_blocks)
    crc = {n for n, a, _ in entries if any(isinstance(c, Crc32cCodec) for c in a.metadata.codecs)}
    report.unchecked = [n for n, _, _ in entries if n not in crc]
    done = [False] * store.n_blocks
    check = partial(_check, store, {})
    with quiet_numcodecs(), ThreadPoolExecutor(workers) as pool:
        reads = ((done_entry, b, True) for b in range(store.n_blocks))
        for (_, b, _), (errors, is_done) in _bounded(pool, check, reads, 2 * workers):
            found += [(kind, done_entry[0], b, detail) for kind, detail in errors]
            done[b] = is_done
            if not (is_done or errors):
                found.append(("not-done", EVERY_ARRAY, b, "not written yet"))
            tick(1 + (0 if is_done else sum(len(_coords(store, e, b)) for e in rest)))
        # each array's chunks listed once (not a request per chunk), after the done flags:
        # a block flagged done by then has every chunk in the listing
        listed = {e[1].path: _listing(e[1]) for e in rest}
        check = partial(_check, store, listed)
        reads = ((e, b, False) for b in range(store.n_blocks) if done[b] for e in rest)
        for (e, b, _), (errors, _) in _bounded(pool, check, reads, 2 * workers):
            found += [(kind, e[0], b, detail) for kind, detail in errors]
            tick(len(_coords(store, e, b)))
    report.blocks_done = sum(done)
    report.chunks = count_chunks(store)
    report.problems = _group(store, found, [EVERY_ARRAY, *(e[0] for e in entries)])
    with quiet_numcodecs():  # the sums of --stats and their totals, the clustering results
        wrong = ((path, _check_whole(store.group[path])) for path in stats.arrays(store))
        report.stats_problems = [(path, what) for path, what in wrong if what]
        report.stats_problems += parts.problems(store)
        wrong = ((path, _check_whole(store.group[path])) for path in clustering.arrays(store))
        report.cluster_problems = [(path, what) for path, what in wrong if what]
    if repair:
        _repair(store, report)
        if report.stats_problems:
            report.stats_dropped = stats.repair(store, report.stats_problems)
        if report.cluster_problems:
            paths = [path for path, _ in report.cluster_problems]
            report.clusters_dropped = clustering.drop(store, paths)
    return report


def count_chunks(store: Store) -> int:
    """How many chunks :func:`verify` checks (the total of its ``progress``; 0 when the
    metadata must be repaired first)."""
    try:
        entries = _arrays(store, set())[0]
        whole = sum(math.prod(e[1].cdata_shape) for e in entries if not store.per_token(e[0]))
        tokens = [e for e in entries if store.per_token(e[0])]
        if tokens:  # a layer of token rows: the chunks of the blocks' real tokens
            blocks = np.flatnonzero(store.token_counts()).tolist()
            whole += sum(len(_coords(store, e, b)) for e in tokens for b in blocks)
        return whole
    except Exception:
        return 0


def _arrays(store: Store, skip: set[str]) -> tuple[list[Entry], list[Found]]:
    """progress/done, then the layers, labels, ids, token records and progress records known
    by the schema, but those at ``skip`` (metadata problems, reported as such); an array whose
    metadata cannot be read is 'missing' in every block (stores without a schema to check it)."""
    try:
        entries: list[Entry] = [("progress/done", store._node("progress/done"), True)]
    except Exception as e:
        raise StoreError(f"'{store.location}' has no readable progress/done array ({e}).") from None
    paths = [(s["name"], s.get("array", f"acts/{s['name']}"), False) for s in store.attrs["layers"]]
    paths += [(key, key, False) for key in store.row_keys if "/" in key]  # channel means
    paths += [("labels", "labels", False), ("ids", "ids", False)]
    tokens = [f"tokens/{a}" for a in token_arrays(store.attrs.get("tokens"))]
    paths += [(path, path, False) for path in tokens]  # a text run's mask and token ids
    try:
        with warnings.catch_warnings():  # zarr warns of a folder without its zarr.json
            warnings.simplefilter("ignore")
            records = sorted(store.group["progress"].array_keys())  # type: ignore[union-attr]
    except Exception:  # the group's metadata is missing: reported by integrity
        records = ["done", "nonfinite", "skipped"]
    paths += [(f"progress/{r}", f"progress/{r}", True) for r in records if r != "done"]
    found: list[Found] = []
    for name, path, per_block in paths:
        if path in skip:
            continue
        try:
            arr = store._node(path)
        except Exception as e:
            detail = f"its metadata cannot be read: {type(e).__name__}: {e}"
            found += [("missing", name, b, detail) for b in range(store.n_blocks)]
            continue
        if not per_block or arr.shape[:1] == (store.n_blocks,):  # else a record we don't know
            entries.append((name, arr, per_block))
    return entries, found


def _coords(store: Store, entry: Entry, block: int) -> list[tuple[int, ...]]:
    """The chunk coordinates holding ``block`` of the array (in a layer of token rows, those
    of its real tokens: none where its count of them cannot be read, which is damage of
    progress/tokens that resets the block)."""
    _, arr, per_block = entry
    try:
        return store.block_chunks(arr.path, block, per_block=per_block)
    except Exception as e:
        if not is_damage(e):
            raise
        return []


def _check(
    store: Store, listed: dict[str, set[str]], entry: Entry, block: int, read_done: bool
) -> tuple[list[tuple[str, str]], bool]:
    """([(kind, detail)], whether the block is recorded done (``read_done``: the done array));
    ``listed``: {array path: its chunk keys}."""
    _, arr, per_block = entry
    errors: list[tuple[str, str]] = []
    if not read_done:  # an absent done chunk only means "not done"
        absent = _absent(arr, _coords(store, entry, block), listed.get(arr.path))
        if absent:
            errors.append(("missing", absent))
    try:
        rows = store.block_rows(arr.path, block) if not per_block else range(block, block + 1)
        data = arr[rows.start : rows.stop]
    except OSError:  # the store cannot be read at all (permissions, network): not damage
        raise
    except Exception as e:
        return [*errors, ("undecodable", undecodable(e))], False
    return errors, read_done and not errors and bool(data.all())


def _listing(arr: zarr.Array) -> set[str]:
    """Every key under the array, in one listing of the store."""
    return list_keys(arr.store_path.store, f"{arr.store_path.path}/")


def _absent(
    arr: zarr.Array, coords: Iterable[tuple[int, ...]], listed: set[str] | None = None
) -> str:
    """Which of the chunks at ``coords`` are not in the store ('' when all are): looked up in
    ``listed`` (the array's keys, :func:`_listing`; default: listed now)."""
    keys = [f"{arr.store_path.path}/{arr.metadata.encode_chunk_key(c)}" for c in coords]
    listed = _listing(arr) if listed is None else listed
    absent = [k for k in keys if k not in listed]
    more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
    return f"chunk '{absent[0]}'{more} not in the store" if absent else ""


def _check_whole(arr: zarr.Array) -> str:
    """What is wrong with an array read whole, one chunk at a time ('' when nothing)."""
    grid = list(itertools.product(*(range(n) for n in arr.cdata_shape)))
    absent = _absent(arr, grid)
    if absent:
        return absent
    for coords in grid:
        try:
            arr[tuple(slice(c * n, (c + 1) * n) for c, n in zip(coords, arr.chunks, strict=True))]
        except OSError:
            raise
        except Exception as e:
            return undecodable(e)
    return ""


def _bounded(
    pool: ThreadPoolExecutor, fn: Callable[..., Any], tasks: Iterable[tuple], window: int
) -> Iterator[tuple[tuple, Any]]:
    """(task, fn(*task)) as they finish, with at most ``window`` tasks submitted at a time."""
    pending: dict[Future, tuple] = {}
    for task in tasks:
        pending[pool.submit(fn, *task)] = task
        if len(pending) >= window:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                yield pending.pop(f), f.result()
    for f in list(pending):
        yield pending.pop(f), f.result()


def _group(store: Store, found: list[Found], order: list[str]) -> list[Problem]:
    """One Problem per run of consecutive blocks with the same kind and array."""
    rank = {name: i for i, name in enumerate(order)}
    found = sorted(found, key=lambda f: (_KIND_ORDER[f[0]], rank.get(f[1], len(rank)), f[1], f[2]))
    problems = []
    # within one (kind, array), consecutive blocks share block - position in the sorted list
    for _, run in itertools.groupby(
        enumerate(found), key=lambda i_f: (*i_f[1][:2], i_f[1][2] - i_f[0])
    ):
        (_, (kind, array, first, detail)), *more = run
        last = more[-1][1][2] if more else first
        rows = (store.block_range(first).start, store.block_range(last).stop)
        problems.append(Problem(kind, array, rows, (first, last + 1), detail))
    return problems


def _repair(store: Store, report: VerifyReport) -> None:
    """Mark the blocks of the damaged ranges not done (and the store not sealed)."""
    bad = sorted({b for p in report.problems if p.kind in DAMAGE for b in range(*p.blocks)})
    if not bad:
        return
    done = store._node("progress/done")
    with writable(store.location, f"mark {len(bad)} damaged row blocks not done"):
        for b in bad:
            done[b] = 0  # a whole chunk: written without reading the damaged one
        if store.status == "complete":
            store.update_attrs(status="incomplete")
    report.reset_blocks = bad
