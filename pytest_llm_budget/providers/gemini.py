"""Gemini wire knowledge (Gemini API and Vertex AI): estimates, usageMetadata, RESOURCE_EXHAUSTED.

Gemini's TPM quota counts input tokens only: `charge` and `charge_estimate` are input-only, while
`Estimate.output_tokens` still carries `maxOutputTokens` (times `candidateCount`) for reports.
The input is counted with o200k_base, a proxy for Gemini's tokenizer, floored at characters / 4,
times (1 + safety margin), and (1 + grounded overhead) for a grounded call: the text of the
contents' parts and the system instruction, the JSON of function calls and responses, tools and
tool config, and an allowance per inline or file part; no per-turn overhead, no role names.
`countTokens` is handled (its 429s deserve retries) but costs nothing against TPM; embeddings
cost input only. A 429 is QUOTA, not retryable, when its quota is per day (a QuotaFailure
`quotaId` or message naming a per-day quota) or its limit is 0 (the model has no quota on this
tier): waiting inside a test run cannot help. Every other 429 is RATE_LIMIT with RetryInfo's
delay, else the message's "Please retry in 26.5s", else Retry-After, else None (Vertex).
Gemini's OpenAI-compatible endpoint on a Google host (`GeminiOpenAIProvider`) keeps the OpenAI
wire format but the "gemini" vendor, since the quota it spends is Gemini's. The `gemini_client`
fixture gets a `genai.Client` whose sync and `.aio` paths both use routed httpx2 (or httpx); on
Vertex AI (`vertexai=True` or `GOOGLE_GENAI_USE_VERTEXAI`) its base URL is `GOOGLE_VERTEX_BASE_URL`.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from pytest_llm_budget.providers.base import (
    Estimate,
    ProviderDefaults,
    Rejection,
    RejectionKind,
    RoutedHTTP,
    SSEUsageParser,
    Usage,
    as_int,
    error_object,
    load_json,
    lower_headers,
    missing_key,
    times_choices,
)
from pytest_llm_budget.providers.openai import OpenAIProvider
from pytest_llm_budget.providers.retry_hints import (
    parse_gemini_retry_info,
    parse_retry_hint_in_message,
    retry_delay_from_headers,
)
from pytest_llm_budget.providers.sse import JSONEventUsageParser
from pytest_llm_budget.tokens.counting import TextMeasure, TokenCounter
from pytest_llm_budget.tokens.policy import EstimatePolicy

__all__ = [
    "GeminiOpenAIProvider",
    "GeminiProvider",
    "gemini_method",
    "gemini_model",
    "genai_library",
]

_GOOGLE_HOST_SUFFIX = "googleapis.com"
_GEMINI_BASE_URL = "GOOGLE_GEMINI_BASE_URL"
_VERTEX_BASE_URL = "GOOGLE_VERTEX_BASE_URL"
_USE_VERTEX = "GOOGLE_GENAI_USE_VERTEXAI"

_PATH = re.compile(
    r"/(?:models|tunedModels|endpoints)/(?P<model>[^/:?]+):(?P<method>[A-Za-z]+)(?:\?.*)?$"
)
_GENERATE = frozenset({"generateContent", "streamGenerateContent"})
_EMBED = frozenset({"embedContent", "batchEmbedContents"})
_METHODS = _GENERATE | _EMBED | {"countTokens"}
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
_LIMIT_IN_MESSAGE = re.compile(r"\blimit:\s*([0-9]+)", re.IGNORECASE)
_PER_DAY = re.compile(r"per[ _]?day", re.IGNORECASE)
#: "...input_token_count, limit: 1000" / "...generate_content_requests..., limit: 10".
_METRIC_IN_MESSAGE = re.compile(r"metric:\s*(\S+?),?\s+limit:", re.IGNORECASE)


def _match(path: str) -> re.Match[str] | None:
    """The model/method match of a Gemini or Vertex path, if its method costs tokens."""
    match = _PATH.search(path)
    return match if match and match.group("method") in _METHODS else None


def gemini_model(path: str) -> str | None:
    """Model name in a Gemini/Vertex path (".../models/gemini-2.5-flash:generateContent")."""
    match = _match(path)
    return match.group("model") if match else None


def gemini_method(path: str) -> str | None:
    """RPC method in a Gemini/Vertex path ("generateContent", "countTokens", ...)."""
    match = _match(path)
    return match.group("method") if match else None


def _get(mapping: Mapping[str, Any], camel: str, snake: str) -> Any:
    """A field by its JSON (camelCase) or proto (snake_case) name; the REST API accepts both."""
    value = mapping.get(camel)
    return mapping.get(snake) if value is None else value


def _part_text(part: object) -> tuple[str | None, bool]:
    """A part's text (None for inline/file data) and whether it is plain text (counted chars)."""
    if not isinstance(part, Mapping):
        return str(part), True
    text = part.get("text")
    if isinstance(text, str):
        return text, True
    if _get(part, "inlineData", "inline_data") is not None:
        return None, False
    if _get(part, "fileData", "file_data") is not None:
        return None, False
    return json.dumps(part, ensure_ascii=False, separators=(",", ":")), False


