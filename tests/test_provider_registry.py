"""A provider registered from outside the package gets pacing, records and reports, unchanged.

The "tiny" vendor below has its own JSON wire format and is served by a stdlib HTTP server in
this test. Its provider lives in the pytester project's conftest.py; nothing in the package
names it, yet its calls are estimated, paced, settled with the reported usage and reported.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

WINDOW = 3.0

PROVIDER = '''
import json
import math

import pytest

from pytest_llm_budget.plugins import session_of
from pytest_llm_budget.providers.base import (
    Estimate, ProviderDefaults, Rejection, RejectionKind, Usage, load_json,
)
from pytest_llm_budget.providers.registry import register, unregister
from pytest_llm_budget.providers.sse import JSONEventUsageParser
from pytest_llm_budget.routing.clients import fixture_client


def usage_of(data):
    used = data.get("used") if isinstance(data, dict) else None
    if not isinstance(used, dict):
        return None
    return Usage.reported(int(used.get("in", 0)), int(used.get("out", 0)), None)


class TinyProvider(ProviderDefaults):
    vendor = "tiny"
    hosts = ("127.0.0.1:{port}",)
    secret_headers = ("x-tiny-key",)
    fixtures = ("tiny_client",)

    def handles(self, host, path):
        return path.startswith("/tiny/v1/generate")

    def estimate(self, path, body, counter, policy, *, grounded=False):
        data = load_json(body) or {{}}
        prompt = str(data.get("prompt", ""))
        return Estimate(str(data.get("model", "tiny-?")), math.ceil(len(prompt) / 4),
                        policy.output_tokens(data.get("max_tokens")))

    def usage_from_json(self, body):
        return usage_of(load_json(body))

    def sse_usage_parser(self):
        return JSONEventUsageParser(usage_of)

    def classify(self, status, headers, body, now):
        data = load_json(body) or {{}}
        kind = RejectionKind.RATE_LIMIT if status == 429 else RejectionKind.OTHER
        return Rejection(kind, data.get("retry_s"), str(data.get("error", status)))

    def client(self, fixture, routed, **kwargs):
        return routed.client(routed.library(), base_url="http://127.0.0.1:{port}", **kwargs)


TINY = register(TinyProvider())


def pytest_unconfigure(config):
    unregister(TINY)


@pytest.fixture
def tiny_client(pytestconfig):
    with fixture_client("tiny_client", session_of(pytestconfig)) as client:
        yield client
'''

TESTS = '''
import pytest


@pytest.mark.llm_budget(vendor="tiny", tokens=1200)
def test_generate(tiny_client, llm_usage):
    for _ in range(2):
        reply = tiny_client.post(
            "/tiny/v1/generate",
            json={"model": "tiny-1", "prompt": "x" * 40, "max_tokens": 590},
            headers={"x-tiny-key": "secret"},
        )
        assert reply.json()["text"] == "ok"
    assert llm_usage.calls == 2 and llm_usage.total_tokens == 30
'''


class TinyServer(ThreadingHTTPServer):
    """Answers every POST with the tiny format's reply; notes when each request arrived."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), TinyHandler)
        self.arrivals: list[float] = []
        self.keys: list[str | None] = []


class TinyHandler(BaseHTTPRequestHandler):
    server: TinyServer

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        json.loads(self.rfile.read(length))
        self.server.arrivals.append(time.monotonic())
        self.server.keys.append(self.headers.get("x-tiny-key"))
        payload = json.dumps({"text": "ok", "used": {"in": 10, "out": 5}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def tiny_server() -> Iterator[TinyServer]:
    server = TinyServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_a_registered_provider_is_paced_recorded_and_reported(
    pytester: pytest.Pytester, tiny_server: TinyServer
) -> None:
    port = tiny_server.server_address[1]
    pytester.makeconftest(PROVIDER.format(port=port))
    pytester.makepyfile(test_tiny=TESTS)
    # 600 tokens a call (10 in + 590 out) against 1000 a window: the second call waits.
    pytester.makeini(
        f"""
        [pytest]
        llm_limits = tiny:* tpm=1000
        llm_window = {WINDOW}
        llm_headroom = 0
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--llm-report", "report.json"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*LLM budget*", "*tiny:*"])

    first, second = tiny_server.arrivals
    assert second - first >= WINDOW * 0.9, second - first  # the window, not the run, spaced them
    assert tiny_server.keys == ["secret", "secret"]  # the key header reached the server

    report = json.loads((pytester.path / "report.json").read_text())
    calls = sorted(report["calls"], key=lambda c: c["t"])
    assert [(c["vendor"], c["model"], c["status"]) for c in calls] == [("tiny", "tiny-1", "ok")] * 2
    assert [(c["estimated"], c["prompt_tokens"], c["completion_tokens"]) for c in calls] == [
        (600, 10, 5)
    ] * 2
    assert calls[0]["waited_s"] < WINDOW * 0.3
    assert calls[1]["waited_s"] > WINDOW * 0.1  # the window less whatever the first call took
    assert report["totals"]["calls"] == 2 and report["totals"]["total_tokens"] == 30
    assert [b["name"] for b in report["buckets"]] == ["tiny:*"]


def test_an_unknown_vendor_in_a_marker_is_a_collection_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.llm_budget(vendor="tiny")
        def test_x():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unknown vendor 'tiny' (known: *openai*)*"])
