"""Hugging Face, timm and text: hf:, hf-config: and timm: models, text: and hf-dataset:
corpora tokenised by the model's tokenizer, and reductions over the attention mask. Every
stored value is compared with the model's own output_hidden_states (or forward hooks that
clone) of the same batch, in float32. Tiny models from configs: nothing is downloaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import actextract
from actextract.cli import main
from actextract.errors import ModelSpecError, OptionError, SourceError
from actextract.model.zoo import load_model
from tests import _hf

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        "gpt2-left": _hf.gpt2(root / "gpt2-left", "left"),
        "gpt2-right": _hf.gpt2(root / "gpt2-right", "right"),
        "bert": _hf.bert(root / "bert"),
        "bert-left": _hf.bert(root / "bert-left", "left"),
        "vit": _hf.vit(root / "vit"),
        "corpus": _hf.corpus(root / "corpus.txt"),
    }


def _reference(folder, docs, max_length, padding="max_length"):
    """The model's hidden states and attention mask for ``docs`` as one padded batch, the real
    tokens of a left-padded one numbered from 0 (``position_ids``, as transformers' generate
    counts them). ``padding="longest"``: the batch as actextract computes it when it stores no
    padding (cut to its real tokens, :mod:`actextract.model.trim`)."""
    loaded = load_model(f"hf:{folder}")
    enc = loaded.tokenizer(
        docs, padding=padding, truncation=True, max_length=max_length, return_tensors="pt"
    )
    positions = None
    if loaded.tokenizer.padding_side == "left":
        positions = (enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        out = loaded.module(**enc, position_ids=positions, output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states], enc["attention_mask"].numpy().astype(bool)


def _extract(model, dataset, tmp_path, name="out.zarr", **kw):
    kw = {"dtype": "float32", "progress": False, "overwrite": True, **kw}
    return actextract.extract(model, dataset, out=str(tmp_path / name), **kw)


def test_gpt2_blocks_equal_output_hidden_states(models, tmp_path):
    store = _extract(
        f"hf:{models['gpt2-left']}",
        f"text:{models['corpus']}",
        tmp_path,
        layers="h.*,ln_f",
        max_length=16,
        batch_size=len(_hf.DOCS),  # the reference's batch
    )
    hidden, _ = _reference(models["gpt2-left"], _hf.DOCS, 16)
    # hidden_states: the embeddings, then each block's output; the last one after ln_f
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(store[f"h.{i}"]), hidden[i + 1])
    np.testing.assert_array_equal(np.asarray(store["ln_f"]), hidden[-1])
    assert store["h.0"].shape == (len(_hf.DOCS), 16, 32)
    lines = (1, 2, 4, 5, 6)  # the blank line 3 is no document
    assert list(store.ids[:]) == [f"corpus.txt:{n}" for n in lines]


def test_bert_layers_equal_output_hidden_states(models, tmp_path):
    store = _extract(
        f"hf:{models['bert']}",
        f"text:{models['corpus']}",
        tmp_path,
        layers="encoder.layer.*",
        max_length=20,
        batch_size=len(_hf.DOCS),
    )
    hidden, _ = _reference(models["bert"], _hf.DOCS, 20)
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(store[f"encoder.layer.{i}"]), hidden[i + 1])


@pytest.mark.parametrize("model", ["gpt2-left", "bert-left", "gpt2-right"])
def test_a_document_padded_on_either_side_gives_what_it_gives_alone(models, tmp_path, model):
    """Padding on the left shifts no position: the real tokens are numbered from 0 (without
    position_ids a left-padded GPT-2 or BERT numbers the padding too, and a document's rows
    would depend on its batch's padding)."""
    layer = "h.1" if model.startswith("gpt2") else "encoder.layer.1"
    loaded = load_model(f"hf:{models[model]}")
    store = _extract(
        f"hf:{models[model]}",
        f"text:{models['corpus']}",
        tmp_path,
        layers=layer,
        reduce="tokens",
        max_length=16,
    )
    alone = []
    for doc in _hf.DOCS:
        with torch.no_grad():
            out = loaded.module(
                **loaded.tokenizer(doc, return_tensors="pt"), output_hidden_states=True
            )
        alone.append(out.hidden_states[2][0].numpy())
    rows = actextract.token_activations(store, layer)
    np.testing.assert_allclose(rows, np.concatenate(alone), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", ["gpt2-left", "gpt2-right", "bert"])
def test_token_rows_are_the_real_tokens_in_order(models, tmp_path, model):
    """--reduce tokens: one row per real token, (n_tokens, D), the padding left out wherever
    it is; blocks of 2 documents in chunks of 8 token rows, so a block ends mid-chunk."""
    layer = "h.1" if model.startswith("gpt2") else "encoder.layer.1"
    hidden, mask = _reference(models[model], _hf.DOCS, 16, padding="longest")
    assert mask.shape[1] < 16  # the batch is cut to its longest document
    store = _extract(
        f"hf:{models[model]}",
        f"text:{models['corpus']}",
        tmp_path,
        layers=layer,
        reduce="tokens",
        max_length=16,
        batch_size=len(_hf.DOCS),
        chunk_rows=2,
        chunk_tokens=8,
    )
    want = hidden[2][mask]  # every document's real tokens, in order
    np.testing.assert_array_equal(actextract.token_activations(store, layer), want)
    per_block = [int(mask[i : i + 2].sum()) for i in range(0, len(mask), 2)]
    assert store.token_counts().tolist() == per_block and sum(per_block) == mask.sum()
    arr = store[layer]  # each block's region: 2 × 16 rows from b × 32, its tokens first
    assert arr.shape == (32 * len(per_block), 32) and arr.chunks == (8, 32)
    for b, count in enumerate(per_block):
        before = sum(per_block[:b])
        np.testing.assert_array_equal(arr[32 * b : 32 * b + count], want[before : before + count])
        assert np.isnan(arr[32 * b + count : 32 * (b + 1)]).all()  # never written: NaN
    table = actextract.token_table(store)
    np.testing.assert_array_equal(table["sample"], np.nonzero(mask)[0])
    from actextract.check.verification import verify
    from actextract.store.tokens import sample_tokens

    report = verify(store)
    assert report.ok and report.chunks > 0
    both = sample_tokens(store, layer, [0, 3])  # (T, D) of chosen documents, NaN at padding
    real = store._node("tokens/mask")[:][[0, 3]].astype(bool)  # (2, 16), the run's length
    np.testing.assert_array_equal(both[real], hidden[2][[0, 3]][mask[[0, 3]]])
    assert np.isnan(both[~real]).all()


def test_token_rows_written_through_zarr_with_a_codec_are_the_same(models, tmp_path):
    """zstd: the chunks go through zarr's own write path (not the direct one), the last one of
    each block partly written; the same rows, a verified store."""
    from actextract.check.verification import verify

    kw = dict(layers="h.1", reduce="tokens", max_length=16, chunk_rows=2, chunk_tokens=8)
    spec, corpus = f"hf:{models['gpt2-left']}", f"text:{models['corpus']}"
    plain = _extract(spec, corpus, tmp_path, name="plain.zarr", **kw)
    zstd = _extract(spec, corpus, tmp_path, name="zstd.zarr", codec="zstd", **kw)
    np.testing.assert_array_equal(
        actextract.token_activations(zstd, "h.1"), actextract.token_activations(plain, "h.1")
    )
    assert zstd.token_counts().tolist() == plain.token_counts().tolist()
    assert verify(zstd).ok


@pytest.mark.parametrize("model", ["gpt2-left", "gpt2-right", "bert", "bert-left"])
def test_masked_reductions_equal_numpy_over_the_mask(models, tmp_path, model):
    layer = "h.1" if model.startswith("gpt2") else "encoder.layer.1"
    hidden, mask = _reference(models[model], _hf.DOCS, 16)
    h = hidden[2]
    side = "left" if model.endswith("left") else "right"
    assert (mask[:, 0] if side == "right" else mask[:, -1]).all()  # the padding is where said
    assert not mask.all()
    for how in ("mean", "max", "cls", "last"):
        store = _extract(
            f"hf:{models[model]}",
            f"text:{models['corpus']}",
            tmp_path,
            name=f"{how}.zarr",
            layers=layer,
            reduce=how,
            max_length=16,
            batch_size=len(_hf.DOCS),
        )
        got = np.asarray(store[layer])
        for i, real in enumerate(mask):
            tokens = h[i][real]
            want = {
                "mean": tokens.mean(0),
                "max": tokens.max(0),
                "cls": tokens[0],
                "last": tokens[-1],
            }[how]
            np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-6, err_msg=how)


def test_masked_reductions_of_a_dict_dataset_through_the_python_api(models, tmp_path):
    """A Dataset of tokenizer dicts (and labels) goes through extract() as it is; a document
    padded to the batch's length takes the same masked mean as alone."""
    loaded = load_model(f"hf:{models['bert']}")
    enc = loaded.tokenizer(_hf.DOCS, padding="max_length", max_length=16, return_tensors="pt")
    rows = [{**{k: v[i] for k, v in enc.items()}, "label": i % 2} for i in range(len(_hf.DOCS))]
    store = _extract(loaded.module, rows, tmp_path, layers="encoder.layer.1", reduce="mean")
    np.testing.assert_array_equal(store.labels[:], [0, 1, 0, 1, 0])
    for i, doc in enumerate(_hf.DOCS):
        alone = loaded.tokenizer(doc, return_tensors="pt")  # no padding at all
        with torch.no_grad():
            h = loaded.module(**alone, output_hidden_states=True).hidden_states[2][0]
        np.testing.assert_allclose(np.asarray(store["encoder.layer.1"][i]), h.mean(0), atol=1e-5)


def test_a_transformers_tuple_output_gives_element_0_and_others_by_index(models, tmp_path):
    loaded = load_model(f"hf:{models['gpt2-right']}")
    seen = {}

    def clone(name):
        def hook(_m, _i, out):
            seen[name] = tuple(o.clone() if isinstance(o, torch.Tensor) else o for o in out)

        return hook

    loaded.module.get_submodule("h.0.attn").register_forward_hook(clone("attn"))
    enc = loaded.tokenizer(
        _hf.DOCS, padding="max_length", truncation=True, max_length=12, return_tensors="pt"
    )
    with torch.no_grad():
        loaded.module(**enc)
    assert isinstance(seen["attn"], tuple) and len(seen["attn"]) == 2
    store = _extract(
        f"hf:{models['gpt2-right']}",
        f"text:{models['corpus']}",
        tmp_path,
        layers="h.0.attn",
        max_length=12,
        batch_size=len(_hf.DOCS),
    )
    np.testing.assert_array_equal(np.asarray(store["h.0.attn"]), seen["attn"][0].numpy())


def test_jsonl_with_a_text_field_and_class_names(models, tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [
        {"body": d, "label": ["neg", "pos"][i % 2], "id": f"d{i}"} for i, d in enumerate(_hf.DOCS)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(SourceError, match=r"no text field 'text'.*--text-field"):
        _extract(f"hf:{models['bert']}", f"text:{path}", tmp_path, layers="encoder.layer.0")
    store = _extract(
        f"hf:{models['bert']}",
        f"text:{path}",
        tmp_path,
        layers="encoder.layer.0",
        reduce="cls",
        text_field="body",
        max_length=16,
    )
    assert store.attrs["dataset"]["classes"] == ["neg", "pos"]
    np.testing.assert_array_equal(store.labels[:], [0, 1, 0, 1, 0])
    assert list(store.ids[:]) == [f"d{i}" for i in range(5)]


def test_hf_dataset_saved_to_disk(models, tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"review": datasets.Value("string"), "label": datasets.ClassLabel(names=["bad", "good"])}
    )
    data = datasets.Dataset.from_dict(
        {"review": _hf.DOCS, "label": [1, 0, 1, 1, 0]}, features=features
    )
    datasets.DatasetDict({"train": data, "test": data.select([0, 1])}).save_to_disk(
        str(tmp_path / "reviews")
    )
    spec = f"hf-dataset:{tmp_path / 'reviews'}:test:review"
    store = _extract(
        f"hf:{models['bert']}", spec, tmp_path, layers="encoder.layer.1", reduce="mean"
    )
    assert store["encoder.layer.1"].shape == (2, 32)
    assert store.attrs["dataset"]["classes"] == ["bad", "good"]
    np.testing.assert_array_equal(store.labels[:], [1, 0])
    with pytest.raises(SourceError, match="no column 'text'; it has review, label"):
        _extract(
            f"hf:{models['bert']}",
            f"hf-dataset:{tmp_path / 'reviews'}",
            tmp_path,
            layers="encoder.layer.1",
        )
    with pytest.raises(SourceError, match="no split 'dev'; it has train, test"):
        _extract(
            f"hf:{models['bert']}",
            f"hf-dataset:{tmp_path / 'reviews'}:dev:review",
            tmp_path,
            layers="encoder.layer.1",
        )


def test_hf_config_is_a_random_model_with_the_tokenizer_beside_it(models, tmp_path):
    spec = f"hf-config:{models['gpt2-right'] / 'config.json'}"
    loaded = load_model(spec)
    assert loaded.tokenizer is not None and loaded.weights is None
    trained = load_model(f"hf:{models['gpt2-right']}")
    a, b = loaded.module.state_dict(), trained.module.state_dict()
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    store = _extract(spec, f"text:{models['corpus']}", tmp_path, layers="h.2", reduce="last")
    assert store["h.2"].shape == (5, 32)
    assert store.attrs["model"]["spec"] == spec


def test_hf_vit_takes_its_image_processor_and_timm_its_data_config(models, tmp_path):
    loaded = load_model(f"hf:{models['vit']}")
    assert loaded.input_shape == (3, 32, 32)
    assert (loaded.preprocess.crop, loaded.preprocess.mean) == (32, (0.5, 0.5, 0.5))
    timm = load_model("timm:vit_tiny_patch16_224")
    assert timm.input_shape == (3, 224, 224)
    assert (timm.preprocess.resize, timm.preprocess.crop) == (248, 224)  # crop_pct 0.9
    assert load_model("inception_v3").input_shape == (3, 299, 299)  # its weights' transforms


def test_timm_vit_cls_equals_forward_features(tmp_path):
    x = [torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    store = _extract("timm:vit_tiny_patch16_224", x, tmp_path, layers="norm,blocks.1", reduce="cls")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the run's seed for random weights
        module = load_model("timm:vit_tiny_patch16_224").module
    with torch.no_grad():
        want = module.forward_features(torch.stack(x))[:, 0]
    np.testing.assert_allclose(np.asarray(store["norm"]), want.numpy(), rtol=1e-5, atol=1e-5)
    assert store["blocks.1"].shape == (3, 192)


def test_hf_vit_patch_tokens_from_a_folder_of_images(models, tmp_path):
    from PIL import Image

    for i in range(2):
        Image.fromarray(np.full((40, 48, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    store = _extract(f"hf:{models['vit']}", f"folder:{tmp_path}", tmp_path, layers="layers.*")
    assert store["layers.1"].shape == (2, 17, 32)  # CLS + 4x4 patches
    assert "resize(32) → center_crop(32)" in store.attrs["dataset"]["transform"]


def test_torchvision_weights_by_enum_name_from_the_local_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(ModelSpecError, match=r"not in the local torch cache.*resnet18-"):
        load_model("resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(ModelSpecError, match="not one of resnet18's weights"):
        load_model("resnet18", weights="IMAGENET9K")
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    torch.manual_seed(5)
    saved = torchvision.models.resnet18().state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(saved, tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1])
    loaded = load_model("resnet18", weights="IMAGENET1K_V1")
    assert torch.equal(loaded.module.state_dict()["conv1.weight"], saved["conv1.weight"])
    assert (loaded.weights, loaded.weights_format) == ("IMAGENET1K_V1", "torchvision")


def test_bad_text_input_is_refused_with_what_to_do(models, tmp_path):
    with pytest.raises(SourceError, match="the model has no tokenizer"):
        _extract("resnet18", f"text:{models['corpus']}", tmp_path, layers="layer1")
    with pytest.raises(OptionError, match=r"\(--max-length\) cuts the documents of text datasets"):
        _extract("digits-cnn", "digits", tmp_path, layers="conv1", max_length=8)
    with pytest.raises(OptionError, match=r"\(--pack\) joins the documents of text datasets"):
        _extract("digits-cnn", "digits", tmp_path, layers="conv1", pack=True)
    with pytest.raises(ModelSpecError, match="save_pretrained"):
        load_model(f"hf:{tmp_path / 'nothing-here'}")
    with pytest.raises(ModelSpecError, match=r"not a timm model.*Close matches: vit_tiny"):
        load_model("timm:vit_tiny_patch16_22")
    with pytest.raises(SourceError, match="is not a file"):
        _extract(f"hf:{models['bert']}", f"text:{tmp_path}/none.txt", tmp_path, layers="pooler")


def test_layers_probes_a_text_model_with_real_tokens(models):
    runner = CliRunner()
    res = runner.invoke(
        main,
        ["layers", f"hf:{models['gpt2-right']}", "--text", "the cat sat", "--layers", "h.*"],
    )
    assert res.exit_code == 0, res.output
    assert "input {input_ids: (3,), attention_mask: (3,)} (text 'the cat sat', 3 real tokens)" in (
        res.output
    )
    assert "h.0   GPT2Block  (3, 32)" in res.output and "64 B/token" in res.output
    res = runner.invoke(
        main,
        [
            "layers",
            f"hf:{models['bert']}",
            "--dataset",
            f"text:{models['corpus']}",
            "--max-length",
            "12",
            "--layers",
            "encoder.layer.0",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "first sample (corpus.txt:1), 8 real tokens" in res.output  # [CLS] 6 words [SEP]
    assert "(12, 32)" in res.output


def test_statistics_of_a_text_runs_token_layers_are_over_its_real_tokens(models, tmp_path):
    """class-mean, class-std and channel-hist of a token layer take every real token as a
    row (padding left out), channel-mean is each document's masked mean: all against numpy
    over the mask of the stored layer (float32)."""
    path = tmp_path / "docs.jsonl"
    labels = [0, 1, 1, 0, 1]
    rows = [{"text": d, "label": labels[i]} for i, d in enumerate(_hf.DOCS)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    store = _extract(
        f"hf:{models['gpt2-left']}",
        f"text:{path}",
        tmp_path,
        layers="h.0",
        max_length=16,
        stats="h.0=class-mean,class-std,channel-hist,channel-mean",
        hist_bins=8,
    )
    values = store["h.0"][:].astype(np.float64)
    mask = store._node("tokens/mask")[:].astype(bool)
    group = store.group["stats/h.0"]
    assert store.stats_layers()["h.0"]["over"] == "tokens"
    assert group["count"][:].tolist() == [2, 3]  # documents per class
    for j, c in enumerate((0, 1)):
        tokens = np.concatenate([values[i][mask[i]] for i in range(5) if labels[i] == c])
        assert group["tokens"][j] == len(tokens)
        np.testing.assert_allclose(group["mean"][j], tokens.mean(0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(group["std"][j], tokens.std(0), rtol=1e-6, atol=1e-9)
        assert group["hist"][j].sum() == tokens.size  # every real token's every feature once
    means = store.row_array("stats/h.0/channel_means")[:]
    for i in range(5):
        np.testing.assert_allclose(means[i], values[i][mask[i]].mean(0), atol=1e-6)


def test_render_draws_a_vits_token_layers_on_the_patch_grid(models, tmp_path):
    from PIL import Image

    from actextract.report.classpictures import as_maps, patch_grid

    assert patch_grid(197) == (1, 14) and patch_grid(196) == (0, 14) and patch_grid(51) is None
    assert patch_grid(5) is None  # 1 + 2²: too few patches to be taken for a grid
    rows = np.arange(2 * 17 * 3, dtype=np.float32).reshape(2, 17, 3)
    maps = as_maps(rows, "patches")
    assert maps.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(maps[1, 2], rows[1, 1:, 2].reshape(4, 4))  # CLS left out
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 48, 3), 90 * i, np.uint8)).save(images / f"{i}.png")
    store = _extract(f"hf:{models['vit']}", f"folder:{images}", tmp_path, layers="layers.1")
    report = actextract.render(store, tmp_path / "report")
    captions = [p.caption for p in report.pictures if p.kind == "grids"]
    assert any("4×4 patch grid, the CLS token left out" in c for c in captions), captions
    assert "Top-activating tokens" not in report.index.read_text()  # not a text run


def test_a_python_datasets_token_dicts_of_any_length_are_padded_to_max_length(models, tmp_path):
    """Unpadded tokenizer dicts of different lengths: --max-length pads each on the
    tokenizer's side (the mask marking the padding), so that with right padding a masked mean
    is each document's own, as the model gives it alone."""
    loaded = load_model(f"hf:{models['bert']}")
    rows = [
        {k: v[0] for k, v in loaded.tokenizer(d, return_tensors="pt").items()} for d in _hf.DOCS
    ]
    assert len({len(r["input_ids"]) for r in rows}) > 1
    store = _extract(
        f"hf:{models['bert']}",
        rows,
        tmp_path,
        layers="encoder.layer.1",
        reduce="mean",
        max_length=20,
    )
    assert (store._node("tokens/mask")[:, 0] == 1).all()  # padded on the right
    for i, row in enumerate(rows):
        with torch.no_grad():
            h = loaded.module(**{k: v[None] for k, v in row.items()}, output_hidden_states=True)
        np.testing.assert_allclose(
            store["encoder.layer.1"][i], h.hidden_states[2][0].mean(0), atol=1e-5
        )
    left = _extract(
        f"hf:{models['bert-left']}",
        rows,
        tmp_path,
        name="left.zarr",
        layers="encoder.layer.1",
        reduce="mean",
        max_length=20,
    )
    mask = left._node("tokens/mask")[:]
    assert (mask[:, -1] == 1).all() and mask.sum(1).tolist() == [len(r["input_ids"]) for r in rows]
    with pytest.raises(actextract.BadSampleError, match="more than the padded length 4"):
        _extract(f"hf:{models['bert']}", rows, tmp_path, layers="encoder.layer.1", max_length=4)


def test_timm_takes_pretrained_weights_from_the_local_hugging_face_cache(tmp_path, monkeypatch):
    """A file in the cache's layout for the model's hub id is loaded, and nothing asks the hub
    (HF_HUB_OFFLINE inside); without it the weights are random."""
    import huggingface_hub.constants
    import safetensors.torch
    import timm

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    name = "vit_tiny_patch16_224"
    assert load_model(f"timm:{name}").weights is None  # nothing cached: random
    repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    folder = tmp_path / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    (folder / "snapshots" / "abc123").mkdir(parents=True)
    torch.manual_seed(7)
    saved = timm.create_model(name).state_dict()
    file = folder / "snapshots" / "abc123" / "model.safetensors"
    safetensors.torch.save_file(saved, file)
    loaded = load_model(f"timm:{name}")
    assert loaded.weights == str(file) and loaded.weights_format == "hub"
    for key in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "head.weight"):
        assert torch.equal(loaded.module.state_dict()[key], saved[key]), key


def test_the_graph_of_a_text_model_is_probed_with_tokens(models, tmp_path):
    res = CliRunner().invoke(
        main, ["layers", f"hf:{models['gpt2-right']}", "--graph", str(tmp_path / "g.dot")]
    )
    assert res.exit_code == 0, res.output
    dot = (tmp_path / "g.dot").read_text()
    assert "input {input_ids: (10,), attention_mask: (10,)}" in dot  # the probe sentence
