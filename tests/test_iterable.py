"""An ``IterableDataset`` (and a DataLoader over one) as extract's data: its length unknown, the
store grows by whole row blocks as the rows come and is cut to their count at the end, equal
array by array to the store of the same samples as a map-style dataset. Resume, shards and
torchrun are refused for it (its samples cannot be listed again), unless it is indexable too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _fixtures import tiny_cnn
from _runner import same_store
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, get_worker_info

import actextract
from actextract.errors import ActextractError, OptionError
from actextract.extraction.growth import AHEAD
from actextract.store.growth import Resizer, row_shapes

N = 37  # not a multiple of the block size: the last block is partial
RUN = dict(layers="conv1,fc", chunk_rows=8, batch_size=5, device="cpu", progress=False)


def _images(n: int = N) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))


X, Y = _images(), torch.arange(N) % 3


class Samples(IterableDataset):
    """(x, y) pairs, or x alone; split between DataLoader workers by index."""

    def __init__(self, n: int = N, labels: bool = True, fail_at: int | None = None):
        self.n, self.labels, self.fail_at = n, labels, fail_at

    def __iter__(self):
        info = get_worker_info()
        start, step = (info.id, info.num_workers) if info else (0, 1)
        for i in range(start, self.n, step):
            if i == self.fail_at:
                raise RuntimeError(f"the stream broke at item {i}")
            yield (X[i], int(Y[i])) if self.labels else X[i]


class Indexable(Samples):
    """An IterableDataset that is also a map-style one."""

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return X[i], int(Y[i])


def _map_style(tmp_path, name: str = "map.zarr", **kw):
    run = {**RUN, **kw}
    return actextract.extract(tiny_cnn(), TensorDataset(X, Y), out=tmp_path / name, **run)


def test_an_iterable_gives_the_store_of_the_same_samples_as_a_map_style_dataset(tmp_path):
    store = actextract.extract(tiny_cnn(), Samples(), out=tmp_path / "it.zarr", **RUN)
    assert store.complete and store.n == N and store.n_blocks == 5
    assert store["conv1"].shape == (N, 4, 8, 8) and store.labels.shape == (N,)
    assert store.done().tolist() == [True] * 5
    assert store.ids[:].tolist() == [str(i) for i in range(N)]  # the running row number
    assert store.labels[:].tolist() == Y.tolist()
    assert store.attrs["dataset"]["n"] == N and store.attrs["n_samples"] == N
    same_store(store, _map_style(tmp_path))  # every array, to the byte
    with torch.no_grad():
        want = tiny_cnn()(X).numpy()
    np.testing.assert_allclose(store["fc"][:], want, rtol=1e-2, atol=1e-2)  # float16
    report = actextract.verify(tmp_path / "it.zarr")
    assert report.ok, report.problems
    again = actextract.open_store(tmp_path / "it.zarr")
    assert again.complete and again.n == N


def test_an_iterable_of_inputs_alone_has_label_minus_one(tmp_path):
    store = actextract.extract(
        tiny_cnn(), Samples(labels=False), out=tmp_path / "u.zarr", **{**RUN, "layers": "fc"}
    )
    assert store.labels[:].tolist() == [-1] * N and store.n == N


def test_a_dataloader_over_an_iterable_gives_its_items_with_its_batch_size(tmp_path):
    loader = DataLoader(Samples(), batch_size=6)
    run = {k: v for k, v in RUN.items() if k != "batch_size"}
    store = actextract.extract(tiny_cnn(), loader, out=tmp_path / "l.zarr", **run)
    assert store.attrs["batch_size"] == 6 and store.complete and store.n == N
    same_store(store, _map_style(tmp_path, batch_size=6))


def test_a_dataloader_with_workers_numbers_the_rows_as_they_arrive(tmp_path):
    loader = DataLoader(Samples(), batch_size=4, num_workers=2)  # each worker: every 2nd item
    run = {k: v for k, v in RUN.items() if k != "batch_size"}
    store = actextract.extract(tiny_cnn(), loader, out=tmp_path / "w.zarr", dtype="float32", **run)
    assert store.complete and store.n == N
    # every item once; its row's values are its own (the label says which item it was)
    order = [int(i) for i in np.argsort(store.ids[:].astype(int))]
    assert store.ids[:].tolist() == [str(i) for i in range(N)]
    assert sorted(store.labels[:].tolist()) == sorted(Y.tolist())
    with torch.no_grad():
        want = tiny_cnn()(X).numpy()
    got = store["fc"][:][order]
    for row in got:  # each stored row is the forward of one of the inputs
        assert np.abs(want - row).max(axis=1).min() < 1e-5


def test_a_limit_stops_the_iterable(tmp_path):
    store = actextract.extract(tiny_cnn(), Samples(), out=tmp_path / "k.zarr", limit=19, **RUN)
    assert store.complete and store.n == 19 and store.n_blocks == 3
    same_store(store, _map_style(tmp_path, limit=19))


def test_an_empty_iterable_is_an_error_and_leaves_no_store(tmp_path):
    with pytest.raises(OptionError, match="has no samples"):
        actextract.extract(tiny_cnn(), Samples(n=0), out=tmp_path / "e.zarr", **RUN)
    assert not (tmp_path / "e.zarr").exists()


def test_an_iterable_that_raises_leaves_the_store_incomplete(tmp_path):
    with pytest.raises(RuntimeError, match="the stream broke at item 23"):
        actextract.extract(tiny_cnn(), Samples(fail_at=23), out=tmp_path / "f.zarr", **RUN)
    store = actextract.open_store(tmp_path / "f.zarr")
    assert store.status == "failed" and not store.complete
    assert "the stream broke" in store.attrs["error"]
    done = store.done()
    assert done[:2].all() and not done.all()  # the blocks before the break are written
    # grown by whole blocks, a few ahead of the 20 rows that came (4 batches of 5)
    assert store.n % 8 == 0 and 24 <= store.n <= 24 + AHEAD * 8


@pytest.mark.parametrize("how", [{"resume": True}, {"shard": "0/2"}])
def test_resume_and_shards_are_refused_for_an_iterable_saying_why(tmp_path, how):
    with pytest.raises(OptionError) as e:
        actextract.extract(tiny_cnn(), Samples(), out=tmp_path / "r.zarr", **RUN, **how)
    assert isinstance(e.value, ActextractError)
    text = str(e.value)
    assert "is read once" in text and "cannot be listed again" in text
    assert "map-style Dataset (with __len__ and __getitem__)" in text and "new store" in text
    assert not (tmp_path / "r.zarr").exists()


def test_resume_is_refused_for_a_dataloader_over_an_iterable(tmp_path):
    with pytest.raises(OptionError, match="cannot be listed again"):
        actextract.extract(
            tiny_cnn(), DataLoader(Samples()), out=tmp_path / "d.zarr", resume=True, **RUN
        )


def test_statistics_are_refused_for_an_iterable(tmp_path):
    with pytest.raises(OptionError, match="known only at its end"):
        actextract.extract(
            tiny_cnn(), Samples(), out=tmp_path / "s.zarr", stats="fc=class-mean", **RUN
        )


def test_an_indexable_iterable_is_the_map_style_dataset_it_is_and_resumes(tmp_path):
    store = actextract.extract(tiny_cnn(), Indexable(), out=tmp_path / "x.zarr", **RUN)
    assert store.complete and store.attrs["dataset"]["n"] == N
    same_store(store, _map_style(tmp_path))
    killed = actextract.open_store(tmp_path / "x.zarr", mode="r+")
    killed._node("progress/done")[3] = 0  # as a killed run leaves it: block 3 not done
    killed.update_attrs(status="interrupted")
    resumed = actextract.extract(
        tiny_cnn(), Indexable(), out=tmp_path / "x.zarr", resume=True, **RUN
    )
    assert resumed.complete and resumed.this_run["computed"] == 1
    same_store(resumed, _map_style(tmp_path, "map2.zarr"))
    loader = actextract.extract(  # inside a DataLoader too: read by index
        tiny_cnn(), DataLoader(Indexable(), batch_size=5), out=tmp_path / "y.zarr", **RUN
    )
    same_store(loader, store)


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.Embedding(50, 8), nn.Linear(8, 2)

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        return self.head(h.sum(1) / attention_mask.sum(1, keepdim=True))


def _rows(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(n):
        real = 1 + i % 6
        ids = torch.randint(1, 50, (6,), generator=g)
        mask = (torch.arange(6) < real).long()
        rows.append({"input_ids": ids * mask, "attention_mask": mask, "label": i % 2})
    return rows


class Rows(IterableDataset):
    def __init__(self, rows):
        self.rows = rows

    def __iter__(self):
        yield from self.rows


@pytest.mark.parametrize("reduce", ["none", "tokens"])
def test_an_iterable_of_token_dicts_grows_the_token_arrays_too(tmp_path, reduce):
    rows = _rows(N)
    run = {**RUN, "layers": "embed,head", "reduce": {"embed": reduce}}
    store = actextract.extract(Tagger(), Rows(rows), out=tmp_path / "t.zarr", **run)
    assert store.complete and store.n == N
    assert store._node("tokens/mask").shape == (N, 6)
    same_store(store, actextract.extract(Tagger(), rows, out=tmp_path / "m.zarr", **run))
    assert actextract.verify(tmp_path / "t.zarr").ok


@pytest.mark.parametrize("turns", [False, True])
def test_both_ways_of_writing_grow_the_store_alike(tmp_path, monkeypatch, turns):
    # beside the forward (the last block written after the writes in flight have landed), or
    # in turns with the loop (the last block in the last turn)
    monkeypatch.setattr("actextract.extraction.api.takes_turns", lambda device: turns)
    store = actextract.extract(
        tiny_cnn(), Samples(), out=tmp_path / "t.zarr", writers=2, host_buffers=4, **RUN
    )
    assert store.complete
    same_store(store, _map_style(tmp_path))


def test_an_iterable_shorter_than_its_read_ahead_and_one_block(tmp_path):
    store = actextract.extract(tiny_cnn(), Samples(n=3), out=tmp_path / "s.zarr", **RUN)
    assert store.complete and store.n == 3 and store.n_blocks == 1
    same_store(store, _map_style(tmp_path, limit=3))
    assert actextract.verify(tmp_path / "s.zarr").ok


class WithBad(Samples):
    def __iter__(self):
        for i, item in enumerate(super().__iter__()):
            yield "not an input" if i == 10 else item


def test_a_bad_item_of_an_iterable_is_skipped_as_a_map_style_one_is(tmp_path):
    store = actextract.extract(
        tiny_cnn(), WithBad(), out=tmp_path / "b.zarr", on_bad_sample="skip", **RUN
    )
    assert store.complete and store.n == N
    assert [s["index"] for s in store.skipped()] == [10] and store.skipped()[0]["id"] == "10"
    assert store.labels[10] == -1 and np.isnan(store["fc"][10]).all()
    with pytest.raises(actextract.BadSampleError, match="sample 10"):
        actextract.extract(tiny_cnn(), WithBad(), out=tmp_path / "c.zarr", **RUN)


def test_a_python_spec_of_an_iterable_and_a_store_in_memory(tmp_path):
    module = tmp_path / "streams_mod.py"
    module.write_text(
        "import torch\n"
        "class Stream(torch.utils.data.IterableDataset):\n"
        "    def __iter__(self):\n"
        "        g = torch.Generator().manual_seed(0)\n"
        "        for i in range(21):\n"
        "            yield torch.randn(3, 8, 8, generator=g), i % 2\n"
    )
    store = actextract.extract(tiny_cnn(), f"python:{module}:Stream", out=None, **RUN)
    assert store.complete and store.n == 21 and store.labels[:4].tolist() == [0, 1, 0, 1]
    assert store["fc"].shape == (21, 5) and store.ids[-1] == "20"


def test_the_shapes_of_a_grown_store_are_those_a_store_of_its_rows_is_created_with(tmp_path):
    rows = _rows(N)
    run = {**RUN, "layers": "embed,head", "reduce": {"embed": "tokens"}}
    store = actextract.extract(Tagger(), Rows(rows), out=tmp_path / "t.zarr", **run)
    resize = Resizer(actextract.open_store(tmp_path / "t.zarr", mode="r+"))
    assert resize.linear  # every array's length grows by the same steps per block
    for n in (8, 16, 40, 800, 37, 1):
        assert resize.shapes(n) == row_shapes(store.attrs, n), n
    assert set(resize.shapes(8)) >= {"labels", "ids", "progress/done", "tokens/mask"}


def test_the_chunk_rows_a_stream_gets_keep_every_chunk_of_a_block_bounded(tmp_path):
    """A stream's rows are unknown, so its blocks are as large as its layers allow: the ids'
    chunk (id_width bytes a row) and the skipped record bound them too."""
    small = dict(RUN, layers="fc", chunk_rows=None)  # fc: 5 values a row
    store = actextract.extract(tiny_cnn(), Samples(), out=None, **small)
    assert store.complete and store.n == N
    rows, width = store.chunk_rows, store.attrs["id_width"]
    assert rows * width <= 32 << 20, (rows, width)
    assert store.group["progress/skipped"].shape[1] <= max(1 << 20, 32 * rows)
