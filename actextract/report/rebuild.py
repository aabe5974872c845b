"""What a store can give back beyond its arrays: the model's inputs and the model itself,
rebuilt from the provenance the store keeps (dataset spec and preprocess, model spec and
checkpoint with its sha256).

Each function raises :class:`RebuildError` with the reason when the store cannot give the thing
back (a dataset that moved, a checkpoint that changed, random weights); the renderer shows the
reason instead of the picture. The renderer never runs code from a checkpoint: a store made
from a pickled module (``--trust-checkpoint``) cannot rebuild its model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from actextract.data.samples import BadSample, Preprocess, Source
from actextract.data.source import open_source
from actextract.errors import ActextractError, RebuildError, UntrustedCheckpointError
from actextract.model.zoo import file_sha256, load_model
from actextract.report.figures import normalize_maps

__all__ = ["Inputs", "RebuildError", "conv_weights", "open_inputs", "rebuild_model"]


class Inputs:
    """The model's inputs for rows of a store, as displayable images in [0, 1]."""

    def __init__(self, source: Source, store_ids: Any):
        self.source = source
        self._store_ids = store_ids
        pre = source.preprocess
        self._mean = np.array(pre.mean if pre and pre.mean else [], dtype=np.float64)
        self._std = np.array(pre.std if pre and pre.std else [], dtype=np.float64)

    def image(self, row: int) -> np.ndarray:
        """Row ``row``'s input as (H, W) or (H, W, 3) float64 in [0, 1]: the normalisation
        undone when the store knows it, else scaled to the image's own range."""
        item = self.source.dataset[row]
        if isinstance(item, BadSample):
            raise RebuildError(f"input of row {row} ({item.id}) cannot be loaded: {item.error}")
        stored = str(self._store_ids[row])
        if item.id != stored:
            raise RebuildError(
                f"the dataset '{self.source.spec}' no longer matches the store: row {row} is "
                f"'{item.id}' there and '{stored}' in the store."
            )
        x = item.input.detach().to(torch.float64).numpy()
        if x.ndim != 3 or x.shape[0] not in (1, 3):
            raise RebuildError(f"inputs of shape {tuple(x.shape)} are not images (1 or 3, H, W).")
        if len(self._mean) == x.shape[0] and len(self._std) == x.shape[0]:
            x = x * self._std[:, None, None] + self._mean[:, None, None]
            x = np.clip(x, 0.0, 1.0)
        else:
            x = normalize_maps(x, same_scale=True)
        return x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)


def open_inputs(attrs: dict[str, Any], store_ids: Any) -> Inputs:
    """Reopen the dataset a store was made from, with the same preprocessing."""
    dataset = attrs.get("dataset") or {}
    spec = dataset.get("spec", "")
    if not spec or spec.startswith("python-object:"):
        raise RebuildError(
            "the store was made from a Dataset object passed to extract(); only a dataset "
            "spec (digits, folder:PATH, mnist:ROOT, python:module:callable) can be reopened."
        )
    if attrs.get("tokens"):
        raise RebuildError(
            "the inputs are token ids (a text run), not images; the top-tokens view of each "
            "token layer shows them as text."
        )
    pre = dataset.get("preprocess")
    preprocess = Preprocess(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in (pre or {}).items()}
    )
    try:
        source = open_source(spec, preprocess)
    except ActextractError as e:
        raise RebuildError(f"the dataset cannot be reopened: {e}") from None
    if len(source) < int(attrs.get("n_samples", 0)):
        raise RebuildError(
            f"the dataset '{spec}' has {len(source)} samples now, fewer than the store's "
            f"{attrs.get('n_samples')}."
        )
    return Inputs(source, store_ids)


def rebuild_model(attrs: dict[str, Any]) -> nn.Module:
    """The model a store was made with, its checkpoint checked against the recorded sha256."""
    model = attrs.get("model") or {}
    spec, weights = model.get("spec", ""), model.get("weights")
    if not spec or spec.startswith("python-object:"):
        raise RebuildError(
            "the model was a Module object passed to extract(); only a model spec can be rebuilt."
        )
    if weights is None and not spec.startswith("python:"):
        raise RebuildError(
            f"the run used '{spec}' with randomly initialised weights and no checkpoint, so its "
            "weights cannot be rebuilt (pass --weights when extracting)."
        )
    form = model.get("weights_format")  # hub, torchvision: the spec finds its own files
    if weights is not None:
        path = Path(weights)
        if form == "pickle":
            raise _pickled(weights)
        if form not in ("hub", "torchvision") and not path.is_file():
            raise RebuildError(f"the checkpoint '{weights}' the run used is gone.")
        if (
            form != "torchvision"
            and path.is_file()
            and model.get("weights_sha256")
            and (file_sha256(path) != model["weights_sha256"])
        ):
            raise RebuildError(
                f"the checkpoint '{weights}' changed since the run (sha256 differs); its "
                "filters would not be the ones that made the store."
            )
    try:
        # never trusted: no code from the file; a hub spec's own weights come with the spec
        return load_model(spec, weights=None if form == "hub" else weights).module
    except UntrustedCheckpointError:
        raise _pickled(weights) from None
    except ActextractError as e:
        raise RebuildError(f"the model cannot be rebuilt: {e}") from None


def _pickled(weights: str) -> RebuildError:
    return RebuildError(
        f"the checkpoint '{weights}' is a pickled module (or holds other pickled objects), and "
        "the renderer does not run code from checkpoints; save a state_dict instead "
        "(torch.save(model.state_dict(), path) or safetensors) and extract with it."
    )


def conv_weights(module: nn.Module, layer: str) -> np.ndarray:
    """The (O, I, kh, kw) weights of the 2-D convolution named ``layer``."""
    try:
        sub = module.get_submodule(layer)
    except AttributeError:
        raise RebuildError(f"'{layer}' is not a module of the rebuilt model.") from None
    weight = getattr(sub, "weight", None)
    if not isinstance(sub, nn.Conv2d) or weight is None:
        raise RebuildError(f"'{layer}' is a {type(sub).__name__}, not a Conv2d with weights.")
    return weight.detach().float().cpu().numpy()
