"""The store commands of ``actextract``: ``info``, ``verify``, ``render`` and ``cluster`` read a
store (and write beside it); like :mod:`actextract.cli.commands`, they only parse options and call
the library. :mod:`actextract.cli.commands` adds them to its group.
"""

from __future__ import annotations

import json

import click

from actextract.check import store_info
from actextract.check.text import format_clustering, format_info, format_report
from actextract.cli.help import Command
from actextract.cli.output import verify_json
from actextract.cli.params import (
    CONTEXT,
    choice_option,
    progress_off,
    sample_rows,
    say,
    storage_kwargs,
    storage_option,
    user_errors,
)

__all__ = ["cluster", "info", "render", "verify"]


@click.command(
    cls=Command,
    context_settings=CONTEXT,
    short_help="What a store holds: arrays, shapes, codec, size, labels, status.",
)
@click.argument("path", type=click.Path())
@storage_option
@click.option("--json", "as_json", is_flag=True, help="The same as JSON on stdout.")
@click.pass_context
def info(ctx, path, storage_options, as_json) -> None:
    """Arrays, shapes, dtype, codec, size on disk, labels and status of a store."""
    from actextract.store import open_store

    with user_errors(ctx):
        data = store_info(open_store(path, **storage_kwargs(storage_options)))
    click.echo(json.dumps(data, indent=2, default=str) if as_json else format_info(data))
    if data.get("damage"):
        click.echo(
            f"Error: '{path}' is DAMAGED; run `actextract verify {path}` for the whole picture.",
            err=True,
        )
        ctx.exit(2)


@click.command(
    cls=Command,
    context_settings=CONTEXT,
    short_help="Read every chunk of a store back; report what is damaged.",
)
@click.argument("path", type=click.Path())
@storage_option
@click.option(
    "--repair",
    is_flag=True,
    help="Mark the row blocks with missing or damaged chunks not done, so that "
    "'extract ... --resume' computes them again.",
)
@click.option("--workers", type=click.IntRange(min=1), default=4, help="Reader threads.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="The report as JSON on stdout: state, blocks done and each problem (the exit code "
    "is the same).",
)
@click.pass_context
def verify(ctx, path, storage_options, repair, workers, as_json) -> None:
    """Read every chunk of a store (checksums included) and report missing, damaged and
    unfinished row blocks by layer and row range. Exits 1 unless the store is complete."""
    from tqdm import tqdm

    from actextract.check.verification import count_chunks, format_verify
    from actextract.check.verification import verify as verify_store
    from actextract.store import open_store

    with user_errors(ctx):
        store = open_store(path, mode="r+" if repair else "r", **storage_kwargs(storage_options))
        with tqdm(total=count_chunks(store), unit="chunk", disable=progress_off(ctx)) as bar:
            report = verify_store(store, progress=bar.update, workers=workers, repair=repair)
    if as_json:
        click.echo(json.dumps(verify_json(report), indent=2, default=str))
    else:
        click.echo(format_verify(report))
    if not report.ok:
        ctx.exit(1)


@click.command(
    cls=Command,
    context_settings=CONTEXT,
    short_help="Pictures of a store, and an index.html to browse them.",
)
@click.argument("path", type=click.Path())
@storage_option
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    metavar="FOLDER",
    help="Report folder (new or a report).",
)
@click.option(
    "--layers",
    "layer_names",
    metavar="NAME[,NAME...]",
    help="Comma-separated names or globs (default: every stored layer).",
)
@click.option(
    "--samples",
    default="per-class",
    metavar="per-class|ROW[,ROW...]",
    callback=sample_rows,
    help="'per-class' (the first stored sample of each label) or row indices, e.g. 0,17,42.",
)
@click.option(
    "--max-channels",
    type=click.IntRange(min=1),
    default=64,
    help="Channels drawn per feature-map grid (the first ones).",
)
@click.option(
    "--only",
    metavar="KIND[,KIND...]",
    help="Comma-separated picture kinds: grids, averages, histograms, filters, confusion, "
    "clusters. Default: every kind the store has data for.",
)
@click.option("--same-scale", is_flag=True, help="All maps of a grid on one colour scale.")
@click.option("--cmap", default="viridis", metavar="NAME", help="A matplotlib colour map.")
@click.option("--bins", type=click.IntRange(min=1), default=30, help="Bins of each histogram.")
@click.option(
    "--allow-damaged",
    is_flag=True,
    help="Draw a damaged store without its damaged rows (the page lists them); without it a "
    "damaged store is refused.",
)
@click.pass_context
def render(
    ctx,
    path,
    storage_options,
    out,
    layer_names,
    samples,
    max_channels,
    only,
    same_scale,
    cmap,
    bins,
    allow_damaged,
):
    """Pictures of a store: feature-map grids, per-class averages, histograms, filters, a
    confusion matrix, and OUT/index.html to browse them."""
    from tqdm import tqdm

    from actextract.report.writer import local_folder
    from actextract.report.writer import render as render_report
    from actextract.store import open_store

    with user_errors(ctx):
        out = local_folder(out)  # a URL is refused before the store is opened
        store = open_store(path, **storage_kwargs(storage_options))
        with tqdm(total=len(store.layers), unit="layer", disable=progress_off(ctx)) as bar:

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
                allow_damaged=allow_damaged,
            )
    say(ctx, format_report(report))


