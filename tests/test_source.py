"""Dataset specs, transforms, and the loader's batches."""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import _png

from actextract.data.samples import BadSample, Preprocess, Sample, collate, make_loader
from actextract.data.source import open_source, wrap_dataset
from actextract.errors import SourceError


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


def test_loose_images_beside_class_folders_are_refused(image_folder):
    """Read as class folders, the loose images would be dropped; read flat, the subfolders'."""
    for name in ("w.png", "x.jpg", "y.PNG", "z.png"):
        _png(image_folder / name, seed=7)
    _png(image_folder / "deep" / "more" / "0.png", seed=8)  # found all the way down
    for cls in ("e", "f", "g"):
        _png(image_folder / cls / "0.png", seed=9)
    (image_folder / "notes").mkdir()  # no image below it: not a class
    (image_folder / "notes" / "a.txt").write_text("not an image")
    with pytest.raises(SourceError) as info:
        open_source(f"folder:{image_folder}")
    message = str(info.value)
    assert f"folder '{image_folder}' holds 4 images at its top level" in message
    assert "(w.png, x.jpg, y.PNG and 1 more)" in message
    assert "6 subfolders with images (cat/, deep/, dog/, e/, f/ and 1 more)" in message
    assert "notes" not in message
    assert "Move the loose images into a class subfolder (or out of the folder)" in message
    assert "point --dataset at a folder that holds only one kind" in message


def test_a_flat_folder_with_image_less_subfolders_stays_flat(tmp_path):
    root = tmp_path / "flat"
    for name in ("a.png", "b.png"):
        _png(root / name, seed=1, size=(10, 8))
    (root / ".ipynb_checkpoints").mkdir()
    (root / "notes" / "deeper").mkdir(parents=True)
    (root / "notes" / "todo.txt").write_text("x")
    (root / "notes" / "deeper" / "data.csv").write_text("1,2")
    src = open_source(f"folder:{root}", Preprocess(resize=0, crop=0))
    items = [src.dataset[i] for i in range(len(src))]
    assert [s.id for s in items] == ["a.png", "b.png"] and src.classes is None
    assert all(isinstance(s, Sample) and s.label == -1 for s in items)


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


RUN_SHAPE_ERROR = (
    "input shape (3, 5, 5) differs from the run's (3, 4, 4) (that of the first sample, which "
    "decided the layers' shapes); pass --resize and --crop to bring every input to one size"
)


def test_collate_keeps_the_runs_shape_even_where_the_batch_has_another():
    """The run's arrays are shaped by the first sample: a batch's most common shape may differ."""
    items = [
        Sample(torch.zeros(3, 4, 4), 0, 0, "a"),
        Sample(torch.zeros(3, 5, 5), 1, 1, "b"),
        BadSample(2, "c", "broken"),
        Sample(torch.ones(3, 4, 4), 3, 3, "d"),
        Sample(torch.zeros(3, 5, 5), 4, 4, "e"),
        Sample(torch.zeros(3, 5, 5), 5, 5, "f"),
    ]
    for shape in [(3, 4, 4), torch.Size([3, 4, 4])]:
        batch = collate(items, shape=shape)
        assert batch.inputs.shape == (2, 3, 4, 4) and batch.ids == ["a", "d"]
        assert torch.equal(batch.inputs[1], items[3].input)
        assert batch.indices.tolist() == [0, 3] and batch.labels.tolist() == [0, 3]
        assert [b.id for b in batch.bad] == ["b", "c", "e", "f"]
        assert batch.bad[0].error == RUN_SHAPE_ERROR and batch.bad[1].error == "broken"
    # without the run's shape: the batch's most common one
    batch = collate(items)
    assert batch.ids == ["b", "e", "f"] and [b.id for b in batch.bad] == ["a", "c", "d"]
    assert batch.bad[0].error.startswith(
        "input shape (3, 4, 4) differs from the batch's (3, 5, 5);"
    )


@pytest.mark.parametrize("num_workers", [0, 1])
def test_the_loader_checks_the_runs_input_shape(num_workers):
    sizes = [4, 5, 5, 4, 5]  # the first sample is the minority size
    src = wrap_dataset([torch.full((3, n, n), float(i)) for i, n in enumerate(sizes)])
    loader = make_loader(
        src, range(5), batch_size=3, num_workers=num_workers, input_shape=(3, 4, 4)
    )
    again = pickle.loads(pickle.dumps(loader.collate_fn))  # as a spawned worker gets it
    assert again([src.dataset[1], src.dataset[3]]).ids == ["3"]
    batches = list(loader)
    assert [b.ids for b in batches] == [["0"], ["3"]]
    assert [[s.id for s in b.bad] for b in batches] == [["1", "2"], ["4"]]
    assert batches[0].bad[0].error == RUN_SHAPE_ERROR
    assert torch.equal(batches[1].inputs[0], src.dataset[3].input)


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
