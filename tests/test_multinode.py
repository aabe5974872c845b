"""Several hosts: two torchrun launchers as two "nodes" (on loopback) write one store, as one
process does. Each launcher is its own ``torchrun --nnodes 2 --node-rank K``, joined by a c10d
rendezvous on 127.0.0.1, as on two machines of a cluster (a Slurm job's two ``srun`` tasks)."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
from _runner import ARGS, ENV, same_store

import actextract
from actextract.check.verification import verify
from actextract.extraction import distributed
from actextract.store import Store
from actextract.store.location import Location

LIMIT = 300  # seconds: a hang fails the test instead of blocking CI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(rank: int, port: int, rdzv_id: str, out, nproc: int) -> list[str]:
    """One node's launcher: the command each host of a job runs (docs/long-runs.md)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        f"--node-rank={rank}",
        f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        f"--rdzv-id={rdzv_id}",
        "--local-addr=127.0.0.1",  # the address the other node reaches this one at
        "--max-restarts=0",
        "-m",
        "actextract",
        *ARGS,
        "--out",
        str(out),
    ]


def _two_nodes(out, nproc: int) -> list[tuple[int | None, str]]:
    """Both launchers started at once; their exit codes and output, both killed at LIMIT (exit
    code None). Their output goes to files, so that neither blocks on a full pipe."""
    port, rdzv_id = _free_port(), f"actextract-{uuid.uuid4().hex[:8]}"
    logs = [out.parent / f"node-{rank}.log" for rank in (0, 1)]
    nodes = []
    for rank, log in enumerate(logs):
        with log.open("w") as f:
            command = _node(rank, port, rdzv_id, out, nproc)
            # a session of its own: a hung launcher is killed with its workers
            nodes.append(
                subprocess.Popen(
                    command, env=ENV, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
    deadline = time.monotonic() + LIMIT
    for node in nodes:
        try:
            node.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            break
    for node in nodes:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()
            node.returncode = None  # a hang, not an exit
    return [(node.returncode, log.read_text()) for node, log in zip(nodes, logs, strict=True)]


@pytest.mark.slow
def test_two_torchrun_nodes_write_one_store_like_one_process(tmp_path, reference):
    """Two ranks a node: node 1's ranks are 2 and 3 with LOCAL_RANK 0 and 1 (a shard taken
    from LOCAL_RANK, or a node's ranks numbered as if alone, would leave blocks unwritten)."""
    nproc = 2
    out = tmp_path / "run.zarr"
    results = _two_nodes(out, nproc)
    report = "\n".join(
        f"node {r} ({f'exit {code}' if code is not None else f'hung: killed after {LIMIT} s'})"
        f":\n{text[-4000:]}"
        for r, (code, text) in enumerate(results)
    )
    assert all(code == 0 for code, _ in results), report
    store = actextract.open_store(out)
    assert store.complete and verify(store).ok, report
    summary = store.attrs["summary"]
    assert summary["processes"] == 2 * nproc and summary["images"] == 640, summary
    same_store(store, reference)  # every row array, the labels, the ids and the statistics


# -- shared file systems -----------------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_file_system_without_locks_runs_unlocked_with_a_warning(
    tmp_path, monkeypatch, caplog, code
):
    """Lustre mounted without ``-o flock`` (ENOSYS), NFS without its lock service (ENOLCK), a
    FUSE file system (EOPNOTSUPP): the run goes on without the writer lock, as on an object
    store, instead of failing with the OSError."""
    real = fcntl.flock

    def flock(fd, operation):
        if operation & fcntl.LOCK_UN:
            return real(fd, operation)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", flock)
    out = tmp_path / "run.zarr"
    with caplog.at_level(logging.WARNING, logger="actextract"):
        store = actextract.extract(
            "digits-cnn", "synthetic:64:1:28:28", layers="fc1", out=out, progress=False
        )
    assert store.complete
    assert "does not support file locks" in caplog.text and os.strerror(code) in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.zarr"]  # no lock file left


def test_a_rank_waits_until_the_store_rank_0_made_is_visible_on_its_host(tmp_path, monkeypatch):
    """An NFS client that cached the absence of --out (each rank looked for it before rank 0
    created it) answers "no such file" for up to its attribute cache time: a rank of another
    host looks again, reading the store's folder to refresh the client's view, instead of
    failing the whole job."""
    out = tmp_path / "run.zarr"
    actextract.extract("digits-cnn", "synthetic:64:1:28:28", layers="fc1", out=out, progress=False)
    seen, listed = iter([False, False, True]), []
    monkeypatch.setattr(Location, "is_store", lambda self: next(seen, True))
    monkeypatch.setattr(os, "listdir", lambda path: listed.append(path) or [])
    monkeypatch.setattr(time, "sleep", lambda s: None)
    store = distributed.open_shared(Location.parse(out))
    assert isinstance(store, Store) and store.complete
    assert listed == [out.parent, out.parent]


def test_a_rank_of_another_host_that_never_sees_the_store_says_where_it_must_be(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(time, "sleep", lambda s: None)
    """--out on a disk of rank 0's host (/tmp, a node's scratch): the other hosts' ranks stop
    with an error that says where the store must be."""
    with pytest.raises(actextract.StoreError, match="file system every host mounts"):
        distributed.open_shared(Location.parse(tmp_path / "none.zarr"), wait=0.01)
