"""Rules for inputs (issue 16, item 7): each input that used to pass silently or fail vaguely
either follows a documented rule or stops the run with exit code 2 (an ActextractError in the
API) and a message naming the input and the fix, before any store is presented as complete.

a. labels; b/c. --channels against --mean/--std and the model's first convolution; d. the
default histogram range when the probe sample is all NaN; e/f. --out below a file, or empty;
g. what a run that computes nothing (or leaves the store to other shards) prints.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from _fixtures import SeededImages, tiny_cnn
from _fixtures import reference as tiny_reference

import actextract
from actextract.cli.commands import main
from actextract.data import rules
from actextract.data.rules import as_label
from actextract.data.samples import Preprocess
from actextract.errors import ActextractError, OptionError
from actextract.stats.parts import read_stats
from actextract.store import location

FIXTURES = str(Path(__file__).parent / "_fixtures.py")
TINY = f"python:{FIXTURES}:tiny_cnn"
RUN = ["--device", "cpu", "--no-progress"]

DATA = """
import torch
from torch.utils.data import Dataset


class Items(Dataset):
    '''Seeded (3, 8, 8) inputs (all NaN where ``nan`` says) with the given labels.'''

    def __init__(self, labels, nan=()):
        self.labels, self.nan = labels, set(nan)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = torch.randn((3, 8, 8), generator=torch.Generator().manual_seed(i))
        return (torch.full_like(x, float("nan")) if i in self.nan else x), self.labels[i]


def fractional():
    return Items([0, 1, 2.5, 0, 1, 2, 0, 1])


def all_nan():
    return Items([0, 1] * 4, nan=range(8))
