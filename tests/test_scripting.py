"""The budget outside pytest: the README's script, keyword settings, the emulator's knobs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_llm_budget import open_budget, summary_text, write_reports

ROOT = Path(__file__).resolve().parent.parent


def test_the_documented_script_paces_summarises_and_reports(emu: Any, tmp_path: Path) -> None:
    emu.configure(window=2.0, tpm=3000)  # the limits the script declares
    env = {**os.environ, "OPENAI_BASE_URL": emu.openai_base_url, "OPENAI_API_KEY": "sk-x"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "scripting_example.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "llm-budget: waiting" in run.stderr and "for openai:* (" in run.stderr
    assert "LLM budget" in run.stdout and "totals: calls: 4 " in run.stdout
    assert "openai:*" in run.stdout and "429s: 0" in run.stdout
    page = (tmp_path / "script-run.html").read_text()
    assert page.count('<circle class="call"') == 4


def test_keyword_settings_are_validated_like_options() -> None:
    with pytest.raises(TypeError, match=r"unknown setting.*tmp"):
        open_budget(tmp=5)
    with pytest.raises(ValueError, match="--llm-tpm='lots'"):
        open_budget(tpm="lots", env={})
    budget = open_budget(tpm=1000, limits=["gemini:* tpm=500"], env={}, notices=None)
    try:
        assert budget.settings.tpm == 1000 and str(budget.settings.limits[0]) == "gemini:* tpm=500"
        with budget.reserve(100, vendor="gemini"):
            pass
        assert "gemini:*" in summary_text(budget)
        assert write_reports(budget) == []
    finally:
        budget.close()


def test_emulator_limits_follow_the_plugin_a_fixture_and_a_marker(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\nllm_tpm = 4000\nllm_window = 5\nllm_limits = gemini:* tpm=9000\n")
    pytester.makepyfile(
        test_emu="""
        import pytest

        def test_default(llm_emulator):
            cfg = llm_emulator.configure()
            assert (cfg.openai.tpm, cfg.window, cfg.per_model) == (4000, 5.0, False)
            assert cfg.openai.rpm is None
            assert [r.limits.tpm for r in cfg.model_limits] == [9000]

        @pytest.mark.llm_emulator(tpm=123, window=2)
        def test_marker(llm_emulator):
            cfg = llm_emulator.configure()
            assert (cfg.openai.tpm, cfg.gemini.tpm, cfg.window) == (123, 123, 2)

        def test_marker_undone(llm_emulator):
            assert llm_emulator.configure().openai.tpm == 4000
        """
    )
    pytester.runpytest_inprocess("-p", "no:randomly").assert_outcomes(passed=3)
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def llm_emulator_config():
            return {"tpm": 777, "window": 3}
        """
    )
    pytester.makepyfile(
        test_emu="""
        def test_override(llm_emulator):
            cfg = llm_emulator.configure()
            assert (cfg.openai.tpm, cfg.window) == (777, 3)
        """
    )
    pytester.runpytest_inprocess().assert_outcomes(passed=1)


def test_emulator_cli_help_shows_defaults_and_a_busy_port_is_one_line() -> None:
    helped = subprocess.run(
        [sys.executable, "-m", "pytest_llm_budget.emulator", "--help"],
        capture_output=True, text=True, timeout=60,
    )
    assert "(default: 30000)" in helped.stdout and "(default: 8787)" in helped.stdout
    assert "--per-model" in helped.stdout
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "pytest_llm_budget.emulator", "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )
    assert run.returncode == 2
    assert run.stderr == (
        f"llm-budget-emulator: 127.0.0.1:{port} is in use (--port 0 picks a free one)\n"
    )
