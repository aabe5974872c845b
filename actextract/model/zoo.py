"""Models: specs → ``nn.Module`` in eval mode, with checkpoints and their provenance.

Specs (``load_model``):

- a torchvision classification model by name (``resnet18``, ``vgg16``, ...): random weights
  unless ``weights`` names a local checkpoint (nothing is downloaded);
- ``digits-cnn``: the small CNN of the tutorials (conv → relu → pool → conv → relu → pool →
  dropout → linear), for 1×28×28 inputs; ``actextract train-demo`` trains it;
- ``python:module:callable`` or ``python:file.py:callable``: a callable returning a Module;
- ``hf:PATH_OR_NAME``, ``hf-config:FILE``, ``timm:NAME``: Hugging Face and timm models, and
  torchvision weights by enum name (``weights="IMAGENET1K_V2"``), from local files only, with
  the preprocessing (and tokenizer) they come with (:mod:`actextract.model.hub`);
- an ``nn.Module`` object (Python API).

A checkpoint (:mod:`actextract.model.checkpoints`) is a state_dict (also inside ``{"state_dict":
...}`` or ``{"model": ...}``, with ``module.``/``_orig_mod.`` prefixes removed) saved by
``torch.save`` or safetensors; a whole pickled module only with ``trust_checkpoint=True``, as
unpickling it runs code from the file. Its sha256 goes into the store.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actextract.core.references import call_object, load_object
from actextract.data.source import Preprocess
from actextract.errors import ModelSpecError, option
from actextract.model import hub
from actextract.model.checkpoints import (
    file_sha256,
    fit_checkpoint,
    load_checkpoint,
    read_checkpoint,
)

__all__ = [
    "DigitsCNN",
    "LoadedModel",
    "borrowed",
    "file_sha256",
    "load_checkpoint",
    "load_model",
    "unwrap_compiled",
]

log = logging.getLogger(__name__)


class DigitsCNN(nn.Module):
    """The tutorials' MNIST network. Input (N, 1, 28, 28); output (N, 10) logits.

    Layer outputs: conv1 (32, 26, 26), pool1 (32, 13, 13), conv2 (64, 11, 11),
    pool2 (64, 5, 5), flatten (1600,), fc1 (10,).
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(0.5)
        self.fc1 = nn.Linear(64 * 5 * 5, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc1(self.dropout(x))


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to capture from, and what the store records about it."""

    module: nn.Module
    spec: str
    input_shape: tuple[int, ...] | None  # per sample, when the model implies one
    preprocess: Preprocess  # the model's default input preparation for image sources
    weights: str | None = None
    weights_sha256: str | None = None
    # safetensors, torch (weights_only) or pickle (trusted); "hub": the spec's own files (hf:,
    # timm:'s cache); "torchvision": a torchvision weights enum from the torch hub cache
    weights_format: str | None = None
    tokenizer: Any = None  # a transformers tokenizer: the model reads text (hf: specs)


def torchvision_model_names() -> list[str]:
    import torchvision.models

    return sorted(torchvision.models.list_models(module=torchvision.models))


def load_model(
    model: str | nn.Module,
    *,
    weights: str | Path | None = None,
    trust_checkpoint: bool = False,
) -> LoadedModel:
    """Resolve a model spec or Module, load ``weights`` into it, and put a model built from a
    spec in eval mode (a caller's Module is left as it is: captures borrow it, ``borrowed``).
    A ``torch.compile``d module is unwrapped: captures see the original, with its names.
    ``trust_checkpoint``: let ``weights`` be a pickle that only the full unpickler reads (a
    whole module), which runs code from the file; without it such a file is refused."""
    own = isinstance(model, nn.Module)  # the caller's: left in its mode (see ``borrowed``)
    tokenizer = None
    # where the weights came from: a checkpoint file (read below), or the spec's own files
    source, sha, form = (str(weights) if weights else None), None, None
    if own:
        module = unwrap_compiled(model)
        spec, shape = f"python-object:{type(module).__qualname__}", None
        pre = Preprocess()
    elif model == "digits-cnn":
        module, spec, shape = DigitsCNN(), model, (1, 28, 28)
        pre = Preprocess(channels=1, resize=28, crop=28)
    elif model.startswith("python:"):
        what = f"{option('model')} {model}"
        factory = load_object(model.removeprefix("python:"), what=what, error=ModelSpecError)
        module = (
            factory
            if isinstance(factory, nn.Module)
            else call_object(factory, what=what, error=ModelSpecError, returns="an nn.Module")
        )
        if not isinstance(module, nn.Module):
            raise ModelSpecError(
                f"{option('model')} {model} returned {type(module).__name__}, not an nn.Module."
            )
        module = unwrap_compiled(module)
        spec, shape, pre = model, None, Preprocess()
    elif model.startswith(("hf:", "hf-config:", "timm:")):
        got = (
            hub.load_timm(model)
            if model.startswith("timm:")
            else hub.load_hf(model, random=model.startswith("hf-config:"))
        )
        module, spec, shape, pre, tokenizer = (
            got.module,
            model,
            got.input_shape,
            got.preprocess,
            got.tokenizer,
        )
        if weights is None and got.weights is not None:
            sha = file_sha256(got.weights) if Path(got.weights).is_file() else None
            source, form = got.weights, "hub"
    else:
        names = torchvision_model_names()
        if model not in names:
            close = difflib.get_close_matches(model, [*names, "digits-cnn"], n=4, cutoff=0.5)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise ModelSpecError(
                f"unknown model '{model}'.{hint} Use a torchvision classification model name "
                "(see torchvision.models.list_models()), 'digits-cnn', python:module:callable, "
                "hf:PATH, hf-config:FILE or timm:NAME."
            )
        import torchvision.models

        enum = _weights_enum(weights)
        chosen = hub.torchvision_weights(model, enum) if enum else None
        module = torchvision.models.get_model(model, weights=chosen)
        pre, shape = hub.torchvision_preprocess(model, chosen)
        spec = model
        if chosen is not None:
            sha, form = file_sha256(hub.torchvision_file(chosen)), "torchvision"
    if weights is not None and form != "torchvision":
        checkpoint = read_checkpoint(weights, trust=trust_checkpoint)
        module = fit_checkpoint(module, checkpoint.content, Path(weights))
        sha, form = checkpoint.sha256, checkpoint.format
    if not own:
        module.eval()
    return LoadedModel(module, spec, shape, pre, source, sha, form, tokenizer)


def _weights_enum(weights: str | Path | None) -> str | None:
    """``weights`` when it names torchvision weights (``IMAGENET1K_V2``, ``DEFAULT``) rather
    than a file: an upper-case name with no such file."""
    text = str(weights) if weights is not None else ""
    if text and text.upper() == text and not Path(text).exists() and "/" not in text:
        return text
    return None


def unwrap_compiled(module: nn.Module) -> nn.Module:
    """A ``torch.compile``d module's original (what fx traces and hooks see, with its own
    names, without ``_orig_mod.``); any other module as it is."""
    inner = getattr(module, "_orig_mod", None)
    if isinstance(inner, nn.Module) and isinstance(
        module, torch._dynamo.eval_frame.OptimizedModule
    ):
        log.info(
            "%s is torch.compile'd: capturing from the original module (names without "
            "'_orig_mod.'; %s compiles the capture itself)",
            type(inner).__name__,
            option("compile"),
        )
        return inner
    return module


@contextmanager
def borrowed(
    module: nn.Module,
    device: torch.device | None = None,
    memory_format: torch.memory_format | None = None,
) -> Iterator[nn.Module]:
    """``module`` on ``device`` (and in ``memory_format``) in eval mode, for a capture; on the
    way out, after an error or Ctrl-C too, everything as it was: each module's train/eval and
    ``inplace`` flag, and each parameter's and buffer's tensor (its device and memory
    format), so the caller's references to them stay valid."""
    training = {m: m.training for m in module.modules()}
    inplace = {
        m: m.inplace for m in module.modules() if isinstance(getattr(m, "inplace", None), bool)
    }
    params = [
        (m, k, p, p.data)
        for m in module.modules()
        for k, p in m._parameters.items()
        if p is not None
    ]
    buffers = [(m, k, b) for m in module.modules() for k, b in m._buffers.items() if b is not None]
    try:
        if device is not None:
            module.to(device)
        if memory_format is not None:
            module.to(memory_format=memory_format)
        module.eval()
        yield module
    finally:
        for m, flag in training.items():
            m.training = flag
        for m, flag in inplace.items():
            m.inplace = flag
        for m, k, p, data in params:
            m._parameters[k] = p
            p.data = data
        for m, k, b in buffers:
            m._buffers[k] = b
