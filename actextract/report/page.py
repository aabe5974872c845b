"""The report's ``index.html``: one static page, no script, no network, relative links only,
so the folder can be zipped and opened anywhere."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from actextract.core.axes import stored_layout
from actextract.core.text import human_bytes
from actextract.core.versions import __version__

if TYPE_CHECKING:
    from actextract.report.graph import ModelFiles
    from actextract.report.pictures import Picture, Report
    from actextract.store import Store

__all__ = ["index_html"]

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1em 2em 3em; color: #1d1d1f; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { text-align: left; padding: 0.2em 0.8em 0.2em 0; vertical-align: top; }
th { color: #555; font-weight: 600; }
td code, p code { font-size: 0.92em; }
.banner { background: #fff4d6; border: 1px solid #e8c15a; padding: 0.6em 1em; }
.banner.bad { background: #fde2e2; border-color: #e07a7a; }
figure { margin: 1em 0 1.5em; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; }
.gallery figure { margin: 0; max-width: 280px; }
.notes { color: #7a4b00; }
nav a { margin-right: 0.8em; }
footer { margin-top: 3em; color: #777; font-size: 0.85em; }
.tokens li { margin: 0.25em 0; } .tokens span { padding: 0 2px; border-radius: 3px; }
"""


def index_html(
    store: Store, report: Report, layers: list[str], model_files: ModelFiles | None = None
) -> str:
    """The page, from the store's provenance, what ``render`` drew and the links to the
    model's summary and graph (``model_files``; or why there are none)."""
    attrs = store.attrs
    model, dataset = attrs.get("model") or {}, attrs.get("dataset") or {}
    by_layer: dict[str | None, list[Picture]] = {}
    for p in report.pictures:
        by_layer.setdefault(p.layer if p.kind != "confusion" else None, []).append(p)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="actextract {escape(__version__)}">',
        '<link rel="icon" href="data:,">',
        f"<title>actextract report: {escape(store.location.name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Activations of <code>{escape(str(model.get('spec', '?')))}</code> on "
        f"<code>{escape(str(dataset.get('spec', '?')))}</code></h1>",
        f"<p>Store <code>{escape(str(store.location))}</code></p>",
        _model_links(model_files),
        _banner(store),
        _notes(report.notes.get("", [])),
        _nav(layers, bool(by_layer.get(None))),
        "<h2 id='run'>Run</h2>",
        _provenance(store, attrs),
        "<h2 id='layers'>Layers</h2>",
        _layer_table(store, attrs, layers),
    ]
    if by_layer.get(None):
        parts.append("<h2 id='confusion'>Confusion matrix</h2>")
        for layer, acc in report.accuracy.items():
            parts.append(
                f"<p>Accuracy of <code>{escape(layer)}</code> (argmax of the model's output "
                f"against the labels): <strong>{acc:.2%}</strong></p>"
            )
        parts += [_figure(p) for p in by_layer[None]]
    for layer in layers:
        parts.append(_layer_section(layer, by_layer.get(layer, []), report.notes.get(layer, [])))
        parts += report.html.get(layer, [])  # a text run's top tokens
    parts.append(
        f"<footer>Made by actextract {escape(__version__)} in {report.seconds:.1f} s. "
        "Every picture and file it links is in this folder.</footer></body></html>"
    )
    return "\n".join(p for p in parts if p) + "\n"


def _model_links(model: ModelFiles | None) -> str:
    if model is None:
        return ""
    if model.note:
        return f"<p class='notes'>No model summary or graph: {escape(model.note)}</p>"
    links = " · ".join(
        f"<a href='{quote(path)}'>{escape(title)}</a>" for path, title in model.files
    )
    return f"<p>Model: {links}</p>"


def _banner(store: Store) -> str:
    done = store.done()
    status = store.status
    if status == "complete" and done.all():
        return ""
    error = store.attrs.get("error")
    text = (
        f"This store is <strong>{escape(status)}</strong>: {int(done.sum())} of {len(done)} "
        "row blocks are written. The pictures show the written rows only."
    )
    if error:
        text += f" The run stopped with: <code>{escape(str(error))}</code>"
    return f"<p class='banner{' bad' if status == 'failed' else ''}'>{text}</p>"


def _notes(lines: list[str]) -> str:
    if not lines:
        return ""
    items = "".join(f"<li>{escape(line)}</li>" for line in lines)
    return f"<ul class='notes'>{items}</ul>"


def _nav(layers: list[str], confusion: bool) -> str:
    links = ["<a href='#run'>run</a>", "<a href='#layers'>layers</a>"]
    if confusion:
        links.append("<a href='#confusion'>confusion matrix</a>")
    links += [f"<a href='#{_anchor(n)}'>{escape(n)}</a>" for n in layers]
    return f"<nav>{''.join(links)}</nav>"


