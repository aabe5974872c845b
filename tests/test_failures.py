"""Storage failures around a run: a full disk, a read-only output.

Storage faults are injected into zarr's ``LocalStore.set`` (every key zarr writes to a local
store goes through it, from zarr's event-loop thread on behalf of the writer threads) and into
``write_chunk`` (the row arrays' chunks the writer threads write themselves): the run must
stop with an error that says what happened and what to do, record nothing unfinished as done,
and ``resume=True`` must then finish the store to the byte of an uninterrupted run.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr
from _runner import SMALL as BASE
from _runner import SMALL_BLOCKS as N_BLOCKS
from _runner import check_done_blocks, record_writes, same_store

import actextract
import actextract.store.run as store_run
from actextract.check.verification import verify


def _fail_set(
    monkeypatch, fail: Callable[[str], OSError | None], *, root: Path | None = None
) -> list[str]:
    """Make ``LocalStore.set`` raise ``fail(key)`` where it returns an error (the write is
    then not made); returns the keys that failed. ``root``: only in the store at that folder
    (not in the hidden folder a new store is built in). ``fail`` is called under a lock:
    writer threads reach ``set`` concurrently through zarr's event loop."""
    original = zarr.storage.LocalStore.set
    lock = threading.Lock()
    failed: list[str] = []

    def raise_if_failing(store_root: Path, key: str) -> None:
        with lock:
            error = fail(key) if root is None or store_root == root else None
            if error is not None:
                failed.append(key)
        if error is not None:
            raise error

    async def set_(self, key, value):
        raise_if_failing(Path(self.root), key)
        return await original(self, key, value)

    write_chunk = store_run.write_chunk

    def write_chunk_(arr, path, rows, flags=None):
        posix = path.as_posix()
        at = posix.rindex(f"/{arr.path}/c/")
        raise_if_failing(Path(posix[:at]), posix[at + 1 :])
        return write_chunk(arr, path, rows, flags)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set_)
    monkeypatch.setattr(store_run, "write_chunk", write_chunk_)
    return failed


def _after(n: int, matches: Callable[[str], bool], error: Callable[[], OSError]):
    """A ``fail`` for :func:`_fail_set`: the first ``n`` writes of matching keys succeed,
    every later one raises (a full disk stays full)."""
    seen = [0]

    def fail(key: str) -> OSError | None:
        if not matches(key):
            return None
        seen[0] += 1
        return error() if seen[0] > n else None

    return fail


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def _erofs() -> OSError:
    return PermissionError(errno.EROFS, "Read-only file system")


def _is_chunk(prefix: str) -> Callable[[str], bool]:
    return lambda key: key.startswith(prefix) and "/c/" in key  # not the arrays' zarr.json


