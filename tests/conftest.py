from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def runner():
    from click.testing import CliRunner

    return CliRunner()


@pytest.fixture
def fixtures_file() -> str:
    return str(Path(__file__).parent / "_fixtures.py")


def _png(path: Path, seed: int, size: tuple[int, int] = (40, 36)) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(path)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Two classes of three small RGB PNGs each: cat/0.png ... dog/2.png."""
    root = tmp_path / "imgs"
    for c, cls in enumerate(["cat", "dog"]):
        for i in range(3):
            _png(root / cls / f"{i}.png", seed=10 * c + i)
    return root


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """One uninterrupted single-process run of tests/_runner.py's ARGS, to compare resumed,
    sharded and torchrun stores with."""
    from _runner import ARGS, run

    import actextract

    out = tmp_path_factory.mktemp("reference") / "ref.zarr"
    done = run(*ARGS, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return actextract.open_store(out)


@pytest.fixture(scope="session")
def small_reference(tmp_path_factory):
    """One uninterrupted in-process run of tests/_runner.py's SMALL settings."""
    from _runner import SMALL

    import actextract

    store = actextract.extract(**SMALL, out=tmp_path_factory.mktemp("small") / "ref.zarr")
    assert store.complete
    return store
