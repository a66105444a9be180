"""Issue 20's "done when": a 14-test Anthropic suite against an emulator at 1500 input and 800
output tokens per 6 s, run by real pytest processes (-n 0, -n 2, two processes on one Redis).

The suite (sync, async and streamed calls; English, German, Japanese and code prompts;
max_tokens 300-1500) must pass with 0 429s given the rule `anthropic:* itpm=1500 otpm=800
rpm=50`; the emulator's stats prove that no dimension was overdrawn (no request refused in any
dimension, no bucket level below 0) and that the plugin settled each dimension as Anthropic
counts it (its input and output figures equal the emulator's charges). Each dimension limits on
its own too: an input-bound suite and an output-bound suite take at least as long as their
dimension's refill demands, with 0 429s.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer, redis_server  # noqa: F401 - fixture

from pytest_llm_budget.emulator import AnthropicLimitSpec, Emulator, EmulatorConfig

pytest.importorskip("anthropic")

WINDOW = 6.0
ITPM, OTPM, RPM = 1500, 800, 50
RULE = f"anthropic:* itpm={ITPM} otpm={OTPM} rpm={RPM}"
BUCKET = "anthropic:*"
#: Replies of 40-100 tokens (max_tokens never cuts them): 14 of them are ~1.2x OTPM.
REPLY_TOKENS = (40, 100)

SUITE = '''
import asyncio

import pytest

MODEL = "claude-sonnet-4-5"
PROMPTS = {
    "en": (
        "You are reviewing a pull request for a payments service. Summarise the risks of "
        "retrying a card charge after a network timeout, name the idempotency key it needs, "
        "and say in two sentences how a reviewer would test that a retry never charges twice. "
    ),
    "de": (
        "Du bist Gutachter eines Zahlungsdienstes. Fasse die Risiken zusammen, eine "
        "Kartenbelastung nach einer Zeitüberschreitung im Netzwerk zu wiederholen, nenne den "
        "Idempotenzschlüssel, den sie braucht, und erkläre in zwei Sätzen, wie man prüft, dass "
        "eine Wiederholung nie doppelt belastet. "
    ),
    "ja": (
        "あなたは決済サービスのプルリクエストをレビューしています。ネットワークのタイムアウト後に"
        "カード決済を再試行する危険性をまとめ、必要な冪等キーを挙げ、再試行で二重請求が起きない"
        "ことをどう確かめるかを二文で説明してください。"
    ),
    "code": (
        "def charge(card, amount, key):\\n"
        "    for attempt in range(3):\\n"
        "        try:\\n"
        "            return gateway.charge(card, amount, idempotency_key=key)\\n"
        "        except Timeout:\\n"
        "            continue\\n"
        "    raise ChargeFailed(card)\\n"
        "# Review this function: is the retry safe? Answer briefly.\\n"
    ),
}
LANGS = ("en", "de", "ja", "code")


def ask(i, lang):
    return [{"role": "user", "content": f"[case {i}] " + PROMPTS[lang] * 3}]


@pytest.mark.parametrize("i,max_tokens", [(i, 300 + 240 * i) for i in range(6)])
def test_sync(i, max_tokens, anthropic_client, llm_usage):
    reply = anthropic_client.messages.create(
        model=MODEL, max_tokens=max_tokens, messages=ask(i, LANGS[i % 4])
    )
    assert reply.content[0].text and reply.usage.output_tokens <= max_tokens
    assert llm_usage.calls == 1


@pytest.mark.parametrize("i,max_tokens", [(i, 400 + 350 * (i - 6)) for i in range(6, 10)])
def test_async(i, max_tokens, async_anthropic_client, llm_usage):
    async def main():
        reply = await async_anthropic_client.messages.create(
            model=MODEL, max_tokens=max_tokens, messages=ask(i, LANGS[i % 4])
        )
        await async_anthropic_client.close()
        return reply

    reply = asyncio.run(main())
    assert reply.content[0].text and llm_usage.calls == 1


@pytest.mark.parametrize("i,max_tokens", [(i, 1500 - 350 * (i - 10)) for i in range(10, 14)])
def test_stream(i, max_tokens, anthropic_client, llm_usage):
    with anthropic_client.messages.stream(
        model=MODEL, max_tokens=max_tokens, messages=ask(i, LANGS[i % 4])
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.usage.output_tokens > 0 and llm_usage.calls == 1
'''


def has_option(flag: str) -> bool:
    """Whether main's option table declares `flag` (`--llm-limit` arrives with [limits])."""
    from pytest_llm_budget.settings.options import DECLARED

    return any(option.cli == flag for option in DECLARED)


