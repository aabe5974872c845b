"""Tiny models and datasets with known names, shared by the tests (and loadable from the CLI
as ``python:tests/_fixtures.py:tiny_cnn``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

N_SAMPLES = 16
INPUT_SHAPE = (3, 8, 8)


class TinyCNN(nn.Module):
    """fx node names: conv1, bn1, relu, block.0, block.1, pool, flatten, fc; module: block.

    ``relu`` is in-place, so capturing ``bn1`` tests that it is read before the ReLU.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.block = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.block(x))
        return self.fc(torch.flatten(x, 1))


class Untraceable(TinyCNN):
    """Data-dependent control flow: torch.fx cannot trace it, hooks can capture it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if x.sum() > 0:  # fx: symbolically traced variables cannot be used in control flow
            x = x * 1.0
        x = self.pool(self.block(x))
        return self.fc(torch.flatten(x, 1))


def tiny_cnn() -> TinyCNN:
    """Seeded weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = TinyCNN()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
    return model.eval()


def untraceable() -> Untraceable:
    torch.manual_seed(0)
    return Untraceable().eval()


class SeededImages(Dataset):
    """N seeded (3, 8, 8) inputs with labels i % 3."""

    def __init__(self, n: int = N_SAMPLES, shape: tuple[int, ...] = INPUT_SHAPE, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn((n, *shape), generator=g)
        self.labels = [i % 3 for i in range(n)]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.labels[i]


class FailsAt(SeededImages):
    """Raises on one index, as a corrupt file would."""

    def __init__(self, bad: int, **kw) -> None:
        super().__init__(**kw)
        self.bad = bad

    def __getitem__(self, i: int):
        if i == self.bad:
            raise OSError(f"corrupt record {i}")
        return super().__getitem__(i)


def seeded_images() -> SeededImages:
    return SeededImages()


def reference(model: TinyCNN, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every layer of TinyCNN computed by hand, without in-place ops."""
    with torch.no_grad():
        out = {"conv1": model.conv1(x)}
        out["bn1"] = model.bn1(out["conv1"])
        out["relu"] = F.relu(out["bn1"])
        out["block.0"] = model.block[0](out["relu"])
        out["block.1"] = out["block"] = F.relu(out["block.0"])
        out["pool"] = model.pool(out["block.1"])
        out["flatten"] = torch.flatten(out["pool"], 1)
        out["fc"] = model.fc(out["flatten"])
    return out


def digits_run(root, layers: str, limit: int):
    """A run of digits-cnn from a checkpoint (seeded weights) on the first ``limit`` digits,
    under ``root``: its inputs, filters and model can be rebuilt."""
    import actextract
    from actextract.model.zoo import DigitsCNN

    torch.manual_seed(0)
    torch.save(DigitsCNN().state_dict(), root / "cnn.pt")
    return actextract.extract(
        "digits-cnn",
        "digits",
        weights=root / "cnn.pt",
        layers=layers,
        out=root / "run.zarr",
        limit=limit,
        batch_size=20,
        device="cpu",
    )
