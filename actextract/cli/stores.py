"""The store commands of ``actextract``: ``info``, ``verify``, ``render`` and ``cluster`` read a
store (and write beside it); like :mod:`actextract.cli.commands`, they only parse options and call
the library. :mod:`actextract.cli.commands` adds them to its group.
"""

from __future__ import annotations

import json

import click

from actextract.check import store_info
from actextract.check.text import format_clustering, format_info, format_report
from actextract.cli.params import CONTEXT, sample_rows, user_errors

__all__ = ["cluster", "info", "render", "verify"]


@click.command(context_settings=CONTEXT)
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def info(ctx, path, as_json) -> None:
    """Arrays, shapes, dtype, codec, size on disk, labels and status of a store."""
    from actextract.store import open_store

    with user_errors(ctx):
        data = store_info(open_store(path))
    click.echo(json.dumps(data, indent=2, default=str) if as_json else format_info(data))
    if data.get("damage"):
        click.echo(
            f"Error: '{path}' is DAMAGED; run `actextract verify {path}` for the whole picture.",
            err=True,
        )
        ctx.exit(2)


@click.command(context_settings=CONTEXT)
@click.argument("path", type=click.Path())
@click.option(
    "--repair",
    is_flag=True,
    help="Mark the row blocks with missing or damaged chunks not done, so that "
    "'extract ... --resume' computes them again.",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=4, show_default=True, help="Reader threads."
)
@click.pass_context
def verify(ctx, path, repair, workers) -> None:
    """Read every chunk of a store (checksums included) and report missing, damaged and
    unfinished row blocks by layer and row range. Exits 1 unless the store is complete."""
    from tqdm import tqdm

    from actextract.check.verification import count_chunks, format_verify
    from actextract.check.verification import verify as verify_store
    from actextract.store import open_store

    with user_errors(ctx):
        store = open_store(path, mode="r+" if repair else "r")
        with tqdm(total=count_chunks(store), unit="chunk", disable=None) as bar:
            report = verify_store(store, progress=bar.update, workers=workers, repair=repair)
    click.echo(format_verify(report))
    if not report.ok:
        ctx.exit(1)


@click.command(context_settings=CONTEXT)
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
    help="Comma-separated picture kinds: grids, averages, histograms, filters, confusion, "
    "clusters.",
)
@click.option("--same-scale", is_flag=True, help="All maps of a grid on one colour scale.")
@click.option("--cmap", default="viridis", show_default=True, help="A matplotlib colour map.")
@click.option("--bins", type=click.IntRange(min=1), default=30, show_default=True)
@click.option(
    "--allow-damaged",
    is_flag=True,
    help="Draw a damaged store without its damaged rows (the page lists them); without it a "
    "damaged store is refused.",
)
@click.pass_context
def render(
    ctx, path, out, layer_names, samples, max_channels, only, same_scale, cmap, bins, allow_damaged
):
    """Pictures of a store: feature-map grids, per-class averages, histograms, filters, a
    confusion matrix, and OUT/index.html to browse them."""
    from tqdm import tqdm

    from actextract.report.writer import render as render_report
    from actextract.store import open_store

    with user_errors(ctx):
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
                allow_damaged=allow_damaged,
            )
    click.echo(format_report(report))


@click.command(context_settings=CONTEXT)
@click.argument("path", type=click.Path())
@click.option("--layer", required=True, help="The stored layer whose rows are clustered.")
@click.option("--k", type=click.IntRange(min=2), required=True, help="Number of clusters.")
@click.option(
    "--pool",
    type=click.Choice(["none", "mean", "max"]),
    default="none",
    show_default=True,
    help="Reduce each channel's map to one value first (spatial mean or max).",
)
@click.option(
    "--pca",
    type=click.IntRange(min=1),
    help="Run k-means on this many principal components (a streaming PCA) instead of the rows.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option(
    "--nearest",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Rows kept as the nearest to each centre (the report shows them).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print the result's attributes as JSON.")
@click.pass_context
def cluster(ctx, path, layer, k, pool, pca, seed, epochs, batch_size, nearest, device, as_json):
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
            bars[phase] = tqdm(total=store.n, desc=phase, unit="row", disable=None, leave=False)
        bars[phase].update(rows)

    with user_errors(ctx):
        store = open_store(path)
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
