"""One frozen ExtractOptions for an extraction: built and checked once at extract()'s entry,
its keyword names the CLI's options, the preprocessing options keywords too."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from _fixtures import SeededImages, tiny_cnn

import actextract
from actextract.cli.commands import extract as extract_command
from actextract.data.samples import Preprocess
from actextract.errors import OptionError
from actextract.extraction.options import PREPROCESS, ExtractOptions

RUN = dict(device="cpu", progress=False)


def test_every_extract_option_of_the_cli_is_a_keyword_of_the_same_name():
    keywords = {f.name for f in dataclasses.fields(ExtractOptions)} | set(PREPROCESS)
    for param in extract_command.params:
        flag = max(param.opts, key=len).removeprefix("--").replace("-", "_")
        assert param.name == flag, f"--{flag} reaches extract() as {param.name}"
        assert param.name in keywords, f"--{flag} is no keyword of extract()"


def test_the_options_are_frozen_and_checked_when_built(tmp_path):
    options = ExtractOptions("digits-cnn", "digits", layers="fc1", out=tmp_path / "s.zarr")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch_size = 8  # type: ignore[misc]
    with pytest.raises(OptionError, match=r"batch_size \(--batch-size\) 0 must be a positive"):
        ExtractOptions("digits-cnn", "digits", layers="fc1", out=tmp_path / "s.zarr", batch_size=0)


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        (dict(batch_size=0), r"batch_size \(--batch-size\) 0"),
        (dict(limit=-1), r"limit \(--limit\) -1"),
        (dict(resume=True, overwrite=True), r"resume \(--resume\).*overwrite \(--overwrite\)"),
        (dict(batch_sise=8), r"unknown keyword 'batch_sise'; close matches: batch_size"),
        (dict(store="fc", store_layers="fc"), r"pass store= or its older name store_layers="),
        (dict(out=""), r"--out is empty"),
    ],
)
def test_a_bad_keyword_is_refused_before_anything_is_loaded(tmp_path, keywords, message):
    class Untouchable:  # a model that fails the test if it is ever used
        def __getattr__(self, name):
            raise AssertionError("the model was loaded before the options were checked")

    settings = dict(layers="fc", out=tmp_path / "s.zarr", **RUN) | keywords
    with pytest.raises(OptionError, match=message):
        actextract.extract(Untouchable(), SeededImages(), **settings)
    assert not (tmp_path / "s.zarr").exists()


def test_store_and_its_older_name_store_layers_write_the_same(tmp_path):
    a = actextract.extract(
        tiny_cnn(), SeededImages(), layers="conv1,fc", store="fc", stats="conv1=class-mean",
        out=tmp_path / "a.zarr", **RUN,
    )  # fmt: skip
    b = actextract.extract(
        tiny_cnn(), SeededImages(), layers="conv1,fc", store_layers="fc",
        stats="conv1=class-mean", out=tmp_path / "b.zarr", **RUN,
    )  # fmt: skip
    assert a.layers == b.layers == ["fc"]
    np.testing.assert_array_equal(a["fc"][:], b["fc"][:])


def test_preprocessing_keywords_are_the_cli_options_and_fill_a_given_preprocess(tmp_path):
    keywords = actextract.extract(
        "digits-cnn", "digits", layers="fc1", limit=8, mean=(0.5,), std=(0.25,),
        out=tmp_path / "k.zarr", **RUN,
    )  # fmt: skip
    whole = actextract.extract(
        "digits-cnn", "digits", layers="fc1", limit=8,
        preprocess=Preprocess(mean=(0.5,), std=(0.25,)), out=tmp_path / "p.zarr", **RUN,
    )  # fmt: skip
    both = actextract.extract(
        "digits-cnn", "digits", layers="fc1", limit=8, preprocess=Preprocess(mean=(0.5,)),
        std=(0.25,), out=tmp_path / "b.zarr", **RUN,
    )  # fmt: skip
    transform = keywords.attrs["dataset"]["transform"]
    assert "0.25" in str(transform)
    assert whole.attrs["dataset"]["transform"] == both.attrs["dataset"]["transform"] == transform
    np.testing.assert_array_equal(keywords["fc1"][:], whole["fc1"][:])
