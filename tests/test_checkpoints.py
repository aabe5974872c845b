"""Checkpoints run no code unless trusted: state_dicts and safetensors load safely, a pickle
that needs the full unpickler needs --trust-checkpoint / trust_checkpoint=True, and damaged
files never reach an unpickler."""

from __future__ import annotations

import pathlib
import pickle
import warnings

import pytest
import torch
from _fixtures import TinyCNN, tiny_cnn

import actextract
from actextract.cli.commands import main
from actextract.errors import CheckpointError, UntrustedCheckpointError
from actextract.model import checkpoints
from actextract.model.zoo import DigitsCNN, file_sha256, load_model
from actextract.report.rebuild import RebuildError, rebuild_model


class Payload:
    """Unpickled, writes ``marker``: what a crafted checkpoint could do."""

    def __init__(self, marker: pathlib.Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "ran"))


def _payload(tmp_path: pathlib.Path, kind: str) -> tuple[pathlib.Path, pathlib.Path]:
    """A crafted checkpoint of ``kind`` and the marker file its unpickling would write."""
    marker, path = tmp_path / "marker", tmp_path / f"{kind}.pt"
    if kind == "torch.save":
        torch.save(Payload(marker), path)
    elif kind == "in-a-dict":
        torch.save({"state_dict": Payload(marker), "epoch": 3}, path)
    elif kind == "legacy":  # torch.save before the zip format
        torch.save(Payload(marker), path, _use_new_zipfile_serialization=False)
    else:  # pickle.dump: not a torch.save file at all
        with open(path, "wb") as f:
            pickle.dump(Payload(marker), f)
    return path, marker


TORCH_SAVED = ["torch.save", "in-a-dict", "legacy"]


def _clean(message: str, path: pathlib.Path) -> None:
    """Names the --weights path, and ends with what to do (not ': ' and nothing)."""
    assert f"--weights '{path}'" in message
    assert not message.rstrip().endswith(":") and not message.endswith(": ")
    assert message.rstrip().endswith(".")


@pytest.fixture
def no_full_unpickler(monkeypatch):
    """Fails the test if torch.load is asked for the full unpickler."""
    real = torch.load

    def load(*args, weights_only=None, **kw):
        assert weights_only is True, "the full unpickler was asked for"
        return real(*args, weights_only=weights_only, **kw)

    monkeypatch.setattr(checkpoints.torch, "load", load)


def test_the_payload_does_run_when_unpickled(tmp_path):
    path, marker = _payload(tmp_path, "pickle.dump")
    pickle.loads(path.read_bytes())  # what the tests below make sure never happens
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("kind", TORCH_SAVED)
def test_a_crafted_checkpoint_is_refused_without_trust(tmp_path, kind, no_full_unpickler):
    path, marker = _payload(tmp_path, kind)
    with pytest.raises(UntrustedCheckpointError) as e:
        load_model("digits-cnn", weights=path)
    message = str(e.value)
    assert "--trust-checkpoint" in message and "run code from the file" in message
    assert "not a plain state_dict" in message and "torch.save(model.state_dict()" in message
    _clean(message, path)
    assert not marker.exists()


@pytest.mark.parametrize("trust", [False, True])
def test_a_plain_pickle_is_no_checkpoint_even_trusted(tmp_path, trust, no_full_unpickler):
    path, marker = _payload(tmp_path, "pickle.dump")
    with pytest.raises(CheckpointError, match=r"not a torch\.save file") as e:
        load_model("digits-cnn", weights=path, trust_checkpoint=trust)
    _clean(str(e.value), path)
    assert not marker.exists()


def test_api_extract_refuses_it_and_writes_nothing(tmp_path):
    path, marker = _payload(tmp_path, "in-a-dict")
    out = tmp_path / "o.zarr"
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
        actextract.extract(
            "digits-cnn", "digits", layers="fc1", weights=path, out=out, limit=4, device="cpu"
        )
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("kind", ["torch.save", "in-a-dict"])
def test_cli_extract_and_layers_refuse_it_with_exit_2(runner, tmp_path, kind):
    path, marker = _payload(tmp_path, kind)
    out = tmp_path / "o.zarr"
    extract = ["extract", "--model", "digits-cnn", "--dataset", "digits", "--layers", "fc1"]
    for args in (
        [*extract, "--out", str(out), "--limit", "4", "--device", "cpu", "--weights", str(path)],
        ["layers", "digits-cnn", "--weights", str(path)],
        ["layers", "digits-cnn", "--weights", str(path), "--graph", str(tmp_path / "g.dot")],
    ):
        res = runner.invoke(main, args)
        output = " ".join(res.output.split())
        assert res.exit_code == 2, res.output
        assert "--trust-checkpoint" in output and "pickle can execute arbitrary code" in output
        assert not marker.exists() and not out.exists()


