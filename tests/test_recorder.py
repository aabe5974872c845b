"""The Recorder: training goes on bit for bit as without it, its store reads back per epoch
(equal to a plain forward with that epoch's weights), every=k, resume, refusals, and the
rendering of a store with an epoch axis."""

from __future__ import annotations

import copy
import json
import logging
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _fixtures import FailsAt, SeededImages, tiny_cnn
from torch import nn
from torch.utils.data import DataLoader

import actextract
from actextract.cli.commands import main
from actextract.errors import (
    BadSampleError,
    LayerNotFoundError,
    OptionError,
    OutputExistsError,
    StoreError,
)
from actextract.extraction.plan import state_sha256
from actextract.model.zoo import DigitsCNN
from actextract.store import Store, StoreReader
from actextract.store.epochs import EpochStore, EpochView

LAYERS = ["conv1", "relu", "frozen", "fc"]
N_PROBE = 12


class TrainNet(nn.Module):
    """BatchNorm, an in-place ReLU, two dropouts and a BatchNorm kept in eval mode while the
    rest trains: the train/eval flags, the in-place flag and the RNG all matter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout2d(0.2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.frozen = nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(2)
        self.drop2 = nn.Dropout(0.3)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.relu(self.bn1(self.conv1(x))))
        x = self.pool(self.frozen(self.conv2(x)))
        return self.fc(self.drop2(torch.flatten(x, 1)))


def reference(model: TrainNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """LAYERS computed by hand in eval mode (dropout is the identity)."""
    with torch.no_grad():
        out = {"conv1": model.conv1(x)}
        out["relu"] = F.relu(model.bn1(out["conv1"]))
        out["frozen"] = model.frozen(model.conv2(out["relu"]))
        out["fc"] = model.fc(torch.flatten(model.pool(out["frozen"]), 1))
    return out


def train_epoch(model: TrainNet, opt: torch.optim.Optimizer, steps: int = 3) -> None:
    """A few steps on data drawn from torch's global RNG; Python's and NumPy's RNGs scale the
    loss, so every RNG a capture might touch changes the weights."""
    model.train()
    model.frozen.eval()
    for _ in range(steps):
        x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
        scale = 1.0 + 0.1 * (random.random() + float(np.random.rand()))
        loss = F.cross_entropy(model(x), y) * scale
        opt.zero_grad()
        loss.backward()
        opt.step()


def new_model() -> tuple[TrainNet, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = TrainNet()
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def flags(model: nn.Module) -> dict[str, tuple[bool, bool | None]]:
    return {n: (m.training, getattr(m, "inplace", None)) for n, m in model.named_modules()}


def training(out, capture: str | None, epochs: int = 3):
    """Seeded training; with ``capture`` (the capture method), a Recorder after each epoch.
    Returns the model, the optimizer, the RNG states and each epoch's weights."""
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    model, opt = new_model()
    rec = None
    if capture:
        probe = DataLoader(SeededImages(N_PROBE), batch_size=5, shuffle=True)
        rec = actextract.Recorder(
            model, layers=LAYERS, probe=probe, out=out, dtype="float32", capture=capture
        )
    weights = []
    for epoch in range(epochs):
        train_epoch(model, opt)
        if rec is not None:
            before = flags(model)
            assert rec.capture(epoch) is True
            assert flags(model) == before  # every module's train/eval and in-place flag
        weights.append(copy.deepcopy(model.state_dict()))
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    return model, opt, states, weights


@pytest.fixture(scope="module")
def plain_run():
    return training(None, None)


@pytest.fixture(scope="module", params=["fx", "hooks"])
def runs(request, plain_run, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"rec-{request.param}") / "train.zarr"
    return out, plain_run, training(out, request.param)