def emulator_config(itpm: int | None = ITPM, otpm: int | None = OTPM) -> EmulatorConfig:
    lo, hi = REPLY_TOKENS
    return EmulatorConfig(
        window=WINDOW,
        per_model=False,
        anthropic=AnthropicLimitSpec(rpm=RPM, itpm=itpm, otpm=otpm),
        reply_min_tokens=lo,
        reply_max_tokens=hi,
    )


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(emulator_config()) as running:
        yield running


def rule_args(rule: str | None) -> list[str]:
    """The plugin told `rule` (by `--llm-limit` when main has it, else ini `llm_limits`)."""
    if rule is None:
        return []
    if has_option("--llm-limit"):
        return [f"--llm-limit={rule}"]
    return ["-o", f"llm_limits={rule}"]


def run_suite(
    folder: Path, emu: Emulator, rule: str | None, *args: str, suite: str = SUITE
) -> tuple[subprocess.Popen[str], Path]:
    """Start one pytest process on the suite in `folder` (its JSON report: r.json)."""
    folder.mkdir(exist_ok=True)
    (folder / "test_claude.py").write_text(suite, encoding="utf-8")
    env = dict(os.environ)
    env.update(ANTHROPIC_BASE_URL=emu.anthropic_base_url, ANTHROPIC_API_KEY="sk-ant-test-key")
    env.pop("ANTHROPIC_AUTH_TOKEN", None)
    report = folder / "r.json"
    command = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
        f"--llm-window={WINDOW:g}", f"--llm-report={report}", *rule_args(rule), *args,
    ]
    proc = subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return proc, report


def finish(proc: subprocess.Popen[str], report: Path, passed: int = 14) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert f"{passed} passed" in out, out
    document: dict[str, Any] = json.loads(report.read_text())
    assert document["totals"]["calls"] == passed
    return document


def emulator_bucket(emu: Emulator) -> dict[str, Any]:
    stats: dict[str, Any] = emu.stats()["buckets"][BUCKET]
    return stats


def assert_no_dimension_overdrawn(stats: dict[str, Any], admitted: int) -> None:
    """The emulator refused nothing, in any dimension, and no bucket level went below 0."""
    assert stats["admitted"] == admitted and stats["rejected"] == {}, stats
    for dimension in ("requests", "input_tokens", "output_tokens"):
        level = stats[f"min_level_{dimension}"]
        assert level is None or level >= 0, (dimension, stats)


def plugin_bucket(document: dict[str, Any]) -> dict[str, Any]:
    [bucket] = [b for b in document["buckets"] if b["name"] == BUCKET]
    assert bucket["admission"] == "token_bucket"
    return bucket


def assert_settled_as_anthropic_counts(document: dict[str, Any], stats: dict[str, Any]) -> None:
    """Input settled to input + cache writes, output to the output produced: the emulator's."""
    dims = plugin_bucket(document)["dimensions"]
    assert dims["input_tokens"]["actual"] == stats["input_tokens_charged"], (dims, stats)
    assert dims["output_tokens"]["actual"] == stats["output_tokens_charged"], (dims, stats)
    assert dims["requests"]["actual"] == stats["admitted"]


def at_least(total: int, limit: int) -> float:
    """Seconds any client needs to spend `total` from a full bucket of `limit` per WINDOW."""
    return max(0.0, (total - limit) / (limit / WINDOW))


@pytest.mark.parametrize("workers", [0, 2])
def test_fourteen_claude_tests_with_the_rule_get_no_429(
    pytester: pytest.Pytester, emu: Emulator, workers: int
) -> None:
    if workers:
        pytest.importorskip("xdist")
    proc, report = run_suite(pytester.path / "suite", emu, RULE, "-n", str(workers))
    document = finish(proc, report)
    assert document["totals"]["rate_limit_events"] == 0
    stats = emulator_bucket(emu)
    assert_no_dimension_overdrawn(stats, admitted=14)
    assert_settled_as_anthropic_counts(document, stats)
    # both token dimensions were asked for more than one bucketful: the suite had to wait
    assert stats["input_tokens_charged"] > ITPM and stats["output_tokens_charged"] > OTPM
    assert document["totals"]["waited_s"] > 0


def test_fourteen_claude_tests_with_no_rule(pytester: pytest.Pytester, emu: Emulator) -> None:
    """Told nothing: with learned limits ([limits]: `--llm-tpm auto`) at most 2 429s; before
    they land on main, the fallback rule (`--llm-tpm`, 30000 per window) overruns the emulator,
    and every 429 is retried as the provider asks, so the suite still passes."""
    proc, report = run_suite(pytester.path / "suite", emu, None)
    document = finish(proc, report)
    rate_limited = document["totals"]["rate_limit_events"]
    stats = emulator_bucket(emu)
    assert sum(stats["rejected"].values()) == rate_limited  # each 429 seen and retried
    assert stats["admitted"] == 14
    if has_option("--llm-limit"):  # learned limits are on main
        assert rate_limited <= 2, document["totals"]


