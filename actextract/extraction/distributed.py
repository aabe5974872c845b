"""Distributed: one run in several processes under ``torchrun``.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address) in every process.
Each rank becomes the shard RANK/WORLD_SIZE of the run (:class:`actextract.extraction.work.Shard`),
on the GPU LOCAL_RANK when the run is on CUDA, else on the CPU. Rank 0 alone creates (or checks, on
``--resume``) the store while the others wait in a collective of a gloo process group, which
also carries rank 0's error to them, so every rank stops with the same message; at the end
rank 0 gathers the ranks' summaries and seals the store. Blocks are the unit of exclusion
(each has exactly one writer), so no file lock is needed. The ranks may be on several hosts
sharing a file system or an object store: a rank of another host than rank 0's may see the new
store only a while after rank 0 made it (:func:`open_shared`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from actextract.errors import OptionError, RankError, StoreError, option
from actextract.store import Store, open_store
from actextract.store.location import Location

__all__ = ["Group", "from_env", "open_shared"]

T = TypeVar("T")

# Ranks finish their shards at different times; the last collective waits for the slowest.
WAIT = datetime.timedelta(days=7)
# How long a rank looks for the store rank 0 made: beyond an NFS client's longest attribute
# cache (acdirmax, 60 s by default), during which it may still answer "no such file"
SEEN = 120.0


@dataclass
class Group:
    """This process's place in a torchrun job, with the process group it joined."""

    rank: int
    world: int
    local_rank: int
    owned: bool = True  # this module created the process group (and destroys it at the end)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def device(self, spec: str | torch.device) -> str | torch.device:
        """The rank's device: ``auto``/``cuda`` → ``cuda:LOCAL_RANK`` when CUDA is used."""
        if str(spec) in ("auto", "cuda") and torch.cuda.is_available():
            if self.local_rank >= torch.cuda.device_count():
                raise OptionError(
                    f"torchrun: LOCAL_RANK {self.local_rank} but this machine has "
                    f"{torch.cuda.device_count()} CUDA device(s); lower --nproc_per_node."
                )
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return spec

    def lead(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 while the others wait; an error on rank 0 is raised on every
        rank (as itself on rank 0, as a RankError elsewhere). Returns fn's result on rank 0."""
        result, error = None, None
        if self.leader:
            try:
                result = fn()
            except BaseException as e:
                error = e
        message = [f"{type(error).__name__}: {error}" if error is not None else None]
        with _collective("while rank 0 prepared the store"):
            dist.broadcast_object_list(message, src=0)
        if error is not None:
            raise error
        if message[0] is not None:
            raise RankError(f"rank 0 could not prepare the store: {message[0]}")
        return result

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` on rank 0 (None elsewhere); waits for the slowest rank."""
        out: list[Any] | None = [None] * self.world if self.leader else None
        with _collective("before the end of the run"):
            dist.gather_object(value, out, dst=0)
        return out

    def close(self) -> None:
        """Leave the process group, unless the caller's program made it (its own DDP job)."""
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def _collective(when: str) -> Iterator[None]:
    """A collective that fails because another rank is gone (killed, out of memory, its host
    down: gloo's "Connection closed by peer") becomes a RankError that says what to do."""
    try:
        yield
    except RuntimeError as e:  # torch's DistError and gloo's errors are RuntimeErrors
        raise RankError(
            f"another rank of this torchrun job stopped {when} (killed, out of memory, or its "
            f"host went away; see its output): {e}. The row blocks recorded done so far are "
            "kept: run the same command with --resume to finish the store."
        ) from e


def from_env() -> Group | None:
    """The torchrun group this process belongs to (joined now), or None outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    try:
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise OptionError(
            f"WORLD_SIZE={world} is set but RANK is missing or not a number; launch with "
            f"torchrun, or unset WORLD_SIZE (use {option('shard')} INDEX/COUNT for separate "
            "processes)."
        ) from None
    owned = not dist.is_initialized()
    if owned:
        # gloo: the collectives carry small Python objects between host processes, whatever
        # the device the forward runs on
        dist.init_process_group("gloo", timeout=WAIT)
    return Group(rank, world, local_rank, owned)


def open_shared(location: Location, *, wait: float = SEEN) -> Store:
    """The store rank 0 has just created or checked, opened for writing on another rank. On a
    file system shared by several hosts (NFS) this rank's client may have cached the absence
    of ``--out`` (every rank looked for it before rank 0 made it) and go on answering "no such
    file" for up to its attribute cache time: until ``wait`` seconds have passed, look again,
    reading the folder of the store first (which makes the client revalidate it)."""
    deadline = time.monotonic() + wait
    while not location.is_store() and time.monotonic() < deadline:
        if location.local is not None:
            with contextlib.suppress(OSError):
                os.listdir(location.local.parent)
        time.sleep(0.5)
    if not location.is_store():
        raise StoreError(
            f"rank 0 created '{location}', and this rank, on {socket.gethostname()}, does not "
            f"see it after {wait:.0f} s: under torchrun on several hosts --out must be on a "
            "file system every host mounts at the same path (NFS, Lustre, GPFS, ...) or an "
            "object store URL (s3://...), not a disk of one host."
        )
    return open_store(location, mode="r+")  # type: ignore[return-value]
