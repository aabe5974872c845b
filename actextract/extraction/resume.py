"""Resume: which store a run writes — a new one, an interrupted one to finish, or one shared
with other shards — and the check that an existing store was made by the same run.

A store is the same run when everything that decides its bytes matches (:func:`identity`):
model, checkpoint, dataset, sample count, preprocessing, layers, shapes, layouts, reductions,
dtype, precision, codec and chunking. ``--resume`` finishes a store of the same run (and creates it
when it is not there yet); ``--shard`` processes join the store the first of them created.
Anything else refuses an existing store, unless ``--overwrite``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from actextract.errors import StoreError
from actextract.store import Store, integrity, lock
from actextract.store.build import build_store, store_attrs
from actextract.store.layout import ArraySpec, StoreOptions, token_chunk
from actextract.store.location import Location, writable
from actextract.store.opening import check_identity, open_for_writing, open_store

__all__ = ["NewStore", "identity", "open_run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewStore:
    """The store this run would create: its layout and provenance."""

    n: int
    arrays: list[ArraySpec]
    options: StoreOptions
    chunk_rows: int
    provenance: dict[str, Any]
    chunk_rows_given: bool = False  # False: a resumed run adopts the store's chunk rows

    def __post_init__(self) -> None:
        for spec in self.arrays:  # a --chunk-tokens that fits no block: refused before writing
            if spec.rows == "token":
                token_chunk(spec, self.options, self.chunk_rows)

    def attrs(self) -> dict[str, Any]:
        return store_attrs(self.n, self.arrays, self.options, self.chunk_rows, self.provenance)


def identity(attrs: dict[str, Any]) -> dict[str, Any]:
    """What must match for two runs to write the same store, named as the user knows it."""
    model, dataset = attrs.get("model") or {}, attrs.get("dataset") or {}
    layers = attrs.get("layers") or []
    out = {
        "model": model.get("spec"),
        "checkpoint (sha256)": model.get("weights_sha256"),
        "weights (sha256 of the state)": model.get("state_sha256"),
        "dataset": dataset.get("spec"),
        "dataset size": dataset.get("n"),
        "samples (--limit)": attrs.get("n_samples"),
        "preprocessing": dataset.get("transform"),
        "layers": [spec["name"] for spec in layers],
        "reductions": {spec["name"]: spec.get("reduce", "none") for spec in layers},
        "layouts (--layout)": {spec["name"]: spec.get("layout") for spec in layers},
        "dtype": attrs.get("dtype"),
        "precision": attrs.get("precision"),
        "codec": attrs.get("codec"),
        "chunk rows": attrs.get("chunk_rows"),
        "statistics (--stats)": {
            layer: {k: a.get(k) for k in ("kinds", "bins", "range")}
            for layer, a in (attrs.get("stats") or {}).items()
        },
        # last: a shape differs when an input or a setting above does, which names the cause
        "layer shapes": {spec["name"]: spec["shape"] for spec in layers},
    }
    return json.loads(json.dumps(out))  # tuples → lists, as zarr.json gives them back


def check_same_run(stored: dict[str, Any], new: NewStore, location: Location) -> None:
    """Raise when the store at ``location`` (its attributes ``stored``) is another run's."""

    def skip(field: str, was: Any) -> bool:
        if field == "chunk rows" and not new.chunk_rows_given:
            return True  # a resumed run adopts the store's chunk rows
        # a store from before layouts: its shapes and reductions still decide
        return field == "layouts (--layout)" and not any(was.values())

    check_identity(
        location,
        identity(new.attrs()),
        identity(stored),
        whose="this run's",
        fix="Resume with the store's settings, or write a new store (another --out, or "
        "--overwrite).",
        skip=skip,
    )


def open_run(
    location: Location,
    new: NewStore,
    *,
    resume: bool,
    overwrite: bool,
    join: bool = False,
    blocks: Collection[int] | None = None,
    shard: tuple[int, int] | None = None,
) -> Store:
    """The store this process writes. ``resume``: finish the store at ``location`` if there
    is one (after checking it is this run's, and removing the ``*.partial`` files of writes a
    killed process left), else create it. ``join`` (``--shard``): the same, but other shards
    may be writing, so only leftovers of this shard's ``blocks`` are removed. Otherwise the
    store is created, refusing an existing one unless ``overwrite``. First the store is locked
    for this process (:mod:`actextract.store.lock`; shared with the other shards of the run for
    ``join``, ``shard`` being this one): a live writer is never disturbed, its ``*.partial``
    files included."""
    doing = "extract --resume" if resume else "extract"
    if join and shard:
        doing = f"extract --shard {shard[0]}/{shard[1]}"
    held = lock.acquire(location, doing, shard=shard if join else None)
    try:
        with writable(location, "remove what a killed creation left"):
            if location.clean_creations(exclusive=not join):
                log.info("removed the leftovers of an interrupted creation of %s", location)
        return _open_run(location, new, resume, overwrite, join, blocks)
    except BaseException:
        held.release()
        raise


def _open_run(
    location: Location,
    new: NewStore,
    resume: bool,
    overwrite: bool,
    join: bool,
    blocks: Collection[int] | None,
) -> Store:
    def reopen(location: Location) -> Store:
        return _reopen(location, new, blocks if join else None)

    build = build_store(new.n, new.arrays, new.options, new.chunk_rows, new.provenance)
    store = open_for_writing(
        location, build, reopen if resume or join else None, overwrite=overwrite
    )
    return store  # type: ignore[return-value]


def _reopen(location: Location, new: NewStore, blocks: Collection[int] | None) -> Store:
    store = open_store(location, mode="r+")
    if not isinstance(store, Store):
        raise StoreError(
            f"'{location}' has an epoch axis (a Recorder's store); extract cannot resume "
            "it. Choose another --out, or --overwrite to replace it."
        )
    if not store.has_records():
        raise StoreError(
            f"'{location}' was written by an older actextract (store format "
            f"{store.attrs.get('format_version')}), which keeps no per-block records; it cannot "
            "be resumed. Write it again with --overwrite."
        )
    check_same_run(store.attrs, new, location)
    damage = integrity.check(store)
    if damage:
        raise integrity.damage_error(
            store,
            damage,
            "A resume only writes the blocks not recorded done, so it would seal "
            "the store with these rows missing.",
        )
    with writable(location, "clean up after the interrupted run"):
        removed = location.clean_partials(blocks)
    if removed:
        log.info("removed %d unfinished chunk write(s) (*.partial) of %s", removed, location)
    return store
