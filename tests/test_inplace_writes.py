"""Rows written where they lie: on the CPU a layer output that is already what the store holds
is written from the tensor itself (held until its block is written), never copied; an output
that anything else could still change (a module's buffer, a tensor a module keeps and writes
into on its next call, the input batch itself) is copied as before. Every chunk is zarr's own
encoding of the same rows, so its crc32c checksum is what zarr writes, and the non-finite
counts are those of the rows as stored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _fixtures import FailsAt, SeededImages, reference, tiny_cnn
from torch import nn

import actextract
import actextract.extraction.api as api
import actextract.extraction.transfer as transfer
import actextract.store.run as store_run

# two batches a block: the second batch's forward runs before the block is written
FLOAT32_CPU = dict(batch_size=4, chunk_rows=8, dtype="float32", device="cpu", progress=False)


def _chunk_files(root) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "/c/" in p.relative_to(root).as_posix()
    }


def _tricky() -> FailsAt:
    """A skipped sample, values beyond float16's range, a NaN."""
    data = FailsAt(9, n=23)
    data.x[4, 0, 0, 0] = 1e6  # conv1 beyond float16's range, finite in float32
    data.x[13, 1, 2, 2] = float("nan")
    return data


# batches that straddle blocks, a short last block
TRICKY = dict(
    layers=["conv1", "bn1", "block.0", "fc"],
    batch_size=6,
    chunk_rows=4,
    device="cpu",
    on_bad_sample="skip",
    progress=False,
)


def _same_stores(a: actextract.Store, b: actextract.Store) -> None:
    """Every chunk file byte for byte, and the records."""
    files_a, files_b = _chunk_files(a.path), _chunk_files(b.path)
    assert sorted(files_a) == sorted(files_b)
    assert [k for k in files_a if files_a[k] != files_b[k]] == []
    assert a.attrs["nonfinite"] == b.attrs["nonfinite"]
    assert a.nonfinite() == b.nonfinite() and a.skipped() == b.skipped()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_chunks_and_counts_equal_zarrs_own_write_of_copied_rows(tmp_path, monkeypatch, dtype):
    """Held outputs and direct chunk files against the copy-into-the-ring, zarr-writes-it
    path (the way every chunk was written before), on a run with a skipped sample, batches
    that straddle blocks, a short last block and values beyond float16's range."""
    data = _tricky()
    fast = actextract.extract(tiny_cnn(), data, out=tmp_path / "fast.zarr", dtype=dtype, **TRICKY)
    with monkeypatch.context() as m:
        m.setattr(transfer, "holdable", lambda *a: False)
        m.setattr(store_run, "chunk_file", lambda *a: None)
        slow = actextract.extract(
            tiny_cnn(), data, out=tmp_path / "slow.zarr", dtype=dtype, **TRICKY
        )
    assert fast.complete and slow.complete
    if dtype == "float32":
        assert fast.attrs["summary"]["held_bytes"] > 0
    assert slow.attrs["summary"]["held_bytes"] == 0
    _same_stores(fast, slow)
    assert fast.attrs["nonfinite"]["conv1"] == (2 if dtype == "float16" else 1)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_turns_and_writers_beside_the_forward_write_the_same_store(tmp_path, monkeypatch, dtype):
    """The loop and the writers taking turns (a CPU whose cores the forward uses) and the
    writers running beside the forward write the same bytes and records."""
    assert transfer.takes_turns(torch.device("cpu")) == (
        torch.get_num_threads() >= transfer.usable_cores()
    )
    runs = {}
    for turns in (True, False):
        with monkeypatch.context() as m:
            m.setattr(api, "takes_turns", lambda device, turns=turns: turns)
            out = tmp_path / f"{turns}.zarr"
            runs[turns] = actextract.extract(
                tiny_cnn(), _tricky(), out=out, dtype=dtype, writers=2, **TRICKY
            )
    assert runs[True].complete and runs[False].complete
    _same_stores(runs[True], runs[False])
    assert runs[True].labels[:].tolist() == runs[False].labels[:].tolist()
    assert runs[True].ids[:].tolist() == runs[False].ids[:].tolist()


class Keeps(nn.Module):
    """Keeps its output and writes into it on its next call (a cache updated in place)."""

    def __init__(self) -> None:
        super().__init__()
        self.last: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.last is not None and len(self.last) == len(x):
            self.last.mul_(0).add_(x * 3)  # the previous batch's output, overwritten
            out = self.last
        else:
            out = self.last = x * 3
        return out


class Buffered(nn.Module):
    """Returns a registered buffer it overwrites on every call."""

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.register_buffer("out", torch.zeros(batch, 3, 8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.out[: len(x)] = x * 2
        return self.out if len(x) == len(self.out) else self.out[: len(x)]


class Chain(nn.Module):
    def __init__(self, batch: int) -> None:
        super().__init__()
        self.same = nn.Identity()  # its output is the input batch itself
        self.keeps = Keeps()
        self.buffered = Buffered(batch)
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.same(x)
        y = self.keeps(x) + self.buffered(x)
        return self.fc(y.flatten(1))


def test_outputs_something_else_can_still_write_are_copied_not_held(tmp_path):
    data = SeededImages(n=20)
    torch.manual_seed(0)
    model = Chain(batch=4).eval()
    layers = ["same", "keeps", "buffered", "fc"]
    store = actextract.extract(
        model,
        data,
        layers=layers,
        capture="hooks",  # the modules keep Python state: fx would not replay it
        out=tmp_path / "run.zarr",
        **FLOAT32_CPU,
    )
    x = data.x
    with torch.no_grad():
        want = {"same": x, "keeps": x * 3, "buffered": x * 2}
        # batch by batch, as the run computed it: one matmul of all 20 rows may round apart
        y = (want["keeps"] + want["buffered"]).flatten(1)
        want["fc"] = torch.cat([model.fc(y[i : i + 4]) for i in range(0, len(y), 4)])
    for name in layers:
        np.testing.assert_allclose(store[name][:], want[name].numpy(), rtol=1e-6, err_msg=name)
    # only fc's output is the batch's own: the others are the input, a kept tensor, a buffer
    assert store.attrs["summary"]["held_bytes"] == 20 * 4 * 4


def test_on_fx_views_of_the_input_batch_are_copied(tmp_path):
    data = SeededImages(n=12)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Identity(), nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    store = actextract.extract(
        model,
        data,
        layers=["0", "1", "2"],
        capture="fx",
        out=tmp_path / "run.zarr",
        **FLOAT32_CPU,
    )
    np.testing.assert_array_equal(store["0"][:], data.x.numpy())
    np.testing.assert_array_equal(store["1"][:], data.x.flatten(1).numpy())
    assert store.attrs["summary"]["held_bytes"] == 12 * 4 * 4  # the linear layer's alone


def test_a_cpu_float32_run_writes_the_outputs_themselves(tmp_path):
    data = SeededImages(n=24)
    store = actextract.extract(
        tiny_cnn(),
        data,
        layers=["bn1", "block.0", "pool", "fc"],
        out=tmp_path / "run.zarr",
        **FLOAT32_CPU,
    )
    summary = store.attrs["summary"]
    # bn1 is written in place later by the ReLU: cloned at capture, and the clone is held
    assert summary["held_bytes"] == summary["bytes_written"]
    ref = reference(tiny_cnn(), data.x)
    for name in ("bn1", "block.0", "pool", "fc"):
        np.testing.assert_allclose(store[name][:], ref[name].numpy(), rtol=1e-5, atol=1e-6)
