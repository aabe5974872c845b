"""Inputs beyond one tensor: tuples and dicts of tensors, how they batch and pad, and how the
model is called with them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actextract.data.inputs import (
    Padding,
    as_inputs,
    batch_len,
    call,
    describe,
    map_tensors,
    per_sample_shape,
    positional,
    split_label,
    stack,
)
from actextract.data.samples import Sample, SampleDataset


def test_what_a_dataset_yields_becomes_a_tensor_a_tuple_or_a_dict():
    assert torch.equal(as_inputs([1, 2, 3]), torch.tensor([1, 2, 3]))  # token ids: one tensor
    assert as_inputs([0.5]).dtype == torch.float32  # as torch.as_tensor makes it, as before
    pair = as_inputs((np.zeros((2, 3), np.float32), torch.ones(4)))
    assert isinstance(pair, tuple) and [t.shape for t in pair] == [(2, 3), (4,)]
    enc = as_inputs({"input_ids": [5, 6], "attention_mask": np.array([1, 1])})
    assert set(enc) == {"input_ids", "attention_mask"} and enc["input_ids"].dtype == torch.int64


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({1: torch.ones(2)}, "key 1 is a int, not a str"),
        ({}, "no keys"),
        ({"input_ids": ["a", "b"]}, "input 'input_ids' is a list"),
        (object(), "the input is a object"),
    ],
)
def test_what_cannot_be_an_input_is_named(bad, says):
    with pytest.raises(ValueError, match=says):
        as_inputs(bad)


def test_a_dict_samples_label_key_is_its_label_not_an_input():
    rest, label = split_label({"input_ids": [1, 2], "label": 3})
    assert rest == {"input_ids": [1, 2]} and label == 3
    assert split_label({"input_ids": [1]}) == ({"input_ids": [1]}, None)
    with pytest.raises(ValueError, match="keep one label key"):
        split_label({"label": 1, "labels": 1})


def test_a_batch_of_each_structure_and_the_call_that_takes_it():
    xs = [torch.full((2, 3), float(i)) for i in range(4)]
    b = stack(xs)
    assert b.shape == (4, 2, 3) and batch_len(b) == 4 and per_sample_shape(b) == (4, 2, 3)
    t = stack([(x, x[0]) for x in xs])
    assert [u.shape for u in t] == [(4, 2, 3), (4, 3)] and batch_len(t) == 4
    d = stack([{"a": x, "b": x[0]} for x in xs])
    assert {k: v.shape for k, v in d.items()} == {"a": (4, 2, 3), "b": (4, 3)}

    def f(a, b=None):
        return ("a", a.shape, None if b is None else b.shape)

    assert call(f, b) == ("a", (4, 2, 3), None)
    assert call(f, t) == ("a", (4, 2, 3), (4, 3))
    assert call(f, {"b": d["b"], "a": d["a"]}) == ("a", (4, 2, 3), (4, 3))  # by name
    doubled = map_tensors(lambda u: u * 2, d)
    assert torch.equal(doubled["a"], d["a"] * 2) and set(doubled) == {"a", "b"}
    assert describe(d) == "{a: (4, 2, 3) float32, b: (4, 3) float32}"


@pytest.mark.parametrize(
    ("items", "says"),
    [
        ([torch.ones(2), (torch.ones(2),)], "sample 1 of the batch is a tuple input"),
        ([(torch.ones(2),), (torch.ones(2), torch.ones(2))], "has 2 inputs, the first 1"),
        ([{"a": torch.ones(2)}, {"b": torch.ones(2)}], r"keys \['b'\], the first \['a'\]"),
        ([torch.ones(2), torch.ones(3)], r"the input is \(2,\) in one sample and \(3,\)"),
        ([{"input_ids": torch.ones(2)}, {"input_ids": torch.ones(3)}], "attention_mask"),
    ],
)
def test_samples_that_do_not_make_one_batch_say_why(items, says):
    with pytest.raises(ValueError, match=says):
        stack(items, Padding())


def _tokens(n: int, start: int) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.arange(start, start + n),
        "attention_mask": torch.ones(n, dtype=torch.int64),
        "pixel_values": torch.zeros(7),  # not of the tokens' length: left as it is
    }


@pytest.mark.parametrize("side", ["right", "left"])
def test_token_sequences_are_padded_on_the_tokenizers_side_with_the_mask_at_zero(side):
    batch = stack([_tokens(3, 10), _tokens(1, 20)], Padding(side=side, values={"input_ids": 99}))
    ids, mask = batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    if side == "right":
        assert ids == [[10, 11, 12], [20, 99, 99]] and mask == [[1, 1, 1], [1, 0, 0]]
    else:
        assert ids == [[10, 11, 12], [99, 99, 20]] and mask == [[1, 1, 1], [0, 0, 1]]
    assert batch["pixel_values"].shape == (2, 7)


def test_padding_to_a_fixed_length_and_what_is_longer():
    batch = stack([_tokens(2, 0), _tokens(3, 5)], Padding(to=4))
    assert batch["input_ids"].shape == (2, 4)
    assert batch["attention_mask"].sum(1).tolist() == [2, 3]
    with pytest.raises(ValueError, match="sample 1 of the batch has 5 tokens, more than"):
        stack([_tokens(2, 0), _tokens(5, 0)], Padding(to=4))
    with pytest.raises(ValueError, match="choose 'left' or 'right'"):
        Padding(side="middle")
    with pytest.raises(ValueError, match="one of \\(tokens,\\) per sample"):
        stack([{"attention_mask": torch.ones(1, 3)}] * 2, Padding())


class _Rows(torch.utils.data.Dataset):
    """A Hugging Face dataset's way: one dict per row, its label under "label"."""

    def __init__(self, n: int = 4):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return {"input_ids": [i, i + 1, 2], "attention_mask": [1, 1, 1], "label": i % 2}


