"""Hubs: models from Hugging Face transformers, timm and torchvision's weight enums, read from
local files only (nothing is downloaded), with the preprocessing each says it wants.

- ``hf:PATH_OR_NAME``: transformers' ``AutoModel`` (the base model, without a task head) from
  a directory saved with ``save_pretrained``, or a name already in the local Hugging Face
  cache (``local_files_only``); its tokenizer or image processor beside it.
- ``hf-config:FILE``: a random model from a ``config.json`` (or the directory holding one);
  a tokenizer saved in the same directory is used for text.
- ``timm:NAME``: ``timm.create_model``; pretrained weights when the local Hugging Face cache
  holds them (looked up offline), random otherwise; the preprocessing is timm's data config.
- torchvision weights by their enum name (``--weights IMAGENET1K_V2``, or ``DEFAULT``), from
  the local torch hub cache; every torchvision model takes the input size and normalisation
  of its weights' ``transforms()`` (inception_v3: 299, not 224), also with random weights.

transformers and timm are imported only for their specs: a missing one is an error saying
what to install.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actextract.data.images import Preprocess
from actextract.errors import ModelSpecError, option

__all__ = [
    "HubModel",
    "load_hf",
    "load_timm",
    "tokenizer_of",
    "torchvision_file",
    "torchvision_preprocess",
    "torchvision_weights",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubModel:
    """A hub's model, what it wants as input, and the files its weights came from."""

    module: nn.Module
    input_shape: tuple[int, ...] | None
    preprocess: Preprocess
    tokenizer: Any = None  # a transformers tokenizer, for models that read text
    weights: str | None = None  # the weights file (None: random weights)


def _need(package: str, spec: str) -> Any:
    try:
        return __import__(package)
    except ImportError:
        raise ModelSpecError(
            f"{option('model')} {spec} needs the '{package}' package, which is not installed: "
            f"pip install 'actextract[hf]' (transformers, tokenizers, datasets, timm)."
        ) from None


