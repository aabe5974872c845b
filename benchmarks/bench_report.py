"""The Markdown tables of a benchmark run, made from its JSON lines (bench_extract.py writes
them after every case): one row per workload and method, actextract's time split, the
targets, RSS growth in N, and the disk's write speed."""

from __future__ import annotations

from bench_machine import MB

SPLIT = {"data_wait": "data wait", "compute": "compute", "d2h": "device→host"}
SPLIT["write_wait"] = "write wait"
NOT_MET = {True: "met", False: "**not met**", None: "not measured"}


def markdown(lines: list[dict]) -> str:
    """The run's tables, from its JSON lines: one row per workload (case), actextract's time
    split, the targets, RSS growth in N, the disk's write speed, and what was skipped."""
    cases: dict[str, dict[str, dict]] = {}  # case -> method -> measurement
    for line in lines:
        if line["kind"] == "measurement":
            cases.setdefault(line["case"], {})[line["method"]] = line
    parts = [
        _title(lines[0]),
        _main_table(cases),
        _split_table(cases),
        _targets_table([x for x in lines if x["kind"] == "target"]),
        *(_scale_table(x) for x in lines if x["kind"] == "scale"),
        *(_disk_notes(x, cases) for x in lines if x["kind"] == "disk"),
        "\n".join(
            f"Skipped: {x['case']} {x['method']}: {x['skipped']}."
            for x in lines
            if x["kind"] == "measurement" and "skipped" in x
        ),
    ]
    return "\n\n".join(part for part in parts if part) + "\n"


def _title(head: dict) -> str:
    v = head["versions"]
    facts = [
        head["date"],
        f"torch {v['torch']}",
        f"torchvision {v['torchvision']}",
        f"zarr {v['zarr']}",
        f"actextract {v['actextract']}",
        f"{head['torch_threads']} torch threads",
        f"median of {head['repeats']} (scale: 1 run)",
        f"scratch on {head['scratch_fs']}",
    ]
    if "d2h_pinned_gb_per_s" in head:
        facts.append(f"pinned device→host {head['d2h_pinned_gb_per_s']} GB/s")
    if head.get("tiny"):
        facts.append("**tiny sizes: the numbers mean nothing**")
    return (
        f"# actextract benchmark: {head['device']} ({head['device_name']})\n\n"
        + " · ".join(facts)
        + "\n\nEach measurement is a process of its own. Ratios are throughputs (the other's "
        "time ÷ this one's, whole calls: actextract's trace, probe, store creation and flush "
        "included). MB/s: actextract's raw activation bytes per second of its loop; the hooks' "
        "and the peer's float32 .npy bytes per second. RSS: peak, and growth over the RSS at "
        "the call's start; CPU: user + system seconds of the process, all threads (system time "
        "is the kernel's: page-cache copies of the writes and faults on fresh memory). I/O: "
        "bytes the process wrote / read through system calls (/proc/self/io) per byte of "
        "activations it stored."
    )


