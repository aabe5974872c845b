"""The terminal views of a store: ``actextract info``, a clustering's result, and a verify
report's counts."""

from __future__ import annotations

from typing import Any

from actextract.core.text import human_bytes, layer_counts, samples_word, written_by
from actextract.store.build import token_arrays

__all__ = ["format_clustering", "format_info", "format_report"]


def _tokens_line(tokens: dict | None) -> list[str]:
    """A text run's token records, as ``info`` names them."""
    if not tokens:
        return []
    kept = ", ".join(f"tokens/{a}" for a in token_arrays(tokens))
    return [
        f"  tokens   {tokens['length']} per sample (padding marked in tokens/mask); {kept}; "
        "layers reduced 'tokens' hold a row per real token; every token layer's rows: "
        "actextract.token_activations(store, layer)"
    ]


def format_info(d: dict) -> str:
    """``actextract info``, from :meth:`actextract.store.run.Store.info`."""
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
        from actextract.store.epochs import format_epochs

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
        *_tokens_line(d.get("tokens")),
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
        lines += [f"    {a['name']}: {written_by(a['clone'])}" for a in cloned]
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
        lines.append(f"  NaN/Inf  rows per layer: {layer_counts(nonfinite)}")
    summary = d.get("summary")
    if summary:
        lines.append(
            f"  run      {summary['images']:,} {samples_word(d)} in {summary['seconds']:.2f} s "
            f"({summary['images_per_s']:,.1f} {samples_word(d)}/s)"
        )
    return "\n".join(lines)


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
    """What ``actextract cluster`` prints, from a
    :class:`~actextract.clusters.results.Clustering`."""
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


def format_report(report) -> str:
    """What ``actextract render`` prints: counts, accuracy, notes, and the page to open."""
    lines = [f"drew {len(report.pictures)} pictures in {report.seconds:.1f} s into {report.out}"]
    for layer, acc in report.accuracy.items():
        lines.append(f"accuracy of {layer}: {acc:.2%}")
    for layer, notes in report.notes.items():
        lines += [f"note: {layer + ': ' if layer else ''}{line}" for line in notes]
    lines.append(f"open {report.index.resolve()}")
    return "\n".join(lines)
