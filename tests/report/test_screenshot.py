"""benchmarks/screenshot_report.py: the page's images decode, and Chromium (when installed) renders them all."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from align.report import build_report

from fake_runs import make_run

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "screenshot_report.py"


@pytest.fixture(scope="module")
def screenshot_report():
    spec = importlib.util.spec_from_file_location("screenshot_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def page(tmp_path) -> Path:
    run = make_run(tmp_path)
    return Path(build_report(run / "eval", run / "report")["report_html"])


def test_static_check_accepts_the_report_and_catches_broken_pages(screenshot_report, page):
    html = page.read_text()
    assert screenshot_report.static_problems(html) == []
    broken = html.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
    linked = html.replace('<img alt="win rates" src="', '<img alt="win rates" src="win_rates.png" data-x="', 1)
    assert "does not decode" in screenshot_report.static_problems(broken)[0]
    assert "not an inline PNG" in screenshot_report.static_problems(linked)[0]
    assert screenshot_report.static_problems('<script src="https://cdn.example.com/x.js"></script>')


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="/usr/bin/chromium is not installed")
def test_chromium_renders_every_image(screenshot_report, page, tmp_path):
    summary = screenshot_report.check(page, tmp_path / "shot.png", height=1200, timeout=90)
    assert summary["ok"], summary
    assert summary["dom_loaded"] == summary["images"] == 3
    assert summary["screenshot_size"] == (1280, 1200)
