"""Train the demo model: digits-cnn on the embedded digits, in seconds on a CPU.

The split is seeded (80% train, 20% test); the returned accuracy is measured on the test part,
which the training never sees. With ``record``, an :class:`actextract.Recorder` keeps the
activations of held-out digits before training (epoch 0) and after each epoch (epoch e).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actextract.data.source import Sample, open_source
from actextract.model.zoo import load_model

__all__ = ["TrainResult", "train_digits_cnn"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    path: Path
    epochs: int
    train_samples: int
    test_samples: int
    test_accuracy: float
    record: Path | None = None  # the recording, when asked for


RECORDED_LAYERS = ("conv1", "conv2", "fc1")


def train_digits_cnn(
    out: str | Path,
    *,
    epochs: int = 10,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 2e-3,
    record: str | Path | None = None,
    probe_size: int = 100,
    storage_options: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train digits-cnn on ``digits`` and save its state_dict to ``out``. ``record``: a store
    (replaced if it exists) where conv1, conv2 and fc1 of the first ``probe_size`` held-out
    digits are recorded before training and after every epoch; the training is the same
    with or without it. ``storage_options``: the Recorder's, for a ``record`` URL's file
    system (fsspec)."""
    torch.manual_seed(seed)
    loaded = load_model("digits-cnn")
    model = loaded.module
    source = open_source("digits", loaded.preprocess)
    samples = [source.dataset[i] for i in range(len(source))]
    x = torch.stack([s.input for s in samples if isinstance(s, Sample)])
    y = torch.tensor([s.label for s in samples if isinstance(s, Sample)])
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = len(x) // 5
    test, train = order[:n_test], order[n_test:]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    recorder = None
    if record is not None:
        from actextract.record.recorder import Recorder

        probe = test[:probe_size].tolist()
        recorder = Recorder(
            model,
            layers=RECORDED_LAYERS,
            probe=source,
            rows=probe,
            out=record,
            batch_size=len(probe),
            overwrite=True,
            storage_options=storage_options,
        )
        recorder.capture(0)  # the initial weights
    for epoch in range(epochs):
        model.train()
        perm = train[torch.randperm(len(train))]
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        log.info("epoch %d: loss %.4f", epoch + 1, loss.item())
        if recorder is not None:
            recorder.capture(epoch + 1)
    model.eval()
    with torch.inference_mode():
        accuracy = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    return TrainResult(
        out, epochs, len(train), len(test), accuracy, Path(record) if record is not None else None
    )