def _damaged(tmp_path: pathlib.Path, kind: str) -> pathlib.Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        g = torch.Generator().manual_seed(0)
        path.write_bytes(
            torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=g).numpy().tobytes()
        )
    elif kind == "zeros":
        path.write_bytes(b"\x00" * 10)
    elif kind == "truncated-zip":  # the crafted checkpoint, cut: its pickle must not run
        whole, _ = _payload(tmp_path, "torch.save")
        path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    elif kind == "zip-without-data":
        import zipfile

        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/version", "3")
    else:  # a safetensors file cut after its header
        from safetensors.torch import save_file

        whole = tmp_path / "whole.safetensors"
        save_file(DigitsCNN().state_dict(), whole)
        path = tmp_path / "cut.safetensors"
        path.write_bytes(whole.read_bytes()[:300])
    return path


@pytest.mark.parametrize(
    "kind, says",
    [
        ("empty", "is empty (0 bytes)"),
        ("random", "cannot be read as a checkpoint"),
        ("zeros", "cannot be read as a checkpoint"),
        ("truncated-zip", "damaged or truncated zip archive"),
        ("zip-without-data", "without data.pkl"),
        ("truncated-safetensors", "not a valid safetensors file"),
    ],
)
@pytest.mark.parametrize("trust", [False, True])
def test_damaged_files_never_reach_an_unpickler(tmp_path, monkeypatch, kind, says, trust):
    path = _damaged(tmp_path, kind)
    calls = []
    monkeypatch.setattr(checkpoints.torch, "load", lambda *a, **kw: calls.append(kw))
    with pytest.raises(CheckpointError) as e:
        load_model("digits-cnn", weights=path, trust_checkpoint=trust)
    assert says in str(e.value)
    _clean(str(e.value), path)
    assert calls == [] and not (tmp_path / "marker").exists()


