"""The report in a real browser: headless Chromium (Debian's package, driven by Playwright)
loads index.html from disk; every image must load, nothing may go to the network, and the
page must log no error. `.ci/run` installs Chromium; elsewhere the test skips saying why."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from _fixtures import SeededImages, tiny_cnn

import actextract

SCRIPT = Path(__file__).parents[1] / "scripts" / "report_browser.py"


def _browser():
    spec = importlib.util.spec_from_file_location("report_browser", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if module.chromium_path() is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run does)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make test)")
    return module


@pytest.mark.browser
def test_report_opens_in_chromium_with_every_image_and_no_errors(tmp_path):
    browser = _browser()
    store = actextract.extract(
        tiny_cnn(),
        SeededImages(),
        layers=["conv1", "fc"],
        out=tmp_path / "run.zarr",
        batch_size=4,
        device="cpu",
    )
    report = actextract.render(store, tmp_path / "report with space")
    result = browser.check_page(report.index, screenshot=tmp_path / "shot.png")
    assert result["images"] == len(report.pictures) > 0
    assert result["broken"] == []
    assert result["console_errors"] == []
    assert result["failed_requests"] == []
    assert result["outside_requests"] == []
    assert (tmp_path / "shot.png").stat().st_size > 0
