"""Plain-text views for the terminal: a layer table, a store's info, a run's summary."""

from __future__ import annotations

from typing import Any

from actextract.reduce import STORAGE_DTYPES

__all__ = [
    "format_clustering",
    "format_info",
    "format_layer_summary",
    "format_layer_table",
    "format_summary",
    "human_bytes",
    "run_report",
]


def human_bytes(n: float) -> str:
    """1234567 → '1.2 MB' (decimal units, as disks are sold)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"


def format_layer_table(table: Any, dtype: str, n_samples: int | None = None) -> str:
    """``actextract layers``: name, kind, shape, layout and bytes per sample at ``dtype``,
    and a note where the output is cloned at capture (and why), has its batch axis moved, or
    cannot be stored; with ``n_samples``, the projected uncompressed store size."""
    out: list[str] = []
    torch_dtype = STORAGE_DTYPES[dtype]
    out.append(
        f"{table.model}: input {tuple(table.input_shape)}, captured with "
        f"{'torch.fx' if table.method == 'fx' else 'forward hooks (module names only)'}"
    )
    for pattern, count in (getattr(table, "matched", None) or {}).items():
        out.append(f"'{pattern}' matches {count} name{'s' if count != 1 else ''}")
    width = max([len(r.name) for r in table.rows] + [4])
    kind_w = max([len(r.kind) for r in table.rows] + [4])
    shapes = [_shape(r) for r in table.rows]
    shape_w = max([len(v) for v in shapes] + [18])
    out.append(
        f"{'name':<{width}}  {'kind':<{kind_w}}  {'shape':<{shape_w}}  {'layout':<7}"
        f"{'bytes/sample (' + dtype + ')':>22}  note"
    )
    for r, shape in zip(table.rows, shapes, strict=True):
        size = human_bytes(r.bytes_per_sample(torch_dtype)) if r.shape is not None else "-"
        line = f"{r.name:<{width}}  {r.kind:<{kind_w}}  {shape:<{shape_w}}  {r.layout:<7}{size:>22}"
        out.append(f"{line}  {_note(r)}".rstrip())
    if n_samples:
        per = {r.name: r.bytes_per_sample(torch_dtype) for r in table.rows if r.shape}
        out.append(
            f"\nfor {n_samples:,} samples: {human_bytes(max(per.values(), default=0) * n_samples)} "
            f"for the largest layer; {human_bytes(sum(per.values()) * n_samples)} for all of "
            "them (uncompressed)"
        )
    if any(r.clone for r in table.rows):
        out.append(
            "clone: written in place later in the forward, so the output is copied where it is "
            "produced (only those layers pay the copy)"
        )
    return "\n".join(out)


def _shape(row: Any) -> str:
    if row.shape is not None:
        return str(row.shape)
    return "(no batch axis)" if row.problem and "batch" in row.problem else "(not a tensor)"


def _note(row: Any) -> str:
    """A layer's note in the table: why it is cloned, where its batch axis was, or why it
    cannot be stored."""
    if row.shape is None:
        return row.problem or ""
    notes = []
    if row.clone:
        notes.append(f"clone ({_written_by(row.clone)})")
    if row.batch_axis:
        notes.append(f"batch axis {row.batch_axis} moved to the front")
    return "; ".join(notes)


def _written_by(clone: str) -> str:
    """What writes a cloned layer's output, from the reason recorded: "by 'relu'"."""
    return clone.removeprefix("written in place later, ")


def format_layer_summary(table: Any, dtype: str, n_samples: int | None = None) -> str:
    """``actextract layers --summary``, as torchinfo shows a model: layer, kind, output shape,
    parameters (trainable / total where they differ; a container's in parentheses, as they
    are its children's too) and bytes per sample at ``dtype``; then the totals."""
    torch_dtype = STORAGE_DTYPES[dtype]
    rows = [
        (
            r.name,
            r.kind,
            _shape(r),
            _params(r.params, r.nested),
            human_bytes(r.bytes_per_sample(torch_dtype)) if r.shape is not None else "-",
        )
        for r in table.rows
    ]
    head = ("layer", "kind", "output shape", "params", f"bytes/sample ({dtype})")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(5)]

    def line(row: tuple[str, ...]) -> str:  # names to the left, numbers to the right
        cells = enumerate(zip(row, widths, strict=True))
        return "  ".join(v.rjust(w) if i >= 3 else v.ljust(w) for i, (v, w) in cells).rstrip()

    rule = "=" * len(line(head))
    trainable, total = table.params
    per_sample = sum(r.bytes_per_sample(torch_dtype) for r in table.rows if r.shape is not None)
    out = [
        f"{table.model}: input {tuple(table.input_shape)}, captured with "
        f"{'torch.fx' if table.method == 'fx' else 'forward hooks (module names only)'}",
        rule,
        line(head),
        rule,
        *map(line, rows),
        rule,
        f"total params: {total:,} ({human_bytes(table.param_bytes)})",
        f"trainable params: {trainable:,}",
        f"non-trainable params: {total - trainable:,}",
        f"every row stored (--layers '**'): {human_bytes(per_sample)} per sample at {dtype}",
    ]
    if n_samples:
        out.append(
            f"for {n_samples:,} samples: {human_bytes(per_sample * n_samples)} (uncompressed)"
        )
    return "\n".join([*out, rule])


