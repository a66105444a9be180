"""A mocked suite with and without the plugin: mocked LLM calls must cost nothing.

21 tests, 3 chat calls each with max_tokens=6000, all answered by respx (openai 1.x/2.x on httpx)
or pytest-httpx2 (respx on httpcore2, openai 3.x), run with the plugin's default budget
(30000 TPM less 15% headroom). Paced, the 63 calls (about 380k tokens estimated) would take
about 15 minutes; the target is the same wall time as without the plugin, within noise.

Run: python benchmarks/bench_mocked.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

LEGACY = int(openai.__version__.split(".")[0]) < 3
SUITE = '''
import httpx
import openai
import pytest

URL = "https://api.openai.com/v1/chat/completions"
BODY = {"id": "c", "object": "chat.completion", "created": 0, "model": "gpt-5",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "mocked"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


@pytest.fixture
def mocked(MOCK_FIXTURE):
    MOCK_SETUP
    return openai.OpenAI(api_key="sk-test", max_retries=0)


@pytest.mark.parametrize("i", range(21))
def test_answers(mocked, i):
    for _ in range(3):
        reply = mocked.chat.completions.create(
            model="gpt-5", max_tokens=6000,
            messages=[{"role": "user", "content": f"question {i}: " + "words " * 200}])
        assert reply.choices[0].message.content == "mocked"
'''
RESPX = ("respx_mock", "respx_mock.post(URL).mock(return_value=httpx.Response(200, json=BODY))")
HTTPX2 = ("httpx2_mock", "httpx2_mock.post(URL).mock(return_value=httpx.Response(200, json=BODY))")


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(done.stdout.decode()[-3000:])
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    fixture, setup = RESPX if LEGACY else HTTPX2
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_BUDGET_", "OPENAI_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        suite = SUITE.replace("MOCK_FIXTURE", fixture).replace("MOCK_SETUP", setup)
        (folder / "test_mocked.py").write_text(suite)
        (folder / "pytest.ini").write_text("[pytest]\n")
        timed(base, folder, env)  # warm caches
        with_plugin, without = [], []
        for _ in range(args.runs):  # interleaved, so drift hits both alike
            with_plugin.append(timed(base, folder, env))
            without.append(timed([*base, "-p", "no:llm_budget"], folder, env))
    w, wo = statistics.median(with_plugin), statistics.median(without)
    print(f"openai {openai.__version__}, mocked with {fixture}, 21 tests x 3 calls")
    print(f"with plugin {w:.2f} s, without {wo:.2f} s (medians of {args.runs}); ratio {w / wo:.3f}")


if __name__ == "__main__":
    main()