"""


def _data(tmp_path: Path, name: str) -> str:
    """A python: dataset spec for ``name`` of DATA (written under a fresh module name)."""
    path = tmp_path / f"data_{uuid.uuid4().hex[:8]}.py"
    path.write_text(DATA)
    return f"python:{path}:{name}"


def _no_model(monkeypatch) -> None:
    """Loading the model fails the test: the refusal must come first."""

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(actextract.extraction.api, "load_model", load_model)


def _one_line(output: str) -> str:
    return " ".join(output.split())  # click wraps nothing, but the terminal width may


# -- a. labels ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (3, 3),
        (np.int64(4), 4),
        (torch.tensor(5), 5),
        (torch.tensor([6]), 6),  # one element
        (3.0, 3),  # integral floats are that class
        (np.float32(2.0), 2),
        (True, 1),
        (None, -1),  # no label
    ],
)
def test_integer_labels_and_integral_floats_pass(value, label):
    assert as_label(value) == label and type(as_label(value)) is int


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (2.5, "has a fraction"),
        (float("nan"), "not finite"),
        (torch.tensor(0.5), "has a fraction"),
        ("3", "a string"),
        (torch.tensor([0.0, 1.0]), "has 2 values"),
        (np.array([1, 2, 3]), "has 3 values"),
    ],
)
def test_other_labels_are_refused_naming_the_value(value, why):
    with pytest.raises(ValueError, match="class index") as e:
        as_label(value)
    assert why in str(e.value)


def test_a_fractional_label_stops_the_run_naming_the_sample_and_the_fix(runner, tmp_path):
    out = tmp_path / "labels.zarr"
    args = ["extract", "--model", TINY, "--dataset", _data(tmp_path, "fractional")]
    res = runner.invoke(main, [*args, "--layers", "fc", "--out", str(out), *RUN])
    assert res.exit_code == 2, res.output
    text = _one_line(res.output)
    assert "sample 2 ('2') could not be used" in text
    assert "label 2.5 (has a fraction) is not an integer class index" in text
    assert "target_transform" in text
    assert not actextract.open_store(out).complete  # recorded failed, never complete


def test_integral_float_labels_are_stored_as_integers(tmp_path):
    class Floats(SeededImages):
        def __getitem__(self, i):
            x, label = super().__getitem__(i)
            return x, float(label)  # 0.0, 1.0, 2.0, ...

    store = actextract.extract(
        tiny_cnn(), Floats(n=6), layers="fc", out=tmp_path / "f.zarr", device="cpu"
    )
    assert store.complete and store.labels[:].tolist() == [0, 1, 2, 0, 1, 2]


# -- b, c. channels and normalisation -------------------------------------------------------------


def test_a_one_channel_image_with_the_models_three_value_normalisation_is_refused(
    runner, tmp_path, image_folder
):
    out = tmp_path / "gray.zarr"
    args = ["extract", "--model", "resnet18", "--dataset", f"folder:{image_folder}"]
    res = runner.invoke(main, [*args, "--layers", "conv1", "--channels", "1", "--out", str(out)])
    assert res.exit_code == 2, res.output
    text = _one_line(res.output)
    assert "--channels 1 makes images of 1 channel, but --mean has 3 values" in text
    assert "--std 3" in text and "give --mean and --std 1 value each, or --channels 3" in text
    assert not out.exists()


def test_a_one_channel_input_into_a_three_channel_convolution_is_named(
    runner, tmp_path, image_folder
):
    out = tmp_path / "gray.zarr"
    args = ["extract", "--model", "resnet18", "--dataset", f"folder:{image_folder}"]
    args += ["--layers", "conv1", "--channels", "1", "--mean", "0.5", "--std", "0.25"]
    res = runner.invoke(main, [*args, "--resize", "32", "--crop", "32", "--out", str(out), *RUN])
    assert res.exit_code == 2, res.output
    text = _one_line(res.output)
    assert "the inputs have 1 channel and the model's first convolution 'conv1'" in text
    assert "takes 3: pass --channels 3" in text
    assert not out.exists()


def test_a_two_value_mean_for_a_one_channel_model_names_mean_and_std(runner, tmp_path):
    out = tmp_path / "d.zarr"
    args = ["extract", "--model", "digits-cnn", "--dataset", "digits", "--layers", "conv1"]
    args += ["--mean", "0.5,0.5", "--std", "0.2,0.2", "--limit", "8"]
    res = runner.invoke(main, [*args, "--out", str(out), *RUN])
    assert res.exit_code == 2, res.output
    text = _one_line(res.output)
    assert "--channels 1 makes images of 1 channel, but --mean has 2 values (0.5,0.5)" in text
    assert "--std 2 (0.2,0.2)" in text and "give --mean and --std 1 value each" in text
    assert not out.exists()
    with pytest.raises(OptionError, match="--mean has 2 values"):  # the API says the same
        actextract.extract(
            "digits-cnn",
            "digits",
            layers="conv1",
            out=out,
            preprocess=Preprocess(mean=(0.5, 0.5), std=(0.2, 0.2)),
            limit=8,
        )


def test_one_mean_and_std_value_is_for_every_channel(runner, tmp_path, image_folder):
    out = tmp_path / "rgb.zarr"
    args = ["extract", "--model", TINY, "--dataset", f"folder:{image_folder}", "--layers", "fc"]
    args += ["--resize", "8", "--crop", "8", "--mean", "0.5", "--std", "0.25"]
    res = runner.invoke(main, [*args, "--out", str(out), *RUN])
    assert res.exit_code == 0, res.output
    assert actextract.open_store(out).complete
    with pytest.raises(OptionError, match=r"--std 0\.25,0: give finite values"):
        rules.check_normalize(3, (0.5,), (0.25, 0.0))


# -- d. the default histogram range -------------------------------------------------------------


class _NaNFirst(SeededImages):
    def __getitem__(self, i):
        x, label = super().__getitem__(i)
        return (torch.full_like(x, float("nan")) if i == 0 else x), label


def test_an_all_nan_probe_sample_leaves_the_histogram_range_to_the_finite_samples(tmp_path):
    data = _NaNFirst()
    store = actextract.extract(
        tiny_cnn(),
        data,
        layers="conv1",
        stats="conv1=channel-hist",
        out=tmp_path / "h.zarr",
        device="cpu",
        batch_size=4,
        chunk_rows=4,
    )
    assert store.complete
    edges = read_stats(store, "conv1").edges
    conv1 = tiny_reference(tiny_cnn(), data.x[1:])["conv1"]  # every finite sample's values
    assert edges[0] <= float(conv1.min()) and float(conv1.max()) <= edges[-1]
    span = float(conv1.max() - conv1.min())
    assert edges[-1] - edges[0] < 4 * span  # from the values, not a made-up [0, 1.5]
    assert math.isfinite(edges[0]) and edges[0] < 0  # conv1 has negative values


def test_no_finite_value_in_the_probe_rows_asks_for_a_hist_range(runner, tmp_path):
    out = tmp_path / "nan.zarr"
    args = ["extract", "--model", TINY, "--dataset", _data(tmp_path, "all_nan")]
    args += ["--layers", "conv1", "--stats", "conv1=channel-hist"]
    res = runner.invoke(main, [*args, "--out", str(out), *RUN])
    assert res.exit_code == 2, res.output
    text = _one_line(res.output)
    assert "--stats conv1=channel-hist: the layer's outputs hold no finite value" in text
    assert "pass --hist-range LO,HI" in text
    assert not out.exists()
    res = runner.invoke(main, [*args, "--hist-range", "-1,1", "--out", str(out), *RUN])
    assert res.exit_code == 0, res.output
    store = actextract.open_store(out)
    assert store.complete and read_stats(store, "conv1").edges[[0, -1]].tolist() == [-1, 1]


# -- e, f. --out --------------------------------------------------------------------------------


def test_an_out_below_a_file_is_refused_before_the_model_is_loaded(runner, tmp_path, monkeypatch):
    _no_model(monkeypatch)
    (tmp_path / "somefile.txt").write_text("not a folder")
    for out in ("somefile.txt/run.zarr", "somefile.txt/a/b/run.zarr"):
        res = runner.invoke(main, _extract_args(str(tmp_path / out)))
        assert res.exit_code == 2, res.output
        text = _one_line(res.output)
        assert f"--out '{tmp_path / out}': '{tmp_path / 'somefile.txt'}' is a file" in text
        assert "not a folder; choose another --out" in text
    with pytest.raises(OptionError, match="is a file, not a folder"):
        actextract.extract(tiny_cnn(), SeededImages(), layers="fc", out=tmp_path / out)
    assert (tmp_path / "somefile.txt").read_text() == "not a folder"


def test_an_out_whose_folder_cannot_be_created_is_refused_first(runner, tmp_path, monkeypatch):
    _no_model(monkeypatch)
    monkeypatch.setattr(location.os, "access", lambda path, mode: Path(path) != tmp_path)
    res = runner.invoke(main, _extract_args(str(tmp_path / "new" / "run.zarr")))
    assert res.exit_code == 2, res.output
    text = _one_line(res.output)
    assert f"cannot create '{tmp_path / 'new'}' in the folder '{tmp_path}'" in text
    assert "not writable" in text and not (tmp_path / "new").exists()


def test_an_empty_out_asks_for_a_path(runner, monkeypatch):
    _no_model(monkeypatch)
    res = runner.invoke(main, _extract_args(""))
    assert res.exit_code == 2, res.output
    assert "--out is empty; give a path for the store" in res.output
    assert "already exists" not in res.output
    with pytest.raises(ActextractError, match="--out is empty"):
        actextract.extract(tiny_cnn(), SeededImages(), layers="fc", out="")


def _extract_args(out: str, *more: str) -> list[str]:
    return ["extract", "--model", "digits-cnn", "--dataset", "digits", "--layers", "conv1",
            "--chunk-rows", "64", *more, "--out", out, *RUN]  # fmt: skip


# -- g. a run that computes nothing, or leaves the store to other shards -------------------------


def test_a_shard_with_no_blocks_and_a_resume_of_a_complete_store_say_so(runner, tmp_path):
    out = str(tmp_path / "s.zarr")
    res = runner.invoke(main, _extract_args(out, "--limit", "64", "--shard", "0/2"))
    assert res.exit_code == 0, res.output
    text = _one_line(res.output)
    assert "0 images" not in text
    assert "nothing to do: shard 0/2 was dealt no row blocks (the store has 1 row block" in text
    assert "the store is incomplete: 0 of 1 row block done" in text
    assert not actextract.open_store(out).complete

    res = runner.invoke(main, _extract_args(out, "--limit", "64", "--shard", "1/2"))
    assert res.exit_code == 0 and "64 images in" in res.output, res.output
    assert actextract.open_store(out).complete

    res = runner.invoke(main, _extract_args(out, "--limit", "64", "--resume"))
    assert res.exit_code == 0, res.output
    text = _one_line(res.output)
    assert "0 images" not in text
    assert "nothing left to do: every row block of this run (1 row block) was already " in text
    assert "written; the store is complete" in text
    store = actextract.open_store(out)
    assert store.complete and store.attrs["summary"]["images"] == 64  # the run that wrote it


def test_a_shard_that_finishes_first_reports_its_own_images(runner, tmp_path):
    out = str(tmp_path / "t.zarr")
    res = runner.invoke(main, _extract_args(out, "--limit", "256", "--shard", "1/2"))
    assert res.exit_code == 0, res.output
    text = _one_line(res.output)
    assert "128 images in" in text and "0 images in" not in text
    assert "shard 1/2 wrote its 2 row blocks; the store is incomplete: 2 of 4 row blocks" in text
    assert "the other shards write the rest" in text
    assert not actextract.open_store(out).complete
    res = runner.invoke(main, _extract_args(out, "--limit", "256", "--shard", "1/2"))
    assert "nothing left to do: every row block of shard 1/2 (2 row blocks)" in res.output
    res = runner.invoke(main, _extract_args(out, "--limit", "256", "--shard", "0/2"))
    assert res.exit_code == 0 and "128 images in" in res.output, res.output
    assert actextract.open_store(out).complete