def _main_table(cases: dict[str, dict[str, dict]]) -> str:
    rows = [
        "| workload | model · layers | N | batch | precision, codec | method | img/s "
        "| × ceiling | × hooks | × peer | MB/s | on disk MB | peak RSS MB | RSS growth MB "
        "| CPU s, user+sys | I/O written / read per byte stored |",
        "|---|---|--:|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for case, m in cases.items():
        first = next(iter(m.values()))
        precision = first["precision"] + (" NHWC" if first["channels_last"] else "")
        precision += f", {first['codec']}"
        what = [
            case,
            f"{first['model']} · {','.join(first['layers'])}",
            f"{first['n']:,}",
            str(first["batch_size"]),
            precision,
        ]
        for method, x in m.items():
            if "skipped" in x:
                continue
            io = "–"
            if "written_per_stored_byte" in x:
                io = f"{x['written_per_stored_byte']:.2f} / {x['read_per_stored_byte']:.2f}"
            cells = [
                *what,
                method,
                _fmt(x.get("images_per_s"), ",.1f"),
                _fmt(x.get("vs_ceiling"), ".3f"),
                _fmt(x.get("vs_hooks"), ".2f"),
                _fmt(x.get("vs_peer"), ".2f"),
                _fmt(x.get("mb_per_s"), ",.1f"),
                _fmt(x.get("disk_bytes") if method != "ceiling" else None, "mb"),
                _fmt(x.get("peak_rss_mb"), ",.0f"),
                _fmt(x.get("rss_growth_mb"), ",.0f"),
                f"{x['cpu_user_s']:.1f}+{x['cpu_sys_s']:.1f}",
                io,
            ]
            rows.append("| " + " | ".join(cells) + " |")
            what = ["", "", "", "", ""]
    return "\n".join(rows)


def _split_table(cases: dict[str, dict[str, dict]]) -> str:
    measured = {
        (case, method): x for case, m in cases.items() for method, x in m.items() if "split" in x
    }
    if not measured:
        return ""
    rows = [
        "actextract's loop (store.attrs['summary']); on CUDA device→host is the side stream's "
        "GPU time, which overlaps compute.",
        "",
        "| workload | method | loop s | loop img/s | loop/ceiling | "
        + " | ".join(SPLIT.values())
        + " | largest |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for (case, method), ax in measured.items():
        split = [f"{ax['split'][k]['s']:.3f} s ({ax['split'][k]['pct']:.0f} %)" for k in SPLIT]
        rows.append(
            f"| {case} | {method} | {ax['loop_seconds']:.3f} | {ax['loop_images_per_s']:,.1f} "
            f"| {_fmt(ax.get('loop_vs_ceiling'), '.3f')} | {' | '.join(split)} "
            f"| {SPLIT[ax['bottleneck']]} |"
        )
    return "\n".join(rows)


def _targets_table(targets: list[dict]) -> str:
    if not targets:
        return ""
    rows = ["| workload | target | value | result | bottleneck |", "|---|---|--:|---|---|"]
    rows += [
        f"| {t['case']} | {t['target']} | {_fmt(t['value'], '.3f')} | {NOT_MET[t['met']]} "
        f"| {SPLIT.get(t['bottleneck'], '')} |"
        for t in targets
    ]
    return "\n".join(rows)


def _scale_table(scale: dict) -> str:
    n1, n2 = scale["n"]
    rows = [
        f"| RSS growth | at N = {n1:,} (MB) | at 2N = {n2:,} (MB) | 2N / N |",
        "|---|--:|--:|--:|",
    ]
    for method in ("hooks", "actextract"):
        if method in scale:
            g = scale[method]["rss_growth_mb"]
            rows.append(f"| {method} | {g[0]:,.0f} | {g[1]:,.0f} | {scale[method]['ratio']:.2f} |")
    return "\n".join(rows)


def _disk_notes(disk: dict, cases: dict[str, dict[str, dict]]) -> str:
    notes = [
        f"Scratch disk, {disk['bytes'] / MB:,.0f} MB written in {disk['block_bytes'] / MB:,.2g} "
        f"MB blocks: {disk['plain_mb_per_s']:,.0f} MB/s into the page cache (warm memory"
        + (
            f"; {disk['plain_cold_mb_per_s']:,.0f} MB/s into pages the host had taken back"
            if "plain_cold_mb_per_s" in disk
            else ""
        )
        + f"), {disk['fsync_mb_per_s']:,.0f} MB/s with fsync (the device)."
    ]
    for case, m in cases.items():
        ax = m.get("actextract", {})
        if "vs_disk_plain" in ax:
            notes.append(
                f"{case}: actextract (float16) writes {ax['mb_per_s']:,.1f} MB/s raw = "
                f"{ax['vs_disk_plain']:.2f} × page cache, {ax['vs_disk_fsync']:.2f} × device."
            )
    return "\n".join(notes)


def _fmt(value: float | None, fmt: str) -> str:
    """A table cell: '–' for nothing; 'mb' formats bytes as MB."""
    if value is None:
        return "–"
    if fmt == "mb":
        return f"{value / MB:,.1f}"
    return format(value, fmt)
