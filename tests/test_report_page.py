"""The HTML page as a new user reads it (issue [polish]): an xdist run, then a real browser."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from services import require

from pytest_llm_budget.reporting.html_report import render_html

INI = """
[pytest]
llm_tpm = 3000
llm_window = 1
"""

SUITE = """
import pytest

@pytest.mark.parametrize("case", ["a-very-long-parameter-value-{}".format(i) for i in range(4)])
def test_a_rather_long_test_function_name_for_wrapping(openai_client, llm_emulator, case):
    openai_client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=1200, messages=[{"role": "user", "content": case}]
    )
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two xdist workers, paced against the emulator, with JSON and HTML reports."""
    folder = tmp_path_factory.mktemp("page")
    (folder / "pytest.ini").write_text(INI)
    (folder / "test_wrap.py").write_text(SUITE)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", "-n", "2",
         "--llm-report", "run.json", "--llm-report", "run.html"],
        cwd=folder, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


def _run_figures(page: str) -> dict[str, str]:
    return dict(re.findall(r'data-run="([^"]+)">([^<]*)<', page))


def test_run_figures_say_waits_are_summed_and_do_not_repeat_totals(run: Path) -> None:
    document = json.loads((run / "run.json").read_text())
    page = (run / "run.html").read_text()
    figures = _run_figures(page)
    assert document["run"]["workers"] == 2 and document["totals"]["waited_s"] > 0
    assert figures["waited"] == f"{document['totals']['waited_s']:.1f}s summed over 2 workers"
    assert not {"tokens", "calls", "429s"} & set(figures)  # those are in Totals
    assert 'data-key="waited_s"' not in page  # and waits only in the Run figures


def test_the_chart_marks_where_the_first_test_began(run: Path) -> None:
    document = json.loads((run / "run.json").read_text())
    run_figures = document["run"]
    began = run_figures["first_test"] - run_figures["started"]
    assert 0 < began < run_figures["wall_s"]
    page = (run / "run.html").read_text()
    assert page.count('class="first-test"') == 1
    assert f"first test at {began:.1f}s" in page
    assert _run_figures(page)["first test began"] == f"{began:.1f}s in"


def test_tests_table_hides_declared_columns_and_shows_waits_plainly(run: Path) -> None:
    page = (run / "run.html").read_text()
    head = re.search(r'<table class="tests"><thead><tr>(.*?)</tr>', page).group(1)  # type: ignore[union-attr]
    assert "declared" not in head and "spent" not in head
    waits = re.findall(r'<table class="tests">.*?</table>', page, re.S)[0]
    assert "(0.0s)" not in waits and re.search(r"\d+\.\ds \(1 call\)", waits)


def test_waits_that_round_to_nothing_say_so() -> None:
    document = {
        "calls": [{"test": "t.py::a", "waited_s": 0.01}, {"test": "t.py::b", "waited_s": 0}],
        "tests": [{"test": "t.py::a"}, {"test": "t.py::b"}],
    }
    page = render_html(document)
    assert "<0.1s (1 call)" in page.replace("&lt;", "<") and "(0.0s)" not in page


# Where each test id's lines break, in the rendered table: the characters around each break.
PROBE = """
<script>
addEventListener("load", () => {
  const breaks = [];
  for (const cell of document.querySelectorAll("table.tests td.test")) {
    const text = cell.textContent;
    const range = document.createRange();
    let top = null, node = null, offset = 0;
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    let index = 0;
    while ((node = walker.nextNode())) {
      for (offset = 0; offset < node.length; offset++, index++) {
        range.setStart(node, offset); range.setEnd(node, offset + 1);
        const rect = range.getBoundingClientRect();
        if (top !== null && rect.top > top + 2) breaks.push(text.slice(index - 2, index + 1));
        top = rect.top;
      }
    }
  }
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(breaks);
  document.body.append(out);
});
</script>
"""


def test_chromium_wraps_test_ids_only_at_boundaries(run: Path, tmp_path: Path) -> None:
    chromium = require("chromium", "apt-get install chromium")
    page = tmp_path / "probe.html"
    page.write_text((run / "run.html").read_text().replace("</body>", PROBE + "</body>"))
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=700,900",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-2000:]
    breaks = json.loads(found.group(1).replace("&quot;", '"'))
    assert breaks, "a 700px window should wrap these ids"
    # each break falls after `::`, `/` or `-`, or before `[`: never inside a word
    assert all(b[1] in ":/-" or b[2] == "[" for b in breaks), breaks
