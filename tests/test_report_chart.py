"""The HTML report's chart: its points are the JSON report's calls; Chromium renders it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from services import require

INI = """
[pytest]
llm_tpm = 3000
llm_window = 1
"""

SUITE = """
import pytest

@pytest.mark.llm_budget(tokens=1000)
@pytest.mark.parametrize("n", range(6))
def test_call(openai_client, llm_emulator, n):
    openai_client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=1000, messages=[{"role": "user", "content": f"hi {n}"}]
    )
"""


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real paced run against the emulator, with JSON and HTML reports."""
    folder = tmp_path_factory.mktemp("chart")
    (folder / "pytest.ini").write_text(INI)
    (folder / "test_paced.py").write_text(SUITE)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--llm-report", "run.json",
         "--llm-report", "run.html"],
        cwd=folder, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return folder


def test_chart_points_equal_the_json_calls(reports: Path) -> None:
    document = json.loads((reports / "run.json").read_text())
    page = (reports / "run.html").read_text()
    svgs = re.findall(r'<svg class="chart" data-bucket="([^"]+)".*?</svg>', page, re.S)
    assert svgs == ["openai:*"]
    points = re.findall(
        r'<circle class="call"[^>]* data-t="([^"]+)" data-tokens="(\d+)" data-test="([^"]+)"', page
    )
    live = [c for c in document["calls"] if not c["replayed"]]
    assert len(points) == len(live) == 6
    expected = sorted(
        (c["t"], c["charged"], c["test"]) for c in live
    )
    assert sorted((float(t), int(tok), test) for t, tok, test in points) == expected
    assert page.count('class="budget"') == 1 and "budget 2550 tokens" in page
    assert page.count('class="wait"') == sum(1 for c in live if c["waited_s"] > 0)
    # per-test table sorted by spend, slowest waits, wall time beside the preflight projection
    assert "<h2>Tests by spend</h2>" in page and "<h2>Slowest waits</h2>" in page
    assert page.count('<table class="tests">') == 1 and "<h2>Tests</h2>" not in page
    rows = re.findall(
        r'<tr><td class="test">([^<]+)</td><td class="n">(\d+)</td>', page.replace("<wbr>", "")
    )
    assert sorted(test for test, _ in rows) == sorted({c["test"] for c in live})
    assert [int(t) for _, t in rows] == sorted((int(t) for _, t in rows), reverse=True)
    assert re.search(r'data-run="wall time">\d+\.\ds<', page)
    assert 'data-run="preflight projection">at least 2s, ~6000 tokens<' in page
    assert "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )


def test_chromium_renders_the_report(reports: Path, tmp_path: Path) -> None:
    chromium = require("chromium", "apt-get install chromium")
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,900",
         f"--screenshot={shot}", (reports / "run.html").as_uri()],
        capture_output=True, timeout=120, check=False,
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1100, 900)
    assert len(data) > 20_000  # a blank page compresses to a few kB; the chart does not
