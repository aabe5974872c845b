"""NaN and Inf in the activations: rows counted per layer, as stored; or the run stopped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _fixtures import reference as tiny_reference
from _fixtures import tiny_cnn
from torch.utils.data import Dataset

import actextract

# -- NaN and Inf in the activations ------------------------------------------------------------
N_NONFINITE = 12
TINY_LAYERS = ["conv1", "bn1", "block.0", "fc"]


class Poisoned(Dataset):
    """Seeded TinyCNN inputs (3, 8, 8) with labels i % 3, some of them poisoned:

    3: one NaN pixel (NaN in every layer, at any dtype);
    7: 1e30 everywhere (finite in float32 throughout, beyond float16's range);
    10: one 1e6 pixel (conv outputs beyond float16's 65504, finite in float32; fc in range);
    11: a finite input (±3e38) that overflows float32 in conv1 (Inf downstream at any dtype).
    """

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randn((N_NONFINITE, 3, 8, 8), generator=g)
        x[3, 1, 2, 5] = float("nan")
        x[7] = 1e30
        x[10, 1, 4, 4] = 1e6
        x[11] = 0
        x[11, :, 3:6, 3:6] = 3e38 * torch.sign(tiny_cnn().conv1.weight[0].detach())
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], i % 3


def _nonfinite_rows(dtype: torch.dtype) -> dict[str, np.ndarray]:
    """{layer: (N,) bool} rows with NaN/Inf once cast to ``dtype``, by a plain forward."""
    x = Poisoned().x
    acts = tiny_reference(tiny_cnn(), x)
    return {
        name: ~np.isfinite(acts[name].to(dtype).numpy().reshape(len(x), -1)).all(1)
        for name in TINY_LAYERS
    }


TINY = dict(
    layers=TINY_LAYERS,
    batch_size=4,
    chunk_rows=4,
    device="cpu",
    progress=False,
)


def test_the_poisoned_inputs_are_what_the_nonfinite_tests_need():
    """The fixture itself: each poisoned sample does what its docstring says."""
    f16, f32 = _nonfinite_rows(torch.float16), _nonfinite_rows(torch.float32)
    assert all(np.flatnonzero(f32[n]).tolist() == [3, 11] for n in TINY_LAYERS), f32
    assert np.isfinite(Poisoned().x[11].numpy()).all()
    assert np.flatnonzero(f16["conv1"]).tolist() == [3, 7, 10, 11]
    assert np.flatnonzero(f16["block.0"]).tolist() == [3, 7, 10, 11]
    assert np.flatnonzero(f16["fc"]).tolist() == [3, 7, 11]


@pytest.mark.parametrize(
    ("dtype", "torch_dtype"), [("float16", torch.float16), ("float32", torch.float32)]
)
def test_nonfinite_rows_are_counted_per_layer(tmp_path, dtype, torch_dtype):
    store = actextract.extract(
        tiny_cnn(), Poisoned(), **TINY, dtype=dtype, out=tmp_path / "nan.zarr"
    )
    expected = {name: int(rows.sum()) for name, rows in _nonfinite_rows(torch_dtype).items()}
    assert store.complete
    assert store.attrs["nonfinite"] == expected
    assert store.attrs["summary"]["nonfinite"] == expected
    assert store.nonfinite() == expected
    if dtype == "float32":  # the float16-only overflows (7, 10) are not counted
        assert expected == dict.fromkeys(TINY_LAYERS, 2)
    else:
        assert expected == {"conv1": 4, "bn1": 4, "block.0": 4, "fc": 3}
    # the rows are stored as they are, not dropped: NaN/Inf exactly where counted
    for name, rows in _nonfinite_rows(torch_dtype).items():
        stored = store[name][:]
        assert (~np.isfinite(stored.reshape(N_NONFINITE, -1)).all(1) == rows).all(), name
    assert store.labels[:].tolist() == [i % 3 for i in range(N_NONFINITE)]


def test_on_nonfinite_error_stops_naming_the_layer_and_the_sample(tmp_path):
    out = tmp_path / "nan.zarr"
    with pytest.raises(actextract.NonFiniteError) as e:
        actextract.extract(tiny_cnn(), Poisoned(), **TINY, on_nonfinite="error", writers=1, out=out)
    message = str(e.value)
    # block 0 (rows 0-3) is written first (one writer): its first non-finite row is sample 3,
    # in the first layer
    assert "layer 'conv1'" in message and "sample 3 ('3')" in message
    assert "--on-nonfinite count" in message and "--dtype float32" in message
    store = actextract.open_store(out)
    assert store.status == "failed"
    assert store.attrs["error"].startswith("NonFiniteError: ")
    assert "sample 3" in store.attrs["error"]
    assert not store.done()[0]  # the block with the NaN is never recorded done


def test_on_nonfinite_error_with_float32_ignores_float16_overflows(tmp_path):
    """Rows 7 and 10 overflow only float16: with float32 the first error is sample 11's."""
    out = tmp_path / "nan.zarr"
    data = Poisoned()
    data.x[3] = 0  # no NaN: the first non-finite row at float32 is then 11
    with pytest.raises(actextract.NonFiniteError, match=r"sample 11 \('11'\)"):
        actextract.extract(
            tiny_cnn(), data, **TINY, on_nonfinite="error", writers=1, dtype="float32", out=out
        )
    store = actextract.open_store(out)
    assert store.status == "failed"
    assert store.done().tolist() == [True, True, False]  # rows 4-7 and 8-11: 7, 10 are fine


def test_an_unknown_on_nonfinite_policy_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "x.zarr"
    with pytest.raises(actextract.OptionError, match="'bogus' is not one of count, error"):
        actextract.extract(tiny_cnn(), Poisoned(), layers=["fc"], out=out, on_nonfinite="bogus")
    assert list(tmp_path.iterdir()) == []
