"""Writer lock: a store has one writer at a time, or the ``--shard`` processes of one run.

A local store's lock is an advisory ``flock`` on a hidden file beside it (``.run.zarr.lock``;
beside, not inside, so that it also guards the store's creation and its replacement by
``--overwrite``). A run or a repair takes it exclusively; the shard processes of one run take
it shared (they write disjoint row blocks), each with an exclusive lock of its own shard
(``.run.zarr.shard-1-of-4.lock``), so the same shard started twice is refused too. Under
torchrun rank 0 holds the exclusive lock for every rank. The kernel drops a lock when its
process ends, however it ends: a killed run leaves nothing to clean up, and the lock files
themselves are removed by the last holder that releases them (a killed process leaves its
file, which the next run takes over).

The holder writes who it is (pid, host, start time, what it does) into the file, so that a
refused process names the other. Object stores (``s3://``, ...) have no such lock: there the
user keeps to one writer per store, or the shards of one run (README). Nor has a shared file
system that refuses ``flock`` (Lustre mounted without ``-o flock``, NFS without its lock
service): the run goes on unlocked, with a warning, as on an object store.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from actextract.errors import StoreError
from actextract.store.layout import now
from actextract.store.location import Location, writable

__all__ = ["WriterLock", "acquire", "session"]

log = logging.getLogger(__name__)
# flock's errors where the file system has no locks at all (not: another process holds one)
NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)

# the locks taken during the current :func:`session` (one ``extract`` call), released with it
_SESSION: ContextVar[list[WriterLock] | None] = ContextVar("actextract_locks", default=None)


@dataclass
class WriterLock:
    """The open lock files of one store (closing them releases the locks)."""

    location: Location
    held: list[tuple[int, Path]] = field(default_factory=list)

    def release(self) -> None:
        """Release the locks; a lock file nobody else holds is removed first (while still
        held, so that no process can take it between; see :func:`_take`)."""
        for fd, path in reversed(self.held):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no other holder
                if _same_file(fd, path):
                    path.unlink()
            except OSError:
                pass  # other shards hold it: the last of them removes it
            os.close(fd)
        self.held.clear()

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def session() -> Iterator[None]:
    """Every lock :func:`acquire` takes inside is released at the end (``extract`` runs in
    one, whatever the path out of it: sealed, failed, interrupted)."""
    locks: list[WriterLock] = []
    token = _SESSION.set(locks)
    try:
        yield
    finally:
        _SESSION.reset(token)
        for lock in locks:
            lock.release()


def acquire(location: Location, doing: str, *, shard: tuple[int, int] | None = None) -> WriterLock:
    """Lock ``location`` for writing (``shard``: (index, count) of a ``--shard`` process,
    which shares the store with the other shards of its run); a StoreError names the process
    that holds it. Remote stores get an empty lock. Released with the current :func:`session`,
    or by the caller (``with acquire(...):``)."""
    lock = WriterLock(location)
    if location.local is None:
        return lock
    base = location.local.parent / f".{location.local.name}"
    try:
        with writable(location, "lock the store for writing"):
            location.local.parent.mkdir(parents=True, exist_ok=True)
            path = Path(f"{base}.lock")
            lock.held.append((_take(path, shard is not None, doing, location), path))
            if shard is not None:
                path = Path(f"{base}.shard-{shard[0]}-of-{shard[1]}.lock")
                what = f"shard {shard[0]}/{shard[1]}"
                lock.held.append((_take(path, False, doing, location, what), path))
    except _NoLocks as e:
        lock.release()
        log.warning(
            "cannot lock '%s' for writing: its file system does not support file locks (%s); "
            "going on without the writer lock, as on an object store: keep to one writer per "
            "store, or the --shard processes (or torchrun ranks) of one run.",
            location,
            e.reason,
        )
    except BaseException:
        lock.release()
        raise
    locks = _SESSION.get()
    if locks is not None:
        locks.append(lock)
    return lock


def _take(path: Path, shared: bool, doing: str, location: Location, what: str = "") -> int:
    """Lock ``path``, created if need be. The file locked must still be the one at ``path``
    once locked: a releasing holder may have removed it meanwhile (then it is opened again)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in NO_LOCKS:
                path.unlink(missing_ok=True)  # nobody can hold it
                raise _NoLocks(e.strerror or str(e)) from None
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise StoreError(_refusal(path, location, what)) from None
        if _same_file(fd, path):
            break
        os.close(fd)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": now(), "doing": doing}
    line = (json.dumps(me) + "\n").encode()
    if shared:  # the other shards' lines stay: the last few name the holders
        os.lseek(fd, 0, os.SEEK_END)
    else:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, line)
    return fd


class _NoLocks(Exception):
    """The file system of the lock file refuses ``flock`` itself."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _refusal(path: Path, location: Location, what: str) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        holder = json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        holder = {}
    who = (
        f"process {holder.get('pid')} on {holder.get('host')} ({holder.get('doing')}, since "
        f"{holder.get('since')})"
        if holder
        else "another process"
    )
    subject = f"{what} of '{location}'" if what else f"'{location}'"
    return (
        f"{subject} is being written by {who}. Wait for it to finish or stop it, then run "
        "the same command again (with --resume to finish the store); only the --shard "
        "processes of one run write a store together."
    )
