"""Re-record the example suite's cassettes against the bundled emulator (no key, no network).

    python example_suite/record.py            # all 36 cases, --llm-record-mode all
    python example_suite/record.py -k gemini  # extra pytest arguments pass through

Starts the emulator on a free port with generous limits, points OPENAI_BASE_URL /
GOOGLE_GEMINI_BASE_URL / ANTHROPIC_BASE_URL at it and runs the suite with
`--llm-record-mode all`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pytest_llm_budget.emulator import AnthropicLimitSpec, Emulator, EmulatorConfig, LimitSpec

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    """Start the emulator, record, stop; returns pytest's exit code."""
    config = EmulatorConfig(
        openai=LimitSpec(tpm=10_000_000, rpm=None),
        gemini=LimitSpec(tpm=10_000_000, rpm=None),
        anthropic=AnthropicLimitSpec(rpm=None, itpm=10_000_000, otpm=10_000_000),
    )
    with Emulator(config) as emulator:
        env = dict(
            os.environ,
            OPENAI_BASE_URL=emulator.openai_base_url,
            GOOGLE_GEMINI_BASE_URL=emulator.gemini_base_url,
            ANTHROPIC_BASE_URL=emulator.anthropic_base_url,
            OPENAI_API_KEY="sk-emulator-recording",
            GEMINI_API_KEY="emulator-recording",
            ANTHROPIC_API_KEY="sk-ant-emulator-recording",
        )
        command = [sys.executable, "-m", "pytest", str(HERE), "-p", "no:cacheprovider"]
        command += ["--llm-record-mode", "all", "--llm-tpm", "10000000", *argv]
        return subprocess.call(command, env=env, cwd=HERE.parent)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
