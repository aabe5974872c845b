"""The command line through click's CliRunner: output, exit codes, nothing written on error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torchvision
from _fixtures import tiny_cnn
from sklearn.datasets import load_digits

import actextract
from actextract.cli.commands import main


def extract_args(out, *extra, model="digits-cnn", dataset="digits", layers="fc1"):
    """``actextract extract`` arguments: the demo model and data unless told otherwise."""
    return [
        "extract",
        "--model",
        model,
        "--dataset",
        dataset,
        "--layers",
        layers,
        "--out",
        str(out),
        *extra,
    ]


def test_layers_lists_names_shapes_and_bytes(runner):
    res = runner.invoke(main, ["layers", "digits-cnn", "--n", "1000"])
    assert res.exit_code == 0, res.output
    assert "torch.fx" in res.output
    conv1 = next(line for line in res.output.splitlines() if line.startswith("conv1 "))
    assert "Conv2d" in conv1 and "(32, 26, 26)" in conv1 and "43.3 KB" in conv1  # 21632 * 2 B
    assert "for 1,000 samples: 43.3 MB for the largest layer" in res.output


def test_layers_of_resnet_with_an_input_shape(runner):
    res = runner.invoke(main, ["layers", "resnet18", "--input-shape", "3,64,64"])
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line for line in res.output.splitlines()[2:]}
    assert "(256, 4, 4)" in lines["layer3"] and "Sequential" in lines["layer3"]
    assert "(512, 1, 1)" in lines["avgpool"]


def test_layers_filters_by_pattern_counts_matches_and_says_what_is_cloned(runner):
    args = ["layers", "resnet18", "--input-shape", "3,64,64"]
    res = runner.invoke(main, [*args, "--layers", "layer*.**.conv2,features.*,bn1"])
    assert res.exit_code == 2 and "'features.*' matches none" in res.output  # resnet has none
    res = runner.invoke(main, [*args, "--layers", "layer*.**.bn1,layer1.*"])
    assert res.exit_code == 0, res.output
    assert "'layer*.**.bn1' matches 8 names" in res.output
    assert "'layer1.*' matches 2 names" in res.output  # layer1.0, layer1.1: the children
    lines = {line.split()[0]: line for line in res.output.splitlines()[4:] if line.strip()}
    assert set(lines) == {
        "layer1.0",
        "layer1.1",
        *(f"layer{i}.{j}.bn1" for i in range(1, 5) for j in (0, 1)),
        "clone:",
    }
    assert "nchw" in lines["layer1.0"] and "clone (by 'layer1.0.relu')" in lines["layer1.0.bn1"]


def _summary_rows(output: str) -> dict[str, list[str]]:
    rows = {}
    for line in output.splitlines():
        cells = [c for c in line.split("  ") if c.strip()]
        if len(cells) == 5:
            rows[cells[0].strip()] = [c.strip() for c in cells]
    return rows


def test_layers_summary_counts_the_models_parameters(runner):
    res = runner.invoke(main, ["layers", "resnet18", "--input-shape", "3,64,64", "--summary"])
    assert res.exit_code == 0, res.output
    model = torchvision.models.resnet18()
    rows = _summary_rows(res.output)
    for name in ("conv1", "layer1.0.conv1", "bn1", "fc"):
        count = sum(p.numel() for p in model.get_submodule(name).parameters())
        assert rows[name][3] == f"{count:,}", name
    layer1 = sum(p.numel() for p in model.layer1.parameters())
    assert rows["layer1"][3] == f"({layer1:,})"  # a container: its children's, in parentheses
    assert rows["relu"][3] == "0" and rows["layer1.0.add"][3] == "0"
    total = sum(p.numel() for p in model.parameters())
    assert f"total params: {total:,}" in res.output and "non-trainable params: 0" in res.output


def test_layers_summary_of_a_checkpoint_with_frozen_parameters(runner, tmp_path):
    """A python: spec with conv1 frozen: trainable / total where they differ."""
    spec = tmp_path / "frozen.py"
    spec.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from _fixtures import tiny_cnn\n"
        "def model():\n"
        "    m = tiny_cnn()\n"
        "    m.conv1.requires_grad_(False)\n"
        "    return m\n"
    )
    model = tiny_cnn()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    args = ["layers", f"python:{spec}:model", "--input-shape", "3,8,8", "--summary"]
    res = runner.invoke(main, [*args, "--weights", str(tmp_path / "w.pt")])
    assert res.exit_code == 0, res.output
    conv1 = sum(p.numel() for p in model.conv1.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert _summary_rows(res.output)["conv1"][3] == f"0 / {conv1:,}"
    assert f"trainable params: {total - conv1:,}" in res.output
    assert f"non-trainable params: {conv1:,}" in res.output


def test_layers_bad_input_shape_exits_2(runner):
    res = runner.invoke(main, ["layers", "digits-cnn", "--input-shape", "3,x"])
    assert res.exit_code == 2 and "comma-separated integers" in res.output


def test_extract_then_info(runner, tmp_path):
    out = tmp_path / "d.zarr"
    res = runner.invoke(
        main,
        extract_args(
            str(out),
            "--limit",
            "100",
            "--batch-size",
            "32",
            "--reduce",
            "conv1=mean",
            "--device",
            "cpu",
            "--codec",
            "blosc-lz4",
            layers="conv*,fc1",
        ),
    )
    assert res.exit_code == 0, res.output
    assert "100 images in" in res.output and "waiting for data" in res.output
    store = actextract.open_store(out)
    assert store.layers == ["conv1", "conv2", "fc1"]
    assert store["conv1"].shape == (100, 32) and store["conv2"].shape == (100, 64, 11, 11)
    res = runner.invoke(main, ["info", str(out)])
    assert res.exit_code == 0, res.output
    assert "complete (1/1 row blocks)" in res.output
    assert "blosc-lz4" in res.output and "(100, 64, 11, 11)" in res.output
    counts = np.bincount(load_digits().target[:100])
    assert ", ".join(f"{c}: {n}" for c, n in enumerate(counts)) in res.output  # per class
    data = json.loads(runner.invoke(main, ["info", str(out), "--json"]).output)
    assert data["n_samples"] == 100 and data["status"] == "complete"


def test_extract_with_a_python_model_and_a_folder(runner, tmp_path, fixtures_file, image_folder):
    out = tmp_path / "f.zarr"
    res = runner.invoke(
        main,
        extract_args(
            str(out),
            "--resize",
            "8",
            "--crop",
            "8",
            "--mean",
            "0.5,0.5,0.5",
            "--std",
            "0.25,0.25,0.25",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            model=f"python:{fixtures_file}:tiny_cnn",
            dataset=f"folder:{image_folder}",
            layers="block",
        ),
    )
    assert res.exit_code == 0, res.output
    store = actextract.open_store(out)
    assert store.ids[:].tolist() == [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]
    assert store.labels[:].tolist() == [0, 0, 0, 1, 1, 1]
    assert store.attrs["dataset"]["classes"] == ["cat", "dog"]
    assert store["block"].shape == (6, 8, 8, 8)


def test_unknown_layer_exits_2_names_close_matches_and_writes_nothing(runner, tmp_path):
    out = tmp_path / "x.zarr"
    res = runner.invoke(
        main,
        extract_args(out, model="resnet18", dataset="synthetic:4:3:32:32", layers="layer5"),
    )
    assert res.exit_code == 2
    assert "layer 'layer5' is not in resnet18; close matches: layer4" in res.output
    assert "actextract layers resnet18" in res.output
    assert not out.exists()


def test_existing_output_is_refused_and_untouched(runner, tmp_path):
    out = tmp_path / "d.zarr"
    args = extract_args(out, "--limit", "8")
    assert runner.invoke(main, args).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    res = runner.invoke(main, args)
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert runner.invoke(main, [*args, "--overwrite"]).exit_code == 0


def test_overwrite_never_deletes_a_folder_that_is_not_a_store(runner, tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    res = runner.invoke(
        main,
        extract_args(precious, "--overwrite"),
    )
    assert res.exit_code == 2 and "is not a Zarr store" in res.output
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_missing_dataset_root_names_the_path(runner, tmp_path):
    missing = tmp_path / "nowhere"
    for spec in (f"folder:{missing}", f"mnist:{missing}", f"cifar10:{missing}"):
        res = runner.invoke(
            main,
            extract_args(tmp_path / "o.zarr", dataset=spec),
        )
        assert res.exit_code == 2, spec
        assert str(missing) in res.output and "does not exist" in res.output


def test_empty_folder_names_the_path(runner, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(
        main,
        extract_args(tmp_path / "o.zarr", dataset=f"folder:{empty}"),
    )
    assert res.exit_code == 2 and f"no images found in '{empty}'" in res.output


def test_corrupt_image_errors_by_default_and_is_skipped_on_request(runner, tmp_path, image_folder):
    (image_folder / "dog" / "1.png").write_bytes(b"not a png at all")
    out = tmp_path / "c.zarr"
    args = extract_args(
        str(out),
        "--resize",
        "32",
        "--crop",
        "32",
        "--batch-size",
        "2",
        model="resnet18",
        dataset=f"folder:{image_folder}",
        layers="avgpool",
    )
    res = runner.invoke(main, args)
    assert res.exit_code == 2
    assert "'dog/1.png'" in res.output and "--on-bad-sample skip" in res.output
    assert actextract.open_store(out).status == "failed"
    assert "did not finish" in runner.invoke(main, ["info", str(out)]).output

    res = runner.invoke(main, [*args, "--overwrite", "--on-bad-sample", "skip"])
    assert res.exit_code == 0, res.output
    assert "skipped 1 bad samples: dog/1.png" in res.output
    store = actextract.open_store(out)
    assert store.complete and store.labels[4] == -1 and store.ids[4] == "dog/1.png"
    assert np.isnan(store["avgpool"][4]).all()
    assert [s["id"] for s in store.attrs["skipped"]] == ["dog/1.png"]


def test_checkpoint_that_does_not_fit_names_the_keys(runner, tmp_path):
    ckpt = tmp_path / "wrong.pt"
    torch.save(tiny_cnn().state_dict(), ckpt)
    res = runner.invoke(
        main,
        extract_args(tmp_path / "o.zarr", "--weights", str(ckpt)),
    )
    assert res.exit_code == 2
    assert "missing keys: conv2.weight" in res.output.replace("\n", " ")
    assert "unexpected keys: bn1.weight" in res.output.replace("\n", " ")
    assert not (tmp_path / "o.zarr").exists()


def test_info_on_something_that_is_not_a_store(runner, tmp_path):
    res = runner.invoke(main, ["info", str(tmp_path)])
    assert res.exit_code == 2 and "is not a Zarr store" in res.output


def test_train_demo_reaches_a_high_accuracy(runner, tmp_path):
    ckpt = tmp_path / "digits-cnn.pt"
    res = runner.invoke(main, ["train-demo", "--out", str(ckpt), "--epochs", "6"])
    assert res.exit_code == 0, res.output
    accuracy = float(res.output.split("test accuracy ")[1].split("%")[0])
    assert accuracy > 90.0
    out = tmp_path / "d.zarr"
    res = runner.invoke(
        main,
        extract_args(out, "--weights", str(ckpt)),
    )
    assert res.exit_code == 0, res.output
    store = actextract.open_store(out)
    predicted = store["fc1"][:].argmax(1)
    assert (predicted == store.labels[:]).mean() > 0.9  # the stored logits classify the digits
    assert len(store.attrs["model"]["weights_sha256"]) == 64


def test_bad_run_options_exit_2_before_anything_is_written(runner, tmp_path):
    out = tmp_path / "o.zarr"
    base = extract_args(out)
    cases = [
        (["--device", "tpu"], "--device 'tpu'"),
        (["--reduce", "fc1=mean"], "with layout vector"),
        (["--layout", "fc1=tokens"], "layer 'fc1' has shape (10,)"),
        (["--layout", "fc1"], "give LAYER=LAYOUT pairs"),
        (["--codec", "lz4", "--level", "3"], "--level has no meaning"),
        (["--decode", "gpu", "--device", "cpu"], "--decode gpu decodes JPEGs on a CUDA device"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "CUDA is not available"))
    for extra, message in cases:
        res = runner.invoke(main, [*base, *extra])
        assert res.exit_code == 2 and message in res.output, (extra, res.output)
        assert not out.exists()


def test_extract_with_a_layout_override_names_the_dimensions_by_it(runner, tmp_path):
    """digits-cnn's conv1 read as channels last (as a user would for a model that is): the
    store says so, names its axes so, and pools over what are then its spatial axes."""
    out = tmp_path / "o.zarr"
    res = runner.invoke(
        main,
        extract_args(
            out,
            "--layout",
            "conv1=nhwc",
            "--reduce",
            "relu1=max",
            "--limit",
            "40",
            layers="conv1,relu1",
        ),
    )
    assert res.exit_code == 0, res.output
    store = actextract.open_store(out)
    layouts = {s["name"]: s["layout"] for s in store.attrs["layers"]}
    assert layouts == {"conv1": "nhwc", "relu1": "nchw"}
    assert store["conv1"].metadata.dimension_names == ("sample", "y", "x", "channel")
    assert store["relu1"].shape == (40, 32)  # pooled over its 26x26
