"""The renderer's one writer: a store in, a folder of PNGs and ``index.html`` out.

``render`` checks the options and the output folder, lets :class:`actextract.pictures.Drawer`
pick and draw what fits each layer (feature-map grids for (C, H, W) layers, strips for 1-D
ones, filters for convolutions, a confusion matrix for the model's output), writes each
picture as it comes, then the model's summary and graph (:mod:`actextract.graph`), the page
(:mod:`actextract.page`) and a manifest of the files.
"""

from __future__ import annotations

import difflib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from actextract import figures
from actextract.errors import LayerNotFoundError, OutputExistsError
from actextract.evolution import Evolution
from actextract.names import match_names
from actextract.pictures import KINDS, Drawer, Picture, RenderOptions, Report
from actextract.store import Store, open_store

__all__ = ["KINDS", "Picture", "RenderOptions", "Report", "pick_layers", "render"]

log = logging.getLogger(__name__)

MANIFEST = "report.json"
DPI = 90


def render(
    store: Store | str | Path,
    out: str | Path,
    *,
    layers: Sequence[str] | str | None = None,
    samples: str | Sequence[int] = "per-class",
    max_channels: int = 64,
    only: Sequence[str] | str | None = None,
    same_scale: bool = False,
    cmap: str = figures.DEFAULT_CMAP,
    bins: int = 30,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Draw the pictures of ``store`` (a Store or its path) into the folder ``out`` and write
    ``out/index.html``. ``layers``: names or globs (default: all); ``samples``: 'per-class' or
    row indices; ``only``: a subset of :data:`KINDS`; ``progress`` is called with each layer's
    name before it is drawn. Returns the :class:`Report` (pictures, notes, accuracy)."""
    from actextract import page
    from actextract.graph import write_model_files

    started = time.perf_counter()
    split = lambda v: v.split(",") if isinstance(v, str) else v  # noqa: E731
    options = RenderOptions(
        layers=split(layers),
        samples=samples,
        max_channels=max_channels,
        only=split(only),
        same_scale=same_scale,
        cmap=cmap,
        bins=bins,
    )
    store = store if isinstance(store, Store) else open_store(store)
    names = pick_layers(store, options.layers)
    out = Path(out)
    report = Report(out=out, index=out / "index.html")
    write = lambda p, content: _write(out, report, p, content)  # noqa: E731
    evolution = Evolution.of(store, options, report, write)  # a recording (an epoch axis)
    store = evolution.view if evolution else store  # its last epoch is drawn as a run
    drawer = evolution.drawer if evolution else Drawer(store, options, report, write)
    rows = drawer.sample_rows()
    _prepare(out)  # only now, when the input is known to be good, is anything touched
    done = store.done()
    if not done.all() or store.status != "complete":
        report.note(
            None,
            f"the store is {store.status}: {int(done.sum())} of {len(done)} row blocks are "
            "written; the pictures show those rows only.",
            level=logging.WARNING,
        )
    for layer in names:
        if progress:
            progress(layer)
        drawer.layer(layer, rows)
        if evolution:
            evolution.layer(layer, rows)
    model = write_model_files(store, out)  # its summary and graph, or why there are none
    report.seconds = time.perf_counter() - started
    report.index.write_text(page.index_html(store, report, names, model), encoding="utf-8")
    _write_manifest(report, [name for name, _ in model.files])
    return report


def pick_layers(store: Store, patterns: Sequence[str] | None) -> list[str]:
    """Names and globs → the store's layers (those stored in full, then those with statistics
    only), in the store's order; unknown names get the closest ones in the error."""
    names = [*store.layers, *(n for n in store.stats_layers() if n not in store.layers)]
    patterns = [p.strip() for p in patterns or () if p.strip()]
    if not patterns:
        return names

    def not_found(pat: str) -> LayerNotFoundError:
        close = difflib.get_close_matches(pat, names, n=4, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        return LayerNotFoundError(
            f"layer '{pat}' is not in {store.path}.{hint} It holds: {', '.join(names)}."
        )

    return match_names(patterns, names, not_found)


def _prepare(out: Path) -> None:
    """An empty folder, or an earlier report whose files (listed in its manifest) go."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out '{out}' is a file; give a folder for the report.")
    if out.is_dir() and any(out.iterdir()):
        manifest = out / MANIFEST
        if not manifest.is_file():
            raise OutputExistsError(
                f"--out '{out}' is a folder that holds files and no earlier report; give an "
                "empty or new folder."
            )
        for name in json.loads(manifest.read_text()).get("files", []):
            path = out / name
            if path.parent == out and path.is_file():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write(out: Path, report: Report, picture: Picture, content: Figure | np.ndarray) -> None:
    """The one place a picture becomes a file: a figure through Agg, an image array as PNG."""
    path = out / picture.path
    if isinstance(content, Figure):
        content.savefig(path, dpi=DPI)
    else:
        from PIL import Image

        Image.fromarray(content).save(path, compress_level=6)
    report.pictures.append(picture)


def _write_manifest(report: Report, extra: list[str]) -> None:
    files = [p.path for p in report.pictures] + extra + ["index.html", MANIFEST]
    data = {
        "files": files,
        "pictures": [vars(p) for p in report.pictures],
        "notes": report.notes,
        "accuracy": report.accuracy,
        "confusion": report.confusion,
        "seconds": round(report.seconds, 3),
    }
    (report.out / MANIFEST).write_text(json.dumps(data, indent=1), encoding="utf-8")
