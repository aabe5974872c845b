"""Clustering: the results of ``actextract cluster`` in a store — their schema, the reader,
and the swap that puts a new result in place (the per-row arrays' writer and the scores
against the labels: :mod:`actextract.clusters.rows`).

The arrays of ``clusters/<layer>/<name>/`` (assignments, distances, coords, centroids,
sizes, nearest, pca/) and its attributes are described in ``docs/store-format.md``
("Clustering results"), the one copy of the schema.

Every array has named dimensions and a crc32c checksum on each chunk, and every chunk is
written (a chunk of fill values too), so a missing chunk is damage, not a silent fill value.

A result is written beside the one it replaces, under a hidden name (``.<name>.new-<hex>``),
and put in place only when complete (:func:`install`), so a kill at any moment leaves the old
result or the new one: local stores rename folders (the old one to ``.<name>.old-<hex>``, the
new one into place, then the old one is deleted); other stores (``s3://``, ``memory://``)
have no rename, and the new result is copied into place, its ``zarr.json`` last, once the old
one is deleted. Between the two steps a name has no result of its own, and the readers take
its complete hidden copy. Hidden names are never listed otherwise; the next ``cluster`` run on
the layer finishes a swap cut short and deletes the rest (:func:`tidy`), except those of a run
still going on this host.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from actextract.clusters.kmeans import Pca
from actextract.errors import OptionError, StoreError, option
from actextract.store import Store, StoreReader, integrity, open_store
from actextract.store.layout import quiet_numcodecs
from actextract.store.opening import as_store

__all__ = [
    "POOLS",
    "ROOT",
    "Clustering",
    "Settings",
    "arrays",
    "clusterings",
    "drop",
    "install",
    "new_name",
    "tidy",
    "writer",
]

POOLS = ("none", "mean", "max")
ROOT = "clusters"
HIDDEN = re.compile(r"^\.(?P<name>.+)\.(?P<kind>new|old)-(?P<token>[0-9a-f]+)$")


@dataclass(frozen=True)
class Settings:
    """What a clustering result depends on; its ``name`` keeps results of other settings
    apart (the defaults of epochs and batch size are left out of the name)."""

    k: int
    pool: str = "none"
    pca: int | None = None
    seed: int = 0
    epochs: int = 10
    batch_size: int = 1024
    n_init: int = 3
    init_size: int | None = None  # the k-means++ sample; None: max(3 × batch, 20 × k) rows
    nearest: int = 8

    @property
    def name(self) -> str:
        parts = [f"k{self.k}", f"pool{self.pool}", f"pca{self.pca or 'off'}", f"seed{self.seed}"]
        defaults = Settings(k=self.k)
        for field in ("epochs", "batch_size", "n_init", "init_size"):
            if getattr(self, field) != getattr(defaults, field):
                parts.append(f"{field.replace('_', '')}{getattr(self, field)}")
        return "-".join(parts)

    def check(self) -> None:
        if self.k < 2:
            raise OptionError(f"{option('k')} {self.k}: k-means needs at least 2 clusters.")
        if self.pool not in POOLS:
            raise OptionError(f"--pool '{self.pool}': give {option('pool')} {'|'.join(POOLS)}.")
        if self.pca is not None and self.pca < 1:
            raise OptionError(f"{option('pca')} {self.pca}: give at least 1 component.")
        for field in ("epochs", "batch_size", "n_init", "nearest"):
            if getattr(self, field) < 1:
                name = field if field == "n_init" else option(field)  # n_init: Python only
                raise OptionError(f"{name} {getattr(self, field)} must be at least 1.")


@dataclass
class Clustering:
    """A clustering result in a store; the arrays are read when asked for."""

    layer: str
    name: str
    attrs: dict[str, Any]
    group: zarr.Group

    @property
    def complete(self) -> bool:
        return self.attrs.get("status") == "complete"

    @property
    def settings(self) -> Settings:
        return Settings(**self.attrs["settings"])

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.attrs.get("metrics") or {})

    def __getitem__(self, name: str) -> np.ndarray:
        """An array of the result: assignments, distances, coords, centroids, sizes, nearest."""
        with quiet_numcodecs():
            return np.asarray(self.group[name][:])

    @property
    def pca(self) -> Pca:
        a = self.attrs["pca"]
        return Pca(
            mean=self["pca/mean"],
            components=self["pca/components"],
            explained_variance=self["pca/explained_variance"],
            total_variance=float(a["total_variance"]),
            n_samples=int(a["n_samples"]),
            method=a.get("method", "covariance"),
            passes=int(a.get("passes", 1)),
            converged=bool(a.get("converged", True)),
        )


def clusterings(
    store: Store | str | Path,
    layer: str | None = None,
    *,
    storage_options: Mapping[str, Any] | str | None = None,
) -> list[Clustering]:
    """The clustering results in ``store`` (open, or its path or URL with
    ``storage_options``; of ``layer``), complete or not, by layer and name."""
    store = as_store(store, storage_options)  # type: ignore[assignment]
    if ROOT not in store.group:
        return []
    out = []
    with _quiet_listing():
        for name, layer_group in sorted(store.group[ROOT].groups()):
            if layer is None or name == layer:
                for result, group in sorted(_results(layer_group).items()):
                    out.append(Clustering(name, result, dict(group.attrs), group))
    return out


def arrays(store: Store) -> list[str]:
    """Every array of every clustering result (not of the leftovers of killed runs), for
    ``verify`` to read whole."""
    out = []
    for c in clusterings(store):
        base = f"{ROOT}/{c.layer}/{c.group.basename}"
        members = c.group.members(max_depth=None)
        out += [f"{base}/{path}" for path, node in members if isinstance(node, zarr.Array)]
    return sorted(out)


def _results(parent: zarr.Group) -> dict[str, zarr.Group]:
    """One layer's results by name: its groups with a plain name, and for a name without one
    (a swap cut short between its two steps) its complete hidden copy."""
    groups = dict(parent.groups())
    found = {name: g for name, g in groups.items() if not name.startswith(".")}
    return found | {name: groups[hidden] for name, hidden in _stand_ins(groups).items()}


def _stand_ins(groups: dict[str, zarr.Group]) -> dict[str, str]:
    """name → the hidden group that stands in for it: the newest complete one, where the name
    has no group of its own."""
    best: dict[str, tuple[tuple[bool, str], str]] = {}
    for hidden, group in groups.items():
        m = HIDDEN.match(hidden)
        if m is None or m["name"] in groups or group.attrs.get("status") != "complete":
            continue
        rank = (m["kind"] == "new", str(group.attrs.get("finished", "")))
        if m["name"] not in best or rank > best[m["name"]][0]:
            best[m["name"]] = (rank, hidden)
    return {name: hidden for name, (_, hidden) in best.items()}


@contextmanager
def _quiet_listing() -> Iterator[None]:
    """zarr warns of a folder (or prefix) without zarr.json: one half deleted or copied."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component")
        yield


