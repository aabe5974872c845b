"""Trim: a text batch computed at the length of its real tokens (the padding no sample of the
batch needs cut on either side), its outputs put back at the run's length; only where every
layer's shape follows the length and nothing is stored with its padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import actextract
from actextract.model.trim import Trim
from tests import _hf


def test_a_batch_keeps_the_columns_between_its_first_and_last_real_token():
    trim = Trim(6, {"h": (6, 2), "pooled": (2,)}, {"h": (6, 2)})
    left = {
        "input_ids": torch.arange(12).reshape(2, 6),
        "attention_mask": torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]]),
    }
    cut, span = trim.cut(left)
    assert span == (3, 6)
    assert cut["input_ids"].tolist() == [[3, 4, 5], [9, 10, 11]]
    assert trim.mask(cut, span).tolist() == left["attention_mask"].tolist()
    acts = {"h": torch.ones(2, 3, 2), "pooled": torch.ones(2, 2)}
    back, raw = trim.put_back(acts, {"h": torch.ones(2, 3, 2)}, span)
    assert back["h"].shape == (2, 6, 2) and back["pooled"] is acts["pooled"]
    assert back["h"][:, :3].eq(0).all() and back["h"][:, 3:].eq(1).all()  # at their columns
    assert raw["h"].shape == (2, 6, 2)
    right = {**left, "attention_mask": torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]])}
    assert trim.cut(right)[1] == (0, 3)
    full = {**left, "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    assert trim.cut(full)[0] is full and trim.cut(full)[1] is None  # nothing to cut
    image = torch.zeros(2, 6)
    assert trim.cut(image)[0] is image and trim.cut(image)[1] is None  # not text


class _Seen(torch.nn.Module):
    """Records the length of each batch its wrapped model is called with."""

    def __init__(self, model):
        super().__init__()
        self.model, self.lengths = model, []

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        self.lengths.append(input_ids.shape[1])
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    pytest.importorskip("transformers")
    from actextract.model.zoo import load_model

    loaded = load_model(f"hf:{_hf.gpt2(tmp_path_factory.mktemp('trim') / 'gpt2', 'left')}")
    enc = loaded.tokenizer(_hf.DOCS, padding="max_length", max_length=24, return_tensors="pt")
    rows = [{k: v[i] for k, v in enc.items()} for i in range(len(_hf.DOCS))]
    return loaded, rows, enc["attention_mask"].bool()


def test_a_text_batch_is_computed_at_the_length_of_its_real_tokens(gpt2, tmp_path):
    loaded, rows, mask = gpt2
    seen = _Seen(loaded.module)
    store = actextract.extract(
        seen,
        rows,
        layers="model.h.1",
        reduce="tokens",
        capture="hooks",
        batch_size=2,
        dtype="float32",
        out=str(tmp_path / "cut.zarr"),
        progress=False,
    )
    longest = [int(mask[i : i + 2].sum(1).max()) for i in range(0, len(rows), 2)]
    assert seen.lengths[-3:] == longest and max(longest) < 24  # each batch at its own length
    alone = []
    for doc in _hf.DOCS:
        with torch.no_grad():
            out = loaded.module(
                **loaded.tokenizer(doc, return_tensors="pt"), output_hidden_states=True
            )
        alone.append(out.hidden_states[2][0].numpy())
    rows_ = actextract.token_activations(store, "model.h.1")
    np.testing.assert_allclose(rows_, np.concatenate(alone), rtol=1e-5, atol=1e-5)
    assert store._node("tokens/mask")[:].shape == (len(rows), 24)  # the run's length


def test_a_layer_stored_with_its_padding_keeps_every_column(gpt2, tmp_path):
    loaded, rows, _ = gpt2
    seen = _Seen(loaded.module)
    actextract.extract(
        seen,
        rows,
        layers="model.h.1",  # --reduce none: (N, T, D), every column the model's own
        capture="hooks",
        batch_size=2,
        dtype="float32",
        out=str(tmp_path / "padded.zarr"),
        progress=False,
    )
    assert set(seen.lengths) == {24}


class _Strided(torch.nn.Module):
    """Token embeddings through a stride-2 convolution: (D, T/2), a shape the length does not
    give (a batch of 5 tokens would be 3 long, not 5)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 4)
        self.conv = torch.nn.Conv1d(4, 4, 3, stride=2, padding=1)
        self.lengths: list[int] = []

    def forward(self, input_ids, attention_mask):
        self.lengths.append(input_ids.shape[1])
        h = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        return self.conv(h.transpose(1, 2)).transpose(1, 2)


def test_a_model_whose_shapes_do_not_follow_the_length_keeps_it(tmp_path, caplog):
    rows = [
        {"input_ids": torch.arange(8) % 16, "attention_mask": (torch.arange(8) < 2 + i).long()}
        for i in range(4)
    ]
    model = _Strided()
    caplog.set_level("INFO", logger="actextract.model.trim")
    store = actextract.extract(
        model,
        rows,
        layers="conv",
        reduce="conv=mean",
        batch_size=2,
        dtype="float32",
        capture="hooks",
        out=str(tmp_path / "strided.zarr"),
        progress=False,
    )
    assert set(model.lengths[-2:]) == {8} and store["conv"].shape == (4, 4)
    assert "batches keep all 8 tokens: layer 'conv' is (4, 1) at 2 tokens" in caplog.text