INPUT_BOUND = '''
import pytest

TEXT = "Explain how a token bucket refills, with an example about an API key. " * 20


@pytest.mark.parametrize("i", range(8))
def test_long_prompt(i, anthropic_client):
    reply = anthropic_client.messages.create(
        model="claude-sonnet-4-5", max_tokens=16,
        messages=[{"role": "user", "content": f"{i}: {TEXT}"}],
    )
    assert reply.usage.input_tokens > 100
'''

OUTPUT_BOUND = '''
import pytest


@pytest.mark.parametrize("i", range(8))
def test_long_reply(i, anthropic_client):
    reply = anthropic_client.messages.create(
        model="claude-sonnet-4-5", max_tokens=1000,
        messages=[{"role": "user", "content": f"Write a long story, number {i}."}],
    )
    assert reply.usage.output_tokens >= 150
'''


def test_input_tokens_limit_on_their_own(pytester: pytest.Pytester) -> None:
    """Long prompts, tiny replies, output unlimited: the input bucket paces the suite."""
    config = emulator_config(otpm=None)
    with Emulator(config) as emu:
        proc, report = run_suite(
            pytester.path / "inputs", emu, f"anthropic:* itpm={ITPM} rpm={RPM}",
            suite=INPUT_BOUND,
        )
        document = finish(proc, report, passed=8)
        stats = emulator_bucket(emu)
    assert document["totals"]["rate_limit_events"] == 0
    assert_no_dimension_overdrawn(stats, admitted=8)
    bucket = plugin_bucket(document)
    assert set(bucket["dimensions"]) == {"requests", "input_tokens"}
    assert bucket["dimensions"]["input_tokens"]["actual"] == stats["input_tokens_charged"]
    spread = last_admission(document) - first_admission(document)
    assert spread >= 0.9 * at_least(stats["input_tokens_charged"], ITPM), spread
    assert bucket["deferrals"] > 0


def test_output_tokens_limit_on_their_own(pytester: pytest.Pytester) -> None:
    """Short prompts, long replies, input plentiful: the output bucket paces the suite."""
    config = emulator_config(itpm=100_000).updated(
        {"reply_min_tokens": 150, "reply_max_tokens": 250}
    )
    with Emulator(config) as emu:
        proc, report = run_suite(
            pytester.path / "outputs", emu, f"anthropic:* itpm=100000 otpm={OTPM} rpm={RPM}",
            suite=OUTPUT_BOUND,
        )
        document = finish(proc, report, passed=8)
        stats = emulator_bucket(emu)
    assert document["totals"]["rate_limit_events"] == 0
    assert stats["admitted"] == 8 and stats["rejected"] == {}, stats
    bucket = plugin_bucket(document)
    assert bucket["dimensions"]["output_tokens"]["actual"] == stats["output_tokens_charged"]
    output = stats["output_tokens_charged"]
    spread = last_admission(document) - first_admission(document)
    # the last call may start once the bucket is not exhausted: all but its own output paid
    assert spread >= 0.9 * at_least(output - 250, OTPM), (spread, output)
    assert bucket["dimensions"]["input_tokens"]["peak"] < 100_000 // 10


def admissions(document: dict[str, Any]) -> list[float]:
    return sorted(float(c["t"]) + float(c["waited_s"]) for c in document["calls"])


def first_admission(document: dict[str, Any]) -> float:
    return admissions(document)[0]


def last_admission(document: dict[str, Any]) -> float:
    return admissions(document)[-1]


