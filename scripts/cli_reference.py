"""The option lists of docs/cli.md, from the commands' own --help.

    python scripts/cli_reference.py           # rewrite every region of docs/cli.md
    python scripts/cli_reference.py --check   # exit 1, naming each region that differs

A region is ``<!-- cli:begin extract -->`` ... ``<!-- cli:end extract -->``; ``main`` is the
top-level ``actextract --help``. Every command needs a region, and every region a command.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "cli.md"
REGION = re.compile(
    r"(?m)(?P<begin>^<!-- cli:begin (?P<name>[\w-]+) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<end>^<!-- cli:end (?P=name) -->$)",
    re.S,
)
WIDTH = 80  # columns of the help text: click's default for a terminal of 80


def commands() -> dict[str, object]:
    """``main`` (the group) and each of its commands, as ``python -m actextract`` runs them."""
    from actextract.__main__ import main

    return {"main": main, **dict(sorted(main.commands.items()))}


def help_text(name: str) -> str:
    from click.testing import CliRunner

    from actextract.__main__ import main

    args = ["--help"] if name == "main" else [name, "--help"]
    result = CliRunner().invoke(main, args, prog_name="actextract", terminal_width=WIDTH)
    if result.exit_code != 0:
        raise RuntimeError(f"actextract {' '.join(args)} exited {result.exit_code}")
    return result.output


def updated(text: str) -> tuple[str, list[str], list[str]]:
    """``text`` with every region made anew; the regions that changed; and the problems
    (a command without a region, a region without a command)."""
    names = set(commands())
    found = [m["name"] for m in REGION.finditer(text)]
    problems = [f"no region for 'actextract {n}'" for n in sorted(names - set(found))]
    problems += [f"region '{n}' names no command" for n in found if n not in names]
    changed: list[str] = []

    def fill(m: re.Match[str]) -> str:
        if m["name"] not in names:
            return m[0]
        body = "```text\n" + help_text(m["name"]).rstrip() + "\n```\n"
        if body != m["body"]:
            changed.append(m["name"])
        return m["begin"] + body + m["end"]

    return REGION.sub(fill, text), changed, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    parser.add_argument("--page", type=Path, default=PAGE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    text = args.page.read_text(encoding="utf-8")
    new, changed, problems = updated(text)
    for p in problems:
        print(f"{args.page.name}: {p}", file=sys.stderr)
    if args.check:
        for name in changed:
            command = "actextract --help" if name == "main" else f"actextract {name} --help"
            print(f"{args.page.name}: region '{name}' differs from '{command}'", file=sys.stderr)
        if changed:
            print("run: python scripts/cli_reference.py", file=sys.stderr)
        return 1 if changed or problems else 0
    if changed:
        args.page.write_text(new, encoding="utf-8")
        print(f"{args.page.name}: rewrote {', '.join(changed)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
