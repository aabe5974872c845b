"""The docs: every runnable block of README.md and docs/*.md runs, every relative link leads
to a file (and heading) that exists, and the generated parts (measured tables, the CLI's
option lists) are what their sources give.

A block runs when the line before its fence is ``<!-- runnable -->``; every other ```bash or
```python block says why not (``<!-- not runnable: REASON -->``). The runner is
scripts/run_docs.py (docs/development.md describes it): each page in a fresh ``tmp_path``, its
blocks in order in one ``bash -e`` script, HOME and the caches inside that folder, no network.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from actextract.extraction.transfer import usable_cores

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import does: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


run_docs = _load("run_docs")
PAGES = run_docs.pages(ROOT)
# Links to pages that another change writes; while missing they warn instead of failing.
PENDING = {"docs/architecture.md": "the module map, written with the package's reorganisation"}


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict[Path, run_docs.Result]:
    """Every page run in a fresh folder of its own, as many pages at once as there are cores
    (up to 4), through one server that imported actextract and forks a child per command
    (ACTEXTRACT_DOCS_PLAIN=1: each command a process of its own instead)."""
    plain = os.environ.get("ACTEXTRACT_DOCS_PLAIN") == "1"
    workers = max(1, min(4, usable_cores()))
    longest_first = sorted(PAGES, key=lambda p: -p.stat().st_size)
    folders = {page: tmp_path_factory.mktemp(page.stem) for page in longest_first}
    server = None if plain else run_docs.Server.start(tmp_path_factory.mktemp("docs-server"))
    try:
        with ThreadPoolExecutor(workers) as pool:
            futures = {
                page: pool.submit(
                    run_docs.run_page, page, folder, server=server, plain=plain, timeout=600
                )
                for page, folder in folders.items()
            }
            return {page: future.result() for page, future in futures.items()}
    finally:
        if server is not None:
            server.stop()


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_the_commands_of_a_page_run(page, ran):
    result = ran[page]
    for block in result.left_out:
        warnings.warn(f"{block.where}: not run, {', '.join(block.needs)} missing", stacklevel=1)
    assert result.returncode == 0, (
        f"{_name(page)}: a command failed (exit code {result.returncode}) in the block at "
        f"{result.last_block}\n--- stdout (end) ---\n{result.stdout[-6000:]}"
        f"\n--- stderr (end) ---\n{result.stderr[-6000:]}"
    )


def test_every_command_block_runs_or_says_why_not():
    bad = [b for page in PAGES for b in run_docs.unmarked(page)]
    assert not bad, "blocks that neither run nor say why not:\n" + "\n".join(
        f"  {b.where} (```{b.lang}): put '<!-- runnable -->' or "
        "'<!-- not runnable: REASON -->' on the line before it"
        + (" (a runnable block must be bash or python)" if b.marker else "")
        for b in bad
    )


def test_the_pages_have_commands_that_run():
    """The marker is spelled right somewhere: a typo would make every block 'unmarked', and
    the test above would say so, but a page of only 'not runnable' blocks would pass."""
    runnable = {_name(p): sum(b.marker == "runnable" for b in run_docs.blocks(p)) for p in PAGES}
    assert runnable["README.md"] >= 3
    assert sum(runnable.values()) >= 60, runnable


# -- links ------------------------------------------------------------------------------------
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, punctuation dropped, spaces as -."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of the page's headings (a repeated one gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    for _, line in run_docs.prose(page):
        m = HEADING.match(line)
        if m:
            base = slug(m[2])
            seen[base] = seen.get(base, -1) + 1
            if seen[base]:
                seen[f"{base}-{seen[base]}"] = 0
    return set(seen)


def links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every link and image outside code."""
    found = []
    for n, line in run_docs.prose(page):
        for m in LINK.finditer(re.sub(r"(`+).*?\1", "", line)):
            found.append((n, m[1]))
    return found


def test_every_relative_link_leads_somewhere():
    broken = []
    for page in PAGES:
        for n, target in links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{_name(page)}:{n}: '{target}'"
            rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
            if not dest.exists() and rel in PENDING:
                warnings.warn(f"{where}: {rel} is not there yet ({PENDING[rel]})", stacklevel=1)
            elif not dest.exists():
                broken.append(f"{where}: no file {rel}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where}: no heading with the anchor '#{anchor}' in {rel}")
    assert not broken, "broken links:\n  " + "\n  ".join(broken)


def test_the_link_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n## The `store`: what is in it?\n\n[ok](#the-store-what-is-in-it) "
        "[bad](#nowhere) ![pic](pic.png)\n\n```bash\n# not a heading [x](nowhere.md)\n```\n"
    )
    assert links(page) == [(5, "#the-store-what-is-in-it"), (5, "#nowhere"), (5, "pic.png")]
    assert anchors(page) == {"a-page", "the-store-what-is-in-it"}


# -- generated parts ----------------------------------------------------------------------------
def test_the_measured_tables_are_made_from_the_results(capsys):
    perf = _load("perf_tables")
    code = perf.main(["--check"])
    assert code == 0, capsys.readouterr().err
    regions = [n for p in PAGES for n in perf.regions(p.read_text(encoding="utf-8"))]
    assert {"bench-cpu", "stats-cpu", "cluster-cpu"} <= set(regions)


def test_a_stale_table_is_named(tmp_path, capsys):
    perf = _load("perf_tables")
    page = tmp_path / "page.md"
    page.write_text("<!-- perf:begin stats-cpu -->\n| old |\n<!-- perf:end stats-cpu -->\n")
    assert perf.main(["--check", str(page)]) == 1
    assert "region 'stats-cpu' differs" in capsys.readouterr().err
    assert perf.main([str(page)]) == 0 and perf.main(["--check", str(page)]) == 0
    assert "| storing only the output layer |" in page.read_text()
    page.write_text("<!-- perf:begin stats-nowhere -->\n<!-- perf:end stats-nowhere -->\n")
    assert perf.main(["--check", str(page)]) == 1
    assert "stats-nowhere.json is not there" in capsys.readouterr().err


def test_the_cli_option_lists_are_the_commands_help(capsys):
    cli = _load("cli_reference")
    assert cli.main(["--check"]) == 0, capsys.readouterr().err