@contextmanager
def _offline():
    """Hugging Face libraries look only at local files in here, whatever the environment, and
    show no progress bars of their own (actextract's come later)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict.fromkeys(keys, "1"))
    was_offline = constants.HF_HUB_OFFLINE  # read from the environment at import time
    constants.HF_HUB_OFFLINE = True
    bars = not are_progress_bars_disabled()
    disable_progress_bars()
    transformers = _transformers_logging()
    quiet = transformers is not None and transformers.is_progress_bar_enabled()
    if quiet:
        transformers.disable_progress_bar()
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was_offline
        if bars:
            enable_progress_bars()
        if quiet:
            transformers.enable_progress_bar()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _transformers_logging() -> Any:
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return None
    return transformers_logging


# -- Hugging Face ---------------------------------------------------------------------------
def load_hf(spec: str, *, random: bool) -> HubModel:
    """``hf:PATH_OR_NAME`` (``random`` False) or ``hf-config:FILE`` (``random`` True)."""
    transformers = _need("transformers", spec)
    where = spec.partition(":")[2]
    if not where:
        raise ModelSpecError(
            f"{option('model')} {spec}: give a model directory or a cached name after the "
            f"colon, e.g. hf:./tiny-gpt2 or hf-config:./tiny-gpt2/config.json."
        )
    path = Path(where).expanduser()
    if random:
        folder = path if path.is_dir() else path.parent
        if not (folder / "config.json").is_file() and not path.is_file():
            raise ModelSpecError(
                f"{option('model')} {spec}: no config file at '{path}'; give a config.json "
                "(model.config.save_pretrained(folder) writes one) or the folder holding it."
            )
        with _offline():
            try:
                config = transformers.AutoConfig.from_pretrained(str(path))
                module = transformers.AutoModel.from_config(config)
            except (OSError, ValueError, KeyError) as e:
                raise ModelSpecError(f"{option('model')} {spec}: {_first_line(e)}") from None
        tokenizer, processor, weights = _tokenizer(folder), _image_processor(folder), None
    else:
        with _offline():
            try:
                module = transformers.AutoModel.from_pretrained(
                    str(path) if path.is_dir() else where, local_files_only=True, dtype="float32"
                )
            except (OSError, ValueError, KeyError) as e:
                raise ModelSpecError(
                    f"{option('model')} {spec}: not a model directory, and not in the local "
                    f"Hugging Face cache ({_first_line(e)}). actextract never downloads: save "
                    "the model with model.save_pretrained(folder) (and its tokenizer or image "
                    "processor with .save_pretrained(folder)) where it can be fetched, then "
                    "pass hf:folder."
                ) from None
        tokenizer = _tokenizer(path if path.is_dir() else where)
        processor = _image_processor(path if path.is_dir() else where)
        weights = _weights_file(path) if path.is_dir() else where
    if tokenizer is not None and tokenizer.pad_token is None:
        # GPT-2's tokenizer has no padding token: pad with end-of-text (masked out anyway)
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    pre, shape = _hf_preprocess(processor, module)
    return HubModel(module, shape, pre, tokenizer, weights)


def tokenizer_of(spec: str) -> Any:
    """The tokenizer beside an ``hf:``/``hf-config:`` model (None: no spec of those, or no
    tokenizer there), without loading the model."""
    kind, _, where = spec.partition(":")
    if kind not in ("hf", "hf-config") or not where:
        return None
    try:
        __import__("transformers")
    except ImportError:
        return None
    path = Path(where).expanduser()
    return _tokenizer(path.parent if kind == "hf-config" and path.is_file() else where)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _tokenizer(where: str | Path) -> Any:
    """The tokenizer saved at ``where`` (None when there is none)."""
    import transformers

    with _offline():
        try:
            return transformers.AutoTokenizer.from_pretrained(str(where), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _image_processor(where: str | Path) -> Any:
    import transformers

    with _offline():
        try:
            return transformers.AutoImageProcessor.from_pretrained(
                str(where), local_files_only=True
            )
        except (OSError, ValueError, KeyError, TypeError, ImportError):
            return None


def _weights_file(folder: Path) -> str | None:
    for name in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"):
        if (folder / name).is_file():
            return str(folder / name)
    return None


def _hf_preprocess(processor: Any, module: nn.Module) -> tuple[Preprocess, tuple[int, ...] | None]:
    """An image model's preprocessing from its image processor (else its config's image
    size, ImageNet's statistics left to the user), and its input shape."""
    config = getattr(module, "config", None)
    channels = getattr(config, "num_channels", None)
    size = getattr(config, "image_size", None)
    if processor is None and size is None:
        return Preprocess(), None  # a text model
    pre = Preprocess(channels=channels or 3)
    if processor is not None:
        does = lambda step: bool(getattr(processor, f"do_{step}", False))  # noqa: E731
        crop = _side(getattr(processor, "crop_size", None)) if does("center_crop") else None
        resize = _side(getattr(processor, "size", None)) if does("resize") else None
        mean = getattr(processor, "image_mean", None) if does("normalize") else None
        std = getattr(processor, "image_std", None) if does("normalize") else None
        pre = Preprocess(
            channels=channels or 3,
            resize=resize,
            crop=crop or resize,
            mean=tuple(mean) if mean is not None else None,
            std=tuple(std) if std is not None else None,
        )
        size = pre.crop or size
    side = size if isinstance(size, int) else (size[0] if size else None)
    if pre.crop is None and side:
        pre = Preprocess(pre.channels, side, side, pre.mean, pre.std)
    return pre, (pre.channels or 3, side, side) if side else None