# -- writing a result beside the old one, then swapping ----------------------------------------
def new_name(name: str) -> str:
    """The hidden name a new result of ``name`` is written under."""
    return f".{name}.new-{uuid.uuid4().hex[:12]}"


def writer() -> dict[str, Any]:
    """Who writes a result: :func:`tidy` leaves the hidden results of live processes alone."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def install(parent: zarr.Group, hidden: str, name: str) -> zarr.Group:
    """Put the complete result ``hidden`` of the layer group ``parent`` in place of ``name``:
    every state in between has a complete result (see the module's notes)."""
    trash = f".{name}.old-{HIDDEN.match(hidden)['token']}"  # type: ignore[index]
    with _quiet_listing():
        if name in parent:
            _retire(parent, name, trash)
        _move(parent, hidden, name)
        _remove(parent, trash)
        return parent[name]  # type: ignore[return-value]


def tidy(parent: zarr.Group) -> list[str]:
    """Finish the swaps cut short in the layer group ``parent`` and delete the other hidden
    results (killed runs, the old halves of swaps), but not the new ones of a live process on
    this host (it may be writing them). Returns the hidden names deleted."""
    with _quiet_listing():
        groups = dict(parent.groups())
        for name, hidden in _stand_ins(groups).items():
            if not _live(groups[hidden]):
                _move(parent, hidden, name)
                groups.pop(hidden)
        kinds = {n: m["kind"] for n in groups if (m := HIDDEN.match(n))}
        gone = [n for n, kind in kinds.items() if kind == "old" or not _live(groups[n])]
        for hidden in gone:
            _remove(parent, hidden)
    return gone


def _live(group: zarr.Group) -> bool:
    """Written by another process on this host that still runs (POSIX; elsewhere: no)."""
    w = group.attrs.get("writer") or {}
    pid, here = w.get("pid"), os.name == "posix" and w.get("host") == socket.gethostname()
    if not here or not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _folder(parent: zarr.Group) -> Path | None:
    store = parent.store
    if isinstance(store, zarr.storage.LocalStore):
        return Path(store.root) / parent.path
    return None


def _retire(parent: zarr.Group, name: str, trash: str) -> None:
    """The old result out of the way: renamed to ``trash`` (local), or deleted."""
    folder = _folder(parent)
    if folder is None:
        _remove(parent, name)
    else:
        _rename(folder / name, folder / trash)


def _move(parent: zarr.Group, src: str, dst: str) -> None:
    folder = _folder(parent)
    if folder is not None:
        _rename(folder / src, folder / dst)
        return
    store, s, d = parent.store, _key(parent, src), _key(parent, dst)

    async def copy() -> None:
        await store.delete_dir(d)  # what a copy cut short left
        keys = [k async for k in store.list_prefix(f"{s}/")]
        for key in sorted(keys, key=lambda k: k == f"{s}/zarr.json"):  # the group's last
            value = await store.get(key, prototype=default_buffer_prototype())
            if value is not None:
                await store.set(d + key[len(s) :], value)

    sync(copy())
    _remove(parent, src)


def _rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)