def _anchor(layer: str) -> str:
    return "layer-" + quote(layer, safe="")


def _rows(pairs: list[tuple[str, Any]]) -> str:
    body = "".join(
        f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>"
        for k, v in pairs
        if v not in (None, "")
    )
    return f"<table>{body}</table>"


def _provenance(store: Store, attrs: dict[str, Any]) -> str:
    model, dataset = attrs.get("model") or {}, attrs.get("dataset") or {}
    codec = attrs.get("codec") or {}
    summary = attrs.get("summary") or {}
    classes = dataset.get("classes")
    weights = model.get("weights")
    if weights and model.get("weights_sha256"):
        weights = f"{weights} (sha256 {model['weights_sha256'][:16]}…)"
    pairs: list[tuple[str, Any]] = [
        ("status", store.status),
        ("model", model.get("spec")),
        ("weights", weights or "none (as built)"),
        ("capture", model.get("capture")),
        ("dataset", dataset.get("spec")),
        ("transform", dataset.get("transform")),
        ("samples", store.n),
        ("classes", ", ".join(map(str, classes)) if classes else "none"),
        ("skipped samples", attrs.get("skipped_count", 0)),
        ("storage dtype", attrs.get("dtype")),
        ("codec", f"{codec.get('name')} level {codec.get('level')}"),
        ("rows per chunk", attrs.get("chunk_rows")),
        ("precision", attrs.get("precision")),
        ("device", attrs.get("device")),
        ("batch size", attrs.get("batch_size")),
        ("size on disk", human_bytes(store.disk_bytes())),
        ("created", attrs.get("created")),
        ("finished", attrs.get("finished")),
        ("throughput", f"{summary['images_per_s']:.0f} images/s" if summary else None),
        ("software", ", ".join(f"{k} {v}" for k, v in (attrs.get("software") or {}).items())),
    ]
    return _rows(pairs)


def _layer_table(store: Store, attrs: dict[str, Any], layers: list[str]) -> str:
    head = (
        "<tr><th>layer</th><th>kind</th><th>stored shape</th><th>output shape</th>"
        "<th>layout</th><th>reduction</th><th>statistics</th><th>on disk</th></tr>"
    )
    stats = store.stats_layers()
    specs = {spec["name"]: spec for spec in attrs["layers"]}
    rows = []
    for name in [*specs, *(n for n in stats if n not in specs)]:
        spec, kept = specs.get(name), stats.get(name, {})
        link = f"<a href='#{_anchor(name)}'>{escape(name)}</a>" if name in layers else escape(name)
        output = spec.get("output_shape", spec["shape"]) if spec else kept.get("shape", [])
        disk = store.disk_bytes(spec["array"]) if spec else 0
        disk += store.disk_bytes(f"stats/{name}") if kept else 0
        rows.append(
            f"<tr><td>{link}</td><td>{escape(str((spec or kept).get('kind', '')))}</td>"
            f"<td>{tuple(spec['shape']) if spec else 'not stored'}</td>"
            f"<td>{tuple(output)}</td>"
            f"<td>{escape(stored_layout(spec or kept))}</td>"
            f"<td>{escape(str((spec or {}).get('reduce', '-')))}</td>"
            f"<td>{escape(', '.join(kept.get('kinds', [])) or '-')}</td>"
            f"<td>{human_bytes(disk)}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _figure(p: Picture) -> str:
    src = quote(p.path)
    return (
        f"<figure><a href='{src}'><img src='{src}' alt='{escape(p.caption)}'></a>"
        f"<figcaption>{escape(p.caption)}</figcaption></figure>"
    )


# evolution: recordings; clusters: actextract cluster's results
ORDER = ("evolution", "grids", "averages", "histograms", "filters", "clusters")
GALLERIES = (("evolution-sample", "Each sample across epochs"), ("grid", "Each sample's maps"))


def _layer_section(layer: str, pictures: list[Picture], notes: list[str]) -> str:
    parts = [f"<h2 id='{_anchor(layer)}'>{escape(layer)}</h2>", _notes(notes)]
    for kind in ORDER:
        parts += [_figure(p) for p in pictures if p.kind == kind]
    for kind, title in GALLERIES:
        grids = [p for p in pictures if p.kind == kind]
        if grids:
            parts.append(f"<h3>{title}</h3><div class='gallery'>")
            parts += [_figure(p) for p in grids]
            parts.append("</div>")
    if not pictures and not notes:
        parts.append("<p>Nothing drawn for this layer with the options given.</p>")
    return "\n".join(p for p in parts if p)
