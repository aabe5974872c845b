"""Store URLs: file:// (a local store, atomic writes) and fsspec URLs (memory://), with
resume and shards working as on plain paths."""

from __future__ import annotations

import uuid

import pytest
from _runner import SMALL as BASE
from _runner import SMALL_BLOCKS as N_BLOCKS
from _runner import record_writes, same_store

import actextract
from actextract.check import store_info
from actextract.check.verification import verify
from actextract.store.location import Location


# -- store URLs ---------------------------------------------------------------------------------
def test_a_file_url_works_end_to_end(tmp_path, small_reference, monkeypatch):
    url = f"file://{tmp_path}/u.zarr"
    store = actextract.extract(**BASE, out=url)
    assert store.complete and str(store.location) == url
    assert store.path == tmp_path / "u.zarr" and (tmp_path / "u.zarr" / "zarr.json").is_file()
    same_store(store, small_reference)

    opened = actextract.open_store(url)
    info = store_info(opened)
    assert info["path"] == url and info["status"] == "complete"
    assert info["blocks_done"] == info["n_blocks"] == N_BLOCKS
    assert info["disk_bytes"] > 0 and info["arrays"][0]["disk_bytes"] > 0
    assert verify(opened).ok

    # resume through the URL recomputes exactly the block whose done flag was removed
    writable = actextract.open_store(url, mode="r+")
    writable._node("progress/done")[2] = 0
    writable.update_attrs(status="incomplete")
    assert verify(actextract.open_store(url)).state == "incomplete"
    written = record_writes(monkeypatch)
    resumed = actextract.extract(**BASE, out=url, resume=True)
    assert written == [2]
    assert resumed.complete and verify(resumed).ok
    same_store(resumed, small_reference)


def test_shards_through_a_file_url_make_the_plain_run_s_store(tmp_path, small_reference):
    url = f"file://{tmp_path}/sharded.zarr"
    first = actextract.extract(**BASE, out=url, shard="0/2")
    assert first.status == "incomplete" and first.done().tolist() == [
        True,
        True,
        False,
        False,
        False,
    ]
    second = actextract.extract(**BASE, out=url, shard="1/2")
    assert second.complete and verify(second).ok
    same_store(actextract.open_store(url), small_reference)
    same_store(actextract.open_store(tmp_path / "sharded.zarr"), small_reference)


def test_a_file_url_with_a_host_is_refused(tmp_path):
    with pytest.raises(actextract.StoreError, match="names the host 'elsewhere'") as e:
        actextract.extract(**BASE, out=f"file://elsewhere{tmp_path}/x.zarr")
    assert "file:///absolute/path" in str(e.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(actextract.StoreError, match="must be local"):
        actextract.open_store(f"file://elsewhere{tmp_path}/x.zarr")
    # localhost is this machine; %-escapes are decoded
    local = Location.parse(f"file://localhost{tmp_path}/a%20b.zarr")
    assert local.local == tmp_path / "a b.zarr"


def test_a_memory_url_round_trips(small_reference):
    pytest.importorskip("fsspec")
    url = f"memory://actextract-test-{uuid.uuid4().hex}/m.zarr"
    try:
        store = actextract.extract(**BASE, out=url)
        assert store.complete and store.path == url
        opened = actextract.open_store(url)
        same_store(opened, small_reference)
        assert verify(opened).ok
        assert store_info(opened)["disk_bytes"] > 0
        with pytest.raises(actextract.OutputExistsError, match="--resume"):
            actextract.extract(**BASE, out=url)
    finally:
        Location.parse(url).remove()
