"""Location: where a store lives — a local folder, a ``file://`` URL, or an fsspec URL zarr opens.

Local stores (paths and ``file://`` URLs) use zarr's ``LocalStore``, which writes every chunk to
a ``*.partial`` file and renames it into place, so a killed writer never leaves a half-written
chunk under a real name; a new local store is built in a hidden sibling folder and renamed into
place once its metadata is complete, so ``--out`` is either absent or a whole empty store, and
of several ``--shard`` processes started together exactly one creates it. Other URLs
(``s3://``, ``gs://``, ``memory://``, ...) use zarr's ``FsspecStore``, opened with the
location's storage options (:mod:`actextract.store.remote`): their writes are as atomic as the
file system makes them (an object is whole or absent), and their store is created in place.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from actextract.errors import OptionError, StoreError
from actextract.store.remote import (
    check_options,
    probe,
    probe_options,
    remote_error_message,
    worded,
)

__all__ = ["Location", "check_out", "writable"]

ROOT = "zarr.json"  # the root group's metadata: a store is there once it is
# how long a process that finds a remote store half created waits for its creator to finish
CREATION_WAIT = 60.0
# a remote store that answered is not probed again for this long (Location.check_reachable)
REACHED_FOR = 30.0
_REACHED: dict[tuple[str, str], float] = {}  # (URL, options JSON): when it last answered


@dataclass(frozen=True)
class Location:
    """A store's address: ``local`` is its folder for local stores, None for remote ones;
    ``options``: the fsspec storage options a remote one is opened with (local stores need
    none and ignore them)."""

    url: str
    local: Path | None
    options: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(
        cls, out: str | Path | Location, storage_options: Mapping[str, Any] | str | None = None
    ) -> Location:
        """``out`` as a Location; ``storage_options`` (a mapping or its JSON) replace those
        of a Location given."""
        options = check_options(storage_options)
        if isinstance(out, Location):
            return out if options is None else replace(out, options=options)
        if not isinstance(out, (str, Path)):
            raise StoreError(
                f"a store is named by a path or URL (or is an open Store), not a "
                f"{type(out).__name__} ({out!r})."
            )
        if isinstance(out, Path):
            return cls(str(out), out, options)
        parsed = urlparse(out)
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise StoreError(
                    f"'{out}' names the host '{parsed.netloc}'; a file:// URL must be local "
                    "(file:///absolute/path)."
                )
            return cls(out, Path(unquote(parsed.path)), options)
        if "://" in out:
            return cls(out, None, options)
        return cls(out, Path(out), options)

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        return self.local.name if self.local else self.url.rstrip("/").rsplit("/", 1)[-1]

    def zarr_store(self, *, read_only: bool = False) -> zarr.abc.store.Store:
        if self.local is not None:
            return zarr.storage.LocalStore(self.local, read_only=read_only)
        try:
            return zarr.storage.FsspecStore.from_url(
                self.url, storage_options=dict(self.options or {}), read_only=read_only
            )
        except (ImportError, ValueError) as e:
            raise StoreError(
                f"'{self.url}' cannot be opened as a zarr store ({e}); install the fsspec "
                "package of its scheme (pip install 'actextract[s3]' for s3://, gcsfs, ...) or "
                "give a local path."
            ) from None
        except TypeError as e:  # an option the scheme's file system does not take
            raise OptionError(
                f"--storage-options {dict(self.options or {})}: '{self.url}' cannot be opened "
                f"with them ({e}); give only the options of its file system (s3fs: key, "
                "secret, endpoint_url, anon, client_kwargs, ...)."
            ) from None

    def check_reachable(self) -> None:
        """A remote store's bucket exists and answers these credentials (one request, not
        asked again of a URL and options that answered within REACHED_FOR seconds: opening
        a store asks several questions); raises the StoreError that says which of them fails
        and the fix."""
        if self.local is None:
            key = (self.url, json.dumps(dict(self.options or {}), sort_keys=True, default=str))
            if time.monotonic() - _REACHED.get(key, -REACHED_FOR) < REACHED_FOR:
                return
            asking = replace(self, options=probe_options(self.url, self.options))
            probe(asking.zarr_store(read_only=True), self.url, self.options)
            _REACHED[key] = time.monotonic()

    # -- what is there -------------------------------------------------------------------------
    def exists(self) -> bool:
        """Anything at all is there (a file, a folder, keys under the URL)."""
        if self.local is not None:
            return self.local.exists()
        self.check_reachable()
        with worded(self.url, self.options):  # the probe asked for the bucket, not its objects
            return bool(sync(_first_key(self.zarr_store(read_only=True))))

    def is_store(self) -> bool:
        """A Zarr group (or array) is there: its ``zarr.json`` exists."""
        if self.local is not None:
            return (self.local / "zarr.json").is_file()
        self.check_reachable()
        store = self.zarr_store(read_only=True)
        # not from a listing s3fs cached (exists() lists the URL): another process may have
        # written the root since, and a cached listing without it would say so for ever
        store.fs.invalidate_cache(store.path)
        with worded(self.url, self.options):
            return bool(sync(store.exists("zarr.json")))

    def is_empty_dir(self) -> bool:
        return self.local is not None and self.local.is_dir() and not any(self.local.iterdir())

    def disk_bytes(self, prefix: str = "") -> int:
        """Bytes stored under ``prefix`` ('' for the whole store)."""
        if self.local is not None:
            root = self.local / prefix
            return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        return int(sync(self.zarr_store(read_only=True).getsize_prefix(prefix)))

    # -- changing it ---------------------------------------------------------------------------
    def remove(self) -> None:
        if self.local is not None:
            if self.local.is_dir():
                shutil.rmtree(self.local)
            elif self.local.exists():
                self.local.unlink()
            return
        sync(self.zarr_store().delete_dir(""))

    def clean_partials(self, blocks: Collection[int] | None = None) -> int:
        """Remove the ``*.partial`` files of chunk writes a killed process left behind (local
        stores); returns how many. ``blocks``: only those of these row blocks (other
        processes may be writing the others); None: all, while no other process writes."""
        if self.local is None:
            return 0
        wanted = None if blocks is None else set(blocks)
        stale = [
            p
            for p in self.local.rglob("*.partial")
            if p.is_file()
            and (wanted is None or _block_of_partial(p.relative_to(self.local)) in wanted)
        ]
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)

    @property
    def _creating(self) -> str:
        """The name prefix of the hidden folders a new local store is built in."""
        return f".{self.name}.creating-"

    def clean_creations(self, *, exclusive: bool) -> int:
        """Remove the hidden folders of creations a killed process left beside a local store
        (``.run.zarr.creating-<host>-<pid>-<hex>``); returns how many. ``exclusive``: the
        caller holds the store's writer lock alone, so no creation can be running; else only
        those of processes of this host that are gone."""
        if self.local is None:
            return 0
        removed = 0
        for path in self.local.parent.glob(f"{self._creating}*"):
            host, _, rest = (
                path.name.removeprefix(self._creating).rpartition("-")[0].rpartition("-")
            )
            pid = int(rest) if rest.isdigit() else None
            gone = host == socket.gethostname() and pid is not None and not _alive(pid)
            if path.is_dir() and (exclusive or gone):
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed

    def create(self, build: Callable[[zarr.abc.store.Store], None]) -> bool:
        """Create the store with ``build(zarr_store)``. Local stores are built in a hidden
        sibling folder and renamed into place, so nobody ever sees half of one; returns False
        when another process created the store first (it is then left as it is)."""
        if self.local is None:
            staged = zarr.storage.MemoryStore()
            build(staged)
            return sync(self._put_staged(staged))
        parent = self.local.parent
        with writable(self, "create the store"):
            parent.mkdir(parents=True, exist_ok=True)
            tmp = (
                parent
                / f"{self._creating}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            )
            try:
                try:
                    build(zarr.storage.LocalStore(tmp))
                except BaseException:
                    # a failed write cancels nothing: zarr's other writes of the same call
                    # still run, and would recreate files in ``tmp`` after it is removed
                    sync(_settle())
                    raise
                try:
                    if self.is_empty_dir():
                        self.local.rmdir()
                    os.rename(tmp, self.local)
                except OSError as e:
                    if e.errno in (errno.EEXIST, errno.ENOTEMPTY) or self.is_store():
                        return False
                    raise
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return True

    async def _put_staged(self, staged: zarr.storage.MemoryStore) -> bool:
        """An object store has no rename: the store is built in memory (``staged``), its
        objects are put in place, and its root ``zarr.json`` (what makes it a store, holding
        the run's record) last, unless another process's root appeared meanwhile: False, and
        that one is the store. So a reader, or another ``--shard`` process, never opens half
        a store."""
        target, prototype = self.zarr_store(), default_buffer_prototype()
        keys = [key async for key in staged.list() if key != ROOT]
        for key in keys:
            await target.set(key, await staged.get(key, prototype))
        if await target.exists(ROOT):
            return False
        await target.set(ROOT, await staged.get(ROOT, prototype))
        return True

    def await_store(self, timeout: float = CREATION_WAIT) -> bool:
        """Wait (up to ``timeout`` seconds) for a remote store that another process is
        creating (objects there, the root not yet) to have its root; whether it did."""
        deadline = time.monotonic() + timeout
        while True:
            if self.is_store():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _block_of_partial(relative: Path) -> int | None:
    """The row block of a ``*.partial`` chunk file: its first chunk coordinate, the block, as
    chunks are one block tall (``acts/x/c/<block>/0/0.<hex>.partial``); None for metadata."""
    dirs = relative.parts[:-1]
    if "c" not in dirs:
        return None
    i = len(dirs) - 1 - dirs[::-1].index("c")
    first = relative.parts[i + 1].split(".")[0]
    return int(first) if first.isdigit() else None


async def _settle(timeout: float = 60) -> None:
    """Wait for the tasks still running on zarr's event loop (this coroutine runs there)."""
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)