def _params(params: tuple[int, int], nested: bool) -> str:
    trainable, total = params
    text = f"{total:,}" if trainable == total else f"{trainable:,} / {total:,}"
    return f"({text})" if nested else text


def format_info(d: dict) -> str:
    """``actextract info``, from :meth:`actextract.store.Store.info`."""
    status = d["status"]
    if d.get("damage"):
        status = (
            f"DAMAGED ({d['blocks_done']}/{d['n_blocks']} row blocks recorded done, status "
            f"'{d.get('recorded_status')}'): "
            + "; ".join(d["damage"][:6])
            + (f" (and {len(d['damage']) - 6} more)" if len(d["damage"]) > 6 else "")
            + f". `actextract verify {d['path']}` reads every chunk and says how to mend it"
        )
    elif d.get("axis") == "epoch":  # a Recorder's store: blocks_done counts epochs
        from actextract.epochs import format_epochs

        status = f"{status} recording, epochs {format_epochs(d['epochs'])} captured"
    elif status != "complete" and d["blocks_done"] == d["n_blocks"]:
        status = (
            f"NOT SEALED: all {d['n_blocks']} row blocks written, the final status not (the "
            "run stopped at its very end); the same extract command with --resume seals it"
        )
    elif status != "complete":
        status = (
            f"{str(status).upper()}: {d['blocks_done']}/{d['n_blocks']} row blocks written"
            f"{' — ' + d['error'] if d.get('error') else ''}; the run did not finish "
            "(the same extract command with --resume finishes it)"
        )
    else:
        status = f"complete ({d['blocks_done']}/{d['n_blocks']} row blocks)"
    model = d.get("model") or {}
    weights = (
        f", weights {model['weights']} (sha256 {model['weights_sha256'][:12]}…)"
        if model.get("weights")
        else ", weights as built (no checkpoint)"
        if str(model.get("spec", "")).startswith("python")
        else ", random weights (no checkpoint)"
    )
    dataset = d.get("dataset") or {}
    codec = d.get("codec") or {}
    level = f" level {codec['level']}" if codec.get("level") is not None else ""
    lines = [
        f"{d['path']}: {status}",
        f"  model    {model.get('spec')}{weights}; captured with {model.get('capture')}",
        f"  dataset  {dataset.get('spec')}: {d['n_samples']:,} samples; {dataset.get('transform')}",
        f"  storage  {d['dtype']}, {codec.get('name')}{level}, {d['chunk_rows']} rows per "
        f"chunk; forward in {d.get('precision')}",
        f"  on disk  {human_bytes(d['disk_bytes'])}",
        "  arrays",
    ]
    name_w = max([len(a["name"]) for a in d["arrays"]] + [4])
    lines.append(
        f"    {'name':<{name_w}}  {'shape':<22}  {'layout':<7} {'reduce':<6}  {'raw':>10}  "
        f"{'on disk':>10}  ratio"
    )
    for a in d["arrays"]:
        ratio = a["raw_bytes"] / a["disk_bytes"] if a["disk_bytes"] else float("nan")
        lines.append(
            f"    {a['name']:<{name_w}}  {a['shape']!s:<22}  {a.get('layout') or '?':<7} "
            f"{a['reduce']:<6}  {human_bytes(a['raw_bytes']):>10}  "
            f"{human_bytes(a['disk_bytes']):>10}  {ratio:.1f}x"
        )
    cloned = [a for a in d["arrays"] if a.get("clone")]
    if cloned:
        lines.append("  cloned at capture (written in place later in the forward)")
        lines += [f"    {a['name']}: {_written_by(a['clone'])}" for a in cloned]
    moved = [a for a in d["arrays"] if a.get("batch_axis")]
    if moved:
        lines.append(
            "  batch axis moved to the front: "
            + ", ".join(f"{a['name']} (was axis {a['batch_axis']})" for a in moved)
        )
    if d.get("stats"):
        summed = d.get("blocks_summed")
        state = (
            "per-class totals written"
            if d["status"] == "complete"
            else f"sums of {summed}/{d['n_blocks']} row blocks committed, totals not written yet"
        )
        lines.append(f"  statistics (on the device; {state})")
        for layer, a in d["stats"].items():
            lines.append(f"    {layer}: {', '.join(a['kinds'])}  {human_bytes(a['disk_bytes'])}")
    if d.get("clusters"):
        lines.append("  clusters (actextract cluster)")
        lines += [f"    {c['layer']}/{c['name']}: {_scores(c)}" for c in d["clusters"]]
    labels = d["labels"]
    classes = dataset.get("classes")
    shown = ", ".join(
        f"{classes[k] if classes and 0 <= k < len(classes) else k}: {v}" for k, v in labels.items()
    )
    lines.append(f"  labels   {shown}")
    if d.get("skipped"):
        lines.append(f"  skipped  {', '.join(str(s['id']) for s in d['skipped'][:10])}")
    nonfinite = {k: v for k, v in (d.get("nonfinite") or {}).items() if v}
    if nonfinite:
        lines.append(f"  NaN/Inf  rows per layer: {_counts(nonfinite)}")
    summary = d.get("summary")
    if summary:
        lines.append(
            f"  run      {summary['images']:,} images in {summary['seconds']:.2f} s "
            f"({summary['images_per_s']:,.1f} images/s)"
        )
    return "\n".join(lines)


