"""The device→host ring: a buffer is never handed out again before the sink gave it back, and
the stored data stay exact when the writers are slower than compute."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from _fixtures import SeededImages, reference, tiny_cnn

import actextract
from actextract.errors import OptionError
from actextract.store import Store
from actextract.transfer import HostRing


def test_a_slot_is_not_reused_before_it_is_released():
    ring = HostRing(1)
    like = {"a": torch.zeros(4, 3)}
    slot, _ = ring.acquire(like)
    taken = threading.Event()

    def second():
        ring.acquire(like)
        taken.set()

    t = threading.Thread(target=second, daemon=True)
    t.start()
    assert not taken.wait(0.3)  # still held: the second acquire waits
    ring.release(slot)
    assert taken.wait(10)
    t.join()


def test_buffers_are_reused_and_the_last_batch_is_a_view():
    ring = HostRing(1)
    slot, a = ring.acquire({"x": torch.zeros(8, 5)})
    ring.release(slot)
    again, b = ring.acquire({"x": torch.ones(3, 5)})  # a shorter last batch
    assert again == slot and ring.free == 0
    assert b["x"].shape == (3, 5) and b["x"].data_ptr() == a["x"].data_ptr()  # no new memory
    ring.release(again)
    _, c = ring.acquire({"x": torch.zeros(3, 6)})  # another shape: a buffer of its own
    assert c["x"].shape == (3, 6)


def test_waiting_for_a_slot_stops_when_the_consumer_failed():
    ring = HostRing(1)
    ring.acquire({"x": torch.zeros(1)})

    def failed():
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ring.acquire({"x": torch.zeros(1)}, check=failed)
    with pytest.raises(OptionError, match="at least 1"):
        HostRing(0)


@pytest.mark.parametrize(("host_buffers", "writers"), [(1, 1), (1, 3), (2, 4)])
def test_slow_writers_and_a_small_ring_store_exact_data(
    tmp_path, monkeypatch, host_buffers, writers
):
    write_block = Store.write_block

    def slow(self, *args, **kwargs):
        threading.Event().wait(0.02)  # the disk is slower than compute
        return write_block(self, *args, **kwargs)

    monkeypatch.setattr(Store, "write_block", slow)
    data = SeededImages(n=48)
    store = actextract.extract(
        tiny_cnn(),
        data,
        layers=["bn1", "fc"],
        out=tmp_path / "run.zarr",
        batch_size=4,
        chunk_rows=8,
        dtype="float32",
        device="cpu",
        writers=writers,
        host_buffers=host_buffers,
    )
    ref = reference(tiny_cnn(), data.x)
    assert store.complete
    for name in ("bn1", "fc"):
        np.testing.assert_allclose(store[name][:], ref[name].numpy(), rtol=1e-5, atol=1e-6)
    assert store.attrs["summary"]["write_wait_s"] > 0
