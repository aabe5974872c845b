"""The device→host ring of row-block buffers: a buffer is never handed out again before its
writer is done with it, and the stored data stay exact when the writers are slower than
compute, when the ring is as small as it can be, with several writers, and when batches
straddle row blocks."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from _fixtures import FailsAt, SeededImages, reference, tiny_cnn

import actextract
import actextract.extraction.api as api
from actextract.errors import OptionError
from actextract.extraction.transfer import BlockRing, blocks_open_at_once, nonfinite_rows
from actextract.store import Store


def _ring(slots: int = 1) -> BlockRing:
    return BlockRing({"a": (3,), "b": (2, 2)}, torch.float16, rows=4, slots=slots)


def test_a_slot_is_not_handed_out_again_before_it_is_released():
    ring = _ring(1)
    slot = ring.acquire()
    taken = threading.Event()

    def second():
        ring.acquire()
        taken.set()

    t = threading.Thread(target=second, daemon=True)
    t.start()
    assert not taken.wait(0.3)  # still held: the second acquire waits
    ring.release(slot)
    assert taken.wait(10)
    t.join()


def test_buffers_are_allocated_once_per_slot_and_layer_and_reused():
    ring = _ring(2)
    a, b = ring.acquire(), ring.acquire()
    assert a != b and ring.free == 0
    first = ring.buffer(a, "a")
    assert first.shape == (4, 3) and ring.buffer(a, "b").shape == (4, 2, 2)
    assert first.dtype == torch.float16
    assert ring.slot_bytes == 4 * (3 + 4) * 2
    assert "b" not in ring._buffers[b]  # a layer written from its outputs needs none
    ring.release(a)
    again = ring.acquire()
    assert again == a and ring.buffer(again, "a").data_ptr() == first.data_ptr()


def test_waiting_for_a_slot_stops_when_the_writers_failed():
    ring = _ring(1)
    ring.acquire()

    def failed():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ring.acquire(check=failed)
    with pytest.raises(OptionError, match="at least 1"):
        _ring(0)


@pytest.mark.parametrize(
    ("batch", "rows", "blocks"),
    [(4, 8, 1), (4, 4, 1), (8, 4, 2), (8, 2, 4), (4, 6, 2), (6, 4, 3), (64, 768, 1)],
)
def test_blocks_one_batch_can_touch(batch, rows, blocks):
    assert blocks_open_at_once(batch, rows) == blocks
    # brute force over the batches of a long run
    worst = max(len({r // rows for r in range(k, k + batch)}) for k in range(0, 100 * batch, batch))
    assert worst <= blocks


def _slow_and_checked(monkeypatch) -> list[str]:
    """Store.write_rows made slower than compute; it also checks that nothing overwrites the
    block's rows while it writes them (a buffer reused too early, or a held output the next
    batch wrote into, would change under it)."""
    write_rows = Store.write_rows
    problems: list[str] = []

    def slow(self, block, acts, **kwargs):
        before = {name: rows.array(self.row_array(name)).copy() for name, rows in acts.items()}
        threading.Event().wait(0.02)  # the disk is slower than compute
        found = write_rows(self, block, acts, **kwargs)
        for name, rows in acts.items():
            if not np.array_equal(rows.array(self.row_array(name)), before[name], equal_nan=True):
                problems.append(f"block {block}, {name}: rows changed while being written")
        return found

    monkeypatch.setattr(Store, "write_rows", slow)
    return problems


@pytest.mark.parametrize("turns", [True, False], ids=["turns", "beside"])
@pytest.mark.parametrize(
    ("batch_size", "chunk_rows", "host_buffers", "writers"),
    [(4, 8, 1, 1), (4, 8, 1, 3), (4, 8, None, 4), (4, 6, 2, 2), (8, 4, 2, 1), (6, 4, None, 2)],
)
def test_slow_writers_small_rings_and_straddling_batches_store_exact_data(
    tmp_path, monkeypatch, batch_size, chunk_rows, host_buffers, writers, turns
):
    """Both ways the writers run on a CPU: in turns with the loop (a ring of one block makes
    the turn come when the ready blocks hold every slot) and beside it."""
    monkeypatch.setattr(api, "takes_turns", lambda device: turns)
    problems = _slow_and_checked(monkeypatch)
    data = SeededImages(n=50)  # the last block and the last batch are short
    store = actextract.extract(
        tiny_cnn(),
        data,
        layers=["bn1", "fc"],
        out=tmp_path / "run.zarr",
        batch_size=batch_size,
        chunk_rows=chunk_rows,
        dtype="float32",
        device="cpu",
        writers=writers,
        host_buffers=host_buffers,
    )
    ref = reference(tiny_cnn(), data.x)
    assert store.complete and not problems
    for name in ("bn1", "fc"):
        np.testing.assert_allclose(store[name][:], ref[name].numpy(), rtol=1e-5, atol=1e-6)
    assert store.labels[:].tolist() == data.labels
    assert store.ids[:].tolist() == [str(i) for i in range(50)]
    assert store.attrs["summary"]["write_wait_s"] > 0


def test_a_skipped_row_in_a_reused_buffer_reads_as_nan(tmp_path):
    # one buffer for the whole run: block 2 reuses the buffer that held block 0's rows
    data = FailsAt(9, n=16)
    store = actextract.extract(
        tiny_cnn(),
        data,
        layers=["fc"],
        batch_size=4,
        chunk_rows=4,
        host_buffers=1,
        writers=1,
        on_bad_sample="skip",
        dtype="float32",
        device="cpu",
        out=tmp_path / "r.zarr",
    )
    fc = store["fc"][:]
    assert np.isnan(fc[9]).all()
    ref = reference(tiny_cnn(), data.x)["fc"].numpy()
    np.testing.assert_allclose(np.delete(fc, 9, 0), np.delete(ref, 9, 0), rtol=1e-5, atol=1e-6)


def test_a_ring_smaller_than_one_batch_needs_is_refused(tmp_path):
    with pytest.raises(OptionError, match=r"touches up to 2 row blocks.*at least 2"):
        actextract.extract(
            tiny_cnn(),
            SeededImages(),
            layers=["fc"],
            batch_size=8,
            chunk_rows=4,
            host_buffers=1,
            device="cpu",
            out=tmp_path / "r.zarr",
        )
    assert not (tmp_path / "r.zarr").exists()  # refused before the store was created


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_nonfinite_rows_flags_exactly_the_rows_with_nan_or_inf(dtype):
    x = torch.randn(6, 3, 4, 4).to(dtype)
    x[1, 0, 0, 0] = float("nan")
    x[3, 2, 3, 3] = float("-inf")
    x[4, 1, 2, 0] = float("inf")
    x[5] = torch.finfo(dtype).max  # finite, and a sum would overflow: not flagged
    assert nonfinite_rows(x).tolist() == [False, True, False, True, True, False]
    assert nonfinite_rows(torch.zeros(2, 0)).tolist() == [False, False]