def _content_texts(content: object) -> list[tuple[str | None, bool]]:
    """The texts of one Content ({role, parts}) or plain string."""
    if isinstance(content, str):
        return [(content, True)]
    if not isinstance(content, Mapping):
        return []
    parts = content.get("parts")
    return [_part_text(p) for p in (parts if isinstance(parts, list) else [])]


def _measure(
    texts: list[tuple[str | None, bool]], model: str, counter: TokenCounter
) -> TextMeasure:
    """Tokens of every text (non-text parts get the allowance); characters of plain text."""
    tokens = counter.measure_texts([t for t, _ in texts], model).tokens
    chars = sum(len(t) for t, plain in texts if plain and t is not None)
    return TextMeasure(tokens, chars)


class GeminiProvider(ProviderDefaults):
    """Google Gemini API and Vertex AI generateContent wire format."""

    vendor = "gemini"
    hosts: tuple[str, ...] = (
        "generativelanguage.googleapis.com",
        "*-aiplatform.googleapis.com",
        "aiplatform.googleapis.com",
    )
    base_url_env: tuple[str, ...] = (_GEMINI_BASE_URL, _VERTEX_BASE_URL)
    key_env: tuple[str, ...] = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    placeholder_key: str | None = "llm-budget-replay-placeholder"
    secret_headers: tuple[str, ...] = ("x-goog-api-key", "authorization")
    secret_query: tuple[str, ...] = ("key",)
    price_id: str | None = "google"
    fixtures: tuple[str, ...] = ("gemini_client",)
    #: Gemini's TPM counts the reported input tokens.
    counts_reported_usage = True

    def handles(self, host: str, path: str) -> bool:
        """True for models/M:generateContent|streamGenerateContent|countTokens|embed* paths."""
        return _match(path) is not None

    def estimate(
        self,
        path: str,
        body: bytes,
        counter: TokenCounter,
        policy: EstimatePolicy,
        *,
        grounded: bool = False,
    ) -> Estimate:
        """Estimate input (counted, with margin) and output (maxOutputTokens) of a request."""
        model = gemini_model(path) or "unknown"
        method = gemini_method(path)
        data = load_json(body) if body else {}
        if not isinstance(data, dict):
            return Estimate(model, len(body), policy.output_tokens(None))  # bytes >= tokens
        if method == "countTokens":
            return Estimate(model, 0, 0)
        try:
            if method in _EMBED:
                measure = _measure(self._embed_texts(data), model, counter)
                output = 0
            else:
                measure = _measure(self._generate_texts(data), model, counter)
                output = policy.output_tokens(self._declared_output(data))
        except (TypeError, ValueError, AttributeError):
            return Estimate(model, len(body), policy.output_tokens(None))
        tokens = policy.counted_input(measure.tokens, measure.chars, grounded=grounded)
        return Estimate(model, tokens, output)

    def _generate_texts(self, data: Mapping[str, Any]) -> list[tuple[str | None, bool]]:
        """Contents, system instruction, tools and tool config of a generateContent body."""
        texts = _content_texts(_get(data, "systemInstruction", "system_instruction"))
        contents = data.get("contents")
        for content in contents if isinstance(contents, list) else [contents]:
            texts += _content_texts(content)
        for extra in (data.get("tools"), _get(data, "toolConfig", "tool_config")):
            if extra:
                texts.append((json.dumps(extra, ensure_ascii=False, separators=(",", ":")), False))
        return texts

    def _embed_texts(self, data: Mapping[str, Any]) -> list[tuple[str | None, bool]]:
        """embedContent's `content`, or every request of batchEmbedContents."""
        requests = data.get("requests")
        if isinstance(requests, list):
            return [
                t
                for r in requests
                if isinstance(r, Mapping)
                for t in _content_texts(r.get("content"))
            ]
        return _content_texts(data.get("content"))

    def _declared_output(self, data: Mapping[str, Any]) -> int | None:
        """generationConfig.maxOutputTokens times candidateCount, when declared."""
        config = _get(data, "generationConfig", "generation_config")
        if not isinstance(config, Mapping):
            return None
        return times_choices(
            as_int(_get(config, "maxOutputTokens", "max_output_tokens")),
            as_int(_get(config, "candidateCount", "candidate_count")),
        )

    def usage_from_json(self, body: bytes) -> Usage | None:
        """usageMetadata of a response, or of the last element of a JSON-array stream."""
        data = load_json(body)
        if isinstance(data, list):
            found = [u for u in (_response_usage(item) for item in data) if u is not None]
            return found[-1] if found else None
        return _response_usage(data)

    def sse_usage_parser(self) -> SSEUsageParser:
        """Parser for `alt=sse` streams: each event is a response; the last usageMetadata wins."""
        return JSONEventUsageParser(_response_usage)

    def classify(
        self, status: int, headers: Mapping[str, str], body: bytes, now: float
    ) -> Rejection:
        """RATE_LIMIT with RetryInfo's delay, or QUOTA for per-day / zero-limit quotas."""
        data = load_json(body)
        error = error_object(data)
        message = str(error.get("message") or "") or f"HTTP {status}"
        violations = _quota_violations(error)
        limit = next(
            (
                v
                for v in (as_int(_get(x, "quotaValue", "quota_value")) for x in violations)
                if v is not None
            ),
            None,
        )
        if limit is None:
            match = _LIMIT_IN_MESSAGE.search(message)
            limit = int(match.group(1)) if match else None
        delay = parse_gemini_retry_info(data) if isinstance(data, dict) else None
        if delay is None:
            delay = parse_retry_hint_in_message(message)
        if delay is None:
            delay = retry_delay_from_headers(lower_headers(headers), now)
        quota_ids = " ".join(str(_get(v, "quotaId", "quota_id") or "") for v in violations)
        metric = _METRIC_IN_MESSAGE.search(message)
        quota = quota_ids.split(" ", 1)[0] or (metric.group(1) if metric else None)
        per_day = bool(_PER_DAY.search(quota_ids) or _PER_DAY.search(message))
        if status != 429 and error.get("status") != "RESOURCE_EXHAUSTED":
            kind = RejectionKind.OTHER
        elif limit == 0 or per_day:
            kind = RejectionKind.QUOTA
        else:
            kind = RejectionKind.RATE_LIMIT
        dimension = _dimension(quota or "")
        return Rejection(kind, delay, message, limit, None, dimension, quota, per_day)

    def charge(self, usage: Usage) -> int:
        """Gemini's TPM quota counts input (prompt) tokens."""
        return usage.prompt_tokens

    def charge_estimate(self, estimate: Estimate) -> int:
        """Gemini admits against input tokens only."""
        return estimate.input_tokens

    def client(self, fixture: str, routed: RoutedHTTP, **kwargs: Any) -> Any:
        """`genai.Client` whose sync and `.aio` paths both use routed clients (base URL and key
        from the SDK's environment variables)."""
        from google import genai
        from google.genai import types

        if fixture not in self.fixtures:
            return super().client(fixture, routed, **kwargs)
        options = kwargs.pop("http_options", None)
        if isinstance(options, dict):
            options = types.HttpOptions(**options)
        options = options or types.HttpOptions()
        library = genai_library(routed)
        update: dict[str, Any] = {
            "httpx_client": routed.client(library),
            "httpx_async_client": routed.client(library, is_async=True),
        }
        vertex = kwargs["vertexai"] if "vertexai" in kwargs else _env_true(_USE_VERTEX)
        # google-genai reads GOOGLE_VERTEX_BASE_URL for Vertex AI, GOOGLE_GEMINI_BASE_URL else.
        base_url = os.environ.get(_VERTEX_BASE_URL if vertex else _GEMINI_BASE_URL)
        if base_url and not options.base_url:
            update["base_url"] = base_url
        if "api_key" not in kwargs and not kwargs.get("vertexai"):
            key = next(filter(None, (os.environ.get(v) for v in self.key_env)), None)
            if key:
                kwargs["api_key"] = key
            elif routed.replay_only and missing_key(self, os.environ):
                kwargs["api_key"] = self.placeholder_key
        return genai.Client(http_options=options.model_copy(update=update), **kwargs)


