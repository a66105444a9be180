"""The chart draws what the window held (settled charges), checked in a real browser.

Gemini's quota counts input tokens only, and the plugin refunds an over-estimate when the answer
is in. A chart of estimates plus output tokens drew Gemini above its budget line while the
emulator's busiest window stayed under it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from services import require

CONFTEST = """
import json

import pytest

@pytest.fixture(scope="session", autouse=True)
def long_replies(llm_emulator):
    # long answers: output tokens Gemini's quota does not count
    llm_emulator.configure(reply_min_tokens=400, reply_max_tokens=400)
    yield
    with open("emulator.json", "w") as f:
        json.dump(llm_emulator.stats(), f)
"""

SUITE = """
import pytest

PROMPT = "tell me about the weather in a long sentence " * 36

@pytest.mark.parametrize("n", range(10))
def test_ask(gemini_client, n):
    gemini_client.models.generate_content(model="gemini-2.5-flash", contents=f"{n} {PROMPT}")
"""

# Probes the rendered chart: each call's dot against the budget line, in screen pixels.
PROBE = """
<script>
addEventListener("load", () => {
  const line = document.querySelector("svg.chart line.budget").getBoundingClientRect();
  const dots = [...document.querySelectorAll("svg.chart circle.call")].map((c) => {
    const r = c.getBoundingClientRect();
    return {tokens: +c.dataset.tokens, above: r.top + r.height / 2 < line.top - 0.5};
  });
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(dots);
  document.body.append(out);
});
</script>
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("settled")
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "test_gemini.py").write_text(SUITE)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly",
         "--llm-tpm", "3000", "--llm-window", "2",
         "--llm-report", "run.json", "--llm-report", "run.html"],
        cwd=folder, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


def test_records_carry_the_settled_charge(run: Path) -> None:
    calls = json.loads((run / "run.json").read_text())["calls"]
    assert len(calls) == 10
    for call in calls:
        # Gemini keeps the input tokens: the estimate's surplus was refunded, output is free
        assert call["charged"] == call["prompt_tokens"] < call["estimated"]
        assert call["completion_tokens"] == 400


def test_chromium_draws_every_point_within_the_budget_line(run: Path, tmp_path: Path) -> None:
    chromium = require("chromium", "apt-get install chromium")
    document = json.loads((run / "run.json").read_text())
    (bucket,) = document["buckets"]
    emulator = json.loads((run / "emulator.json").read_text())
    peak = max(b["max_window_tokens"] for b in emulator["buckets"].values())
    assert peak <= bucket["budget"]  # the emulator's busiest window stayed within the budget
    page = tmp_path / "probe.html"
    page.write_text((run / "run.html").read_text().replace("</body>", PROBE + "</body>"))
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,900",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-2000:]
    dots = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(dots) == 10
    assert [d for d in dots if d["above"]] == []
    assert {d["tokens"] for d in dots} == {c["charged"] for c in document["calls"]}
