"""Run the commands of README.md and docs/*.md, the way tests/test_docs.py does.

    python scripts/run_docs.py                      # every page
    python scripts/run_docs.py docs/cli.md --keep   # one page; keep its folder to look at

A block runs when the line before its fence is ``<!-- runnable -->``: a ```bash block as it
is, a ```python block as a script fed to python. ``<!-- runnable needs=dot -->`` leaves the
block out where the program ``dot`` is missing. Every other ```bash or ```python block says
why it does not run: ``<!-- not runnable: needs a CUDA device -->``. Output goes in ```text.

A page runs in a fresh folder of its own, its blocks in order in one ``bash -e`` script, with
HOME, TMPDIR and the caches inside that folder and, where ``unshare -rn`` works, no network.
``actextract`` on its PATH is a client of a server that has imported actextract once and forks
a process for each command, so that a page of twenty commands does not pay twenty imports of
torch (four seconds each on two cores); the forked process runs the CLI's ``main`` with the
client's arguments, folder, environment, stdin, stdout and stderr, and its exit status is the
client's. ``--plain`` (or ACTEXTRACT_DOCS_PLAIN=1) runs the installed ``actextract`` (or
``python -m actextract``) as a process of its own for every command instead. Every process
gets one OpenMP thread (see ``environment`` in scripts/docs_server.py).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported by its path (tests/test_docs.py), not run as a script
    sys.path.insert(0, str(HERE))

from docs_server import (  # noqa: E402
    Server,
    _client_bin,
    _plain_bin,
    environment,
    network_off,
    serve,
)

ROOT = HERE.parent
SHELL = {"bash", "sh", "shell", "console"}
PYTHON = {"python", "py"}
MARKER = re.compile(
    r"^<!--\s*(runnable(?:\s+needs=(?P<needs>[\w.,-]+))?|not runnable:\s*(?P<why>.+?))\s*-->$"
)
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")


def pages(root: Path = ROOT) -> list[Path]:
    """README.md and every docs/*.md, in that order."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page: its language (the info string's first word), the line
    of its opening fence (1-based), its text, and what the line before it says."""

    page: Path
    line: int
    lang: str
    text: str
    marker: str | None  # "runnable", "not runnable", or None
    needs: tuple[str, ...] = ()
    why: str = ""

    @property
    def where(self) -> str:
        try:
            name = self.page.relative_to(ROOT)
        except ValueError:
            name = self.page
        return f"{name}:{self.line}"

    @property
    def kind(self) -> str | None:
        return "shell" if self.lang in SHELL else "python" if self.lang in PYTHON else None


def fences(lines: list[str]) -> list[tuple[int, int, str]]:
    """(first, last, info) of each fenced block, 0-based lines of its opening and closing fence
    (CommonMark: a closing fence is the same character, at least as many, and nothing else)."""
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, start = m["fence"], i
        i += 1
        while i < len(lines):
            text = lines[i].strip()
            if text and set(text) == {fence[0]} and len(text) >= len(fence):
                break
            i += 1
        found.append((start, i, m["info"]))
        i += 1
    return found


def prose(page: Path) -> list[tuple[int, str]]:
    """The lines of ``page`` outside fenced blocks, with their 1-based numbers."""
    lines = page.read_text(encoding="utf-8").splitlines()
    inside = set()
    for first, last, _ in fences(lines):
        inside.update(range(first, last + 1))
    return [(n + 1, line) for n, line in enumerate(lines) if n not in inside]


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of ``page`` in order."""
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    for start, end, info in fences(lines):
        lang = (info.split() or [""])[0].lower()
        body = lines[start + 1 : end]
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        mark = MARKER.match(lines[before].strip()) if before >= 0 else None
        marker, needs, why = None, (), ""
        if mark:
            marker = "not runnable" if mark["why"] else "runnable"
            needs = tuple(n for n in (mark["needs"] or "").split(",") if n)
            why = mark["why"] or ""
        text = "\n".join(body) + "\n"
        found.append(Block(page, start + 1, lang, text, marker, needs, why))
    return found


def unmarked(page: Path) -> list[Block]:
    """The ```bash and ```python blocks of ``page`` that neither run nor say why not, and the
    runnable markers on blocks of another language."""
    bad = []
    for b in blocks(page):
        if (b.kind and b.marker is None) or (b.marker == "runnable" and not b.kind):
            bad.append(b)
    return bad


# -- the page's folder and its script ---------------------------------------------------------
def script(page_blocks: list[Block], state: Path) -> tuple[str, list[Block]]:
    """One bash script of the page's runnable blocks, each announced on stderr by its place
    (``>>> docs/cli.md:42``); the blocks left out for a missing program are returned too."""
    parts = ["set -eo pipefail"]
    left_out = []
    for n, b in enumerate(x for x in page_blocks if x.marker == "runnable"):
        missing = [p for p in b.needs if shutil.which(p) is None]
        if missing:
            left_out.append(b)
            parts.append(f"echo '>>> {b.where}: left out, {', '.join(missing)} missing' >&2")
            continue
        parts.append(f'echo ">>> {b.where} at ${{EPOCHREALTIME:-}}" >&2')
        if b.kind == "shell":
            parts.append(b.text)
        else:
            path = state / "blocks" / f"{n:02d}-line{b.line}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(b.text, encoding="utf-8")
            parts.append(f"doctest-python {path}")
    return "\n".join(parts) + "\n", left_out


@dataclass
class Result:
    page: Path
    returncode: int
    stdout: str
    stderr: str
    left_out: list[Block]
    blocks: int
    ended: float = 0.0

    @property
    def last_block(self) -> str:
        marks = [ln for ln in self.stderr.splitlines() if ln.startswith(">>> ")]
        return marks[-1][4:].split(" at ")[0] if marks else "(before the first block)"

    def times(self) -> list[tuple[str, float]]:
        """Each block's place and its seconds, from the announcements' clock."""
        marks = [
            ln[4:].rsplit(" at ", 1) for ln in self.stderr.splitlines() if ln.startswith(">>> ")
        ]
        stamps = [(w, float(t)) for w, t in (m for m in marks if len(m) == 2) if t]
        ends = [*stamps[1:], ("", self.ended)] if stamps else []
        return [(w, t1 - t0) for (w, t0), (_, t1) in zip(stamps, ends, strict=True)]


def run_page(
    page: Path,
    folder: Path,
    *,
    server: Server | None = None,
    plain: bool = False,
    timeout: float = 600,
) -> Result:
    """Run the runnable blocks of ``page`` in ``folder`` (its working directory): through
    ``server``, through a server of its own when none is given, or with ``plain`` commands."""
    folder.mkdir(parents=True, exist_ok=True)
    state = folder / ".doctest"
    bin_dir = state / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    env = environment(folder, bin_dir)
    page_blocks = blocks(page)
    text, left_out = script(page_blocks, state)
    (state / "page.sh").write_text(text, encoding="utf-8")
    runnable = sum(b.marker == "runnable" for b in page_blocks)
    own = None
    try:
        if plain:
            _plain_bin(bin_dir)
        else:
            if server is None:
                server = own = Server.start(state / "server")
            _client_bin(bin_dir, server.address)
        try:
            done = subprocess.run(
                [*network_off(), "bash", "-e", str(state / "page.sh")],
                cwd=folder,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                start_new_session=True,
            )
            code, out, err = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as late:  # bash is killed; its commands die with it
            text_of = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else b or ""  # noqa: E731
            code, out = -9, text_of(late.stdout)
            err = text_of(late.stderr) + f"\n(the page ran past {timeout:.0f} s and was stopped)"
        return Result(page, code, out, err, left_out, runnable, time.time())
    finally:
        if own is not None:
            own.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", type=Path, help="default: README.md and docs/*.md")
    parser.add_argument("--plain", action="store_true", help="python -m actextract per command")
    parser.add_argument("--keep", action="store_true", help="keep the pages' folders")
    parser.add_argument("--times", action="store_true", help="print each block's seconds")
    parser.add_argument("--output", action="store_true", help="print the commands' output")
    parser.add_argument("--serve", metavar="SOCKET", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    plain = args.plain or os.environ.get("ACTEXTRACT_DOCS_PLAIN") == "1"
    failed = 0
    base = Path(tempfile.mkdtemp(prefix="actextract-docs-"))
    server = None if plain else Server.start(base / "server")
    for page in args.pages or pages():
        folder = Path(tempfile.mkdtemp(prefix=f"{page.stem}-", dir=base))
        result = run_page(page.resolve(), folder, server=server, plain=plain)
        state = "ok" if result.returncode == 0 else f"FAILED at {result.last_block}"
        print(f"{page}: {result.blocks} runnable blocks, {state}  ({folder})")
        if args.times:
            for where, seconds in result.times():
                print(f"  {seconds:6.1f} s  {where}")
        if result.returncode != 0:
            failed += 1
        if result.returncode != 0 or args.output:
            print(result.stdout[-20000:], result.stderr[-20000:], sep="\n")
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if server is not None:
        server.stop()
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
