"""A budget backend lost mid-run: an answered call still reaches the test and is recorded."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from redis_server import RedisServer

from pytest_llm_budget import BudgetSession, Settings
from pytest_llm_budget.errors import BackendUnavailable
from pytest_llm_budget.routing import clients

MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture
def redis_budget(tmp_path: Path) -> Any:
    server = RedisServer(tmp_path).start()
    budget = BudgetSession(Settings(tpm=1_000_000, window=1.0, headroom=0.0, backend=server.url))
    yield server, budget
    budget.close()
    server.stop()


def test_an_answer_survives_the_backend_lost_before_settling(emu: Any, redis_budget: Any) -> None:
    server, budget = redis_budget
    client = clients.fixture_client("openai_client", budget)
    emu.queue_fault("latency=1.5")  # the provider takes its time; Redis dies meanwhile

    def kill_once_admitted() -> None:
        deadline = time.monotonic() + 30
        while budget.snapshot("openai", "gpt-5").in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill()

    killer = threading.Thread(target=kill_once_admitted)
    killer.start()
    with pytest.warns(RuntimeWarning, match="budget backend was lost"):
        reply = client.chat.completions.create(model="gpt-5", max_tokens=20, messages=MSG)
    killer.join()
    assert reply.choices[0].message.content  # the answer reached the caller
    [record] = budget.calls.records()
    assert (record.status, record.error_code) == ("ok", "LLM_BACKEND_UNAVAILABLE")
    assert record.completion_tokens == reply.usage.completion_tokens
    assert emu.stats()["totals"]["admitted"] == 1


def test_an_admission_the_backend_cannot_make_is_counted(emu: Any, redis_budget: Any) -> None:
    server, budget = redis_budget
    client = clients.fixture_client("openai_client", budget)
    server.kill()
    with pytest.raises((BackendUnavailable, openai.APIConnectionError)):
        client.chat.completions.create(model="gpt-5", max_tokens=20, messages=MSG)
    [record] = budget.calls.records()
    assert record.status == "backend_error"
    assert budget.calls.totals().errors == 1
    assert emu.stats()["totals"]["admitted"] == 0  # nothing was sent unpaced