def _remove(parent: zarr.Group, name: str) -> None:
    """Delete a result's folder or keys; local: deepest first, each ``zarr.json`` last, so
    every folder left is a group or array while it goes."""
    folder = _folder(parent)
    if folder is None:
        sync(parent.store.delete(f"{_key(parent, name)}/zarr.json"))
        sync(parent.store.delete_dir(_key(parent, name)))
        return
    for root, _, files in os.walk(folder / name, topdown=False):
        for f in sorted(files, key=lambda f: f == "zarr.json"):
            Path(root, f).unlink(missing_ok=True)
        with suppress(FileNotFoundError):
            Path(root).rmdir()


def _key(parent: zarr.Group, name: str) -> str:
    return f"{parent.path}/{name}" if parent.path else name


def drop(store: Store, damaged: list[str]) -> list[str]:
    """Delete the results holding the ``damaged`` arrays (``verify --repair``): a result is
    remade whole by running ``actextract cluster`` again. Returns the results deleted."""
    from actextract.store.location import writable

    results = sorted({"/".join(p.split("/")[:3]) for p in damaged if p.startswith(f"{ROOT}/")})
    with writable(store.location, "delete the damaged clustering results"):
        for path in results:
            del store.group[path]
    return results


def writable_store(store: Store | str | Path, storage_options: Mapping | str | None) -> Store:
    """The complete run's store (open, or its path or URL) reopened to write a result in."""
    location = store.location if isinstance(store, StoreReader) else store
    store = open_store(location, mode="r+", storage_options=storage_options)
    if store.attrs.get("axis") == "epoch":
        raise StoreError(
            f"'{store.location}' is a Recorder's store (an epoch axis); clustering takes the store "
            "of an extract run."
        )
    if not store.complete:
        done = store.done()
        raise StoreError(
            f"'{store.location}' is {store.status} ({int(done.sum())} of {len(done)} row blocks "
            "written); finish it with 'actextract extract ... --resume' before clustering it."
        )
    damage = integrity.check(store)
    if damage:
        raise integrity.damage_error(
            store, damage, "Clustering it would group rows that are not there (they read as NaN)."
        )
    return store