def test_a_dict_row_is_a_sample_with_its_label():
    sample = SampleDataset(_Rows(), transform=None, ids=None)[3]
    assert isinstance(sample, Sample) and sample.label == 1
    assert set(sample.input) == {"input_ids", "attention_mask"}
    assert sample.input["input_ids"].tolist() == [3, 4, 2]


class _Tagger(torch.nn.Module):
    """A text model's shape: token ids and their mask by keyword, per-token states."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(16, 8)
        self.mix = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask):
        h = torch.relu(self.mix(self.embed(input_ids)))
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


class _Tokens(torch.utils.data.Dataset):
    """Fixed-length rows (the tokenizer's padding='max_length'), right-padded with 0."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i):
        n = 2 + i % 4
        ids = [(i * 7 + k) % 15 + 1 for k in range(n)] + [0] * (6 - n)
        return {"input_ids": ids, "attention_mask": [1] * n + [0] * (6 - n), "label": i % 3}


def _cloned_by_hooks(model, batch, names):
    """What each module produced, cloned when produced, in float32."""
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    handles = [
        modules[n].register_forward_hook(
            lambda _m, _i, out, n=n: seen.setdefault(n, out.detach().clone().float())
        )
        for n in names
    ]
    try:
        with torch.no_grad():
            call(model, batch)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_a_dict_input_model_stores_what_each_layer_produced(tmp_path, method):
    import actextract

    model = _Tagger().eval()
    store = actextract.extract(
        model,
        _Tokens(),
        layers=["embed", "mix", "head"],
        dtype="float32",
        batch_size=4,
        capture=method,
        out=tmp_path / "s.zarr",
    )
    rows = [SampleDataset(_Tokens(), transform=None, ids=None)[i].input for i in range(10)]
    want = _cloned_by_hooks(model, stack(rows), ["embed", "mix", "head"])
    for name, value in want.items():
        np.testing.assert_array_equal(store[name][:], value.numpy())
    assert store.labels[:].tolist() == [i % 3 for i in range(10)]


def test_a_tuple_input_model_gets_its_inputs_by_position(tmp_path):
    import actextract

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 2), torch.nn.Linear(3, 2)

        def forward(self, x, y):
            return self.a(x) - self.b(y)

    torch.manual_seed(1)
    data = [((torch.randn(4), torch.randn(3)), i % 2) for i in range(6)]
    model = Two().eval()
    store = actextract.extract(
        model, data, layers=["a", "b"], dtype="float32", out=tmp_path / "t.zarr"
    )
    batch = stack([d[0] for d in data])
    want = _cloned_by_hooks(model, batch, ["a", "b"])
    np.testing.assert_array_equal(store["a"][:], want["a"].numpy())
    np.testing.assert_array_equal(store["b"][:], want["b"].numpy())


def test_record_refuses_dict_inputs_with_what_to_do(tmp_path):
    import actextract
    from actextract.errors import OptionError

    model = torch.nn.Sequential(torch.nn.Embedding(8, 4))
    with pytest.raises(OptionError, match="wrap the model in a module whose forward takes one"):
        rec = actextract.Recorder(model, layers="0", probe=_Rows(), out=tmp_path / "r.zarr")
        rec.capture(0)


def test_a_dict_batch_as_positional_arguments_in_the_functions_order():
    def f(a, b, c=7):
        return a, b, c

    x = {"b": torch.ones(1), "a": torch.zeros(1)}
    args = positional(f, x)
    assert [float(v) if isinstance(v, torch.Tensor) else v for v in args] == [0.0, 1.0, 7]
    with pytest.raises(TypeError):
        positional(f, {"z": torch.ones(1)})


def test_a_left_padded_batch_gets_the_positions_of_its_real_tokens():
    from actextract.data.inputs import with_positions

    class Takes(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, position_ids=None):
            return position_ids

    left = {"input_ids": torch.ones(2, 4, dtype=torch.long)}
    left["attention_mask"] = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert with_positions(Takes(), left)["position_ids"].tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]
    assert call(Takes(), left).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]  # as the model gets it
    right = {**left, "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])}
    assert with_positions(Takes(), right) is right  # the real tokens are first: 0, 1, ...
    given = {**left, "position_ids": torch.zeros(2, 4, dtype=torch.long)}
    assert with_positions(Takes(), given) is given  # the batch's own are kept

    def takes_none(input_ids, attention_mask=None):
        return input_ids

    assert with_positions(takes_none, left) is left  # a model without absolute positions
