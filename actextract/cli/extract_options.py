"""The options of ``actextract extract``, in the sections its --help lists them under, and the
examples it ends with. Parsing only; no library calls."""

from __future__ import annotations

import click

from actextract.cli.help import Section, options_of
from actextract.cli.params import (
    capture_option,
    choice_option,
    count_option,
    dtype_option,
    float_list,
    hist_range,
    storage_option,
    trust_option,
)

__all__ = ["EXAMPLES", "SECTIONS"]

_MODEL = options_of(
    click.option(
        "--model",
        required=True,
        metavar="SPEC",
        help="resnet18 (any torchvision classifier), digits-cnn, python:module:callable, "
        "hf:PATH (a transformers model saved with save_pretrained, or in the local HF cache), "
        "hf-config:FILE (random, from a config.json) or timm:NAME.",
    ),
    click.option(
        "--weights",
        type=click.Path(dir_okay=False),
        metavar="FILE|NAME",
        help="Local checkpoint: a state_dict (torch.save) or .safetensors file; its sha256 is "
        "recorded. For torchvision models also a weights name (IMAGENET1K_V2, DEFAULT) whose "
        "file is in the local torch cache. Default: the spec's own (hf:, timm:), else "
        "random weights.",
    ),
    trust_option,
    capture_option,
)

_DATA = options_of(
    click.option(
        "--dataset",
        required=True,
        metavar="SPEC",
        help="digits, folder:PATH, mnist:ROOT[:split], "
        "cifar10:ROOT, synthetic:N:C:H:W, python:module:callable, text:FILE (a line per "
        "document, or .jsonl) or hf-dataset:PATH[:split][:column] (save_to_disk's).",
    ),
    count_option("--limit", "Only the first N samples. Default: all of them."),
    count_option(
        "--resize",
        "Resize the shorter image side to N pixels (0: off). Default: the model's own "
        "(256 for torchvision models, none for digits-cnn).",
        least=0,
    ),
    count_option(
        "--crop",
        "Centre crop to NxN (0: off). Default: the model's own (224 for torchvision models).",
        least=0,
    ),
    click.option(
        "--mean",
        callback=float_list,
        metavar="M[,M...]",
        help="Normalisation mean per channel, e.g. 0.485,0.456,0.406. Default: the model's "
        "own (ImageNet's for torchvision models).",
    ),
    click.option(
        "--std",
        callback=float_list,
        metavar="S[,S...]",
        help="Normalisation std per channel, e.g. 0.229,0.224,0.225. Default: the model's own.",
    ),
    choice_option(
        "--channels",
        ["1", "3"],
        None,
        "Convert images to grayscale (1) or RGB (3). Default: the model's own (RGB for "
        "torchvision models, grayscale for digits-cnn).",
    ),
    count_option(
        "--max-length",
        "Text datasets: tokens per document, cut and padded to it (default: the "
        "tokenizer's model_max_length); python: datasets of token dicts: padded to it.",
    ),
    click.option(
        "--pack",
        is_flag=True,
        help="Text datasets: join the documents and cut windows of --max-length tokens, every "
        "token real (what SAE training reads); each token records its document and position.",
    ),
    click.option(
        "--text-field",
        default="text",
        metavar="FIELD",
        help="text:FILE.jsonl: the field that holds each document.",
    ),
    choice_option(
        "--on-bad-sample",
        ["error", "skip"],
        "error",
        "skip: leave an unreadable sample's row empty (NaN, label -1) and go on.",
    ),
)

_LAYERS = options_of(
    click.option(
        "--layers",
        required=True,
        metavar="NAME[,NAME...]",
        help="Comma-separated names or globs, e.g. 'layer3,avgpool', 'features.*' (direct "
        "children), 'layer*.**.conv2' (any depth), 'lstm[1][0]' (an element of a tuple).",
    ),
    click.option(
        "--store",
        default=None,
        metavar="NAME[,NAME...]",
        help="Layers written in full (names or globs; captured even when not in --layers; "
        "'none': none). Default: every layer of --layers.",
    ),
    click.option(
        "--reduce",
        default=None,
        metavar="LAYER=HOW[,...]",
        help="Per-layer pooling by layout: 'layer3=mean,layer4=max' (maps: over the spatial "
        "axes; tokens: over the tokens), 'encoder.**=cls' (the first token), 'h.*=last' (the "
        "last), or 'mean' for every layer; text: over the attention mask's real tokens, and "
        "'tokens' stores one row per real token. Default: none (a text run's token layers "
        "padded, beside the mask).",
    ),
    click.option(
        "--layout",
        "layout",
        default=None,
        metavar="LAYER=LAYOUT[,...]",
        help="Override the layout the probe infers, per layer: 'features.*=nhwc,"
        "encoder.**=tokens' (nchw, nhwc, tokens, vector, other; see 'actextract layers'). "
        "Default: the probe's.",
    ),
    click.option(
        "--stats",
        multiple=True,
        metavar="PATTERN=KIND[,KIND...]",
        callback=lambda ctx, param, value: ";".join(value) or None,
        help="Aggregates computed on the device, 'PATTERN=KIND,KIND[;...]' (repeatable); "
        "kinds: class-mean, class-std, channel-mean (each sample's mean per channel), "
        "channel-hist. PATTERN picks among the layers of --layers and --store. Default: none.",
    ),
    count_option(
        "--hist-bins", "Bins of channel-hist (plus one below and one above the range).", default=64
    ),
    click.option(
        "--hist-range",
        callback=hist_range,
        metavar="LO,HI",
        help="LO,HI of channel-hist's bins (default: a probe sample's range, widened by half "
        "its width on each side).",
    ),
    choice_option(
        "--on-nonfinite",
        ["count", "error"],
        "count",
        "NaN/Inf in an activation: count the rows per layer (summary and store), or stop.",
    ),
)

