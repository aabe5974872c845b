"""Dataset specs, transforms, and the loader's batches."""

from __future__ import annotations

import pytest
import torch

from actextract.errors import SourceError
from actextract.samples import BadSample, Preprocess, Sample, collate, make_loader
from actextract.source import open_source


def test_digits_is_the_embedded_default():
    src = open_source("digits")
    assert len(src) == 1797 and src.classes == tuple("0123456789")
    x = torch.stack([src.dataset[i].input for i in range(len(src))])
    assert x.shape == (1797, 1, 28, 28)
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.1  # normalised
    first = src.dataset[0]
    assert (first.label, first.index, first.id) == (0, 0, "0")


def test_digits_follow_a_model_that_wants_rgb_224():
    src = open_source("digits", Preprocess(channels=3, resize=224, crop=224))
    assert src.dataset[5].input.shape == (3, 224, 224)
    assert "resize(224)" in src.transform


def test_synthetic_is_seeded_per_index():
    a, b = open_source("synthetic:10:3:4:4"), open_source("synthetic:10:3:4:4")
    assert torch.equal(a.dataset[7].input, b.dataset[7].input)
    assert not torch.equal(a.dataset[7].input, a.dataset[6].input)
    assert a.dataset[7].label == 7


@pytest.mark.parametrize("spec", ["synthetic:10", "synthetic:0:3:4:4", "synthetic:a:b"])
def test_malformed_synthetic(spec):
    with pytest.raises(SourceError, match="synthetic:N:C:H:W"):
        open_source(spec)


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(SourceError, match=r"unknown dataset 'imgnet:/x'.*folder:PATH"):
        open_source("imgnet:/x")


def test_torchvision_dataset_without_files_says_it_never_downloads(tmp_path):
    with pytest.raises(SourceError, match="never downloads"):
        open_source(f"mnist:{tmp_path}")
    with pytest.raises(SourceError, match="split 'val' is not 'train' or 'test'"):
        open_source(f"cifar10:{tmp_path}:val")


def test_flat_folder_ids_are_relative_paths(tmp_path, image_folder):
    flat = image_folder / "cat"
    src = open_source(f"folder:{flat}", Preprocess(resize=16, crop=16))
    items = [src.dataset[i] for i in range(len(src))]
    assert [s.id for s in items] == ["0.png", "1.png", "2.png"]
    assert all(s.label == -1 and s.input.shape == (3, 16, 16) for s in items)
    assert src.classes is None


def test_class_folders_and_grayscale(image_folder):
    src = open_source(f"folder:{image_folder}", Preprocess(channels=1, resize=10, crop=0))
    s = src.dataset[3]
    assert s.id == "dog/0.png" and s.label == 1 and s.input.shape[0] == 1
    assert s.input.shape[1] == 10  # shorter side (36 px) to 10, no crop: 10 x 11


def test_a_corrupt_file_becomes_a_bad_sample(image_folder):
    (image_folder / "cat" / "1.png").write_bytes(b"garbage")
    src = open_source(f"folder:{image_folder}", Preprocess(resize=8, crop=8))
    bad = src.dataset[1]
    assert isinstance(bad, BadSample) and bad.id == "cat/1.png"
    assert "cannot identify image file" in bad.error


def test_collate_turns_odd_shapes_into_bad_samples():
    items = [
        Sample(torch.zeros(3, 4, 4), 0, 0, "a"),
        Sample(torch.zeros(3, 5, 5), 1, 1, "b"),
        Sample(torch.zeros(3, 4, 4), 2, 2, "c"),
        BadSample(3, "d", "broken"),
    ]
    batch = collate(items)
    assert batch.inputs.shape == (2, 3, 4, 4) and batch.ids == ["a", "c"]
    assert [b.id for b in batch.bad] == ["b", "d"]
    assert "pass --resize and --crop" in batch.bad[0].error


def test_loader_yields_rows_in_order_with_workers():
    src = open_source("synthetic:20:1:2:2")
    loader = make_loader(src, range(3, 20), batch_size=8, num_workers=2)
    batches = list(loader)
    assert [b.indices.tolist() for b in batches] == [list(range(3, 11)), list(range(11, 19)), [19]]
    assert torch.equal(batches[0].inputs[0], src.dataset[3].input)


def test_python_dataset_spec(fixtures_file):
    src = open_source(f"python:{fixtures_file}:seeded_images")
    assert len(src) == 16 and src.dataset[4].label == 1
    with pytest.raises(SourceError, match="has no attribute 'nope'"):
        open_source(f"python:{fixtures_file}:nope")
    with pytest.raises(SourceError, match="cannot import module"):
        open_source("python:no_such_module_xyz:f")
