"""The ``actextract`` command: parses options and calls the library, nothing more.

User errors (an :class:`ActextractError` from the library, or an option that does not parse)
exit with code 2 and a message that says how to fix them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import click

from actextract import __version__
from actextract.cli_params import capture_option, dtype_option, float_list, int_list, sample_rows
from actextract.errors import ActextractError
from actextract.text import format_info, format_layer_table, format_report, format_summary

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@contextmanager
def _user_errors(ctx: click.Context) -> Iterator[None]:
    try:
        yield
    except ActextractError as e:
        raise click.UsageError(str(e), ctx) from None


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="actextract")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Extract intermediate activations of PyTorch models over whole datasets into chunked
    Zarr v3 stores.

    Start with 'actextract layers MODEL' to see what can be captured, then 'actextract
    extract', then 'actextract info' on the store.
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@main.command(context_settings=CONTEXT)
@click.argument("model")
@click.option(
    "--input-shape",
    callback=int_list,
    help="Per-sample input shape, e.g. 3,224,224 "
    "(default: the model's own, 1,28,28 for digits-cnn).",
)
@click.option("--weights", type=click.Path(dir_okay=False), help="Checkpoint to load first.")
@dtype_option("Storage dtype the byte counts assume.")
@click.option(
    "--n",
    "n_samples",
    type=click.IntRange(min=1),
    default=None,
    help="Show the projected store size for N samples (uncompressed).",
)
@capture_option
@click.pass_context
def layers(ctx, model, input_shape, weights, dtype, n_samples, capture) -> None:
    """Every capturable layer of MODEL: name, kind, output shape and bytes per sample."""
    from actextract.api import list_layers

    with _user_errors(ctx):
        table = list_layers(model, input_shape=input_shape, weights=weights, capture=capture)
    click.echo(format_layer_table(table, dtype, n_samples))


@main.command(context_settings=CONTEXT)
@click.option(
    "--model",
    required=True,
    help="resnet18 (any torchvision classifier), digits-cnn, or python:module:callable.",
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    help="Local checkpoint: state_dict or whole module; its sha256 is recorded.",
)
@click.option(
    "--dataset",
    required=True,
    help="digits, folder:PATH, mnist:ROOT[:split], "
    "cifar10:ROOT, synthetic:N:C:H:W, or python:module:callable.",
)
@click.option(
    "--layers",
    "layer_names",
    required=True,
    help="Comma-separated names or globs, e.g. 'layer3,avgpool' or 'conv*,fc1'.",
)
@click.option("--out", required=True, type=click.Path(), help="Output store (a .zarr folder).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--num-workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="DataLoader worker processes.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "fp16"]),
    default="fp32",
    show_default=True,
    help="Autocast precision of the forward pass.",
)
@dtype_option("Storage dtype (cast on the device).")
@click.option(
    "--reduce",
    "reduce_spec",
    default=None,
    help="Per-layer spatial pooling: 'layer3=mean,layer4=max' (globs allowed), or "
    "'mean' for every layer. Default: none.",
)
@click.option(
    "--codec",
    type=click.Choice(["none", "zstd", "lz4", "blosc-zstd", "blosc-lz4"]),
    default="none",
    show_default=True,
    help="none is fastest; zstd halves ReLU maps on disk at 75-480 MB/s per writer thread.",
)
@click.option("--level", type=int, default=None, help="Compression level (default: the codec's).")
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=None,
    help="Samples per chunk (default: a multiple of the batch size, ~32 MB a chunk).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing store at --out.")
@click.option(
    "--on-bad-sample",
    type=click.Choice(["error", "skip"]),
    default="error",
    show_default=True,
    help="skip: leave an unreadable sample's row empty (NaN, label -1) and go on.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N samples.")
@capture_option
@click.option(
    "--channels-last",
    is_flag=True,
    help="channels_last memory format (faster convolutions on recent GPUs).",
)
@click.option(
    "--resize",
    type=click.IntRange(min=0),
    default=None,
    help="Resize the shorter image side to N pixels (0: off).",
)
@click.option(
    "--crop", type=click.IntRange(min=0), default=None, help="Centre crop to NxN (0: off)."
)
@click.option(
    "--mean", callback=float_list, help="Normalisation mean per channel, e.g. 0.485,0.456,0.406."
)
@click.option("--std", callback=float_list, help="Normalisation std per channel.")
@click.option(
    "--channels",
    type=click.Choice(["1", "3"]),
    default=None,
    help="Convert images to grayscale (1) or RGB (3).",
)
@click.option(
    "--writers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Background threads that compress and write.",
)
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="torch.compile the capture and reductions (compiles for a while first; pays off on "
    "long GPU runs).",
)
@click.option(
    "--decode",
    type=click.Choice(["cpu", "gpu"]),
    default="cpu",
    show_default=True,
    help="Where folder: JPEGs are decoded: in the loader's workers (cpu), or batched on the "
    "GPU with nvJPEG, resized and normalised there (gpu; needs --device cuda).",
)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar (default: on a terminal)."
)
@click.pass_context
def extract(
    ctx,
    model,
    weights,
    dataset,
    layer_names,
    out,
    batch_size,
    num_workers,
    device,
    precision,
    dtype,
    reduce_spec,
    codec,
    level,
    chunk_rows,
    overwrite,
    on_bad_sample,
    limit,
    capture,
    channels_last,
    resize,
    crop,
    mean,
    std,
    channels,
    writers,
    compile_,
    decode,
    progress,
) -> None:
    """Run MODEL over DATASET and store the outputs of the chosen layers."""
    from actextract.api import extract as run_extract
    from actextract.source import Preprocess

    with _user_errors(ctx):
        preprocess = Preprocess(
            channels=int(channels) if channels else None,
            resize=resize,
            crop=crop,
            mean=mean,
            std=std,
        )
        store = run_extract(
            model,
            dataset,
            layers=layer_names,
            out=out,
            weights=weights,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            precision=precision,
            dtype=dtype,
            reduce=reduce_spec,
            codec=codec,
            level=level,
            chunk_rows=chunk_rows,
            overwrite=overwrite,
            on_bad_sample=on_bad_sample,
            limit=limit,
            capture=capture,
            channels_last=channels_last,
            preprocess=preprocess,
            writers=writers,
            compile=compile_,
            decode=decode,
            progress=progress,
        )
    click.echo(f"wrote {store.path} ({store.status}): {', '.join(store.layers)}")
    click.echo(format_summary(store.attrs))


@main.command(context_settings=CONTEXT)
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def info(ctx, path, as_json) -> None:
    """Arrays, shapes, dtype, codec, size on disk, labels and status of a store."""
    from actextract.store import open_store

    with _user_errors(ctx):
        data = open_store(path).info()
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    click.echo(format_info(data))


@main.command(context_settings=CONTEXT)
@click.argument("path", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Report folder (new or a report).")
@click.option("--layers", "layer_names", help="Comma-separated names or globs (default: all).")
@click.option(
    "--samples",
    default="per-class",
    show_default=True,
    callback=sample_rows,
    help="'per-class' (the first stored sample of each label) or row indices, e.g. 0,17,42.",
)
@click.option("--max-channels", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--only",
    help="Comma-separated picture kinds: grids, averages, histograms, filters, confusion.",
)
@click.option("--same-scale", is_flag=True, help="All maps of a grid on one colour scale.")
@click.option("--cmap", default="viridis", show_default=True, help="A matplotlib colour map.")
@click.option("--bins", type=click.IntRange(min=1), default=30, show_default=True)
@click.pass_context
def render(ctx, path, out, layer_names, samples, max_channels, only, same_scale, cmap, bins):
    """Pictures of a store: feature-map grids, per-class averages, histograms, filters, a
    confusion matrix, and OUT/index.html to browse them."""
    from tqdm import tqdm

    from actextract.report import render as render_report
    from actextract.store import open_store

    with _user_errors(ctx):
        store = open_store(path)
        with tqdm(total=len(store.layers), unit="layer", disable=None) as bar:

            def progress(layer: str) -> None:
                bar.set_postfix_str(layer)
                bar.update(1)

            report = render_report(
                store,
                out,
                layers=layer_names,
                samples=samples,
                max_channels=max_channels,
                only=only,
                same_scale=same_scale,
                cmap=cmap,
                bins=bins,
                progress=progress,
            )
    click.echo(format_report(report))


@main.command("train-demo", context_settings=CONTEXT)
@click.option(
    "--out",
    default="demo/digits-cnn.pt",
    show_default=True,
    type=click.Path(),
    help="Where to save the checkpoint (a state_dict).",
)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def train_demo(out, epochs, seed) -> None:
    """Train digits-cnn on the embedded digits data (seconds on a CPU)."""
    from actextract.train import train_digits_cnn

    result = train_digits_cnn(out, epochs=epochs, seed=seed)
    click.echo(
        f"trained digits-cnn for {result.epochs} epochs on {result.train_samples} digits: "
        f"test accuracy {result.test_accuracy:.1%} on {result.test_samples} held-out "
        f"digits; saved {result.path}"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
