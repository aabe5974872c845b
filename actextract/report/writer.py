"""The renderer's one writer: a store in, a folder of PNGs and ``index.html`` out.

``render`` checks the options and the output folder, lets :class:`actextract.report.pictures.Drawer`
pick and draw what fits each layer (feature-map grids for (C, H, W) layers, strips for 1-D
ones, filters for convolutions, a confusion matrix for the model's output), writes each
picture as it comes, then the model's summary and graph (:mod:`actextract.report.graph`), the page
(:mod:`actextract.report.page`) and a manifest of the files.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from actextract.core.names import match_names
from actextract.errors import LayerNotFoundError, OptionError, OutputExistsError, StoreError
from actextract.report import figures
from actextract.report.evolution import Evolution
from actextract.report.pictures import KINDS, Drawer, Picture, RenderOptions, Report
from actextract.report.toptokens import top_tokens_html
from actextract.store import Store, integrity
from actextract.store.layout import layer_arrays
from actextract.store.location import Location
from actextract.store.opening import as_store
from actextract.store.tokens import is_token_layer

__all__ = ["KINDS", "Picture", "RenderOptions", "Report", "pick_layers", "render"]

log = logging.getLogger(__name__)

MANIFEST = "report.json"
PARTIAL = f"{MANIFEST}.partial"  # the manifest being written, then renamed over it
OURS = "actextract"  # the stub manifest's "report"
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
    allow_damaged: bool = False,
    storage_options: Mapping[str, Any] | str | None = None,
) -> Report:
    """Draw the pictures of ``store`` (a Store or its path) into the folder ``out`` and write
    ``out/index.html``. ``layers``: names or globs (default: all); ``samples``: 'per-class' or
    row indices; ``only``: a subset of :data:`KINDS`; ``progress`` is called with each layer's
    name before it is drawn. A damaged store (:func:`actextract.store.integrity.check`) is refused,
    or with ``allow_damaged`` drawn without its damaged rows and layers, which the page lists.
    Returns the :class:`Report` (pictures, notes, accuracy)."""
    from actextract.report import page
    from actextract.report.graph import write_model_files

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
    out = local_folder(out)
    store = as_store(store, storage_options)
    report = Report(out=out, index=out / "index.html")
    damaged, left_out = _around_damage(store, allow_damaged, report)
    names = [n for n in pick_layers(store, options.layers) if n not in damaged]
    write = lambda p, content: _write(out, report, p, content)  # noqa: E731
    evolution = Evolution.of(store, options, report, write)  # a recording (an epoch axis)
    store = evolution.view if evolution else store  # its last epoch is drawn as a run
    drawer = evolution.drawer if evolution else Drawer(store, options, report, write)
    rows = drawer.sample_rows()
    _prepare(out)  # only now, when the input is known to be good, is anything touched
    done = store.done()
    if (not done.all() or store.status != "complete") and not left_out:
        report.note(
            None,
            f"the store is {store.status}: {int(done.sum())} of {len(done)} row blocks are "
            "written; the pictures show those rows only.",
            level=logging.WARNING,
        )
    decode = _decoder(store) if store.attrs.get("tokens") else None
    for layer in names:
        if progress:
            progress(layer)
        try:
            drawer.layer(layer, rows)
            if evolution:
                evolution.layer(layer, rows)
            if options.wants("tokens") and is_token_layer(store, layer):
                report.html.setdefault(layer, []).append(top_tokens_html(store, layer, decode))
        except Exception as e:  # a chunk that does not read back
            if not integrity.is_damage(e):
                raise
            what = f"a chunk of {layer} does not read back ({integrity.undecodable(e)})"
            if not allow_damaged:
                raise StoreError(
                    f"'{store.location}' is DAMAGED: {what}. Run `actextract verify "
                    f"{store.location}` for the whole picture; `verify --repair` then `extract "
                    "... --resume` mends it (or render with --allow-damaged)."
                ) from None
            report.note(layer, f"DAMAGED: {what}; not drawn.", level=logging.WARNING)
    model = write_model_files(store, out)  # its summary and graph, or why there are none
    report.seconds = time.perf_counter() - started
    report.index.write_text(page.index_html(store, report, names, model), encoding="utf-8")
    _write_manifest(report, [name for name, _ in model.files])
    return report


def local_folder(out: str | Path) -> Path:
    """``render --out``: a local folder (the page opens its pictures from beside it); a URL
    is refused with the way to publish the folder instead."""
    text = str(out)
    if "://" in text and not text.startswith("file://"):
        raise OptionError(
            f"render --out '{text}': the report is written to a local folder, not a URL. Give "
            "a folder (--out report/), then copy it where it should be served, e.g. aws s3 cp "
            f"--recursive report/ {text}"
        )
    return Location.parse(text).local  # type: ignore[return-value]  # a path, or file://


def _around_damage(store: Store, allow: bool, report: Report) -> tuple[set[str], bool]:
    """Refuse a damaged store, or (``allow``) leave out its damaged rows and the layers whose
    metadata is missing, noting both on the page; returns (those layers, any rows left)."""
    damage = integrity.check(store)
    if not damage:
        return set(), False
    if not allow:
        raise integrity.damage_error(
            store,
            damage,
            "Its pictures would leave rows out without a word: render draws a damaged store "
            "only with --allow-damaged, which leaves those rows out and lists them on the page.",
        )
    broken = {p.path for p in damage.metadata}
    arrays = layer_arrays(store.attrs)
    names = set(arrays.values())
    if broken - set(arrays) or any(g[0] not in names for g in damage.gaps) or damage.stats:
        # the root, labels, ids, the completion records or the sums: pictures read them
        raise StoreError(
            f"'{store.location}' cannot be drawn even with --allow-damaged: "
            f"{'; '.join(damage.lines())}. Run `actextract verify {store.location}`."
        )
    rows = store.chunk_rows
    store.leave_out([b for _, a, z, _ in damage.gaps for b in range(a // rows, -(-z // rows))])
    lines = "; ".join(damage.lines())
    report.note(
        None,
        f"DAMAGED store, drawn with --allow-damaged: {lines}. Those rows (and layers) are not "
        f"drawn; `actextract verify {store.location}` says how to mend the store.",
        level=logging.WARNING,
    )
    return {arrays[p] for p in broken}, bool(damage.gaps)


def _decoder(store: Store) -> Callable[[list[int]], list[str]] | None:
    """The model's tokenizer as ``ids -> one string per token`` (None: it is not there)."""
    from actextract.model.hub import tokenizer_of

    tokenizer = tokenizer_of(str((store.attrs.get("model") or {}).get("spec", "")))
    if tokenizer is None:
        return None
    return lambda ids: [tokenizer.decode([i]) for i in ids]


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
    """An empty folder, or one of an earlier report, complete or cut short, whose files (those
    its manifest names) go. Before anything else the manifest becomes a stub: a JSON line
    naming the files render writes besides the pictures and those of the earlier report, then
    each picture's name as it is begun (:func:`_write`), so a killed render leaves a folder
    its rerun knows as its own; the full manifest replaces the stub at the end."""
    from actextract.report.graph import GRAPH_STEM, SUMMARY_FILE

    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out '{out}' is a file; give a folder for the report.")
    earlier: list[str] | None = []
    if out.is_dir() and any(out.iterdir()):
        earlier = _listed(out / MANIFEST)
        if earlier is None and {p.name for p in out.iterdir()} == {PARTIAL}:
            earlier = []  # killed while writing its first stub
        if earlier is None:
            raise OutputExistsError(
                f"--out '{out}' is a folder that holds files and no earlier report; give an "
                "empty or new folder."
            )
    out.mkdir(parents=True, exist_ok=True)
    ours = ["index.html", MANIFEST, PARTIAL, SUMMARY_FILE, f"{GRAPH_STEM}.svg", f"{GRAPH_STEM}.dot"]
    files = list(dict.fromkeys([*ours, *earlier]))
    _replace_manifest(out, json.dumps({"report": OURS, "status": "writing", "files": files}))
    for name in earlier:
        path = out / name
        if path.parent == out and path.is_file() and name != MANIFEST:
            path.unlink()