class GeminiOpenAIProvider(OpenAIProvider):
    """Gemini's OpenAI-compatible endpoint: OpenAI paths on a Google host, Gemini's quota."""

    vendor = "gemini"
    hosts = ()
    base_url_env = ()
    key_env = ()
    placeholder_key = None
    secret_headers = ()
    secret_response_headers = ()
    price_id = "google"
    fixtures = ()

    def handles(self, host: str, path: str) -> bool:
        """An OpenAI path on a `*.googleapis.com` host."""
        hostname = host.split(":", 1)[0].lower().rstrip(".")
        return hostname.endswith(_GOOGLE_HOST_SUFFIX) and super().handles(host, path)


def _env_true(name: str) -> bool:
    """A boolean environment variable as google-genai reads it ("true" / "1")."""
    return os.environ.get(name, "").strip().lower() in ("true", "1")


def genai_library(routed: RoutedHTTP) -> ModuleType:
    """The HTTP library of google-genai's clients: httpx2 from genai 3 on, else httpx."""
    from google.genai import _api_client

    if getattr(_api_client, "httpx2", None):
        return routed.library()
    return importlib.import_module("httpx")


def _dimension(quota: str) -> str | None:
    """What a quota counts: `...InputTokensPerModelPerMinute` tokens, `...Requests...` requests."""
    lowered = quota.lower()
    if "token" in lowered:
        return "tokens"
    if "request" in lowered:
        return "requests"
    return None


