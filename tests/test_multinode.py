"""Several hosts: two torchrun launchers as two "nodes" (on loopback) write one store, as one
process does. Each launcher is its own ``torchrun --nnodes 2 --node-rank K``, joined by a c10d
rendezvous on 127.0.0.1, as on two machines of a cluster (a Slurm job's two ``srun`` tasks)."""

from __future__ import annotations

import contextlib
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
from pathlib import Path

import pytest
from _runner import ARGS, ENV, HERE, free_port, run, same_store, wait_for_done_blocks

import actextract
from actextract.check.verification import verify
from actextract.extraction import distributed
from actextract.store import Store
from actextract.store.location import Location

LIMIT = 300  # seconds: a hang fails the test instead of blocking CI


def _node(rank: int, port: int, rdzv_id: str, out, nproc: int, script: list[str]) -> list[str]:
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
        *script,
        *ARGS,
        "--out",
        str(out),
    ]


def _start_nodes(out, nproc: int, script: list[str]) -> list[tuple[subprocess.Popen, Path]]:
    """Both launchers, node 1's as soon as node 0's listens, each with its output in a file (so
    that neither blocks on a full pipe)."""
    port, rdzv_id = free_port(), f"actextract-{uuid.uuid4().hex[:8]}"
    nodes = []
    for rank in (0, 1):
        log = out.parent / f"node-{rank}.log"
        with log.open("w") as f:
            command = _node(rank, port, rdzv_id, out, nproc, script)
            node = subprocess.Popen(command, env=ENV, stdout=f, stderr=subprocess.STDOUT)
        nodes.append((node, log))
        if rank == 0:  # node 0 hosts the rendezvous, as the node --rdzv-endpoint names does
            _wait_for_port(port, node)
    return nodes


def _wait_for_port(port: int, node: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and node.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)


def _kill_node(node: subprocess.Popen) -> None:
    """SIGKILL a launcher and its ranks, as if their host died (torchrun starts each rank in a
    session of its own: the launcher's process group alone would leave them running)."""
    pids, todo = [], [node.pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node.wait()


def _finish(nodes: list[tuple[subprocess.Popen, Path]]) -> list[tuple[int | None, str]]:
    """Each node's exit code and output, once both end; None for one killed at LIMIT."""
    deadline = time.monotonic() + LIMIT
    for node, _ in nodes:
        try:
            node.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            break
    for node, _ in nodes:
        if node.poll() is None:
            _kill_node(node)
            node.returncode = None  # a hang, not an exit
    return [(node.returncode, log.read_text()) for node, log in nodes]


def _report(results: list[tuple[int | None, str]]) -> str:
    return "\n".join(
        f"node {r} ({f'exit {code}' if code is not None else f'hung: killed after {LIMIT} s'})"
        f":\n{text[-4000:]}"
        for r, (code, text) in enumerate(results)
    )


@pytest.mark.slow
def test_two_torchrun_nodes_write_one_store_like_one_process(tmp_path, reference):
    """Two ranks a node: one node's ranks are 2 and 3 with LOCAL_RANK 0 and 1 (a shard taken
    from LOCAL_RANK, or a node's ranks numbered as if alone, would leave blocks unwritten)."""
    nproc = 2
    out = tmp_path / "run.zarr"
    results = _finish(_start_nodes(out, nproc, ["-m", "actextract"]))
    report = _report(results)
    assert all(code == 0 for code, _ in results), report
    store = actextract.open_store(out)
    assert store.complete and verify(store).ok, report
    summary = store.attrs["summary"]
    assert summary["processes"] == 2 * nproc and summary["images"] == 640, summary
    same_store(store, reference)  # every row array, the labels, the ids and the statistics


@pytest.mark.slow
def test_a_node_killed_mid_run_stops_the_job_and_resume_finishes_the_store(tmp_path, reference):
    """One node dies (its launcher and ranks SIGKILLed once two blocks are done; not the one
    that hosts the rendezvous, whose death ends the other launchers at once): the other ends
    with an error that says what happened and what to do (not gloo's traceback, nor a wait),
    what both wrote stays, and --resume (here one process) computes the rest, so that the
    store is one process's."""
    out = tmp_path / "run.zarr"
    # every block after each rank's first two takes 2 s, so that the kill comes mid-run
    script = [str(HERE / "_runner.py"), "--stall", "2", "--"]
    nodes = _start_nodes(out, 1, script)
    wait_for_done_blocks(out, 2, nodes[1][0])
    _kill_node(nodes[1][0])
    results = _finish(nodes)
    report = _report(results)
    assert results[0][0] not in (0, None), report  # an error, not a hang nor a success
    assert "another rank of this torchrun job stopped" in results[0][1], report
    assert "--resume to finish the store" in results[0][1], report
    store = actextract.open_store(out)
    assert not store.complete and store.done().sum() >= 2, report
    done = run(*ARGS, "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    store = actextract.open_store(out)
    assert store.complete and verify(store).ok
    same_store(store, reference)


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
