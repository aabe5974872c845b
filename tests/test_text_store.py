"""A text run's store: the attention mask and token ids beside the padded activations, one
row per real token on reading (token_table, token_activations), and the guarantees of every
run: a killed and resumed run, two --shard processes and two torchrun ranks write what one
uninterrupted process writes, byte for byte."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from _runner import ENV, run, same_store
from _stores import old_strings

import actextract
from actextract.check.verification import verify
from actextract.errors import StoreError
from actextract.store.integrity import check
from actextract.store.tokens import iter_token_blocks
from tests import _hf

pytest.importorskip("transformers")

DOCS = [f"{a} {b}" for a in _hf.DOCS for b in _hf.DOCS[:4]][:20]  # 20 documents, 2-22 words


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A GPT-2 directory (left padding), a corpus, the CLI arguments of a run over it (4 row
    blocks of 6 rows, batches of 3) and that run's store."""
    root = tmp_path_factory.mktemp("textrun")
    model = _hf.gpt2(root / "gpt2", "left")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(DOCS) + "\n")
    args = [
        "extract",
        "--model",
        f"hf:{model}",
        "--dataset",
        f"text:{corpus}",
        "--layers",
        "h.*",
        "--reduce",
        "h.0=tokens,h.1=tokens,h.2=mean",  # a row per real token; h.2 one per document
        "--chunk-tokens",
        "8",  # blocks of 6 × 16 token rows in chunks of 8: a block ends mid-chunk
        "--stats",
        "h.1=class-mean,class-std,channel-hist,channel-mean",
        "--stats-every",
        "0",
        "--max-length",
        "16",
        "--batch-size",
        "3",
        "--chunk-rows",
        "6",
        "--device",
        "cpu",
        "--no-progress",
    ]
    out = root / "ref.zarr"
    done = run(*args, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return args, actextract.open_store(out), model


def test_a_text_run_keeps_the_mask_and_token_ids(text_run):
    _, store, model = text_run
    from actextract.model.zoo import load_model

    tok = load_model(f"hf:{model}").tokenizer
    enc = tok(DOCS, padding="max_length", truncation=True, max_length=16, return_tensors="np")
    assert store.attrs["tokens"] == {"length": 16, "input_ids": True}
    mask = store._node("tokens/mask")[:]
    np.testing.assert_array_equal(mask, enc["attention_mask"])
    np.testing.assert_array_equal(store._node("tokens/input_ids")[:], enc["input_ids"])
    assert (mask[:, -1] == 1).all() and not mask.all()  # left padding
    table = actextract.token_table(store)
    real = enc["attention_mask"].astype(bool)
    assert len(table["sample"]) == real.sum()
    np.testing.assert_array_equal(table["token_id"], enc["input_ids"][real])
    np.testing.assert_array_equal(table["sample"], np.nonzero(real)[0])
    for doc in (0, 7):  # positions count a document's real tokens from 0
        assert table["position"][table["sample"] == doc].tolist() == list(range(real[doc].sum()))
    rows = actextract.token_activations(store, "h.1")
    np.testing.assert_array_equal(rows, actextract.token_activations(store.path, "h.1"))  # a path
    blocks = list(iter_token_blocks(store, "h.1"))
    assert len(blocks) == 4 and rows.shape == (real.sum(), 32)
    np.testing.assert_array_equal(np.concatenate([v for _, v in blocks]), rows)
    # with --reduce tokens: the real tokens only, each block's from 6 × 16 × b on
    counts = [int(real[i : i + 6].sum()) for i in range(0, 20, 6)]
    assert store.token_counts().tolist() == counts
    assert store["h.0"].shape == (4 * 96, 32) and store["h.0"].chunks == (8, 32)
    with torch.no_grad():
        hidden = tok_model(model, enc)
    dense = actextract.token_activations(store, "h.0")
    np.testing.assert_allclose(dense.astype(np.float32), hidden[real], atol=2e-2, rtol=1e-2)
    on_disk = sorted(int(p.name) for p in (store.path / "acts" / "h.0" / "c").iterdir())
    assert on_disk == [12 * b + c for b, n in enumerate(counts) for c in range(-(-n // 8))]


def tok_model(model, enc):
    """The first block's output of the model over the padded batch ``enc``, float32."""
    from actextract.model.zoo import load_model

    module = load_model(f"hf:{model}").module
    mask = torch.from_numpy(enc["attention_mask"]).long()
    out = module(
        input_ids=torch.from_numpy(enc["input_ids"]).long(),
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp_min(0),  # the real tokens from 0
        output_hidden_states=True,
    )
    return out.hidden_states[1].numpy()


def test_token_rows_are_of_token_layers_stored_whole(text_run, tmp_path):
    _, store, _ = text_run
    with pytest.raises(StoreError, match="not a row for each of the run's 16 tokens"):
        actextract.token_activations(store, "h.2")  # pooled to (32,)
    digits = actextract.extract(
        "digits-cnn",
        "digits",
        layers="fc1",
        out=str(tmp_path / "d.zarr"),
        limit=8,
        progress=False,
    )
    with pytest.raises(StoreError, match="holds no token records"):
        actextract.token_table(digits)


def test_a_padded_token_layer_keeps_every_column_beside_the_mask(text_run, tmp_path):
    """--reduce none: (N, T, D), the padding's columns as the model computed them (the batch
    is not cut: every stored value is one the layer produced), the same real tokens."""
    args, store, _ = text_run
    dataset = args[args.index("--dataset") + 1]
    padded = actextract.extract(
        args[args.index("--model") + 1],
        dataset,
        layers="h.0",
        max_length=16,
        batch_size=3,
        chunk_rows=6,
        out=str(tmp_path / "padded.zarr"),
        progress=False,
    )
    real = padded._node("tokens/mask")[:].astype(bool)
    values = padded["h.0"][:]
    assert values.shape == (20, 16, 32) and np.isfinite(values).all()
    rows = actextract.token_activations(padded, "h.0")
    np.testing.assert_array_equal(rows, values[real])
    blocks = list(iter_token_blocks(padded, "h.0"))
    assert len(blocks) == 4
    np.testing.assert_array_equal(np.concatenate([v for _, v in blocks]), rows)
    dense = actextract.token_activations(store, "h.0")  # computed cut to the real tokens
    np.testing.assert_allclose(rows.astype(np.float32), dense.astype(np.float32), atol=2e-3)
    pytest.importorskip("xarray")
    da = actextract.to_xarray(padded, "h.0")
    assert da.dims == ("sample", "token", "feature")
    np.testing.assert_array_equal(da["mask"].values, real)
    assert "input_ids" in da.coords


def test_to_xarray_gives_the_token_rows_with_their_table(text_run):
    pytest.importorskip("xarray")
    _, store, _ = text_run
    assert "mask" not in actextract.to_xarray(store, "h.2").coords
    rows = actextract.to_xarray(store, "h.0")  # --reduce tokens: the real tokens, in order
    table = actextract.token_table(store)
    assert rows.dims == ("token", "feature") and rows.shape == (len(table["sample"]), 32)
    np.testing.assert_array_equal(rows.values, actextract.token_activations(store, "h.0"))
    for name in ("sample", "document", "position", "token_id"):
        np.testing.assert_array_equal(rows[name].values, table[name])
    np.testing.assert_array_equal(rows["labels"].values, store.labels[:][table["sample"]])


def test_a_missing_token_chunk_or_token_row_chunk_is_damage_that_resume_mends(text_run, tmp_path):
    args, ref, _ = text_run
    out = tmp_path / "run.zarr"
    assert run(*args, "--out", str(out)).returncode == 0
    (out / "tokens" / "mask" / "c" / "2" / "0").unlink()
    (out / "acts" / "h.0" / "c" / "13" / "0").unlink()  # block 1's second chunk of token rows
    store = actextract.open_store(out, mode="r+")
    assert [g[0] for g in check(store).gaps] == ["h.0", "tokens/mask"]  # the quick check too
    report = verify(store, repair=True)
    assert not report.ok and report.reset_blocks == [1, 2]
    assert sorted(p.array for p in report.problems) == ["h.0", "tokens/mask"]
    done = run(*args, "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    same_store(actextract.open_store(out), ref)


@pytest.mark.slow
def test_a_killed_token_run_resumes_to_the_same_bytes(text_run, tmp_path):
    args, ref, _ = text_run
    out = tmp_path / "run.zarr"
    killed = run(*args, "--out", str(out), kill="mid-block:2")
    assert killed.returncode == -signal.SIGKILL
    store = actextract.open_store(out)
    assert not store.done().all()
    done = run(*args, "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    store = actextract.open_store(out)
    assert store.complete and verify(store).ok
    same_store(store, ref)


@pytest.mark.slow
def test_two_shards_and_two_torchrun_ranks_write_what_one_process_writes(text_run, tmp_path):
    args, ref, _ = text_run
    out = tmp_path / "shards.zarr"
    for shard in ("0/2", "1/2"):
        done = run(*args, "--out", str(out), "--shard", shard)
        assert done.returncode == 0, done.stderr[-3000:]
    same_store(actextract.open_store(out), ref)
    out = tmp_path / "torchrun.zarr"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "actextract", *args, "--out", str(out)]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    store = actextract.open_store(out)
    assert store.complete and store.attrs["summary"]["processes"] == 2
    same_store(store, ref)


def test_pack_cuts_the_joined_documents_into_windows_of_real_tokens(text_run, tmp_path):
    from actextract.model.zoo import load_model

    _, _, model = text_run
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(DOCS) + "\n")
    store = actextract.extract(
        f"hf:{model}",
        f"text:{corpus}",
        layers="h.0",
        max_length=16,
        pack=True,
        batch_size=4,
        out=str(tmp_path / "packed.zarr"),
        dtype="float32",
        progress=False,
    )
    loaded = load_model(f"hf:{model}")
    docs = [[*loaded.tokenizer(d)["input_ids"], loaded.tokenizer.eos_token_id] for d in DOCS]
    stream = np.concatenate(docs)
    n = -(-len(stream) // 16)
    assert store["h.0"].shape == (n, 16, 32)
    mask = store._node("tokens/mask")[:]
    assert mask[:-1].all() and mask[-1].sum() == len(stream) - 16 * (n - 1)  # only the last pads
    table = actextract.token_table(store)
    np.testing.assert_array_equal(table["token_id"], stream)
    for d, ids in enumerate(docs):  # each token knows its document and position in it
        mine = table["document"] == d
        assert table["token_id"][mine].tolist() == ids
        assert table["position"][mine].tolist() == list(range(len(ids)))
    # the stored rows are the model's own on each window, as a batch of windows
    ids = store._node("tokens/input_ids")[:]
    with torch.no_grad():
        out = loaded.module(
            input_ids=torch.from_numpy(ids[:4]).long(),
            attention_mask=torch.from_numpy(mask[:4]).long(),
            output_hidden_states=True,
        )
    np.testing.assert_array_equal(store["h.0"][:4], out.hidden_states[1].numpy())
    rows = actextract.token_activations(store, "h.0")
    assert rows.shape == (len(stream), 32)


def test_render_shows_each_features_top_tokens_in_their_context(text_run, tmp_path):
    from actextract.report.toptokens import top_examples

    _, store, _ = text_run
    examples = top_examples(store, "h.1", features=3, top=4, context=2)
    rows = actextract.token_activations(store, "h.1").astype(np.float32)
    table = actextract.token_table(store)
    for f, items in examples.items():
        best = np.lexsort((np.arange(len(rows)), -rows[:, f]))[:4]  # ties: the first token
        assert [e.value for e in items] == rows[best, f].tolist()
        for e, i in zip(items, best, strict=True):
            assert (e.sample, e.position) == (table["sample"][i], table["position"][i])
            assert e.values[e.at] == e.value and e.ids[e.at] == table["token_id"][i]
            assert len(e.ids) <= 5
    report = actextract.render(store, tmp_path / "report", layers="h.0,h.1")
    page = report.index.read_text()
    assert page.count("Top-activating tokens") == 2
    assert "<b>cat</b>" in page or "<b>dog</b>" in page or "<b>" in page
    assert "the inputs are token ids" in page


def test_the_per_sample_maps_of_a_text_run_leave_the_padding_blank(text_run, tmp_path, monkeypatch):
    from actextract.report.canvas import Canvas

    _, store, _ = text_run
    drawn = []
    grid = Canvas.grid

    def keep(self, maps, *args, **kwargs):
        drawn.append(np.array(maps))
        return grid(self, maps, *args, **kwargs)

    monkeypatch.setattr(Canvas, "grid", keep)
    actextract.render(store, tmp_path / "report", layers="h.0", only="grids", samples=[0, 5])
    mask = store._node("tokens/mask")[[0, 5]].astype(bool)
    assert len(drawn) == 2
    for maps, real in zip(drawn, mask, strict=True):
        tokens = maps[0]  # one (T, D) map
        assert np.isnan(tokens[~real]).all() and not np.isnan(tokens[real]).any()


def test_cluster_pools_each_document_over_its_real_tokens(text_run, tmp_path):
    from actextract.clusters.job import Rows
    from actextract.errors import OptionError

    args, store, _ = text_run
    padded = actextract.extract(  # --reduce none: the padding stored, left out by the pooling
        args[args.index("--model") + 1],
        args[args.index("--dataset") + 1],
        layers="h.1",
        max_length=16,
        out=str(tmp_path / "padded.zarr"),
        progress=False,
    )
    assert store._node("tokens/mask")[:].any(1).all()  # every document has real tokens
    for where, layer in ((store, "h.0"), (store, "h.1"), (padded, "h.1")):
        values = actextract.token_activations(where, layer).astype(np.float32)
        sample = actextract.token_table(where)["sample"]
        want = np.stack([values[sample == i].mean(0) for i in range(where.n)])
        parts = list(Rows(where, layer, "mean", torch.device("cpu")).blocks())
        rows = torch.cat([p[0] for p in parts]).numpy()
        x = torch.cat([p[2] for p in parts]).numpy()
        assert rows.tolist() == list(range(where.n))
        np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5, err_msg=layer)
        with pytest.raises(OptionError, match="pooled over their real tokens"):
            Rows(where, layer, "none", torch.device("cpu"))


def test_a_text_store_of_format_5_reads_and_verifies_as_it_was_written(text_run, tmp_path):
    """Before format 6 a text run kept no progress/tokens and its layers no ``rows``: such a
    store is not damage, and reads, checks and verifies as before."""
    import json
    import shutil

    args, _, _ = text_run
    out = tmp_path / "v5.zarr"
    actextract.extract(
        args[args.index("--model") + 1],
        args[args.index("--dataset") + 1],
        layers="h.0",
        max_length=16,
        out=str(out),
        progress=False,
    )
    shutil.rmtree(out / "progress" / "tokens")  # what format 5 did not write
    meta = json.loads((out / "zarr.json").read_text())
    meta["attributes"]["format_version"] = 5
    for layer in meta["attributes"]["layers"]:
        del layer["rows"]
    (out / "zarr.json").write_text(json.dumps(meta))
    old_strings(out, 5)  # and its strings as zarr's variable-length ones
    store = actextract.open_store(out)
    assert not check(store) and verify(store).ok
    rows = actextract.token_activations(store, "h.0")
    np.testing.assert_array_equal(rows, store["h.0"][:][store._node("tokens/mask")[:] == 1])
    assert "tokens" in actextract.store_info(store)["arrays"][0]["layout"]


def test_a_block_not_done_has_no_tokens_whatever_its_records_say(text_run, tmp_path):
    """A block's mask is written with its records, before the flag that makes them true: a
    block not flagged done gives no token rows, in either layout."""
    import shutil

    _, ref, _ = text_run
    out = tmp_path / "undone.zarr"
    shutil.copytree(ref.path, out)
    store = actextract.open_store(out, mode="r+")
    store._node("progress/done")[1] = 0  # block 1: written, records and all, but not flagged
    table = actextract.token_table(store)
    assert not np.isin(table["sample"], np.arange(6, 12)).any()
    full = actextract.token_table(ref)
    keep = ~np.isin(full["sample"], np.arange(6, 12))
    for layer in ("h.0", "h.1"):
        np.testing.assert_array_equal(
            actextract.token_activations(store, layer),
            actextract.token_activations(ref, layer)[keep],
        )
    assert np.isnan(actextract.sample_tokens(store, "h.0", [7])).all()
    assert not np.isnan(actextract.sample_tokens(store, "h.0", [13])).all()
