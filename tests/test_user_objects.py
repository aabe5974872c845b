"""The objects users already hold: a TensorDataset without labels, a store kept in memory
(``out=None``), a store given by its path to every reader, and ``python:`` specs whose
callable is a dotted attribute (``module:Factory.make``)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from _fixtures import tiny_cnn

import actextract
from actextract.errors import OptionError, SourceError
from actextract.store.location import Location


def _images(n: int = 12) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_a_tensor_dataset_without_labels_is_fed_with_label_minus_one(tmp_path):
    x = _images()
    store = actextract.extract(
        tiny_cnn(),
        torch.utils.data.TensorDataset(x),  # items are (input,): no label
        layers="fc",
        dtype="float32",
        out=tmp_path / "t.zarr",
        progress=False,
    )
    assert store.labels[:].tolist() == [-1] * len(x)
    with torch.no_grad():
        want = tiny_cnn()(x).numpy()
    np.testing.assert_allclose(store["fc"][:], want, rtol=1e-5, atol=1e-6)


def test_out_none_keeps_the_store_in_memory_with_the_same_reader(tmp_path):
    x = _images()
    dataset = torch.utils.data.TensorDataset(x, torch.arange(len(x)) % 3)
    kept = actextract.extract(
        tiny_cnn(), dataset, layers="conv1,fc", out=None, dtype="float32", progress=False
    )
    assert Location.parse(kept.location).url.startswith("memory://")
    assert kept.complete and kept.labels[:].tolist() == (np.arange(len(x)) % 3).tolist()
    on_disk = actextract.extract(
        tiny_cnn(),
        dataset,
        layers="conv1,fc",
        out=tmp_path / "d.zarr",
        dtype="float32",
        progress=False,
    )
    for layer in ("conv1", "fc"):
        np.testing.assert_array_equal(kept[layer][:], on_disk[layer][:])
    assert actextract.verify(kept).ok
    again = actextract.extract(  # each out=None is a store of its own
        tiny_cnn(), dataset, layers="fc", out=None, progress=False
    )
    assert again.location != kept.location
    with pytest.raises(OptionError, match="out=None for a store in memory"):
        actextract.extract(tiny_cnn(), dataset, layers="fc")


def test_every_reader_takes_a_path(tmp_path):
    out = tmp_path / "p.zarr"
    actextract.extract(
        tiny_cnn(), torch.utils.data.TensorDataset(_images()), layers="fc", out=out, progress=False
    )
    report = actextract.verify(out)  # a path, as render, cluster and to_xarray take
    assert report.ok and report.blocks_done == report.n_blocks
    assert actextract.verify(str(out)).ok
    assert actextract.store_info(out)["n_samples"] == 12
    assert actextract.clusterings(out) == []


def test_python_specs_take_a_dotted_callable(tmp_path, monkeypatch):
    (tmp_path / "usermod.py").write_text(
        textwrap.dedent(
            """
            import torch

            class Factory:
                @staticmethod
                def make():
                    return torch.utils.data.TensorDataset(torch.zeros(4, 3, 8, 8))

                class Nested:
                    @classmethod
                    def build(cls):
                        return Factory.make()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec in (
        "python:usermod:Factory.make",
        "python:usermod:Factory.Nested.build",
        f"python:{tmp_path / 'usermod.py'}:Factory.make",
    ):
        store = actextract.extract(
            tiny_cnn(),
            spec,
            layers="fc",
            out=tmp_path / "s.zarr",
            overwrite=True,
            progress=False,
        )
        assert store.n == 4, spec
    with pytest.raises(SourceError, match=r"'usermod:Factory' has no attribute 'mkae'.*make"):
        actextract.extract(
            tiny_cnn(),
            "python:usermod:Factory.mkae",
            layers="fc",
            out=tmp_path / "x.zarr",
            progress=False,
        )
    with pytest.raises(SourceError, match="may be dotted"):
        actextract.extract(
            tiny_cnn(),
            "python:usermod:Factory.",
            layers="fc",
            out=tmp_path / "x.zarr",
            progress=False,
        )


def _loader(**kw) -> torch.utils.data.DataLoader:
    x = _images(20)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.arange(20)), **kw)


def test_a_dataloader_gives_its_samples_in_its_order_and_its_batch_size(tmp_path):
    order = torch.randperm(20, generator=torch.Generator().manual_seed(3)).tolist()
    loader = _loader(batch_size=5, sampler=order)  # a fixed order: the same each time
    store = actextract.extract(
        tiny_cnn(), loader, layers="fc", dtype="float32", out=tmp_path / "l.zarr", progress=False
    )
    assert store.attrs["batch_size"] == 5  # the loader's, not the default
    assert store.ids[:].tolist() == [str(i) for i in order]  # each row's index in the dataset
    assert store.labels[:].tolist() == order  # the labels are the indices here
    x = loader.dataset.tensors[0]
    with torch.no_grad():
        want = tiny_cnn()(x[order]).numpy()
    np.testing.assert_allclose(store["fc"][:], want, rtol=1e-5, atol=1e-6)
    resumed = actextract.extract(  # a fixed order lists the same again: resume takes it
        tiny_cnn(),
        loader,
        layers="fc",
        dtype="float32",
        out=tmp_path / "l.zarr",
        resume=True,
        progress=False,
    )
    assert resumed.complete
    given = actextract.extract(  # a batch size given wins over the loader's
        tiny_cnn(), loader, layers="fc", batch_size=4, out=tmp_path / "b.zarr", progress=False
    )
    assert given.attrs["batch_size"] == 4


def test_a_dataloader_whose_order_changes_is_refused_for_resume(tmp_path):
    seeded = torch.Generator().manual_seed(0)  # moves on as it is used: a new order each time
    loader = _loader(batch_size=4, shuffle=True, generator=seeded)
    store = actextract.extract(
        tiny_cnn(), loader, layers="fc", out=tmp_path / "r.zarr", progress=False
    )
    assert sorted(int(i) for i in store.ids[:]) == list(range(20))  # one run: every sample
    with pytest.raises(
        OptionError,
        match=r"resume \(--resume\) needs the same samples in the same order: .*pass "
        r"shuffle=False, or sampler= a fixed list",
    ):
        actextract.extract(
            tiny_cnn(), loader, layers="fc", out=tmp_path / "r.zarr", resume=True, progress=False
        )


def test_a_dataloader_whose_order_changes_is_refused_for_shards(tmp_path):
    loader = _loader(batch_size=4, shuffle=True)
    with pytest.raises(OptionError, match=r"shard \(--shard\) needs the same samples"):
        actextract.extract(
            tiny_cnn(), loader, layers="fc", out=tmp_path / "s.zarr", shard="0/2", progress=False
        )
