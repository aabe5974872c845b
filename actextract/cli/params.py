"""Option types of the ``actextract`` command: click callbacks that parse comma lists into
numbers, the options that several commands share, and how every command reports a user error.
Parsing only; no library calls."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from actextract.errors import ActextractError

__all__ = [
    "CONTEXT",
    "capture_option",
    "dtype_option",
    "extract_options",
    "float_list",
    "int_list",
    "numbers",
    "sample_rows",
    "trust_option",
    "user_errors",
]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@contextmanager
def user_errors(ctx: click.Context) -> Iterator[None]:
    """An :class:`ActextractError` becomes a usage error: exit code 2, its message, no
    traceback."""
    try:
        yield
    except ActextractError as e:
        raise click.UsageError(str(e), ctx) from None


def numbers(ctx, param, value: str, convert, example: str) -> tuple:
    try:
        return tuple(convert(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not {example}.", ctx, param) from None


def int_list(ctx, param, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    out = numbers(ctx, param, value, int, "comma-separated integers, e.g. 3,224,224")
    if any(v <= 0 for v in out):
        raise click.BadParameter(f"'{value}' has a dimension that is not positive.", ctx, param)
    return out


def float_list(ctx, param, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    return numbers(ctx, param, value, float, "comma-separated numbers, e.g. 0.485,0.456,0.406")


def hist_range(ctx, param, value: str | None) -> tuple[float, float] | None:
    values = float_list(ctx, param, value)
    if values is not None and len(values) != 2:
        raise click.BadParameter(f"'{value}': give LO,HI, e.g. -1,4.", ctx=ctx, param=param)
    return values


def dtype_option(help_text: str):
    return click.option(
        "--dtype",
        type=click.Choice(["float16", "float32"]),
        default="float16",
        show_default=True,
        help=help_text,
    )


capture_option = click.option(
    "--capture",
    type=click.Choice(["auto", "fx", "hooks"]),
    default="auto",
    show_default=True,
    help="torch.fx, forward hooks (module names only), or fx with hooks as fallback.",
)


def sample_rows(ctx, param, value: str) -> str | tuple[int, ...]:
    if value == "per-class":
        return value
    return numbers(ctx, param, value, int, "'per-class' or row indices such as 0,17,42")


trust_option = click.option(
    "--trust-checkpoint",
    is_flag=True,
    help="Let --weights be a whole pickled module (or other pickled objects): unpickling runs "
    "code from the file, so only for files you trust. Without it such a file is refused.",
)

# every option of ``actextract extract``, in the order --help lists them
_EXTRACT_OPTIONS = [
    click.option(
        "--model",
        required=True,
        help="resnet18 (any torchvision classifier), digits-cnn, python:module:callable, "
        "hf:PATH (a transformers model saved with save_pretrained, or in the local HF cache), "
        "hf-config:FILE (random, from a config.json) or timm:NAME.",
    ),
    click.option(
        "--weights",
        type=click.Path(dir_okay=False),
        help="Local checkpoint: a state_dict (torch.save) or .safetensors file; its sha256 is "
        "recorded. For torchvision models also a weights name (IMAGENET1K_V2, DEFAULT) whose "
        "file is in the local torch cache.",
    ),
    trust_option,
    click.option(
        "--dataset",
        required=True,
        help="digits, folder:PATH, mnist:ROOT[:split], "
        "cifar10:ROOT, synthetic:N:C:H:W, python:module:callable, text:FILE (a line per "
        "document, or .jsonl) or hf-dataset:PATH[:split][:column] (save_to_disk's).",
    ),
    click.option(
        "--max-length",
        type=click.IntRange(min=1),
        default=None,
        help="Text datasets: tokens per document, cut and padded to it (default: the "
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
        show_default=True,
        help="text:FILE.jsonl: the field that holds each document.",
    ),
    click.option(
        "--layers",
        required=True,
        help="Comma-separated names or globs, e.g. 'layer3,avgpool', 'features.*' (direct "
        "children), 'layer*.**.conv2' (any depth), 'lstm[1][0]' (an element of a tuple).",
    ),
    click.option(
        "--out",
        required=True,
        type=click.Path(),
        help="Output store: a .zarr folder, a file:// URL or an fsspec URL zarr opens.",
    ),
    click.option(
        "--store",
        default=None,
        help="Layers written in full (names or globs; captured even when not in --layers; "
        "'none': none). Default: every layer of --layers.",
    ),
    click.option(
        "--stats",
        multiple=True,
        callback=lambda ctx, param, value: ";".join(value) or None,
        help="Aggregates computed on the device, 'PATTERN=KIND,KIND[;...]' (repeatable); "
        "kinds: class-mean, class-std, channel-mean (each sample's mean per channel), "
        "channel-hist. PATTERN picks among the layers of --layers and --store.",
    ),
    click.option(
        "--hist-bins",
        type=click.IntRange(min=1),
        default=64,
        show_default=True,
        help="Bins of channel-hist (plus one below and one above the range).",
    ),
    click.option(
        "--hist-range",
        callback=hist_range,
        help="LO,HI of channel-hist's bins (default: a probe sample's range, widened by half "
        "its width on each side).",
    ),
    click.option(
        "--stats-every",
        type=click.FloatRange(min=0),
        default=300.0,
        show_default=True,
        help="Seconds between commits of the statistics' sums (what a killed run keeps).",
    ),
    click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True),
    click.option(
        "--num-workers",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="DataLoader worker processes.",
    ),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option(
        "--precision",
        type=click.Choice(["fp32", "bf16", "fp16"]),
        default="fp32",
        show_default=True,
        help="Autocast precision of the forward pass.",
    ),
    dtype_option("Storage dtype (cast on the device)."),
    click.option(
        "--reduce",
        default=None,
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
        help="Override the layout the probe infers, per layer: 'features.*=nhwc,"
        "encoder.**=tokens' (nchw, nhwc, tokens, vector, other; see 'actextract layers').",
    ),
    click.option(
        "--codec",
        type=click.Choice(["none", "zstd", "lz4", "blosc-zstd", "blosc-lz4"]),
        default="none",
        show_default=True,
        help="none is fastest; zstd halves ReLU maps on disk at 75-480 MB/s per writer thread.",
    ),
    click.option(
        "--level", type=int, default=None, help="Compression level (default: the codec's)."
    ),
    click.option(
        "--chunk-rows",
        type=click.IntRange(min=1),
        default=None,
        help="Samples per chunk (default: a multiple of the batch size, ~32 MB a chunk).",
    ),
    click.option(
        "--chunk-tokens",
        type=click.IntRange(min=1),
        default=None,
        help="Token rows per chunk of a text run's --reduce tokens layers, a divisor of a row "
        "block's chunk-rows × max-length (default: the largest within 4 MB).",
    ),
    click.option("--overwrite", is_flag=True, help="Replace an existing store at --out."),
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
        "each rank is its shard without this option.",
    ),
    click.option(
        "--on-bad-sample",
        type=click.Choice(["error", "skip"]),
        default="error",
        show_default=True,
        help="skip: leave an unreadable sample's row empty (NaN, label -1) and go on.",
    ),
    click.option(
        "--on-nonfinite",
        type=click.Choice(["count", "error"]),
        default="count",
        show_default=True,
        help="NaN/Inf in an activation: count the rows per layer (summary and store), or stop.",
    ),
    click.option(
        "--limit", type=click.IntRange(min=1), default=None, help="Only the first N samples."
    ),
    capture_option,
    click.option(
        "--channels-last",
        is_flag=True,
        help="channels_last memory format (faster convolutions on recent GPUs).",
    ),
    click.option(
        "--resize",
        type=click.IntRange(min=0),
        default=None,
        help="Resize the shorter image side to N pixels (0: off).",
    ),
    click.option(
        "--crop", type=click.IntRange(min=0), default=None, help="Centre crop to NxN (0: off)."
    ),
    click.option(
        "--mean",
        callback=float_list,
        help="Normalisation mean per channel, e.g. 0.485,0.456,0.406.",
    ),
    click.option("--std", callback=float_list, help="Normalisation std per channel."),
    click.option(
        "--channels",
        type=click.Choice(["1", "3"]),
        default=None,
        help="Convert images to grayscale (1) or RGB (3).",
    ),
    click.option(
        "--writers",
        type=click.IntRange(min=1),
        default=None,
        help="Threads that compress and write (default: 2 on CUDA, beside the forward; on a CPU "
        "whose cores the forward uses, one per core up to 4, taking turns with it).",
    ),
    click.option(
        "--compile",
        is_flag=True,
        help="torch.compile the capture and reductions (compiles for a while first; pays off on "
        "long GPU runs).",
    ),
    click.option(
        "--decode",
        type=click.Choice(["cpu", "gpu"]),
        default="cpu",
        show_default=True,
        help="Where folder: JPEGs are decoded: in the loader's workers (cpu), or batched on the "
        "GPU with nvJPEG, resized and normalised there (gpu; needs --device cuda).",
    ),
    click.option(
        "--progress/--no-progress", default=None, help="Progress bar (default: on a terminal)."
    ),
]


def extract_options(fn):
    """Decorate ``actextract extract`` with its options (they are most of its code)."""
    for option in reversed(_EXTRACT_OPTIONS):
        fn = option(fn)
    return fn
