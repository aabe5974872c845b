"""Globs by path rules: ``*`` within one dotted level, ``**`` across levels."""

from __future__ import annotations

import pytest

from actextract.core.names import count_matches, match_names, wider_hint

NAMES = [
    "conv1",
    "layer1",
    "layer1.0",
    "layer1.0.conv1",
    "layer1.0.conv2",
    "layer1.1.conv2",
    "layer2.0.conv2",
    "layer2.0.downsample.0",
    "features",
    "features.0",
    "features.0.0",
    "features.1",
    "features.1.block.0",
    "fc",
]


def pick(*patterns: str) -> list[str]:
    return match_names(patterns, NAMES, lambda p: LookupError(p))


def test_a_star_stays_within_one_level():
    assert pick("features.*") == ["features.0", "features.1"]  # the direct children
    assert pick("*") == ["conv1", "layer1", "features", "fc"]  # top-level names
    assert pick("layer?.0") == ["layer1.0"]
    assert pick("conv*") == ["conv1"]


def test_a_double_star_crosses_levels_none_included():
    assert pick("layer*.**.conv2") == ["layer1.0.conv2", "layer1.1.conv2", "layer2.0.conv2"]
    assert pick("**.conv2") == ["layer1.0.conv2", "layer1.1.conv2", "layer2.0.conv2"]
    assert pick("features.**") == [n for n in NAMES if n.startswith("features")]
    assert pick("features.**.0") == ["features.0", "features.0.0", "features.1.block.0"]
    assert pick("**") == NAMES


def test_sets_exact_names_and_order():
    assert pick("layer[12].0") == ["layer1.0"]  # layer2.0 itself is not a name here
    assert pick("fc", "conv1", "fc") == ["conv1", "fc"]  # the names' order, once each
    assert match_names(["lstm[1]"], ["lstm", "lstm[1]"], LookupError) == ["lstm[1]"]


def test_counts_and_the_hint_for_a_glob_that_matched_nothing():
    assert count_matches(["features.*", "**.conv2", "nope*"], NAMES) == {
        "features.*": 2,
        "**.conv2": 3,
        "nope*": 0,
    }
    with pytest.raises(LookupError):
        pick("layer*.conv2")
    assert "'layer*.**.conv2' matches at any depth" in wider_hint("layer*.conv2", NAMES)
    assert wider_hint("conv2", NAMES) == ""  # not a glob: no hint