async def _first_key(store: zarr.abc.store.Store) -> str | None:
    async for key in store.list():
        return key
    return None


@contextmanager
def writable(location: Location | str, doing: str) -> Iterator[None]:
    """An OSError that means "cannot write here" becomes a StoreError naming the store, the
    cause and the fix (read-only, permissions, disk full; for a remote store also a refused
    key, a missing bucket, an endpoint that does not answer); other errors pass unchanged."""
    location = Location.parse(location)
    try:
        yield
    except Exception as e:
        if location.local is not None and isinstance(e, OSError):
            message = storage_error_message(e, location, doing)
        elif location.local is None:
            bucket = urlparse(location.url).netloc or None
            message = remote_error_message(
                e, location.url, location.options, bucket=bucket, doing=doing
            )
        else:
            message = None
        if message is None:
            raise
        raise StoreError(message) from e


NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
FULL = (errno.ENOSPC, errno.EDQUOT)


def storage_error_message(exc: OSError, location: Location | str, doing: str) -> str | None:
    """The user-facing message for an OSError while writing ``location``, or None when the
    error is not about the storage being unwritable or full."""
    if exc.errno in NOT_WRITABLE:
        return (
            f"cannot {doing} at '{location}': {exc.strerror or exc} "
            f"({exc.filename or 'the output'}). The output is read-only or not yours; give "
            "--out a folder you can write to."
        )
    if exc.errno in FULL:
        return (
            f"cannot {doing} at '{location}': the disk is full ({exc.strerror or exc}). "
            "Nothing unfinished is recorded as done: free some space (or move the store) and "
            "run the same command with --resume to finish it."
        )
    return None


def check_out(out: str | Path | Location) -> None:
    """``--out`` can hold a store: not empty, and its local path not below a file, nor below
    a folder that cannot be written to where the store is still to be created. Touches
    nothing; run before the model and data are loaded."""
    if isinstance(out, str) and not out.strip():
        raise OptionError("--out is empty; give a path for the store, e.g. --out run.zarr.")
    location = Location.parse(out)
    if location.local is None:
        return
    path = location.local
    missing = path
    parent = path.parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        missing, parent = parent, parent.parent
    if parent.exists() and not parent.is_dir():
        raise OptionError(
            f"--out '{out}': '{parent}' is a file, not a folder; choose another --out."
        )
    if path.exists() or path.is_symlink():
        return  # an existing store (or not): check_output and open_run say
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        raise OptionError(
            f"--out '{out}': cannot create '{missing}' in the folder '{parent}', which is not "
            "writable for this user; choose another --out."
        )
