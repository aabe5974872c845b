"""The reliability tests' child process: the ``actextract`` command with a fault injected.

    python tests/_runner.py [--kill POINT] [--stall SECONDS] [--log FILE] -- extract ...

POINT is where the process SIGKILLs itself: ``first-block`` (block 0's first array written,
the rest not), ``mid-block:K`` (the same in block K, with earlier blocks written beside it by
the other writer thread), ``mid-commit:K`` (the K-th commit of the statistics' sums written,
the attributes that commit them not), ``before-seal`` (every block written, the final status
not).
``--stall`` makes every block write after the first two take that long, so that a test that
waits for two done blocks can stop the run from outside before it can end, however slow the
machine; ``--log`` appends the number of every block whose write starts. The helpers below run it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
# 640 inputs in 10 blocks of 64 rows (batches of 32), three layers of three kinds, with
# on-device statistics committed as often as they can be (so a kill finds some committed and
# some not); synthetic data (labels: index % 10), as the digits would cost every child
# process seconds of importing scikit-learn
ARGS = [
    "extract",
    "--model",
    "digits-cnn",
    "--dataset",
    "synthetic:640:1:28:28",
    "--layers",
    "conv1,pool2,fc1",
    "--limit",
    "640",
    "--batch-size",
    "32",
    "--chunk-rows",
    "64",
    "--device",
    "cpu",
    "--no-progress",
    "--stats",
    "conv1=class-mean,class-std,channel-hist;pool2=channel-mean,class-mean",
    "--stats-every",
    "0",
]
N_BLOCKS = 10
# in-process runs: 320 digits in 5 row blocks of 64 rows (batches of 32), one chunk per array
SMALL = dict(
    model="digits-cnn",
    dataset="digits",
    layers="conv1,fc1",
    limit=320,
    batch_size=32,
    chunk_rows=64,
    device="cpu",
    progress=False,
)
SMALL_BLOCKS = 5
# one thread everywhere: the same kernels, so runs in different processes agree to the bit
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}


STALL_AFTER = 2  # blocks written at full speed before --stall applies


def command(*args: str, kill: str | None = None, stall: float = 0, log: Path | None = None):
    cmd = [sys.executable, str(HERE / "_runner.py")]
    if kill:
        cmd += ["--kill", kill]
    if stall:
        cmd += ["--stall", str(stall)]
    if log:
        cmd += ["--log", str(log)]
    return [*cmd, "--", *args]


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float | None = None, **faults
) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(*args, **faults), env=env or ENV, capture_output=True, text=True, timeout=timeout
    )


def start(*args: str, env: dict[str, str] | None = None, **faults) -> subprocess.Popen:
    """The run in the background, as a terminal's foreground job would get Ctrl-C: SIGINT at
    its default (a job started with ``&``, like a CI script's, inherits it ignored, and
    Python then never raises KeyboardInterrupt)."""
    return subprocess.Popen(
        command(*args, **faults),
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_done_blocks(out: Path, at_least: int, proc: subprocess.Popen) -> None:
    """Wait until ``at_least`` done records exist (the process writes them as it goes)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if len(list((out / "progress" / "done" / "c").glob("*"))) >= at_least:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended first: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("no progress within 120 s")


def same_store(a, b) -> None:
    """Every row array of store ``a`` equals ``b``'s to the byte (NaN payloads included), and
    its statistics' totals are ``b``'s (counts exactly, float64 sums within rounding)."""
    assert a.layers == b.layers and a.row_keys == b.row_keys
    for name in a.row_keys:
        x, y = a.row_array(name)[:], b.row_array(name)[:]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), f"{name}: differs in {np.flatnonzero(x != y)[:5]}"
    assert a.labels[:].tolist() == b.labels[:].tolist()
    assert a.ids[:].tolist() == b.ids[:].tolist()
    assert a.attrs.get("tokens") == b.attrs.get("tokens")
    for name in token_arrays(a.attrs.get("tokens")):  # a text run's mask and token ids
        x, y = a._node(f"tokens/{name}")[:], b._node(f"tokens/{name}")[:]
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name
    same_stats(a, b)


def token_arrays(tokens) -> list[str]:
    from actextract.store.build import token_arrays

    return token_arrays(tokens)


def same_stats(a, b) -> None:
    from actextract.stats.parts import accumulated, read_stats

    assert a.stats_layers() == b.stats_layers()
    for spec in accumulated(a):
        x, y = read_stats(a, spec.layer), read_stats(b, spec.layer)
        assert x is not None and y is not None, spec.layer
        assert x.classes.tolist() == y.classes.tolist() and x.counts.tolist() == y.counts.tolist()
        for name in ("mean", "std"):
            u, v = getattr(x, name), getattr(y, name)
            assert (u is None) == (v is None), name
            if u is not None:  # a sum's rounding, scaled by the layer's magnitude
                scale = np.abs(x.mean).max()
                np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-9 * scale, err_msg=name)
        if x.hist is not None:
            assert np.array_equal(x.hist, y.hist) and np.array_equal(x.edges, y.edges)


def record_writes(monkeypatch) -> list[int]:
    """The blocks whose rows are written (``Store.finish_block`` follows their chunks), in
    order, from now on (in this process)."""
    from actextract.store import Store

    written: list[int] = []
    finish_block = Store.finish_block

    def recording(self, block, *args, **kwargs):
        written.append(block)
        return finish_block(self, block, *args, **kwargs)

    monkeypatch.setattr(Store, "finish_block", recording)
    return written


def check_done_blocks(store, reference) -> np.ndarray:
    """Every block recorded done holds exactly the reference's rows (activations, labels,
    ids); returns the done flags."""
    done = store.done()
    for b in np.flatnonzero(done):
        rows = slice(b * store.chunk_rows, (b + 1) * store.chunk_rows)
        for name in store.layers:
            assert store[name][rows].tobytes() == reference[name][rows].tobytes(), (b, name)
        assert store.labels[rows].tolist() == reference.labels[rows].tolist(), b
        assert store.ids[rows].tolist() == reference.ids[rows].tolist(), b
    return done


def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill")
    parser.add_argument("--stall", type=float, default=0)
    parser.add_argument("--log", type=Path)
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args()

    from actextract.cli.commands import main
    from actextract.store import Store

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    write_rows = Store.write_rows
    lock, started = threading.Lock(), []

    def faulty(self, block, acts, **kwargs):
        if opts.log:
            with opts.log.open("a") as f:
                f.write(f"{block}\n")
        with lock:
            started.append(block)
            stall = opts.stall if len(started) > STALL_AFTER else 0
        time.sleep(stall)
        if opts.kill == f"mid-block:{block}" or (opts.kill == "first-block" and block == 0):
            first = next(iter(acts))
            write_rows(self, block, {first: acts[first]}, **kwargs)  # one array, then killed
            die()
        return write_rows(self, block, acts, **kwargs)

    Store.write_rows = faulty
    if opts.kill and opts.kill.startswith("mid-commit:"):
        import zarr

        from actextract.stats.parts import PartWriter

        commit, commits = PartWriter.commit, []

        def faulty_commit(self) -> None:
            commits.append(1)
            if opts.kill == f"mid-commit:{len(commits)}":
                # the sums land in the spare slot; the write that commits them kills
                zarr.Group.update_attributes = lambda *a, **k: die()
            commit(self)

        PartWriter.commit = faulty_commit
    if opts.kill == "before-seal":
        Store.seal = lambda self, *a, **k: die()
    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
    main(args, prog_name="actextract")


if __name__ == "__main__":
    _main()


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on (a server a test starts takes it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