# -- the model is left as it was ----------------------------------------------------------------
def test_training_goes_on_bit_for_bit(runs):
    _, (plain, plain_opt, plain_rng, _), (model, opt, rng, _) = runs
    for (name, a), b in zip(plain.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # weights and BatchNorm statistics
    a, b = plain_opt.state_dict(), opt.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i, state in a["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["state"][i][key]), (i, key)
    assert torch.equal(plain_rng[0], rng[0])
    assert plain_rng[1] == rng[1]
    assert all(np.array_equal(x, y) for x, y in zip(plain_rng[2], rng[2], strict=True))
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    outputs = []
    for m in (copy.deepcopy(plain), copy.deepcopy(model)):  # copies: this forward trains BN
        m.train()
        m.frozen.eval()
        torch.manual_seed(9)  # a training forward: dropout draws from the same RNG state
        outputs.append(m(x))
    assert torch.equal(*outputs)


def test_no_hooks_or_modules_left_behind(runs):
    _, (plain, *_), (model, *_) = runs
    assert [n for n, _ in model.named_modules()] == [n for n, _ in plain.named_modules()]
    for name, m in model.named_modules():
        hooks = (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks)
        assert not any(hooks), name
    assert model.relu.inplace is True


# -- the store ------------------------------------------------------------------------------------
def test_store_reads_back_per_epoch(runs):
    out, _, (*_, weights) = runs
    store = actextract.open_store(out)
    assert isinstance(store, EpochStore)
    assert store.epochs() == [0, 1, 2] and store.complete
    assert store["conv1"].shape == (3, N_PROBE, 4, 8, 8)
    assert store["conv1"].metadata.dimension_names == ("epoch", "sample", "channel", "y", "x")
    assert store.attrs["axis"] == "epoch" and store.n == N_PROBE
    data = SeededImages(N_PROBE)
    np.testing.assert_array_equal(store.labels[:], data.labels)
    assert store.ids[:].tolist() == [str(i) for i in range(N_PROBE)]
    records = store.records()
    for epoch, state in enumerate(weights):
        model = TrainNet()
        model.load_state_dict(state)
        expected = reference(model.eval(), data.x)
        view = store.at(epoch)
        assert isinstance(view, EpochView) and view["fc"].shape == (N_PROBE, 3)
        for layer in LAYERS:
            np.testing.assert_allclose(view[layer][:], expected[layer], rtol=1e-5, atol=1e-6)
        assert records[epoch]["state_sha256"] == state_sha256(model)
        assert records[epoch]["nonfinite"] == dict.fromkeys(LAYERS, 0)


def test_probe_loader_sampler_is_ignored_with_a_note(tmp_path, caplog):
    model, _ = new_model()
    probe = DataLoader(SeededImages(N_PROBE), batch_size=5, shuffle=True)
    with caplog.at_level(logging.INFO, logger="actextract.data.probes"):
        rec = actextract.Recorder(model, layers=["fc"], probe=probe, out=tmp_path / "r.zarr")
    notes = [r.getMessage() for r in caplog.records if "is ignored" in r.getMessage()]
    assert len(notes) == 1 and "RandomSampler" in notes[0]
    assert rec.batch_size == 5


def test_every_k_epochs(tmp_path):
    model, _ = new_model()
    rec = actextract.Recorder(
        model, layers="fc", probe=SeededImages(N_PROBE), out=tmp_path / "r.zarr", every=2
    )
    assert [rec.capture(e) for e in range(5)] == [True, False, True, False, True]
    assert rec.capture(5) is False
    store = actextract.open_store(tmp_path / "r.zarr")
    assert store.epochs() == [0, 2, 4] and store["fc"].shape == (5, N_PROBE, 3)
    assert np.isnan(store["fc"][1]).all()
    with pytest.raises(StoreError, match=r"epoch 1 is not recorded .* epochs 0, 2, 4"):
        store.at(1)
    with pytest.raises(OptionError, match="every=0"):
        actextract.Recorder(model, layers="fc", probe=SeededImages(), out=tmp_path / "x", every=0)
    with pytest.raises(OptionError, match="non-negative"):
        rec.capture(-1)


def test_resume_appends_and_recapture_replaces(tmp_path, caplog):
    out = tmp_path / "r.zarr"
    model, opt = new_model()
    settings = {"layers": ["conv1", "fc"], "probe": SeededImages(N_PROBE), "out": out}
    first = actextract.Recorder(model, dtype="float32", **settings)
    first.capture(0)
    first.capture(1)
    train_epoch(model, opt)  # training resumes: a new Recorder on the same store
    again = actextract.Recorder(model, dtype="float32", **settings)
    assert again.store.epochs() == [0, 1]
    assert again.capture(2)
    with caplog.at_level(logging.INFO, logger="actextract.record.recorder"):
        again.capture(1)  # weights have changed since: epoch 1 is rewritten
    assert any("already recorded" in r.getMessage() for r in caplog.records)
    store = actextract.open_store(out)
    assert store.epochs() == [0, 1, 2]
    np.testing.assert_array_equal(store.at(1)["fc"][:], store.at(2)["fc"][:])
    assert not np.array_equal(store.at(0)["fc"][:], store.at(1)["fc"][:])
    # another run's settings are refused, naming the field; overwrite=True replaces the store
    with pytest.raises(StoreError, match=r"its layers is \['conv1', 'fc'\].*overwrite=True"):
        actextract.Recorder(model, layers=["fc"], probe=SeededImages(N_PROBE), out=out)
    with pytest.raises(StoreError, match=r"its dtype is 'float32'.*'float16'"):
        actextract.Recorder(model, **settings)
    fresh = actextract.Recorder(model, overwrite=True, **settings)
    assert fresh.store.epochs() == [] and fresh.store.attrs["dtype"] == "float16"


def test_refusals_before_anything_is_written(tmp_path):
    model, _ = new_model()
    with pytest.raises(LayerNotFoundError, match="layer5"):
        actextract.Recorder(model, layers=["layer5"], probe=SeededImages(), out=tmp_path / "a")
    assert not (tmp_path / "a").exists()
    run = actextract.extract(
        tiny_cnn(), SeededImages(), layers=["fc"], out=tmp_path / "run.zarr", device="cpu"
    )
    with pytest.raises(OutputExistsError, match=r"written by extract.*overwrite=True"):
        actextract.Recorder(model, layers=["fc"], probe=SeededImages(), out=run.location.local)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a Zarr store"):
        actextract.Recorder(
            model, layers=["fc"], probe=SeededImages(), out=tmp_path / "notes", overwrite=True
        )
    with pytest.raises(OptionError, match="rows="):
        actextract.Recorder(
            model, layers=["fc"], probe=SeededImages(), out=tmp_path / "b", rows=[0, 99]
        )


def test_a_bad_probe_sample_fails_the_capture_not_the_epochs_before(tmp_path):
    model, _ = new_model()
    rec = actextract.Recorder(
        model, layers=["fc"], probe=FailsAt(9), out=tmp_path / "r.zarr", batch_size=4
    )
    with pytest.raises(BadSampleError, match="probe sample 9"):
        rec.capture(0)
    store = actextract.open_store(tmp_path / "r.zarr")
    assert store.epochs() == [] and store.status == "failed"


# -- a dataset spec as the probe, and the pictures -----------------------------------------------
@pytest.fixture(scope="module")
def digits_recording(tmp_path_factory):
    """digits-cnn at two 'epochs' (two seeded initialisations) on digits 5, 3, 100 and 7."""
    out = tmp_path_factory.mktemp("digits") / "train.zarr"
    torch.manual_seed(0)
    model = DigitsCNN()
    rec = actextract.Recorder(
        model, layers="conv1,pool2,fc1", probe="digits", rows=[5, 3, 100, 7], out=out
    )
    rec.capture(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    rec.capture(1)
    return actextract.open_store(out)


def test_a_spec_probe_keeps_the_dataset_ids_and_labels(digits_recording):
    from sklearn.datasets import load_digits

    store = digits_recording
    assert store.ids[:].tolist() == ["5", "3", "100", "7"]
    np.testing.assert_array_equal(store.labels[:], load_digits().target[[5, 3, 100, 7]])
    assert store["conv1"].shape == (2, 4, 32, 26, 26) and store["conv1"].dtype == np.float16
    dataset = store.attrs["dataset"]
    assert dataset["spec"] == "digits" and dataset["rows"] == [5, 3, 100, 7]
    assert [s["model_output"] for s in store.attrs["layers"]] == [False, False, True]


def test_render_draws_the_evolution(digits_recording, tmp_path, runner):
    report = actextract.render(digits_recording, tmp_path / "rep", samples=[0, 1])
    made = {p.path: p.kind for p in report.pictures}
    for layer in ("conv1", "pool2", "fc1"):
        assert made[f"{layer}.evolution.averages.png"] == "evolution"
        assert made[f"{layer}.evolution.0.png"] == "evolution-sample"
    assert made["fc1.evolution.accuracy.png"] == "evolution"
    assert made["conv1.samples.png"] == "grids"  # the last epoch, as a run's store
    assert "conv1.filters.png" not in made
    assert all((tmp_path / "rep" / p).is_file() for p in made)
    notes = " ".join(report.notes[""])
    assert "a recording of 2 epochs (0-1)" in notes and "inputs not shown" not in notes
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "conv1.evolution.averages.png" in page and "Each sample across epochs" in page
    assert "Each sample's maps" in page  # the last epoch's, as for a run's store
    manifest = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert "fc1.evolution.accuracy.png" in manifest["files"]
    path, cli = str(digits_recording.location), tmp_path / "cli"
    done = runner.invoke(
        main, ["render", path, "--out", str(cli), "--layers", "fc1", "--only", "grids"]
    )
    assert done.exit_code == 0, done.output
    assert (cli / "fc1.evolution.3.png").is_file() and (cli / "fc1.strip.png").is_file()
    assert not (cli / "fc1.evolution.averages.png").exists()
    info = runner.invoke(main, ["info", path])
    assert info.exit_code == 0 and "recording, epochs 0-1 captured" in info.output
    refused = runner.invoke(main, ["verify", path])
    assert refused.exit_code == 2 and "no row blocks to verify" in refused.output


def test_render_refuses_a_recording_without_epochs(tmp_path):
    model, _ = new_model()
    actextract.Recorder(model, layers=["fc"], probe=SeededImages(), out=tmp_path / "r.zarr")
    with pytest.raises(StoreError, match="no epoch captured yet"):
        actextract.render(tmp_path / "r.zarr", tmp_path / "rep")
    assert not (tmp_path / "rep").exists()


def test_train_demo_records_every_epoch(runner, tmp_path):
    record = tmp_path / "train.zarr"
    args = ["train-demo", "--out", str(tmp_path / "cnn.pt"), "--epochs", "1", "--record", record]
    done = runner.invoke(main, [str(a) for a in args])
    assert done.exit_code == 0, done.output
    assert "recorded epochs 0-1" in done.output
    store = actextract.open_store(record)
    assert store.epochs() == [0, 1] and store.n == 100
    assert store.layers == ["conv1", "conv2", "fc1"] and store.attrs["dataset"]["spec"] == "digits"
    records = store.records()
    assert records[0]["state_sha256"] != records[1]["state_sha256"]


def test_extract_refuses_to_resume_or_join_a_recording(runs):
    """A recording shares the read side of a run's store, not its row blocks: --resume and
    --shard are refused with the reason, and the recording is left as it was."""
    out, _, _ = runs
    store = actextract.open_store(out)
    assert isinstance(store, StoreReader) and not isinstance(store, Store)
    assert not hasattr(store, "write_block") and not hasattr(store, "seal")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for how in (dict(resume=True), dict(shard="0/2")):
        with pytest.raises(StoreError, match=r"epoch axis.*cannot resume it"):
            actextract.extract(
                tiny_cnn(), SeededImages(), layers=["fc"], out=out, device="cpu", **how
            )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
