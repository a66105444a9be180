"""Bursts at about 3x the budget, over real HTTP against the emulator: zero 429s, every call in.

Short windows (2 s) so a burst spans a few windows; the emulator enforces a token bucket or
per-model limits, which the limiter (a sliding window) must never exceed either.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from pytest_llm_budget.emulator import EmulatorConfig, LimitSpec
from pytest_llm_budget.emulator.config import ModelLimit
from pytest_llm_budget.limiting.buckets import LimitRule
from pytest_llm_budget.routing import clients

WINDOW, TPM = 2.0, 3000
TEXT = "Summarise the following notes in one line, please. " * 12  # ~600 characters


def burst(budget: Any, jobs: list[tuple[str, str]], threads: int = 8) -> None:
    """Run every (vendor, model) job through routed SDK clients, `threads` at a time."""
    openai_client = clients.fixture_client("openai_client", budget)
    gemini_client = clients.fixture_client("gemini_client", budget)

    def one(job: tuple[str, str]) -> None:
        vendor, model = job
        if vendor == "openai":
            openai_client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": TEXT}], max_tokens=250
            )
        else:
            gemini_client.models.generate_content(model=model, contents=TEXT * 3)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, jobs))


def assert_all_admitted_without_429(emu: Any, budget: Any, calls: int) -> None:
    statuses = [r.status for r in emu.log]
    assert statuses.count(429) == 0, [r.outcome for r in emu.log if r.status == 429]
    assert len(statuses) == calls
    records = budget.calls.records()
    assert len(records) == calls
    assert all(r.status == "ok" and r.attempts == 1 for r in records)


def spent(emu: Any, vendor: str) -> int:
    return sum(r.charge for r in emu.log if r.vendor == vendor and r.status == 200)


@pytest.mark.parametrize("mode", ["bucket", "sliding"])
def test_a_burst_of_three_budgets_gets_no_429(emu: Any, make_budget: Any, mode: str) -> None:
    spec = LimitSpec(tpm=TPM, rpm=None)
    emu.configure(EmulatorConfig(window=WINDOW, mode=mode, openai=spec, gemini=spec))
    emu.reset()
    budget = make_budget(tpm=TPM, window=WINDOW, headroom=0.1)
    jobs = [("openai", "gpt-4o-mini")] * 24 + [("gemini", "gemini-2.5-flash")] * 20
    burst(budget, jobs)
    assert_all_admitted_without_429(emu, budget, len(jobs))
    for vendor in ("openai", "gemini"):
        assert spent(emu, vendor) >= 2.5 * TPM  # the burst really was about 3 budgets


@pytest.mark.parametrize("mode", ["bucket", "sliding"])
def test_per_model_limits_burst_gets_no_429(emu: Any, make_budget: Any, mode: str) -> None:
    small = LimitSpec(tpm=TPM // 2, rpm=None)
    emu.configure(
        EmulatorConfig(
            window=WINDOW, mode=mode, openai=LimitSpec(tpm=TPM, rpm=None),
            gemini=LimitSpec(tpm=TPM, rpm=None),
            model_limits=(ModelLimit("openai", "gpt-4o-mini", small),),
        )
    )
    emu.reset()
    budget = make_budget(
        tpm=TPM, window=WINDOW, headroom=0.1,
        limits=(LimitRule("openai", "gpt-4o-mini", TPM // 2),),
    )
    jobs = [("openai", "gpt-4o-mini")] * 12 + [("openai", "gpt-4o")] * 24
    burst(budget, jobs)
    assert_all_admitted_without_429(emu, budget, len(jobs))
    assert {b.name for b in budget.bucket_stats()} == {"openai:gpt-4o-mini", "openai:*"}


def test_gemini_settles_refund_the_input_over_estimate(emu: Any, make_budget: Any) -> None:
    spec = LimitSpec(tpm=TPM, rpm=None)
    emu.configure(EmulatorConfig(window=WINDOW, openai=spec, gemini=spec))
    emu.reset()
    budget = make_budget(tpm=TPM, window=WINDOW, headroom=0.1)
    burst(budget, [("gemini", "gemini-2.5-flash")] * 3, threads=1)
    [bucket] = budget.bucket_stats()
    assert bucket.actual == spent(emu, "gemini")  # settled at what the server counted
    assert bucket.refunded == bucket.estimated - bucket.actual - bucket.debt
    snap = budget.limiter.window_snapshot("gemini:*")
    assert snap.used_tokens == spent(emu, "gemini")