def test_two_processes_on_one_redis_get_no_429(
    pytester: pytest.Pytester,
    emu: Emulator,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    backend = f"--llm-backend={redis_server.url}"
    runs = [
        run_suite(pytester.path / name, emu, RULE, backend, "-n", "0") for name in ("a", "b")
    ]
    documents = [finish(proc, report) for proc, report in runs]
    for document in documents:
        assert document["totals"]["rate_limit_events"] == 0
    stats = emulator_bucket(emu)
    assert_no_dimension_overdrawn(stats, admitted=28)
    both = sum(plugin_bucket(d)["dimensions"]["output_tokens"]["actual"] for d in documents)
    assert both == stats["output_tokens_charged"]


def test_a_wait_notice_names_the_dimension_the_call_waits_for(clock: Any) -> None:
    """On the fake clock: a call behind an exhausted output bucket is announced as waiting for
    output tokens, with that bucket's figures (produced or in flight over its capacity)."""
    from pytest_llm_budget import BudgetSession, Settings
    from pytest_llm_budget.events import WaitEvent
    from pytest_llm_budget.limiting.buckets import LimitRule
    from pytest_llm_budget.reporting.notices import wait_line

    rule = LimitRule("anthropic", "*", itpm=10_000, otpm=1_000, rpm=100)
    session = BudgetSession(
        Settings(limits=(rule,), headroom=0.0, notice_after=0.5),
        clock=clock.now, sleep=clock.sleep,
    )
    events: list[WaitEvent] = []
    session.wait_observers.append(events.append)
    first = session.limiter.reserve(100, vendor="anthropic", output=500)
    first.settle(100, refund=True, output_tokens=1_500)  # 500 more output than the bucket holds
    session.limiter.reserve(100, vendor="anthropic", output=500).release()
    [started] = [e for e in events if not e.finished]
    assert (started.dimension, started.used_tokens, started.budget) == ("output_tokens", 1500, 1000)
    assert re.fullmatch(
        r"llm-budget: waiting 30\.\ds for anthropic:\* \(waiting for output tokens; 1500/1000 "
        r"output tokens produced or in flight\) - <session>",
        wait_line(started),
    ), wait_line(started)
    session.close()


def _claude_session(clock: Any) -> tuple[Any, list[Any]]:
    """A session with an Anthropic rule that admitted and settled two calls (fake clock)."""
    from pytest_llm_budget import BudgetSession, Settings
    from pytest_llm_budget.limiting.buckets import LimitRule
    from pytest_llm_budget.records import CallRecord

    rule = LimitRule("anthropic", "*", itpm=1500, otpm=800, rpm=50)
    session = BudgetSession(
        Settings(limits=(rule,), headroom=0.0, window=6.0), clock=clock.now, sleep=clock.sleep
    )
    records = []
    for i, (estimate, used_in, cached, out) in enumerate(((400, 380, 100, 120), (500, 450, 0, 90))):
        reservation = session.limiter.reserve(
            estimate, vendor="anthropic", model="claude-sonnet-4-5", output=600
        )
        reservation.settle(used_in - cached, refund=True, output_tokens=out)
        records.append(CallRecord(
            t=clock.t, test=f"t.py::test_{i}", vendor="anthropic", model="claude-sonnet-4-5",
            estimated=estimate, prompt_tokens=used_in, completion_tokens=out, status="ok",
            attempts=1, waited_s=0.0, cached_tokens=cached,
        ))
        clock.t += 1.0
    return session, records


def test_html_report_charts_each_dimension_of_a_token_bucket(clock: Any) -> None:
    from pytest_llm_budget.records import Totals
    from pytest_llm_budget.reporting.html_report import render_html
    from pytest_llm_budget.reporting.report import build_report

    session, records = _claude_session(clock)
    settings = {"window": 6.0, "limits": ["anthropic:* itpm=1500 otpm=800 rpm=50"]}
    document = build_report(settings, Totals(calls=2), session.bucket_stats(), records)
    page = render_html(document)
    charts = re.findall(r'<svg class="chart dimension" data-bucket="anthropic:\*" '
                        r'data-dimension="(\w+)"', page)
    assert charts == ["input_tokens", "output_tokens", "requests"]
    assert 'aria-label="tokens in the window of anthropic:*"' not in page  # no sliding chart
    # each call's charge per dimension: input + cache writes (not the 100 read), output, one
    assert re.findall(r'data-dimension="input_tokens".*?</svg>', page, re.S)[0].count(
        'class="call"') == 2
    assert 'data-charge="280"' in page and 'data-charge="450"' in page  # input
    assert 'data-charge="120"' in page and 'data-charge="90"' in page  # output
    assert "capacity 1500" in page and "capacity 800" in page and "capacity 50" in page
    # and the per-dimension table: charged at admission, settled
    row = re.search(r"<tr><td>anthropic:\*</td><td>output tokens</td>(.*?)</tr>", page)
    assert row is not None
    assert re.findall(r'<td class="n">(\d+)</td>', row[1])[:3] == ["800", "0", "210"]
    session.close()


def test_prometheus_metrics_carry_each_dimension(clock: Any) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from pytest_llm_budget.reporting.metrics import BudgetMetrics

    session, _ = _claude_session(clock)
    metrics = BudgetMetrics(session)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.text())
        for s in family.samples
    }

    def get(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"bucket": "anthropic:*", **labels}.items())))]

    tokens = "llm_budget_bucket_tokens_total"
    assert get(tokens, dimension="input_tokens", kind="charged") == 900
    assert get(tokens, dimension="input_tokens", kind="settled") == 280 + 450
    assert get(tokens, dimension="output_tokens", kind="charged") == 0
    assert get(tokens, dimension="output_tokens", kind="settled") == 210
    assert get("llm_budget_bucket_capacity", dimension="output_tokens") == 800
    assert get("llm_budget_bucket_capacity", dimension="requests") == 50
    metrics.close()
    session.close()