def format_summary(attrs: dict, run: dict | None = None) -> str:
    """The end-of-run text, from a store's attributes (``summary``, ``skipped``); with ``run``
    (``Store.this_run``: what this process did), its own numbers, and what is left to do when
    it computed nothing or left the store incomplete (other shards still writing)."""
    if run is not None and not run["computed"]:
        return _nothing_to_do(attrs, run)
    s = (run["summary"] if run is not None else attrs.get("summary")) or {}
    total = max(s.get("seconds", 0.0), 1e-9)

    def part(key: str) -> str:
        return f"{s.get(key, 0.0):.2f} s ({100 * s.get(key, 0.0) / total:.0f}%)"

    lines = [
        f"{s.get('images', 0)} images in {s.get('seconds', 0.0):.2f} s "
        f"({s.get('images_per_s', 0.0):,.1f} images/s), "
        f"{s.get('bytes_written', 0) / 1e6:,.1f} MB of activations written",
        f"time: waiting for data {part('data_wait_s')}, compute {part('compute_s')}, "
        f"device→host {part('d2h_s')}, waiting for the writer {part('write_wait_s')}; "
        f"{s.get('mb_per_s', 0.0):,.1f} MB/s written (uncompressed)",
    ]
    skipped = attrs.get("skipped") or []
    count = attrs.get("skipped_count", len(skipped)) or s.get("skipped", 0)  # this shard's
    if count:
        ids = ", ".join(str(b["id"]) for b in skipped[:10])
        more = f" (+{count - 10} more)" if count > 10 and ids else ""
        lines.append(f"skipped {count} bad samples" + (f": {ids}{more}" if ids else ""))
    nonfinite = {k: v for k, v in (attrs.get("nonfinite") or s.get("nonfinite") or {}).items() if v}
    if nonfinite:
        lines.append(
            f"rows with NaN or Inf, per layer: {_counts(nonfinite)} (stored as they are; "
            "--on-nonfinite error stops at the first)"
        )
    if run is not None and attrs.get("status") != "complete":
        who = "this run" if run["count"] == 1 else f"shard {run['shard']}"
        lines.append(f"{who} wrote its {_blocks(run['blocks'])}; {_store_state(attrs, run)}")
    return "\n".join(lines)


def run_report(store: Any, shard: Any, blocks: int, computed: int, summary: dict) -> dict:
    """``Store.this_run``: what one process did (``blocks`` dealt to ``shard``, ``computed`` of
    them, its ``summary``) and the store's row blocks done, for :func:`format_summary`."""
    done = store.done()
    return {
        **dict(shard=str(shard), count=shard.count, blocks=blocks, computed=computed),
        **dict(done=int(done.sum()), n_blocks=len(done), chunk_rows=store.chunk_rows),
        "summary": summary,
    }


