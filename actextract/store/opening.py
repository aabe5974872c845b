"""Opening: the one way a store is opened for reading, and the one way it is created or
reopened for writing, with the check that an existing store is the writer's own passed in.

:func:`open_for_writing` serves ``extract`` (a new store, ``--resume``, ``--shard``:
:func:`actextract.extraction.resume.open_run`), the Recorder (a new recording or one to
continue: :func:`actextract.record.recorder.open_recording`) and :func:`create_store`. What
differs between them is what they lay out (``build``) and what makes an existing store theirs
(``reopen``, which raises :func:`check_identity`'s error when it is another run's).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import zarr

from actextract.errors import OutputExistsError, StoreError
from actextract.store.base import StoreReader
from actextract.store.build import build_store
from actextract.store.epochs import AXIS, EpochStore
from actextract.store.layout import FORMAT_VERSION, ArraySpec, StoreOptions
from actextract.store.location import Location, writable
from actextract.store.run import Store

__all__ = [
    "as_store",
    "check_identity",
    "check_output",
    "create_store",
    "open_for_writing",
    "open_store",
]

S = TypeVar("S", bound=StoreReader)


def open_store(
    path: str | Path | Location,
    *,
    mode: str = "r",
    storage_options: Mapping[str, Any] | str | None = None,
) -> Store | EpochStore:
    """Open a store written by actextract (a path or URL): a run's :class:`Store`, or an
    :class:`EpochStore` for a Recorder's. ``mode='r'`` reads; ``'r+'`` lets a run write.
    ``storage_options``: the fsspec options of a URL (endpoint, credentials; JSON or a dict)."""
    location = Location.parse(path, storage_options)
    if not location.is_store():
        raise StoreError(
            f"'{location}' is not a Zarr store (no zarr.json); give the --out of an actextract run."
        )
    try:
        # never through consolidated metadata: a copy, which a writer may have made stale
        zstore = location.zarr_store(read_only=mode == "r")
        group = zarr.open_group(zstore, mode=mode, use_consolidated=False)
    except Exception as e:
        raise StoreError(
            f"'{location}' cannot be opened as a Zarr v3 group ({type(e).__name__}: {e}). If "
            "actextract wrote it, its root zarr.json (the record of the run) is damaged: restore "
            "that file from a copy, or extract again into a new store."
        ) from None
    version = group.attrs.get("format_version")
    if version is None or "layers" not in group.attrs:
        raise StoreError(
            f"'{location}' is a Zarr group but not an actextract store (no "
            "format_version/layers attributes)."
        )
    if int(version) > FORMAT_VERSION:  # type: ignore[arg-type]
        raise StoreError(
            f"'{location}' has store format {version}; this actextract reads up to "
            f"{FORMAT_VERSION}. Upgrade actextract."
        )
    if group.attrs.get("axis") == AXIS:
        return EpochStore(location, group)
    return Store(location, group)


def check_output(path: str | Path | Location, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``, and never one that is not a Zarr store
    (or an empty folder): ``--out ~`` must not delete a home directory. Touches nothing."""
    location = Location.parse(path)
    if not location.exists():
        return
    if not overwrite:
        raise OutputExistsError(
            f"output '{location}' already exists; pass --resume to finish it, --overwrite to "
            "replace it, or choose another --out."
        )
    if not (location.is_store() or location.is_empty_dir()):
        raise OutputExistsError(
            f"output '{location}' exists and is not a Zarr store; --overwrite "
            "only replaces stores. Remove it yourself or choose another --out."
        )


def check_identity(
    location: Location,
    ours: Mapping[str, Any],
    theirs: Mapping[str, Any],
    *,
    whose: str,
    fix: str,
    skip: Callable[[str, Any], bool] = lambda field, value: False,
) -> None:
    """Raise a StoreError naming the first field (in ``theirs``' order) on which an existing
    store (``theirs``) and the writer (``ours``, called ``whose``) differ, and ``fix``; both
    are identities, {field named as the user knows it: value}. ``skip(field, theirs[field])``
    leaves a field out."""
    for field, was in theirs.items():
        if not skip(field, was) and ours[field] != was:
            raise StoreError(
                f"'{location}' was made by another run: its {field} is {was!r}, {whose} is "
                f"{ours[field]!r}. {fix}"
            )


def open_for_writing(
    location: Location,
    build: Callable[[Any], None],
    reopen: Callable[[Location], S] | None,
    *,
    overwrite: bool,
    reused: str = "resumed",
) -> S | Store | EpochStore:
    """The store a writer writes at ``location``.

    With ``reopen`` (``--resume``, ``--shard``, a Recorder continuing), an existing store is
    ``reopen(location)``: it checks the store is the writer's and gets it ready; a creation
    that loses the race to another process reopens the winner's store. Without, an existing
    store is refused unless ``overwrite``, then replaced (never a folder that is not a store).
    A new store is laid out by ``build`` (what :meth:`Location.create` runs in a hidden folder
    before it appears under its name). ``reused``: how the refusal of a non-store says what
    could not be done to it."""
    if reopen is not None and location.is_store():
        return reopen(location)
    if reopen is not None:
        if location.exists() and not location.is_empty_dir():
            if location.local is None and location.await_store():  # another shard created it
                return reopen(location)
            raise OutputExistsError(
                f"output '{location}' exists and is not a Zarr store; it cannot be {reused}. "
                "Remove it yourself or choose another --out."
            )
    else:
        check_output(location, overwrite)
        if location.exists():
            with writable(location, "remove the old store (--overwrite)"):
                location.remove()
    if location.create(build):
        return open_store(location, mode="r+")
    if reopen is not None:  # another process created it first
        return reopen(location)
    raise OutputExistsError(f"output '{location}' was created by another process meanwhile.")


def create_store(
    path: str | Path | Location,
    *,
    n: int,
    arrays: Sequence[ArraySpec],
    options: StoreOptions,
    chunk_rows: int,
    attrs: Mapping[str, Any],
    overwrite: bool = False,
) -> Store:
    """Create an empty store for ``n`` samples; ``status`` is 'incomplete' until sealed."""
    location = Location.parse(path)
    if n <= 0:
        raise StoreError(f"cannot create '{location}' for {n} samples: the dataset is empty.")
    build = build_store(n, arrays, options, chunk_rows, attrs)
    return open_for_writing(location, build, None, overwrite=overwrite)  # type: ignore[return-value]


def as_store(
    store: StoreReader | str | Path | Location,
    storage_options: Mapping[str, Any] | str | None = None,
) -> StoreReader:
    """An open store as it is, or one opened from its path or URL (mode 'r') with these
    storage options: what every reader takes."""
    if isinstance(store, StoreReader):
        return store
    return open_store(store, storage_options=storage_options)