def _quota_violations(error: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The violations of every google.rpc.QuotaFailure detail of an error."""
    details = error.get("details")
    found: list[Mapping[str, Any]] = []
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, Mapping) and detail.get("@type") == _QUOTA_FAILURE:
            violations = detail.get("violations")
            if isinstance(violations, list):
                found.extend(v for v in violations if isinstance(v, Mapping))
    return found


def _response_usage(response: object) -> Usage | None:
    """Usage from a GenerateContentResponse's usageMetadata (thoughts count as completion)."""
    if not isinstance(response, Mapping):
        return None
    meta = _get(response, "usageMetadata", "usage_metadata")
    if not isinstance(meta, Mapping):
        return None
    prompt = as_int(_get(meta, "promptTokenCount", "prompt_token_count"))
    candidates = as_int(_get(meta, "candidatesTokenCount", "candidates_token_count"))
    thoughts = as_int(_get(meta, "thoughtsTokenCount", "thoughts_token_count"))
    total = as_int(_get(meta, "totalTokenCount", "total_token_count"))
    if prompt is None and candidates is None and total is None:
        return None
    cached = as_int(_get(meta, "cachedContentTokenCount", "cached_content_token_count")) or 0
    completion = (candidates or 0) + (thoughts or 0)
    prompt = prompt or 0
    return Usage.reported(prompt, completion, total, cached=cached, reasoning=thoughts or 0)
