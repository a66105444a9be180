"""Bad provider input: absurd reported usage is malformed, bounded, never stalls or overflows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer
from test_routing_errors import OK_BODY, Scripted, scripted  # noqa: F401 - fixture

from pytest_llm_budget import BudgetSession, Settings
from pytest_llm_budget.routing import clients

MSG = [{"role": "user", "content": "hi"}]
HUGE = 10**30
ABSURD = {**OK_BODY, "usage": {"prompt_tokens": HUGE, "completion_tokens": 2,
                               "total_tokens": HUGE + 2}}


def _absurd_then_ok(server: Scripted, budget: BudgetSession) -> None:
    client = clients.openai_client(budget, base_url=f"{server.url}/v1", api_key="k")
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=50)
    absurd, ok = budget.calls.records()
    assert absurd.malformed and (absurd.prompt_tokens, absurd.total_tokens) == (0, 0)
    assert not ok.malformed and ok.total_tokens == 5
    assert ok.waited_s < 0.5  # the next call did not wait out a window
    assert budget.calls.totals().malformed == 1
    [bucket] = budget.bucket_stats()
    assert bucket.actual < 10_000  # charged the estimate, not 10**30
    for record in (absurd, ok):
        assert record.cost_usd is None or (math.isfinite(record.cost_usd)
                                           and record.cost_usd < 1.0)


@pytest.mark.parametrize("cap", [None, 5.0], ids=["no-cap", "cap"])
def test_absurd_usage_is_malformed_and_charged_as_estimated(
    scripted: Any, cap: float | None  # noqa: F811
) -> None:
    server = scripted([(200, {}, ABSURD), (200, {}, OK_BODY)])
    budget = BudgetSession(Settings(tpm=30_000, window=5.0, headroom=0.0, max_cost=cap))
    try:
        _absurd_then_ok(server, budget)  # with a cap, the second call is still admitted
    finally:
        budget.close()


def test_absurd_usage_on_redis_is_no_raw_error(scripted: Any, tmp_path: Path) -> None:  # noqa: F811
    redis = RedisServer(tmp_path).start()
    server = scripted([(200, {}, ABSURD), (200, {}, OK_BODY)])
    budget = BudgetSession(Settings(tpm=30_000, window=5.0, headroom=0.0, backend=redis.url,
                                    max_cost=5.0))
    try:
        _absurd_then_ok(server, budget)
    finally:
        budget.close()
        redis.stop()


def test_a_large_but_plausible_usage_is_kept() -> None:
    from pytest_llm_budget.providers.base import Estimate, Usage, plausible_usage

    estimate = Estimate("gpt-4o", input_tokens=1_000, output_tokens=1_000)
    assert plausible_usage(Usage.reported(150_000, 900, None), estimate)  # images, say
    assert not plausible_usage(Usage.reported(HUGE, 2, None), estimate)
    assert not plausible_usage(Usage(3, 2, HUGE), estimate)