def _blocks(n: int) -> str:
    return f"{n} row block{'s' * (n != 1)}"


def _store_state(attrs: dict, run: dict) -> str:
    """The store's state, after a process that did not necessarily finish it."""
    if attrs.get("status") == "complete":
        return "the store is complete"
    state = f"the store is {attrs.get('status')}: {run['done']} of {_blocks(run['n_blocks'])} done"
    if run["count"] > 1:
        return state + " (the other shards write the rest; the last to finish completes it)"
    return state + "; run the same command with --resume to finish it"


def _nothing_to_do(attrs: dict, run: dict) -> str:
    """What a process that computed no block says: it was dealt none, or all were done."""
    state = _store_state(attrs, run)
    if not run["blocks"]:
        return (
            f"nothing to do: shard {run['shard']} was dealt no row blocks (the store has "
            f"{_blocks(run['n_blocks'])} of {run['chunk_rows']} rows for {run['count']} "
            f"shards; use fewer shards or a smaller --chunk-rows); {state}"
        )
    who = "this run" if run["count"] == 1 else f"shard {run['shard']}"
    return (
        f"nothing left to do: every row block of {who} ({_blocks(run['blocks'])}) was "
        f"already written; {state}"
    )


def _scores(c: dict) -> str:
    """A clustering's state and scores in one line."""
    if c.get("status") != "complete":
        return f"{str(c.get('status')).upper()}: interrupted, run the cluster command again"
    m = c.get("metrics") or {}
    line = f"inertia {m.get('inertia', float('nan')):.4g}"
    if "ari" in m:
        line += f", purity {m['purity']:.3f}, ARI {m['ari']:.3f}, NMI {m['nmi']:.3f}"
    return line


def format_clustering(result: Any, location: str) -> str:
    """What ``actextract cluster`` prints, from a :class:`~actextract.clustering.Clustering`."""
    a, s, m = result.attrs, result.settings, result.metrics
    pca = a["pca"]
    ratio = pca["explained_variance_ratio"]
    how = (
        ""
        if pca.get("method", "covariance") == "covariance"
        else (f"; randomized PCA, {pca['passes']} passes")
    )
    space = (
        f"the first {s.pca} principal components ({sum(ratio[: s.pca]):.1%} of the variance{how})"
        if s.pca
        else f"all {a['pool_dim']:,} features"
    )
    pool = f", {s.pool}-pooled" if s.pool != "none" else ""
    lines = [
        f"clustered '{result.layer}' of {location} into k={s.k}: k-means on {space}{pool}; "
        f"seed {s.seed}, {s.epochs} epochs of {s.batch_size}-row batches on {a['device']}",
        f"  rows      {m['clustered']:,} clustered"
        + (f", {m['excluded']:,} left out (skipped, or NaN/Inf)" if m["excluded"] else ""),
        f"  inertia   {m['inertia']:.6g} (sum of squared distances to the centres)",
    ]
    if "ari" in m:
        lines.append(
            f"  labels    purity {m['purity']:.3f}, adjusted Rand {m['ari']:.3f}, normalised "
            f"mutual information {m['nmi']:.3f} ({m['labelled']:,} labelled rows)"
        )
    else:
        lines.append("  labels    none: no scores against labels")
    lines.append(f"  sizes     {' '.join(str(int(v)) for v in result['sizes'])}")
    if not pca.get("converged", True):
        lines.append(
            f"  note      the randomized PCA stopped after {pca['passes']} passes before its "
            "components settled: they are approximate (the spectrum is flat there)"
        )
    if m.get("reassigned"):
        lines.append(f"  note      {m['reassigned']} empty cluster(s) were moved during training")
    lines.append(f"  written   clusters/{result.layer}/{result.name} (actextract render draws it)")
    return "\n".join(lines)


def _counts(per_layer: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in per_layer.items())


def format_report(report) -> str:
    """What ``actextract render`` prints: counts, accuracy, notes, and the page to open."""
    lines = [f"drew {len(report.pictures)} pictures in {report.seconds:.1f} s into {report.out}"]
    for layer, acc in report.accuracy.items():
        lines.append(f"accuracy of {layer}: {acc:.2%}")
    for layer, notes in report.notes.items():
        lines += [f"note: {layer + ': ' if layer else ''}{line}" for line in notes]
    lines.append(f"open {report.index.resolve()}")
    return "\n".join(lines)