@click.command(
    cls=Command,
    context_settings=CONTEXT,
    short_help="K-means of one stored layer, streamed, on the device.",
)
@click.argument("path", type=click.Path())
@storage_option
@click.option(
    "--layer", required=True, metavar="NAME", help="The stored layer whose rows are clustered."
)
@click.option("--k", type=click.IntRange(min=2), required=True, help="Number of clusters.")
@choice_option(
    "--pool",
    ["none", "mean", "max"],
    "none",
    "Reduce each channel's map to one value first (spatial mean or max).",
)
@click.option(
    "--pca",
    type=click.IntRange(min=1),
    help="Run k-means on this many principal components (a streaming PCA) instead of the rows. "
    "Default: on the rows themselves.",
)
@click.option("--seed", type=int, default=0, help="Seed of the k-means++ seeding and the order.")
@click.option(
    "--epochs", type=click.IntRange(min=1), default=10, help="Passes of mini-batch k-means."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, help="Rows per mini-batch.")
@click.option(
    "--nearest",
    type=click.IntRange(min=1),
    default=8,
    help="Rows kept as the nearest to each centre (the report shows them).",
)
@click.option("--device", default="auto", metavar="DEVICE", help="auto, cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print the result's attributes as JSON.")
@click.pass_context
def cluster(
    ctx,
    path,
    storage_options,
    layer,
    k,
    pool,
    pca,
    seed,
    epochs,
    batch_size,
    nearest,
    device,
    as_json,
):
    """Mini-batch k-means (k-means++ seeding, fixed seed) of one stored layer, streamed chunk by
    chunk, on the device. The assignments, centres and PCA basis go into the store under
    clusters/LAYER/; with labels, prints purity, adjusted Rand index and NMI."""
    from tqdm import tqdm

    from actextract.clusters.job import cluster as cluster_layer
    from actextract.store import open_store

    bars: dict[str, tqdm] = {}

    def progress(phase: str, rows: int) -> None:
        if phase not in bars:
            for bar in bars.values():
                bar.close()
            off = progress_off(ctx)
            bars[phase] = tqdm(total=store.n, desc=phase, unit="row", disable=off, leave=False)
        bars[phase].update(rows)

    with user_errors(ctx):
        store = open_store(path, **storage_kwargs(storage_options))
        try:
            result = cluster_layer(
                store,
                layer,
                k,
                pool=pool,
                pca=pca,
                seed=seed,
                epochs=epochs,
                batch_size=batch_size,
                nearest=nearest,
                device=device,
                progress=progress,
            )
        finally:
            for bar in bars.values():
                bar.close()
    if as_json:
        click.echo(json.dumps({"layer": layer, "name": result.name, **result.attrs}, indent=2))
    else:
        click.echo(format_clustering(result, str(store.location)))