_STORAGE = options_of(
    click.option(
        "--out",
        required=True,
        type=click.Path(),
        metavar="PATH|URL",
        help="Output store: a .zarr folder, a file:// URL or an fsspec URL zarr opens.",
    ),
    storage_option,
    click.option("--overwrite", is_flag=True, help="Replace an existing store at --out."),
    dtype_option("Storage dtype (cast on the device)."),
    choice_option(
        "--codec",
        ["none", "zstd", "lz4", "blosc-zstd", "blosc-lz4"],
        "none",
        "none is fastest; zstd halves ReLU maps on disk at 75-480 MB/s per writer thread.",
    ),
    click.option(
        "--level", type=int, default=None, help="Compression level (default: the codec's)."
    ),
    count_option(
        "--chunk-rows", "Samples per chunk (default: a multiple of the batch size, ~32 MB a chunk)."
    ),
    count_option(
        "--chunk-tokens",
        "Token rows per chunk of a text run's --reduce tokens layers, a divisor of a row "
        "block's chunk-rows × max-length (default: the largest within 4 MB).",
    ),
)

_SPEED = options_of(
    click.option("--device", default="auto", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    choice_option(
        "--precision",
        ["fp32", "bf16", "fp16"],
        "fp32",
        "Autocast precision of the forward pass.",
    ),
    count_option("--batch-size", "Samples per forward pass.", default=64),
    count_option("--num-workers", "DataLoader worker processes.", least=0, default=0),
    count_option(
        "--writers",
        "Threads that compress and write (default: 2 on CUDA, beside the forward; on a CPU "
        "whose cores the forward uses, one per core up to 4, taking turns with it).",
    ),
    choice_option(
        "--decode",
        ["cpu", "gpu"],
        "cpu",
        "Where folder: JPEGs are decoded: in the loader's workers (cpu), or batched on the "
        "GPU with nvJPEG, resized and normalised there (gpu; needs --device cuda).",
    ),
    click.option(
        "--channels-last",
        is_flag=True,
        help="channels_last memory format (faster convolutions on recent GPUs).",
    ),
    click.option(
        "--compile",
        is_flag=True,
        help="torch.compile the capture and reductions (compiles for a while first; pays off on "
        "long GPU runs).",
    ),
)

_LONG_RUNS = options_of(
    click.option(
        "--resume",
        is_flag=True,
        help="Finish the store at --out (made by this same command): only the row blocks not "
        "recorded done are computed. Creates it when it is not there.",
    ),
    click.option(
        "--shard",
        default=None,
        metavar="I/N",
        help="Write only shard I of N (from 0/N); N processes fill one store. Under torchrun "
        "each rank is its shard without this option. Default: every row block.",
    ),
    click.option(
        "--stats-every",
        type=click.FloatRange(min=0),
        default=300.0,
        help="Seconds between commits of the statistics' sums (what a killed run keeps).",
    ),
)

_OUTPUT = options_of(
    click.option(
        "--progress/--no-progress",
        default=None,
        help="Progress bar on stderr (default: on a terminal, and not with -q).",
    ),
)

# --help's sections, in order; -v, -q and --help join "Output and help"
SECTIONS: list[Section] = [
    ("Model", _MODEL),
    ("Data", _DATA),
    ("Layers", _LAYERS),
    ("Storage", _STORAGE),
    ("Speed", _SPEED),
    ("Long runs", _LONG_RUNS),
    ("Output and help", _OUTPUT),
]

EXAMPLES = [
    (
        "The demo CNN (actextract train-demo) over the 1,797 embedded digits, every conv "
        "layer and the logits:",
        "actextract extract --model digits-cnn --weights demo/digits-cnn.pt \\\n"
        "    --dataset digits --layers 'conv*,fc1' --out digits.zarr",
    ),
    (
        "A torchvision ResNet-50 over a folder of images (one subfolder per class) on a GPU, "
        "bf16 autocast, JPEGs decoded there, layer3 pooled to one value per channel:",
        "actextract extract --model resnet50 --weights IMAGENET1K_V2 \\\n"
        "    --dataset folder:./imgs --layers layer3,avgpool --reduce layer3=mean \\\n"
        "    --device cuda --precision bf16 --decode gpu --batch-size 256 \\\n"
        "    --num-workers 8 --out resnet50.zarr",
    ),
    (
        "A Hugging Face language model (a save_pretrained folder) over a text file, one row "
        "per real token of every block, resumable:",
        "actextract extract --model hf:./tiny-gpt2 --dataset text:corpus.txt \\\n"
        "    --max-length 128 --layers 'h.*' --reduce tokens --out lm.zarr --resume",
    ),
]