def test_an_error_without_a_message_is_named_by_its_type(tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    torch.save(DigitsCNN().state_dict(), path)

    def fail(*args, **kw):
        raise RuntimeError()

    monkeypatch.setattr(checkpoints.torch, "load", fail)
    with pytest.raises(CheckpointError, match=r"\(RuntimeError\)") as e:
        load_model("digits-cnn", weights=path)
    _clean(str(e.value), path)


def test_cli_empty_checkpoint(runner, tmp_path):
    path = _damaged(tmp_path, "empty")
    res = runner.invoke(main, ["layers", "digits-cnn", "--weights", str(path)])
    assert res.exit_code == 2 and "is empty (0 bytes)" in res.output


def test_state_dict_and_safetensors_give_the_same_parameters(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    state = DigitsCNN().state_dict()
    torch.save(state, tmp_path / "w.pt")
    torch.save(state, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    save_file(state, tmp_path / "w.safetensors")
    save_file({f"module.{k}": v for k, v in state.items()}, tmp_path / "w.bin")  # by content
    loaded = {
        name: load_model("digits-cnn", weights=tmp_path / name)
        for name in ("w.pt", "old.pt", "w.safetensors", "w.bin")
    }
    assert loaded["w.pt"].weights_format == loaded["old.pt"].weights_format == "torch"
    assert loaded["w.safetensors"].weights_format == "safetensors"
    assert loaded["w.bin"].weights_format == "safetensors"
    for one in loaded.values():
        got = one.module.state_dict()
        assert got.keys() == state.keys()
        assert all(torch.equal(got[k], state[k]) for k in state)
    assert loaded["w.safetensors"].weights_sha256 == file_sha256(tmp_path / "w.safetensors")


def test_safe_loads_print_no_warnings(tmp_path):
    from safetensors.torch import save_file

    torch.save({"model_state_dict": DigitsCNN().state_dict()}, tmp_path / "w.pt")
    save_file(DigitsCNN().state_dict(), tmp_path / "w.safetensors")
    torch.save(tiny_cnn(), tmp_path / "whole.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model("digits-cnn", weights=tmp_path / "w.pt")
        load_model("digits-cnn", weights=tmp_path / "w.safetensors")
        load_model("digits-cnn", weights=tmp_path / "whole.pt", trust_checkpoint=True)


def test_a_whole_pickled_module_needs_trust(tmp_path, fixtures_file):
    whole = tmp_path / "whole.pt"
    torch.save(tiny_cnn(), whole)
    with pytest.raises(UntrustedCheckpointError, match=r"_fixtures\.TinyCNN"):
        load_model("digits-cnn", weights=whole)
    loaded = load_model("digits-cnn", weights=whole, trust_checkpoint=True)
    assert isinstance(loaded.module, TinyCNN) and not loaded.module.training
    assert torch.equal(loaded.module.conv1.weight, tiny_cnn().conv1.weight)

    spec = f"python:{fixtures_file}:TinyCNN"
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
        actextract.list_layers(spec, input_shape=(3, 8, 8), weights=whole)
    table = actextract.list_layers(
        spec, input_shape=(3, 8, 8), weights=whole, trust_checkpoint=True
    )
    assert "conv1" in [r.name for r in table.rows]


def test_cli_trust_checkpoint_loads_a_whole_module(runner, tmp_path, fixtures_file):
    whole = tmp_path / "whole.pt"
    torch.save(tiny_cnn(), whole)
    spec, out = f"python:{fixtures_file}:TinyCNN", tmp_path / "o.zarr"
    layers = ["layers", spec, "--input-shape", "3,8,8", "--weights", str(whole)]
    res = runner.invoke(main, layers)
    assert res.exit_code == 2 and "--trust-checkpoint" in res.output
    res = runner.invoke(main, [*layers, "--trust-checkpoint"])
    assert res.exit_code == 0, res.output
    assert any(line.startswith("conv1 ") for line in res.output.splitlines())
    extract = [
        "extract",
        "--model",
        spec,
        "--dataset",
        "synthetic:8:3:8:8",
        "--layers",
        "conv1,fc",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
        "--weights",
        str(whole),
    ]
    res = runner.invoke(main, extract)
    assert res.exit_code == 2 and "--trust-checkpoint" in res.output and not out.exists()
    res = runner.invoke(main, [*extract, "--trust-checkpoint"])
    assert res.exit_code == 0, res.output
    store = actextract.open_store(out)
    assert store.attrs["model"]["weights_format"] == "pickle"
    assert store.attrs["model"]["weights_sha256"] == file_sha256(whole)
    with torch.no_grad():
        want = tiny_cnn()(torch.as_tensor(_synthetic(8)))
    assert torch.allclose(torch.as_tensor(store["fc"][:]).float(), want, atol=1e-2)

    # the renderer rebuilds no model from it: that would run code from the checkpoint
    with pytest.raises(RebuildError, match=r"pickled module.*does not run code from checkpoints"):
        rebuild_model(store.attrs)
    report = actextract.render(store, tmp_path / "r", only="filters")
    assert "does not run code from checkpoints" in report.notes["conv1"][0]


def _synthetic(n: int):
    from actextract.data.source import open_source

    source = open_source("synthetic:8:3:8:8", None)
    return torch.stack([source.dataset[i].input for i in range(n)]).numpy()


def test_rebuild_refuses_a_crafted_checkpoint_without_running_it(tmp_path):
    path, marker = _payload(tmp_path, "torch.save")
    # a store from before weights_format was recorded: only the refusal to unpickle stops it
    attrs = {"model": {"spec": "digits-cnn", "weights": str(path)}}
    attrs["model"]["weights_sha256"] = file_sha256(path)
    with pytest.raises(RebuildError, match="renderer does not run code from checkpoints"):
        rebuild_model(attrs)
    assert not marker.exists()


def test_store_records_how_the_checkpoint_was_read(tmp_path):
    from safetensors.torch import save_file

    save_file(DigitsCNN().state_dict(), tmp_path / "w.safetensors")
    store = actextract.extract(
        "digits-cnn",
        "digits",
        layers="fc1",
        weights=tmp_path / "w.safetensors",
        out=tmp_path / "o.zarr",
        limit=4,
        device="cpu",
        progress=False,
    )
    assert store.attrs["model"]["weights_format"] == "safetensors"
    assert isinstance(rebuild_model(store.attrs), DigitsCNN)  # a safe checkpoint rebuilds
