"""Token activations of a language model over a corpus: actextract against the forward alone
and against the by-hand way.

A GPT-2-shaped model (seeded random weights, saved with ``save_pretrained`` outside the
clocks) runs over a synthetic corpus (seeded random sentences over a word-level vocabulary),
packed into windows of ``--length`` tokens (``--pack``: every token real, what SAE training
reads). Each method is one process of its own, warmed up on two batches outside the clock
(and 2 GB of free memory touched, as the main benchmark does), then timed over the whole
corpus, loading the model and packing the corpus included:

- ``forward``: the model alone on the windows, batch by batch (inference mode);
- ``hand``: the by-hand way: a forward hook on every block appending ``out.detach().cpu()``
  to lists, ``torch.cat`` and one ``torch.save`` of all blocks at the end (float32, as the
  tutorials keep them);
- ``actextract``: ``actextract.extract(..., pack=True, reduce="tokens")`` of every block's
  residual stream (``h.*``) in float16 into a store, one row per real token (the store is
  the product; nothing is read back).

Each method runs on the corpus of ``--docs`` documents and of twice as many; rounds are
interleaved ``--repeats`` times and the median counts. Reported: tokens/s, the ratio to the
forward as throughputs (the forward's time ÷ the method's), bytes written, and the peak RSS at
N and 2N (actextract's is bounded by its ring of row blocks; the hand way's grows with the
corpus). Every time includes loading the model and packing the corpus, as each method must.
Only ratios within one run compare.

    .venv/bin/python benchmarks/bench_tokens.py                  # CPU, results committed
    .venv/bin/python benchmarks/bench_tokens.py --device cuda    # when a GPU is lent
    .venv/bin/python benchmarks/bench_tokens.py --tiny --out /tmp/bench

Writes ``<out>/tokens-<device>.json`` and ``<out>/tokens-<device>.md`` (``-tiny`` added).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = ("forward", "hand", "actextract")


def make_case(root: Path, docs: int, *, layers: int, width: int, seed: int = 0) -> dict:
    """The model folder and the corpus, built once per size (outside every clock)."""
    import numpy as np
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

    model = root / "model"
    if not model.exists():
        words = [f"w{i}" for i in range(2000)]
        vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "[EOS]", *words])}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
        )
        torch.manual_seed(seed)
        config = GPT2Config(
            n_layer=layers,
            n_embd=width,
            n_head=max(1, width // 64),
            n_positions=1024,
            vocab_size=len(vocab),
            bos_token_id=2,
            eos_token_id=2,
        )
        GPT2Model(config).save_pretrained(model)
        fast.save_pretrained(model)
    corpus = root / f"corpus-{docs}.txt"
    if not corpus.exists():
        rng = np.random.default_rng(seed)
        lines = [
            " ".join(f"w{w}" for w in rng.integers(0, 2000, rng.integers(20, 200)))
            for _ in range(docs)
        ]
        corpus.write_text("\n".join(lines) + "\n")
    return {"model": str(model), "corpus": str(corpus)}


def windows(case: dict, length: int):
    """The packed windows of the corpus, as actextract's text source makes them."""
    from actextract.data.source import open_source
    from actextract.model.zoo import load_model

    loaded = load_model(f"hf:{case['model']}")
    source = open_source(
        f"text:{case['corpus']}", tokenizer=loaded.tokenizer, max_length=length, pack=True
    )
    return loaded.module, source


def loader(source, batch_size: int):
    from actextract.data.source import make_loader

    return make_loader(source, range(len(source)), batch_size=batch_size)


def one(method: str, case: dict, args: argparse.Namespace, out: Path) -> dict:
    """One timed call of ``method`` in this process."""
    import torch

    sys.path.insert(0, str(HERE))
    from bench_machine import PeakRSS, folder_bytes, warm_free_memory

    device = torch.device(args.device)
    result: dict = {"method": method}
    warm_up(method, case, args, out)
    result["warmed"] = warm_free_memory(args.warm_bytes)
    with PeakRSS() as rss:
        start = time.perf_counter()
        if method == "actextract":
            store = run_actextract(
                case, args, out / "run" / "store.zarr", chunk_rows=args.chunk_rows
            )
            tokens = int(store._node("tokens/mask")[:].sum())
        else:
            module, source = windows(case, args.length)
            module = module.to(device).eval()
            kept: dict[str, list[torch.Tensor]] = {}
            handles = []
            if method == "hand":
                for i, block in enumerate(module.h):

                    def hook(_m, _i, output, name=f"h.{i}"):
                        kept.setdefault(name, []).append(output.detach().cpu())

                    handles.append(block.register_forward_hook(hook))
            tokens = 0
            with torch.inference_mode():
                for batch in loader(source, args.batch_size):
                    x = {k: v.to(device) for k, v in batch.inputs.items()}
                    module(**x)
                    tokens += int(batch.inputs["attention_mask"].sum())
            if device.type == "cuda":
                torch.cuda.synchronize()
            if method == "hand":
                (out / "run").mkdir(exist_ok=True)
                torch.save({k: torch.cat(v) for k, v in kept.items()}, out / "run" / "acts.pt")
            for h in handles:
                h.remove()
        result["seconds"] = time.perf_counter() - start
    result.update(
        tokens=tokens,
        peak_rss=rss.peak,
        rss_growth=rss.peak - rss.start,
        disk_bytes=folder_bytes(out / "run") if (out / "run").exists() else 0,
    )
    return result


def run_actextract(case: dict, args: argparse.Namespace, out: Path, **options):
    """Every block's output per token, packed, float16, a row per real token: the store is
    the product."""
    import actextract

    return actextract.extract(
        f"hf:{case['model']}",
        f"text:{case['corpus']}",
        layers="h.*",
        reduce="tokens",
        pack=True,
        max_length=args.length,
        batch_size=args.batch_size,
        device=args.device,
        out=str(out),
        overwrite=True,
        progress=False,
        **options,
    )