def _side(size: Any) -> int | None:
    """An image processor's size: ``{"height": h, "width": w}``, ``{"shortest_edge": s}`` or an
    int, as the side of a square (the shorter one)."""
    if size is None:
        return None
    if isinstance(size, int):
        return size
    size = dict(size)
    if "shortest_edge" in size:
        return int(size["shortest_edge"])
    sides = [int(size[k]) for k in ("height", "width") if size.get(k)]
    return min(sides) if sides else None


# -- timm -----------------------------------------------------------------------------------
def load_timm(spec: str) -> HubModel:
    timm = _need("timm", spec)
    name = spec.partition(":")[2]
    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ModelSpecError(
            f"{option('model')} {spec}: '{name}' is not a timm model.{hint} See timm.list_models()."
        )
    cached = _timm_cached(timm, name)
    with _offline():  # the cached file itself: nothing asks the hub whether it is current
        overlay = {"file": cached} if cached else None
        module = timm.create_model(
            name, pretrained=cached is not None, pretrained_cfg_overlay=overlay
        )
    if cached is None:
        log.info("%s: random weights (the local Hugging Face cache has none for it)", spec)
    cfg = timm.data.resolve_model_data_config(module)
    channels, height, width = cfg["input_size"]
    crop = min(height, width)
    pre = Preprocess(
        channels=channels,
        resize=int(crop / cfg.get("crop_pct", 1.0)) if cfg.get("crop_pct") else crop,
        crop=crop,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
    )
    return HubModel(module, (channels, crop, crop), pre, None, cached)


def _timm_cached(timm: Any, name: str) -> str | None:
    """The file of ``name``'s pretrained weights in the local Hugging Face cache, if any."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(name) or {}
        repo = cfg.hf_hub_id if hasattr(cfg, "hf_hub_id") else cfg.get("hf_hub_id")
    except (ImportError, RuntimeError, KeyError):
        return None
    if not repo:
        return None
    for file in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, file)
        if isinstance(found, str):
            return found
    return None


# -- torchvision ----------------------------------------------------------------------------
def torchvision_weights(name: str, enum: str) -> Any:
    """The weights enum ``enum`` of torchvision model ``name`` (``DEFAULT`` too), when its file
    is in the local torch hub cache; else an error saying where to put it."""
    import torchvision.models

    table = torchvision.models.get_model_weights(name)
    try:
        weights = table[enum] if enum != "DEFAULT" else table.DEFAULT
    except KeyError:
        names = ", ".join([*table.__members__, "DEFAULT"])
        raise ModelSpecError(
            f"{option('weights')} {enum}: not a checkpoint file, and not one of {name}'s "
            f"weights ({names})."
        ) from None
    file = torchvision_file(weights)
    if not file.is_file():
        raise ModelSpecError(
            f"{option('weights')} {enum}: {name}'s {weights} are not in the local torch cache "
            f"('{file}'). actextract never downloads: copy {Path(weights.url).name} there "
            f"(from {weights.url}), or pass the checkpoint file as --weights PATH."
        )
    return weights


def torchvision_file(weights: Any) -> Path:
    """Where torch hub keeps the file of torchvision ``weights``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def torchvision_preprocess(name: str, weights: Any = None) -> tuple[Preprocess, tuple[int, ...]]:
    """What ``weights`` (else the model's default weights) say its input is: resize, crop,
    mean and std of their ``transforms()``; ImageNet's 256/224 where they say nothing."""
    import torchvision.models

    if weights is None:
        try:
            weights = torchvision.models.get_model_weights(name).DEFAULT
        except (ValueError, AttributeError):
            weights = None
    t = weights.transforms() if weights is not None else None
    crop, resize = getattr(t, "crop_size", [224]), getattr(t, "resize_size", [256])
    mean = getattr(t, "mean", (0.485, 0.456, 0.406))
    std = getattr(t, "std", (0.229, 0.224, 0.225))
    side = int(crop[0])
    pre = Preprocess(3, int(resize[0]), side, tuple(mean), tuple(std))
    return pre, (3, side, side)
