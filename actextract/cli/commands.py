"""The ``actextract`` command: parses options and calls the library, nothing more.

User errors (an :class:`ActextractError` from the library, or an option that does not parse)
exit with code 2 and a message that says how to fix them.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import click

from actextract.cli.extract_options import EXAMPLES, SECTIONS
from actextract.cli.help import Group
from actextract.cli.output import layers_json
from actextract.cli.params import (
    CONTEXT,
    capture_option,
    count_option,
    dtype_option,
    int_list,
    quiet,
    say,
    storage_kwargs,
    storage_option,
    trust_option,
    user_errors,
)
from actextract.cli.stores import cluster, info, render, verify
from actextract.core.versions import __version__
from actextract.extraction.text import format_summary
from actextract.model.text import format_layer_summary, format_layer_table


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="actextract")
def main() -> None:
    """Extract intermediate activations of PyTorch models over whole datasets into chunked
    Zarr v3 stores.

    Start with 'actextract layers MODEL' to see what can be captured, then 'actextract
    extract', then 'actextract info' on the store. -v and -q work before the command or after
    it ('actextract -v extract ...', 'actextract extract -v ...').
    """


@main.command(
    context_settings=CONTEXT,
    short_help="The layers of a model that can be captured, with their shapes.",
)
@click.argument("model")
@click.option(
    "--input-shape",
    callback=int_list,
    metavar="C,H,W",
    help="Per-sample input shape, e.g. 3,224,224 "
    "(default: the model's own, 1,28,28 for digits-cnn).",
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    metavar="FILE|NAME",
    help="Checkpoint to load first, or torchvision weights by name (IMAGENET1K_V2). Default: "
    "the spec's own (hf:, timm:), else random weights.",
)
@trust_option
@click.option(
    "--dataset",
    metavar="SPEC",
    help="Probe with this dataset's first sample (a text dataset tokenised by the model's "
    "tokenizer), not with zeros. Default: zeros of --input-shape.",
)
@click.option(
    "--text",
    metavar="WORDS",
    help="Probe a text model with these words, tokenised by its tokenizer (default for a "
    "text model: a sentence of its own).",
)
@count_option(
    "--max-length",
    "Tokens per document for --dataset text and --text (padded to it). Default: as "
    "many as the text has.",
)
@dtype_option("Storage dtype the byte counts assume.")
@count_option(
    "--n",
    "Show the projected store size for N samples (uncompressed). Default: not shown.",
    dest="n_samples",
)
@click.option(
    "--summary",
    is_flag=True,
    help="A table like torchinfo's: parameters (trainable / total) per layer, and totals.",
)
@click.option(
    "--graph",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Draw the torch.fx graph into this file instead (.svg or .png: needs Graphviz's "
    "'dot' program; .dot: needs nothing); models fx cannot trace are drawn as module trees. "
    "Default: no drawing.",
)
@click.option(
    "--layers",
    "layer_names",
    metavar="NAME[,NAME...]",
    help="Only the layers these comma-separated names or globs match, as 'extract --layers' "
    "takes them, and how many each matched; with --graph, the layers to highlight. Default: "
    "every layer.",
)
@capture_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="The table as JSON on stdout: the model, its input, the capture method and a record "
    "per layer (with --graph, the drawing's path too).",
)
@click.pass_context
def layers(
    ctx,
    model,
    input_shape,
    weights,
    trust_checkpoint,
    dataset,
    text,
    max_length,
    dtype,
    n_samples,
    summary,
    graph,
    layer_names,
    capture,
    as_json,
) -> None:
    """Every capturable layer of MODEL: name, kind, output shape, layout, bytes per sample and
    whether it is cloned at capture; or, with --graph, a drawing of the model's graph (add
    --summary for the table too)."""
    from actextract.extraction.api import list_layers
    from actextract.report.graph import draw_graph

    with user_errors(ctx):
        path = None
        if graph is not None:
            path = draw_graph(
                model,
                graph,
                layers=layer_names,
                input_shape=input_shape,
                weights=weights,
                capture=capture,
                trust_checkpoint=trust_checkpoint,
            )
            say(ctx, f"wrote {path}", err=as_json)  # stdout is the JSON's alone
        if graph is None or summary or as_json:
            table = list_layers(
                model,
                input_shape=input_shape,
                weights=weights,
                capture=capture,
                layers=layer_names if graph is None else None,
                trust_checkpoint=trust_checkpoint,
                dataset=dataset,
                text=text,
                max_length=max_length,
            )
    if as_json:
        click.echo(json.dumps(layers_json(table, dtype, graph=path), indent=2))
    elif graph is None or summary:
        show = format_layer_summary if summary else format_layer_table
        click.echo(show(table, dtype, n_samples))


@main.command(
    sections=SECTIONS,
    rest="Output and help",
    examples=EXAMPLES,
    context_settings=CONTEXT,
    short_help="Run a model over a dataset; store the chosen layers' outputs.",
)
@click.pass_context
def extract(ctx, channels, storage_options, **options) -> None:
    """Run MODEL over DATASET and store the outputs of the chosen layers (or statistics of
    them) in a Zarr v3 store at --out, row block by row block; a killed run resumes with
    --resume."""
    from actextract.extraction.api import extract as run_extract

    if options["progress"] is None and quiet(ctx):
        options["progress"] = False
    with user_errors(ctx), _interruptible(ctx, options["out"]):
        channels = int(channels) if channels else None
        store = run_extract(
            options.pop("model"),
            options.pop("dataset"),
            channels=channels,
            **storage_kwargs(storage_options),
            **options,
        )
    stats = [f"{name} ({', '.join(a['kinds'])})" for name, a in store.stats_layers().items()]
    wrote = "wrote" if store.this_run is None or store.this_run["computed"] else "store"
    say(
        ctx,
        f"{wrote} {store.location} ({store.status}): {', '.join(store.layers) or 'no layer'} in "
        f"full" + (f"; statistics of {'; '.join(stats)}" if stats else ""),
    )
    say(ctx, format_summary(store.attrs, store.this_run))


@contextmanager
def _interruptible(ctx: click.Context, out: str) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM (what schedulers send before a kill) stop the run cleanly:
    blocks being written finish or stay unrecorded, the store says 'interrupted', and the
    exit code is 128 + the signal (130 for Ctrl-C)."""
    stopped_by = [signal.SIGINT]

    def on_term(signum, frame):
        stopped_by[0] = signal.Signals(signum)
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_term) if main_thread else None
    try:
        yield
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted ({stopped_by[0].name}): every row block recorded done in '{out}' "
            "is kept; run the same command with --resume to finish it.",
            err=True,
        )
        ctx.exit(128 + stopped_by[0])
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