def warm_up(method: str, case: dict, args: argparse.Namespace, out: Path) -> None:
    """Two batches of the method, outside the clock, as the main benchmark warms up: the
    kernels and the allocator of a first forward are not what a long run pays for."""
    import torch

    if method == "actextract":
        run_actextract(case, args, out / "warm.zarr", limit=2 * args.batch_size)
        return
    module, source = windows(case, args.length)
    module = module.to(args.device).eval()
    with torch.inference_mode():
        for i, batch in enumerate(loader(source, args.batch_size)):
            module(**{k: v.to(args.device) for k, v in batch.inputs.items()})
            if i == 1:
                break


def measure(method: str, case: dict, args: argparse.Namespace, scratch: Path) -> dict:
    """``one`` in a process of its own (its RSS and heap its own)."""
    out = Path(tempfile.mkdtemp(dir=scratch))
    cmd = [sys.executable, __file__, "--one", method, "--case", json.dumps(case)]
    cmd += ["--out-dir", str(out), *_forwarded(args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    if done.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{done.stderr[-3000:]}")
    subprocess.run(["rm", "-rf", str(out)], check=False)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _forwarded(args: argparse.Namespace) -> list[str]:
    return [
        "--device",
        args.device,
        "--length",
        str(args.length),
        "--batch-size",
        str(args.batch_size),
        "--chunk-rows",
        str(args.chunk_rows),
        "--warm-bytes",
        str(args.warm_bytes),
    ]


def table(results: list[dict], header: dict) -> str:
    """The results file's page: a heading, what was run, and :func:`summary_table`."""
    lines = [
        f"# Token activations ({header['device']}, {header['date']})",
        "",
        describe(header),
        "",
        summary_table(results),
    ]
    return "\n".join(lines)


def describe(header: dict) -> str:
    return (
        f"GPT-2-shaped model: {header['layers']} blocks of {header['width']}, windows of "
        f"{header['length']} tokens (packed), batch {header['batch_size']}, "
        f"{header['chunk_rows']} windows per row block; every block's output stored per token "
        "(actextract: float16, a row per real token, --reduce tokens; the hand way: float32). "
        "Medians of "
        f"{header['repeats']} interleaved rounds; benchmarks/bench_tokens.py."
    )


def summary_table(results: list[dict]) -> str:
    """Per corpus size and method, the medians; then the peak RSS at 2N ÷ at N."""
    lines = [
        "| corpus | method | tokens | tokens/s | ÷ forward | written | peak RSS | RSS growth |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    sizes = sorted({r["docs"] for r in results})

    def median(method: str, docs: int, key: str) -> float:
        return statistics.median(
            r[key] for r in results if r["method"] == method and r["docs"] == docs
        )

    for docs in sizes:
        forward = median("forward", docs, "seconds")
        for m in METHODS:
            seconds, tokens = median(m, docs, "seconds"), median(m, docs, "tokens")
            lines.append(
                f"| {docs} docs | {m} | {int(tokens):,} | {tokens / seconds:,.0f} "
                f"| {forward / seconds:.2f} | {median(m, docs, 'disk_bytes') / 1e6:,.1f} MB "
                f"| {median(m, docs, 'peak_rss') / 1e6:,.0f} MB "
                f"| {median(m, docs, 'rss_growth') / 1e6:,.0f} MB |"
            )
    if len(sizes) > 1:
        growth = {
            m: median(m, sizes[-1], "peak_rss") / median(m, sizes[0], "peak_rss") for m in METHODS
        }
        lines += [
            "",
            "Peak RSS at 2N ÷ at N: " + ", ".join(f"{m} {g:.2f}" for m, g in growth.items()),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--docs", type=int, default=600, help="documents in the smaller corpus")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=64,
        help="actextract's row blocks (windows): 64 windows of 128 tokens × 6 blocks of 256 "
        "are 4 MB a layer, so that both corpora span many blocks and the ring of blocks, not "
        "the corpus, bounds the memory",
    )
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--warm-bytes",
        type=int,
        default=2 << 30,
        help="free memory touched before each timed call (bench_machine.warm_free_memory)",
    )
    parser.add_argument("--tiny", action="store_true", help="toy sizes, for the tests")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--tmp", type=Path, default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, json.loads(args.case), args, args.out_dir)))
        return
    if args.tiny:
        args.docs, args.length, args.layers, args.width, args.repeats = 20, 32, 2, 64, 1
        args.chunk_rows, args.warm_bytes = 16, 0
    scratch = Path(tempfile.mkdtemp(dir=args.tmp, prefix="bench-tokens-"))
    results = []
    for docs in (args.docs, 2 * args.docs):
        case = make_case(scratch, docs, layers=args.layers, width=args.width)
        for _ in range(args.repeats):
            for method in METHODS:
                r = measure(method, case, args, scratch)
                results.append({**r, "docs": docs})
                print(f"{docs} docs {method}: {r['seconds']:.2f} s", file=sys.stderr)
    header = {
        "device": args.device,
        "date": time.strftime("%Y-%m-%d"),
        "layers": args.layers,
        "width": args.width,
        "length": args.length,
        "batch_size": args.batch_size,
        "chunk_rows": args.chunk_rows,
        "repeats": args.repeats,
        "tiny": args.tiny,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"tokens-{args.device}{'-tiny' if args.tiny else ''}"
    (args.out / f"{name}.json").write_text(json.dumps({"header": header, "results": results}))
    (args.out / f"{name}.md").write_text(table(results, header))
    subprocess.run(["rm", "-rf", str(scratch)], check=False)
    print((args.out / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
