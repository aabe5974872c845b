"""Store URLs: file:// (a local store, atomic writes) and fsspec URLs (memory://), with
resume and shards working as on plain paths."""

from __future__ import annotations

import uuid

import pytest
from _runner import same_store

import actextract
from actextract.location import Location
from actextract.store import Store
from actextract.verify import verify

# 320 digits in 5 row blocks of 64 rows (batches of 32); one chunk per array per block
BASE = dict(
    model="digits-cnn",
    dataset="digits",
    layers="conv1,fc1",
    limit=320,
    batch_size=32,
    chunk_rows=64,
    device="cpu",
    progress=False,
)
N_BLOCKS = 5


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    store = actextract.extract(**BASE, out=tmp_path_factory.mktemp("reference") / "ref.zarr")
    assert store.complete
    return store


# -- store URLs ---------------------------------------------------------------------------------
def test_a_file_url_works_end_to_end(tmp_path, reference, monkeypatch):
    url = f"file://{tmp_path}/u.zarr"
    store = actextract.extract(**BASE, out=url)
    assert store.complete and str(store.location) == url
    assert store.path == tmp_path / "u.zarr" and (tmp_path / "u.zarr" / "zarr.json").is_file()
    same_store(store, reference)

    opened = actextract.open_store(url)
    info = opened.info()
    assert info["path"] == url and info["status"] == "complete"
    assert info["blocks_done"] == info["n_blocks"] == N_BLOCKS
    assert info["disk_bytes"] > 0 and info["arrays"][0]["disk_bytes"] > 0
    assert verify(opened).ok

    # resume through the URL recomputes exactly the block whose done flag was removed
    writable = actextract.open_store(url, mode="r+")
    writable._node("progress/done")[2] = 0
    writable.update_attrs(status="incomplete")
    assert verify(actextract.open_store(url)).state == "incomplete"
    written = []
    write_block = Store.write_block

    def recording(self, block, *args, **kwargs):
        written.append(block)
        return write_block(self, block, *args, **kwargs)

    monkeypatch.setattr(Store, "write_block", recording)
    resumed = actextract.extract(**BASE, out=url, resume=True)
    assert written == [2]
    assert resumed.complete and verify(resumed).ok
    same_store(resumed, reference)


def test_shards_through_a_file_url_make_the_plain_run_s_store(tmp_path, reference):
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
    same_store(actextract.open_store(url), reference)
    same_store(actextract.open_store(tmp_path / "sharded.zarr"), reference)


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


def test_a_memory_url_round_trips(reference):
    pytest.importorskip("fsspec")
    url = f"memory://actextract-test-{uuid.uuid4().hex}/m.zarr"
    try:
        store = actextract.extract(**BASE, out=url)
        assert store.complete and store.path == url
        opened = actextract.open_store(url)
        same_store(opened, reference)
        assert verify(opened).ok
        assert opened.info()["disk_bytes"] > 0
        with pytest.raises(actextract.OutputExistsError, match="--resume"):
            actextract.extract(**BASE, out=url)
    finally:
        Location.parse(url).remove()
