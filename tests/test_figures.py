"""The pure picture functions: content, not just shapes."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from actextract.report import figures


def known_maps(k: int = 5, h: int = 4, w: int = 3) -> np.ndarray:
    """Map i: values i*10 + j for j over its pixels, so each map has its own range."""
    base = np.arange(h * w, dtype=np.float64).reshape(h, w)
    return np.stack([i * 10 + base * (i + 1) for i in range(k)])


@pytest.mark.parametrize(("n", "shape"), [(1, (1, 1)), (10, (3, 4)), (16, (4, 4)), (64, (8, 8))])
def test_grid_shape_is_near_square(n, shape):
    assert figures.grid_shape(n) == shape


def test_map_k_lands_in_cell_k_each_on_its_own_scale():
    maps = known_maps()
    rows, cols = figures.grid_shape(len(maps))
    grid = figures.feature_grid(maps, cmap="gray")  # gray: value v -> (v, v, v) * 255
    assert grid.shape == (rows * 5 - 1, cols * 4 - 1, 3)
    for k, m in enumerate(maps):
        cell = grid[figures.cell_slice(k, (4, 3), cols)][..., 0].astype(float)
        expected = (m - m.min()) / (m.max() - m.min()) * 255
        np.testing.assert_allclose(cell, expected, atol=1.0)
    # separators and the empty sixth cell are white
    assert (grid[4, :, :] == 255).all() and (grid[:, 3, :] == 255).all()
    assert (grid[figures.cell_slice(5, (4, 3), cols)] == 255).all()


def test_same_scale_puts_every_map_on_the_joint_range():
    maps = known_maps()
    cols = figures.grid_shape(len(maps))[1]
    grid = figures.feature_grid(maps, cmap="gray", same_scale=True)
    lo, hi = maps.min(), maps.max()
    for k, m in enumerate(maps):
        cell = grid[figures.cell_slice(k, (4, 3), cols)][..., 0].astype(float)
        np.testing.assert_allclose(cell, (m - lo) / (hi - lo) * 255, atol=1.0)


def test_max_channels_and_constant_maps():
    maps = np.zeros((9, 2, 2))
    grid = figures.feature_grid(maps, max_channels=4, cmap="gray")
    assert grid.shape == (2 * 3 - 1, 2 * 3 - 1, 3)  # 4 cells on a 2x2 grid
    assert (grid[figures.cell_slice(0, (2, 2), 2)] == 0).all()  # constant -> low end


def test_feature_grid_refuses_a_vector():
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        figures.feature_grid(np.zeros(10))


def test_histogram_counts_equal_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(200, 3))
    labels = rng.integers(0, 4, 200)
    edges, counts = figures.histogram_counts(values, labels, [0, 1, 2, 3], bins=12)
    assert counts.shape == (3, 4, 12)
    for j in range(3):
        np.testing.assert_allclose(
            edges[j], np.linspace(values[:, j].min(), values[:, j].max(), 13)
        )
        for k in range(4):
            expected, _ = np.histogram(values[labels == k, j], bins=edges[j])
            np.testing.assert_array_equal(counts[j, k], expected)
    assert counts.sum() == 3 * 200  # shared bins cover every value
    assert isinstance(figures.histogram_figure(edges, counts, list("abcd"), title="t"), Figure)


def test_confusion_counts():
    true = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 2, 0, 2])
    m = figures.confusion_counts(true, pred, 3)
    np.testing.assert_array_equal(m, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert m.sum() == len(true)


def test_filters_rgb_tiles_and_per_input_rows():
    rng = np.random.default_rng(0)
    rgb = figures.filters_image(rng.normal(size=(6, 3, 3, 3)))
    rows, cols = figures.grid_shape(6)
    assert rgb.shape == (rows * 4 - 1, cols * 4 - 1, 3)
    single = figures.filters_image(rng.normal(size=(6, 1, 3, 3)))
    assert single.shape == rgb.shape  # one input channel: a near-square grid too
    w = rng.normal(size=(5, 2, 3, 3))
    gray = figures.filters_image(w, cmap="gray")
    assert gray.shape == (2 * 4 - 1, 5 * 4 - 1, 3)  # a row per input channel, a column per filter
    # filter 3, input channel 1, on filter 3's own range
    cell = gray[figures.cell_slice(1 * 5 + 3, (3, 3), 5)][..., 0].astype(float)
    f = w[3]
    np.testing.assert_allclose(cell, (f[1] - f.min()) / (f.max() - f.min()) * 255, atol=1.0)


def test_side_by_side_and_upscale():
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((8, 2, 3), 7, np.uint8)
    out = figures.side_by_side([a, b], gap=1)
    assert out.shape == (8, 8 + 1 + 2, 3)  # a scaled 2x to b's height
    assert figures.upscale(a, 10).shape == (12, 12, 3)
    assert figures.upscale(np.zeros((2, 100, 3)), 50, max_size=400).shape == (8, 400, 3)
