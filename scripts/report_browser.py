"""Open a report's index.html in headless Chromium: check that every image loaded and the
page logged no error, and optionally save a screenshot.

    python scripts/report_browser.py demo/report/index.html --screenshot docs/report.png

Uses the system's Chromium (Debian's ``chromium`` package) through Playwright; nothing is
downloaded. The test suite imports :func:`check_page` from here.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

# Chromium without its background connections: this machine's network is closed, and a
# report page needs none.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def check_page(
    index: Path, screenshot: Path | None = None, *, at: str | None = None, width: int = 1280
) -> dict:
    """Load ``index`` from disk; return the images that failed to load, console errors,
    failed requests, and any request that left the report folder (there must be none).
    ``screenshot``: save the window there, scrolled to the element with id ``at``."""
    from playwright.sync_api import sync_playwright

    index = Path(index).resolve()
    folder = index.parent.as_uri()
    errors: list[str] = []
    failed: list[str] = []
    outside: list[str] = []
    with sync_playwright() as p:  # Playwright gives Chromium a new empty profile
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on(
                "request",
                lambda r: (
                    outside.append(r.url)
                    if not (r.url.startswith(folder) or r.url.startswith("data:"))
                    else None
                ),
            )
            page.goto(index.as_uri(), wait_until="load")
            images = page.evaluate(
                """() => Array.from(document.images).map(i => ({
                    src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0}))"""
            )
            if screenshot is not None:
                if at:
                    page.locator(f"[id='{at}']").scroll_into_view_if_needed()
                    page.evaluate(f"document.getElementById('{at}').scrollIntoView()")
                page.screenshot(path=str(screenshot), full_page=False)
        finally:
            browser.close()
    return {
        "images": len(images),
        "broken": [i["src"] for i in images if not i["ok"]],
        "console_errors": errors,
        "failed_requests": failed,
        "outside_requests": outside,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--at", help="id of the element to scroll to before the screenshot")
    args = parser.parse_args()
    if chromium_path() is None:
        print("no chromium on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    result = check_page(args.index, args.screenshot, at=args.at)
    print(result)
    bad = any(
        result[k] for k in ("broken", "console_errors", "failed_requests", "outside_requests")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
