"""Bad provider input: absurd reported usage is malformed, bounded, never stalls or overflows."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
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
    client = clients.fixture_client(
        "openai_client", budget, base_url=f"{server.url}/v1", api_key="k"
    )
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


class EndlessStream:
    """A server that answers 200 with an SSE stream that never ends: it trickles or stalls."""

    def __init__(self, trickle: bool) -> None:
        import socket
        import threading

        self.trickle = trickle
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: Any) -> None:
        event = b'data: {"id":"x","object":"chat.completion.chunk","choices":[]}\n\n'
        chunk = b"%x\r\n%s\r\n" % (len(event), event)
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n" + chunk)
            while not self.stop.wait(0.2):
                if self.trickle:
                    conn.sendall(chunk)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def _timeout_budget() -> BudgetSession:
    return BudgetSession(Settings(tpm=1_000_000, window=1.0, headroom=0.0, call_timeout=1.0))


def _assert_timed_out(budget: BudgetSession, err: Any, started: float) -> None:
    from pytest_llm_budget import CallTimeout

    assert isinstance(err.value, CallTimeout) and err.value.code == "LLM_CALL_TIMEOUT"
    assert "--llm-call-timeout=1s" in str(err.value)
    assert 0.9 <= time.monotonic() - started < 4.0
    [record] = budget.calls.records()
    assert (record.status, record.error_code) == ("error", "LLM_CALL_TIMEOUT")
    assert budget.snapshot("openai", "gpt-4o").in_flight == 0  # the reservation was released


def test_headers_that_never_come_fail_with_call_timeout(emu: Any) -> None:
    from pytest_llm_budget import CallTimeout

    budget = _timeout_budget()
    client = clients.fixture_client("openai_client", budget, max_retries=0)
    emu.queue_fault("latency=6")
    started = time.monotonic()
    try:
        with pytest.raises(CallTimeout) as err:
            client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=5)
        _assert_timed_out(budget, err, started)
    finally:
        budget.close()


@pytest.mark.parametrize("trickle", [True, False], ids=["trickles", "stalls"])
def test_a_stream_that_never_ends_fails_with_call_timeout(trickle: bool) -> None:
    from pytest_llm_budget import CallTimeout

    server = EndlessStream(trickle)
    budget = _timeout_budget()
    http = clients.http_client(budget)
    body = {"model": "gpt-4o", "messages": MSG, "max_tokens": 5, "stream": True}
    started = time.monotonic()
    try:
        with pytest.raises(CallTimeout) as err, http.stream(
            "POST", f"{server.url}/v1/chat/completions", json=body
        ) as response:
            for _ in response.iter_bytes():
                pass
        _assert_timed_out(budget, err, started)
    finally:
        budget.close()
        server.close()


def test_the_call_timeout_option() -> None:
    from pytest_llm_budget.errors import SettingsError

    assert Settings.resolve({}, {}, {}).call_timeout == 600.0
    assert Settings.resolve({}, {"LLM_BUDGET_CALL_TIMEOUT": "30"}, {}).call_timeout == 30.0
    assert Settings.resolve({"call_timeout": "5"}, {}, {"call_timeout": "9"}).call_timeout == 5.0
    with pytest.raises(SettingsError, match="--llm-call-timeout='0'"):
        Settings.resolve({"call_timeout": "0"}, {}, {})


def _limiter(backend: Any, tpm: int, clock: Any) -> Any:
    from pytest_llm_budget.limiting.limiter import Limiter, LimitRule

    return Limiter(backend, [LimitRule(tpm=tpm)], headroom=0.0, window=60.0,
                   clock=clock.now, sleep=clock.sleep)


@pytest.fixture(params=["file", "redis"])
def shared_backends(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """Two backends on one store, as two runs open it."""
    from pytest_llm_budget.backends import open_backend

    redis = RedisServer(tmp_path).start() if request.param == "redis" else None
    spec = redis.url if redis is not None else f"file:{tmp_path}/state"
    backends = open_backend(spec), open_backend(spec)
    yield backends
    for backend in backends:
        backend.close()
    if redis is not None:
        redis.stop()


def test_two_runs_sharing_a_backend_with_different_budgets_are_told_once(
    shared_backends: tuple[Any, Any], clock: Any
) -> None:
    first_backend, second_backend = shared_backends
    first = _limiter(first_backend, 30_000, clock)
    second = _limiter(second_backend, 60_000, clock)
    heard: list[tuple[str, str, int, list[int]]] = []
    first.budget_listeners.append(lambda *a: heard.append(("first", *a)))
    second.budget_listeners.append(lambda *a: heard.append(("second", *a)))
    first.reserve(10).release()
    second.reserve(10).release()
    assert heard == [("second", "openai:*", 60_000, [30_000])]
    clock.advance(61)  # the first run checks again once a window
    first.reserve(10).release()
    clock.advance(61)
    for _ in range(3):
        first.reserve(10).release()
        second.reserve(10).release()
    assert heard[1:] == [("first", "openai:*", 30_000, [60_000])]  # once per run
    same = _limiter(first_backend, 30_000, clock)
    same.budget_listeners.append(lambda *a: heard.append(("same", *a)))
    same.reserve(10).release()  # hears the other budget, never its own
    assert heard[2:] == [("same", "openai:*", 30_000, [60_000])]


def test_a_run_sharing_a_state_file_with_another_budget_prints_a_notice(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(
        """
        def test_reserve(llm_budget):
            with llm_budget.reserve(100):
                pass
        """
    )
    state = f"--llm-backend=file:{tmp_path}/shared.json"
    first = pytester.runpytest_inprocess("-p", "no:cacheprovider", state, "--llm-tpm=30000")
    assert "is shared with another run" not in first.stdout.str()
    second = pytester.runpytest_inprocess("-p", "no:cacheprovider", state, "--llm-tpm=60000")
    second.assert_outcomes(passed=1)
    second.stdout.fnmatch_lines([
        "*llm-budget: bucket openai:[*] is shared with another run whose budget is 25500 tokens"
        " per window (this run: 51000)*--llm-tpm*",
    ])