def _listed(manifest: Path) -> list[str] | None:
    """The files a manifest names: a full one, or a stub and the names added to it (a name
    cut short by a kill is left out: its picture was not begun); None: not a report's."""
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        head, added = json.loads(text), []
    except ValueError:  # a stub, names added
        first, *added = text.splitlines() or [""]
        try:
            head = json.loads(first)
        except ValueError:
            return None
        if not isinstance(head, dict) or head.get("report") != OURS:
            return None
    if not isinstance(head, dict):
        return None
    files = head.get("files") if isinstance(head.get("files"), list) else []
    for line in added:
        try:
            files.append(json.loads(line))
        except ValueError:
            continue
    return [f for f in files if isinstance(f, str)]


def _replace_manifest(out: Path, text: str) -> None:
    (out / PARTIAL).write_text(text + "\n", encoding="utf-8")
    os.replace(out / PARTIAL, out / MANIFEST)


def _write(out: Path, report: Report, picture: Picture, content: Figure | np.ndarray) -> None:
    """The one place a picture becomes a file: a figure through Agg, an image array as PNG;
    its name goes into the stub manifest first."""
    path = out / picture.path
    with open(out / MANIFEST, "a", encoding="utf-8") as stub:
        stub.write(json.dumps(picture.path) + "\n")
    if isinstance(content, Figure):
        content.savefig(path, dpi=DPI)
    else:
        from PIL import Image

        Image.fromarray(content).save(path, compress_level=6)
    report.pictures.append(picture)


def _write_manifest(report: Report, extra: list[str]) -> None:
    files = [p.path for p in report.pictures] + extra + ["index.html", MANIFEST]
    data = {
        "report": OURS,
        "status": "complete",
        "files": files,
        "pictures": [vars(p) for p in report.pictures],
        "notes": report.notes,
        "accuracy": report.accuracy,
        "confusion": report.confusion,
        "seconds": round(report.seconds, 3),
    }
    _replace_manifest(report.out, json.dumps(data, indent=1))
