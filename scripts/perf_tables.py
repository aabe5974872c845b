"""The tables of measured figures in the docs, made from benchmarks/results/.

    python scripts/perf_tables.py           # rewrite every region from the result files
    python scripts/perf_tables.py --check   # exit 1, naming each region that differs

A region is the text between the lines ``<!-- perf:begin NAME -->`` and
``<!-- perf:end NAME -->`` (each a line of its own) in README.md or docs/*.md. NAME says what
to read: ``bench-cpu`` (and ``bench-cpu-loop``) from ``bench-cpu.jsonl``, ``stats-cpu`` from
``stats-cpu.json``, ``zarr-settings-x86_64-2cpu`` from ``zarr-settings-x86_64-2cpu.json``, and
so on for every ``make_*`` (in scripts/perf_makers.py); a GPU run's ``bench-cuda.jsonl`` gives
``bench-cuda``. A region whose result file is missing, or whose NAME no function makes, is an
error.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported by its path (tests/test_docs.py), not run as a script
    sys.path.insert(0, str(HERE))

from perf_makers import (  # noqa: E402
    ROOT,
    RegionError,
    make_bench,
    make_bench_loop,
    make_clones,
    make_cluster,
    make_codecs,
    make_integrity,
    make_stats,
    make_tokens,
    make_zarr_settings,
)

REGION = re.compile(
    r"(?m)(?P<begin>^<!-- perf:begin (?P<name>[\w.-]+) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<end>^<!-- perf:end (?P=name) -->$)",
    re.S,
)
BEGIN = re.compile(r"(?m)^<!-- perf:begin ([\w.-]+) -->$")


KINDS: list[tuple[re.Pattern[str], Callable[..., str]]] = [
    (re.compile(r"bench-(?P<x>[\w.]+)-loop"), make_bench_loop),
    (re.compile(r"bench-(?P<x>[\w.]+)"), make_bench),
    (re.compile(r"clones-(?P<x>[\w.-]+)"), make_clones),
    (re.compile(r"integrity-(?P<x>[\w.-]+)"), make_integrity),
    (re.compile(r"stats-(?P<x>[\w.-]+)"), make_stats),
    (re.compile(r"cluster-(?P<x>[\w.-]+)"), make_cluster),
    (re.compile(r"codecs-(?P<x>[\w.-]+)"), make_codecs),
    (re.compile(r"zarr-settings-(?P<x>[\w.-]+)"), make_zarr_settings),
    (re.compile(r"tokens-(?P<x>[\w.-]+)"), make_tokens),
]


def make(name: str, page: Path) -> str:
    """The text of region ``name`` on ``page``, from the result files."""
    for pattern, fn in KINDS:
        m = pattern.fullmatch(name)
        if m:
            return fn(page, m["x"])
    raise RegionError(f"no table is made for a region named '{name}'")


def regions(text: str) -> list[str]:
    return BEGIN.findall(text)


def updated(page: Path, text: str) -> tuple[str, list[str]]:
    """``text`` with every region made anew, and the names of the regions that changed.
    A begin marker without its end marker is an error."""
    found = [m["name"] for m in REGION.finditer(text)]
    unclosed = [n for n in regions(text) if n not in found]
    if unclosed:
        raise RegionError(f"region '{unclosed[0]}' has no '<!-- perf:end {unclosed[0]} -->'")
    changed = []

    def fill(m: re.Match[str]) -> str:
        body = make(m["name"], page) + "\n"
        if body != m["body"]:
            changed.append(m["name"])
        return m["begin"] + body + m["end"]

    return REGION.sub(fill, text), changed


def pages(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", type=Path, help="default: README.md, docs/*.md")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    stale, errors = [], []
    for page in [p.resolve() for p in args.pages] or pages():
        text = page.read_text(encoding="utf-8")
        try:
            new, changed = updated(page, text)
        except RegionError as e:
            errors.append(f"{_name(page)}: {e}")
            continue
        for name in changed:
            stale.append(f"{_name(page)}: region '{name}' differs from benchmarks/results")
        if changed and not args.check:
            page.write_text(new, encoding="utf-8")
            print(f"{_name(page)}: rewrote {', '.join(changed)}")
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if args.check:
        for line in stale:
            print(line, file=sys.stderr)
        if stale:
            print("run: python scripts/perf_tables.py", file=sys.stderr)
        return 1 if stale or errors else 0
    return 1 if errors else 0


def _name(page: Path) -> str:
    try:
        return page.relative_to(ROOT).as_posix()
    except ValueError:
        return str(page)


if __name__ == "__main__":
    sys.exit(main())