def _snapshot(path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(path)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


# -- a full disk --------------------------------------------------------------------------------
def test_disk_full_mid_run_stops_clearly_and_resume_finishes_it(
    tmp_path, small_reference, monkeypatch
):
    out = tmp_path / "run.zarr"
    with monkeypatch.context() as m:
        # 5 chunk writes succeed: at least 2 blocks done (2 writer threads, 2 layers a block)
        failed = _fail_set(m, _after(5, _is_chunk("acts/"), _enospc))
        with pytest.raises(actextract.StoreError) as e:
            actextract.extract(**BASE, out=out)
    message = str(e.value)
    assert failed, "the fault was never injected"
    assert "disk is full" in message and "No space left on device" in message
    assert str(out) in message and "--resume" in message
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.ENOSPC

    store = actextract.open_store(out)
    assert store.status == "failed"
    assert (
        store.attrs["error"].startswith("StoreError: ") and "disk is full" in store.attrs["error"]
    )
    done = check_done_blocks(store, small_reference)
    assert 2 <= done.sum() < N_BLOCKS, done
    assert not store.complete
    assert verify(actextract.open_store(out)).state == "incomplete"

    resumed = actextract.extract(**BASE, out=out, resume=True)
    assert resumed.complete and resumed.attrs.get("error") is None
    assert verify(resumed).ok
    same_store(resumed, small_reference)
    assert not list(out.rglob("*.partial"))


def test_disk_full_on_the_completion_record_leaves_the_block_not_done(
    tmp_path, small_reference, monkeypatch
):
    out = tmp_path / "run.zarr"
    with monkeypatch.context() as m:
        # the first completion record is written, every later one hits a full disk
        failed = _fail_set(m, _after(1, _is_chunk("progress/done/"), _enospc))
        with pytest.raises(actextract.StoreError, match="disk is full") as e:
            actextract.extract(**BASE, out=out)
    assert str(out) in str(e.value) and "--resume" in str(e.value)
    assert failed and all(k.startswith("progress/done/c/") for k in failed)
    unrecorded = sorted({int(k.rsplit("/", 1)[1]) for k in failed})

    store = actextract.open_store(out)
    assert store.status == "failed" and "disk is full" in store.attrs["error"]
    done = check_done_blocks(store, small_reference)
    assert done.sum() == 1, done
    for b in unrecorded:  # its data is all there, but it was never recorded done
        assert not done[b], b
        rows = store.block_range(b)
        for name in store.layers:
            assert np.isfinite(store[name][rows.start : rows.stop]).all(), (b, name)
    assert verify(actextract.open_store(out)).state == "incomplete"

    resumed = actextract.extract(**BASE, out=out, resume=True)
    assert resumed.complete and verify(resumed).ok
    same_store(resumed, small_reference)


def test_disk_full_while_creating_the_store_leaves_nothing(tmp_path, monkeypatch):
    """zarr writes an array's metadata and its parent group's together (``create_array``
    gathers them): when one fails, the others may still be in flight. The hidden build
    folder must not be left behind by a write that lands after the clean-up (the group's
    ``zarr.json`` is made slow here, as on a struggling disk, to make that certain)."""
    parent = tmp_path / "parent"
    parent.mkdir()
    out = parent / "run.zarr"
    failed = _fail_set(monkeypatch, lambda key: _enospc() if key == "labels/zarr.json" else None)
    set_if_not_exists = zarr.storage.LocalStore.set_if_not_exists

    async def slow_set_if_not_exists(self, key, value):
        await asyncio.sleep(0.2)
        return await set_if_not_exists(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set_if_not_exists", slow_set_if_not_exists)
    with pytest.raises(actextract.StoreError, match="disk is full") as e:
        actextract.extract(**BASE, out=out)
    assert failed == ["labels/zarr.json"]
    assert "cannot create the store" in str(e.value) and str(out) in str(e.value)
    time.sleep(0.5)  # the late writes have landed
    assert list(parent.iterdir()) == []  # neither a half store nor its hidden build folder


def test_disk_full_while_sealing_leaves_a_store_that_resume_seals(
    tmp_path, small_reference, monkeypatch
):
    out = tmp_path / "run.zarr"
    written = record_writes(monkeypatch)
    with monkeypatch.context() as m:
        # the store proper (not its build folder) gets no zarr.json write before the seal
        failed = _fail_set(m, lambda key: _enospc() if key == "zarr.json" else None, root=out)
        with pytest.raises(actextract.StoreError, match="disk is full") as e:
            actextract.extract(**BASE, out=out)
    assert failed and "--resume" in str(e.value) and str(out) in str(e.value)
    assert sorted(written) == list(range(N_BLOCKS))
    store = actextract.open_store(out)
    assert store.status == "incomplete" and store.done().all() and not store.complete
    assert verify(store).state == "complete-but-unsealed"

    written.clear()
    resumed = actextract.extract(**BASE, out=out, resume=True)
    assert written == []  # nothing computed again: only sealed
    assert resumed.complete and verify(resumed).ok
    assert resumed.attrs["nonfinite"] == {"conv1": 0, "fc1": 0}
    same_store(resumed, small_reference)


def test_an_attributes_update_the_disk_cannot_take_is_all_or_nothing(
    tmp_path, small_reference, monkeypatch
):
    """``update_attrs(status=..., error=...)`` (how a failed run is recorded) must not leave
    half of its values: a status 'failed' without its error, 'complete' without its totals."""
    out = tmp_path / "copy.zarr"
    shutil.copytree(small_reference.path, out)
    store = actextract.open_store(out, mode="r+")
    failed = _fail_set(monkeypatch, _after(1, lambda key: key == "zarr.json", _enospc), root=out)
    with contextlib.suppress(actextract.StoreError):  # may fail: then nothing is recorded
        store.update_attrs(status="failed", error="StoreError: the disk is full")
    monkeypatch.undo()
    attrs = actextract.open_store(out).attrs
    updated = (attrs["status"], attrs.get("error"))
    assert updated in {
        ("complete", None),  # nothing written
        ("failed", "StoreError: the disk is full"),  # all of it
    }, f"a torn update: {updated}; zarr.json writes that failed: {failed}"


# -- a read-only output -------------------------------------------------------------------------
def test_a_read_only_output_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    parent = tmp_path / "parent"
    parent.mkdir()
    out = parent / "ro.zarr"
    failed = _fail_set(monkeypatch, lambda key: _erofs())
    with pytest.raises(actextract.StoreError) as e:
        actextract.extract(**BASE, out=out)
    message = str(e.value)
    assert failed
    assert str(out) in message and "cannot create the store" in message
    assert "read-only" in message.lower() and "--out" in message
    assert not out.exists()
    assert list(parent.iterdir()) == []  # no half store, no hidden .ro.zarr.creating-* folder


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions"
)
def test_a_parent_folder_without_write_permission_is_refused(tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    out = parent / "x.zarr"
    parent.chmod(0o555)
    try:
        with pytest.raises(actextract.StoreError) as e:
            actextract.extract(**BASE, out=out)
        assert str(out) in str(e.value) and "cannot create the store" in str(e.value)
        assert "not yours" in str(e.value)
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_a_parent_folder_without_write_permission_is_refused_as_root_too(tmp_path, monkeypatch):
    """The same, for root (who ignores permissions): mkdir in the folder raises EACCES as it
    does for anyone else under ``chmod 555``."""
    parent = tmp_path / "locked"
    parent.mkdir()
    out = parent / "x.zarr"
    mkdir = Path.mkdir

    def locked_mkdir(self, *args, **kwargs):
        if self.parent == parent:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", locked_mkdir)
    with pytest.raises(actextract.StoreError) as e:
        actextract.extract(**BASE, out=out)
    assert str(out) in str(e.value) and "cannot create the store" in str(e.value)
    assert "Permission denied" in str(e.value) and "not yours" in str(e.value)
    assert list(parent.iterdir()) == []


def test_resuming_a_store_that_cannot_be_written_fails_and_touches_nothing(
    tmp_path, small_reference, monkeypatch, caplog
):
    out = tmp_path / "run.zarr"
    actextract.extract(**BASE, out=out)
    store = actextract.open_store(out, mode="r+")
    store._node("progress/done")[2] = 0
    store._node("progress/done")[3] = 0
    store.update_attrs(status="incomplete")
    before = _snapshot(out)

    failed = _fail_set(monkeypatch, lambda key: _erofs())
    with (
        caplog.at_level(logging.WARNING, logger="actextract"),
        pytest.raises(actextract.StoreError) as e,
    ):
        actextract.extract(**BASE, out=out, resume=True)
    monkeypatch.undo()
    message = str(e.value)
    assert failed
    assert "cannot write row block" in message and str(out) in message
    assert "read-only" in message.lower()
    # the status could not be recorded either: said in the log, not instead of the error
    assert "could not record status 'failed'" in caplog.text
    assert _snapshot(out) == before  # not a byte written, not a file touched
    store = actextract.open_store(out)
    assert store.done().tolist() == [True, True, False, False, True]
    check_done_blocks(store, small_reference)
