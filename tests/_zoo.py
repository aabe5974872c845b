"""The model zoo of tests/test_zoo.py: seeded builders at small input sizes, a seeded dataset,
and the reference every stored layer is compared with.

The reference is forward hooks that clone each module's output the moment it is produced
(first call only), in eval mode under ``torch.no_grad()``: what a later in-place op does to
that tensor cannot reach the clone.
"""

from __future__ import annotations

import copy
import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

N = 3  # samples: one batch of batch_size=N, so extraction sees the reference's very batch


class Images(Dataset):
    """``n`` seeded standard-normal inputs of ``shape``, labels ``i % 3``."""

    def __init__(self, shape: tuple[int, ...], n: int = N, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn((n, *shape), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], i % 3


# ---------------------------------------------------------------------------- the zoo


@dataclass(frozen=True)
class Entry:
    build: Callable[[], nn.Module]  # random weights; the caller seeds torch first
    shape: tuple[int, ...]  # one input, (C, H, W)


def _tv(name: str, **kw) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision.models

        return getattr(torchvision.models, name)(weights=None, **kw)

    return build


def _maxvit() -> nn.Module:
    """maxvit_t's blocks, channels and heads at 64x64: the grid halves five times (32, 16,
    8, 4, 2 after the stem), so the window/grid partition must be 2 (maxvit_t's 7 needs 224)."""
    from torchvision.models.maxvit import MaxVit

    return MaxVit(
        input_size=(64, 64),
        stem_channels=64,
        block_channels=[64, 128, 256, 512],
        block_layers=[2, 2, 5, 2],
        head_dim=32,
        stochastic_depth_prob=0.2,
        partition_size=2,
    )


def _timm(name: str, **kw) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, **kw)

    return build


RGB64 = (3, 64, 64)
ZOO: dict[str, Entry] = {
    "resnet18": Entry(_tv("resnet18"), RGB64),
    "vgg11": Entry(_tv("vgg11"), RGB64),
    "densenet121": Entry(_tv("densenet121"), RGB64),
    # 75x75 is the smallest input inception_v3's stem and pools accept
    "inception_v3": Entry(_tv("inception_v3", aux_logits=False, init_weights=True), (3, 75, 75)),
    "googlenet": Entry(_tv("googlenet", aux_logits=False, init_weights=True), RGB64),
    "efficientnet_b0": Entry(_tv("efficientnet_b0"), RGB64),
    "mobilenet_v3_small": Entry(_tv("mobilenet_v3_small"), RGB64),
    "convnext_tiny": Entry(_tv("convnext_tiny"), RGB64),
    "regnet_y_400mf": Entry(_tv("regnet_y_400mf"), RGB64),
    "swin_t": Entry(_tv("swin_t"), RGB64),
    "vit_b_16": Entry(_tv("vit_b_16", image_size=32), (3, 32, 32)),
    "maxvit_t": Entry(_maxvit, RGB64),
    "timm_resnet18": Entry(_timm("resnet18"), RGB64),
    "timm_vit_tiny": Entry(_timm("vit_tiny_patch16_224", img_size=32), (3, 32, 32)),
    "timm_convnext_atto": Entry(_timm("convnext_atto"), RGB64),
}


def build(name: str) -> nn.Module:
    """ZOO[name] with seeded random weights made distinguishable (:func:`distinguish`), in
    eval mode: a fresh copy each call (an extraction may change the module it is given)."""
    return copy.deepcopy(_built(name))


@functools.lru_cache(maxsize=1)  # the cases of one model run one after the other
def _built(name: str) -> nn.Module:
    entry = ZOO[name]
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG left as it was
        torch.manual_seed(0)
        model = entry.build()
        distinguish(model, entry.shape)
    return model.eval()


@torch.no_grad()
def distinguish(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Make neighbouring layers' outputs differ, so that a stored value that is the wrong
    tensor cannot pass for the right one within the tolerance.

    At init a BatchNorm in eval mode is the identity up to eps (running stats 0 and 1, weight
    1, bias 0: ``bn1`` would equal ``conv1`` to 1e-5), and ConvNeXt's layer scales (1e-6) make
    a block's output its input to 1e-6. So: every constant-initialised parameter (norm weights
    and biases, zero biases, layer scales, class tokens) gets noise, then every BatchNorm's
    running statistics are those of a seeded batch (momentum=None: the batch's own), as after
    training.
    """
    for p in model.parameters():
        flat = p.detach().flatten()
        if flat.numel() > 1 and bool((flat == flat[0]).all()):
            base = float(flat[0])
            if 0 < abs(base) < 1e-2:  # a layer scale: as large as a trained one
                base = 0.3
            p.copy_(base + 0.1 * torch.randn_like(p))
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    model(torch.randn((4, *shape), generator=torch.Generator().manual_seed(1)))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


class InPlaceResidual(nn.Module):
    """Data-dependent control flow (torch.fx cannot trace it), and ``out += x`` on ``bn2``'s
    output after bn2 has returned it, as resnet's ``out += identity`` does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(x))
        if out.sum() > 0:  # fx: symbolically traced variables cannot be used in control flow
            out += x
        else:
            out.add_(x)
        out = self.relu2(out)
        return self.fc(torch.flatten(self.pool(out), 1))


TINY = (3, 8, 8)


def in_place_residual() -> InPlaceResidual:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = InPlaceResidual()
        distinguish(model, TINY)
    return model.eval()


# ---------------------------------------------------------------------------- the reference


@dataclass
class Reference:
    """One eval-mode forward with a clone of every module's first output."""

    outputs: dict[str, object]  # name → clone of its first output (tensor, tuple, ...)
    calls: Counter  # name → how many times forward() called it

    def once(self) -> list[str]:
        """Modules called exactly once whose output is one tensor with the batch first, in
        the order they returned."""
        return [
            n
            for n, out in self.outputs.items()
            if self.calls[n] == 1 and isinstance(out, torch.Tensor) and out.shape[:1] == (N,)
        ]


def _clone(out: object) -> object:
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    if isinstance(out, tuple | list):
        return type(out)(_clone(o) for o in out)
    return out


@torch.no_grad()
def reference(model: nn.Module, x: torch.Tensor) -> Reference:
    """Every submodule's output at its first call in ``model(x)``, cloned when produced; the
    model is put in eval mode (and left so) and hooks are removed."""
    model.eval()
    outputs: dict[str, object] = {}
    calls: Counter = Counter()

    def hook(name: str):
        def fn(_mod: nn.Module, _inp: object, out: object) -> None:
            calls[name] += 1
            if calls[name] == 1:
                outputs[name] = _clone(out)

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return Reference(outputs, calls)


def batch(dataset: Dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


# ---------------------------------------------------------------------------- comparison


def mismatches(
    stored: dict[str, object], expected: dict[str, torch.Tensor], **tol: float
) -> list[str]:
    """One line per layer whose stored array is not its reference (``tol``: assert_close's
    rtol/atol; none: exact), with the max abs error."""
    bad = []
    for name, want in expected.items():
        got = torch.as_tensor(stored[name])
        if got.shape != want.shape or got.dtype != want.dtype:
            bad.append(
                f"{name}: stored {tuple(got.shape)} {got.dtype}, "
                f"produced {tuple(want.shape)} {want.dtype}"
            )
            continue
        try:
            torch.testing.assert_close(got, want, rtol=tol.get("rtol", 0), atol=tol.get("atol", 0))
        except AssertionError:
            err = (got - want).abs().max().item()
            scale = want.abs().max().item()
            bad.append(f"{name}: max abs error {err:.3g} (max |value| {scale:.3g})")
    return bad