@main.command(
    "train-demo",
    context_settings=CONTEXT,
    short_help="Train digits-cnn on the embedded digits (seconds on a CPU).",
)
@click.option(
    "--out",
    default="demo/digits-cnn.pt",
    type=click.Path(),
    metavar="FILE",
    help="Where to save the checkpoint (a state_dict).",
)
@count_option("--epochs", "Passes over the training digits.", default=10)
@click.option(
    "--seed",
    type=int,
    default=0,
    help="Seed of the weights, the train/test split and the batch order.",
)
@click.option(
    "--record",
    type=click.Path(),
    metavar="PATH|URL",
    help="Also record conv1, conv2 and fc1 of 100 held-out digits before training and after "
    "every epoch into this store (a .zarr folder or an fsspec URL; replaced if it exists); "
    "'actextract render' draws it. Default: no recording.",
)
@storage_option
@click.pass_context
def train_demo(ctx, out, epochs, seed, record, storage_options) -> None:
    """Train digits-cnn on the embedded digits data (seconds on a CPU)."""
    from actextract.record.train import train_digits_cnn

    with user_errors(ctx):
        result = train_digits_cnn(
            out, epochs=epochs, seed=seed, record=record, **storage_kwargs(storage_options)
        )
    say(
        ctx,
        f"trained digits-cnn for {result.epochs} epochs on {result.train_samples} digits: "
        f"test accuracy {result.test_accuracy:.1%} on {result.test_samples} held-out "
        f"digits; saved {result.path}",
    )
    if result.record is not None:  # as given: a URL stays one
        say(ctx, f"recorded epochs 0-{result.epochs} (0: before training) in {record}")


for command in (info, verify, render, cluster):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    main()
