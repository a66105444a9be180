"""The provider registry (which provider a request is for) and the shared retry-hint parsers."""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

import pytest
from conftest import NOW

from pytest_llm_budget.providers.openai import OpenAIProvider
from pytest_llm_budget.providers.registry import (
    placeholder_keys,
    price_id,
    provider_for,
    provider_of_fixture,
    register,
    unknown_vendor,
    vendors,
)
from pytest_llm_budget.providers.retry_hints import (
    parse_gemini_retry_info,
    parse_go_duration,
    parse_retry_after,
    retry_delay_from_headers,
)
from pytest_llm_budget.replay.cassettes import secret_headers, secret_query
from pytest_llm_budget.routing.traffic import classify, default_hosts

# --- routing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "path", "vendor"),
    [
        ("api.openai.com", "/v1/chat/completions", "openai"),
        ("api.openai.com", "/v1/responses", "openai"),
        ("api.openai.com", "/v1/completions", "openai"),
        ("api.openai.com", "/v1/embeddings", "openai"),
        (
            "acme.openai.azure.com",
            "/openai/deployments/gpt4o/chat/completions?api-version=1",
            "openai",
        ),
        ("localhost:8080", "/chat/completions", "openai"),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.0-flash:generateContent",
            "gemini",
        ),
        (
            "generativelanguage.googleapis.com",
            "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            "gemini",
        ),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-pro:countTokens",
            "gemini",
        ),
        (
            "us-central1-aiplatform.googleapis.com",
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent",
            "gemini",
        ),
        ("generativelanguage.googleapis.com", "/v1beta/openai/chat/completions", "gemini"),
    ],
)
def test_provider_for_known_paths(host: str, path: str, vendor: str) -> None:
    provider = provider_for(host, path)
    assert provider is not None
    assert provider.vendor == vendor


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models",
        "/v1/files",
        "/v1/responses/resp_123",
        "/v1/responses/resp_123/cancel",
        "/v1/chat/completions/chatcmpl-1/messages",
        "/v1beta/models/gemini-2.0-flash",
        "/v1beta/models/gemini-2.0-flash:unknownMethod",
        "/v1beta/cachedContents",
    ],
)
def test_provider_for_other_paths_is_none(path: str) -> None:
    assert provider_for("api.example.com", path) is None


def test_openai_compatible_gemini_endpoint_keeps_openai_format() -> None:
    provider = provider_for("generativelanguage.googleapis.com", "/v1beta/openai/chat/completions")
    assert isinstance(provider, OpenAIProvider)



def test_the_registry_answers_for_the_bundled_providers() -> None:
    assert {"gemini", "openai"} <= set(vendors()) and len(vendors()) == len(set(vendors()))
    assert unknown_vendor("openai") is None and unknown_vendor("GEMINI") is None
    assert unknown_vendor("open*") is None  # a glob is never refused
    assert unknown_vendor("opnai") == f"unknown vendor 'opnai' (known: {', '.join(vendors())})"
    assert (price_id("openai"), price_id("gemini"), price_id("acme")) == ("openai", "google", None)
    fixtures = ("openai_client", "async_openai_client", "gemini_client")
    assert [getattr(provider_of_fixture(f), "vendor", None) for f in fixtures] == [
        "openai", "openai", "gemini",
    ]
    assert provider_of_fixture("llm_http_client") is None


def test_hosts_keys_and_secrets_come_from_the_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"api.openai.com", "generativelanguage.googleapis.com"} <= set(default_hosts())
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:8123/")
    assert classify("127.0.0.1", 8123, "/v1beta/models/m:generateContent").llm_host
    assert not classify("127.0.0.1", 8124, "/v1beta/models/m:generateContent").llm_host
    keys = placeholder_keys({"GOOGLE_API_KEY": "real"})
    assert "OPENAI_API_KEY" in keys and "GEMINI_API_KEY" not in keys
    assert "OPENAI_API_KEY" not in placeholder_keys({"OPENAI_API_KEY": "k"})
    headers = secret_headers()
    assert {"authorization", "x-goog-api-key", "api-key", "cookie", "proxy-authorization"} <= set(
        headers
    )
    assert len(headers) == len(set(headers))
    assert secret_query() == ("key",)


# --- retry hints ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1m30.5s", 90.5),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1.5s", 1.5),
        ("2h", 7200.0),
        ("1h2m3s", 3723.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("500us", 0.0005),
        ("-3s", 0.0),
        (" 7s ", 7.0),
        ("", None),
        ("s", None),
        ("10", None),
        ("1.5", None),
        ("3x", None),
        ("1s2", None),
        ("abc", None),
    ],
)
def test_parse_go_duration(text: str, seconds: float | None) -> None:
    result = parse_go_duration(text)
    if seconds is None:
        assert result is None
    else:
        assert result == pytest.approx(seconds)


def test_parse_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("20", NOW) == 20.0
    assert parse_retry_after("0.5", NOW) == 0.5
    assert parse_retry_after("-4", NOW) == 0.0
    later = format_datetime(datetime.fromtimestamp(NOW + 30, tz=timezone.utc), usegmt=True)
    assert parse_retry_after(later, NOW) == pytest.approx(30.0)
    earlier = format_datetime(datetime.fromtimestamp(NOW - 30, tz=timezone.utc), usegmt=True)
    assert parse_retry_after(earlier, NOW) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412480.0) == 0.0
    for bad in ("soon", "", "nan", "inf", "Wed, 99 Foo 2015"):
        assert parse_retry_after(bad, NOW) is None


def test_retry_delay_precedence() -> None:
    every = {
        "retry-after-ms": "250",
        "retry-after": "4",
        "x-ratelimit-reset-tokens": "9s",
        "x-ratelimit-reset-requests": "2s",
    }
    assert retry_delay_from_headers(every, NOW) == 0.25
    del every["retry-after-ms"]
    assert retry_delay_from_headers(every, NOW) == 4.0
    del every["retry-after"]
    assert retry_delay_from_headers(every, NOW) == 9.0
    assert retry_delay_from_headers(every, NOW, limit_type="requests") == 2.0
    assert retry_delay_from_headers(every, NOW, limit_type="tokens") == 9.0
    assert retry_delay_from_headers({"x-ratelimit-reset-requests": "2s"}, NOW) == 2.0
    assert retry_delay_from_headers({"Retry-After-Ms": "junk", "Retry-After": "1"}, NOW) == 1.0
    assert retry_delay_from_headers({}, NOW) is None


@pytest.mark.parametrize(
    ("delay", "seconds"),
    [("26s", 26.0), ("0.5s", 0.5), ("1.250s", 1.25), ({"seconds": 3, "nanos": 500000000}, 3.5)],
)
def test_parse_gemini_retry_info(delay: object, seconds: float) -> None:
    body = {
        "error": {
            "details": [
                {"@type": "type.googleapis.com/google.rpc.Help", "links": []},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
            ]
        }
    }
    assert parse_gemini_retry_info(body) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"error": None},
        {"error": {"details": "x"}},
        {
            "error": {
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "soon"}
                ]
            }
        },
    ],
)
def test_parse_gemini_retry_info_missing(body: dict[str, Any]) -> None:
    assert parse_gemini_retry_info(body) is None




def test_a_provider_fixture_must_be_named_client() -> None:
    class Odd(OpenAIProvider):
        vendor = "odd"
        fixtures = ("odd_fixture",)

    with pytest.raises(ValueError, match="must end in _client"):
        register(Odd())
    assert "odd" not in vendors()
