"""Anthropic wire format: Messages requests, prompt caching, answers, SSE events, errors, headers.

Input tokens are counted as for the other vendors: ceil(chars / 4) of the text in the tools,
system prompt and messages (no per-message overhead), so `input_tokens + cache_read_input_tokens +
cache_creation_input_tokens` is that figure. The cache is a deterministic emulation: each block
with `cache_control` marks a prefix (tools, then system, then messages, up to and including it);
a later request of the same model whose marked prefix is identical reads it (until its `ttl`,
5 minutes or `"1h"`, passes; every read refreshes it), and the longest marked prefix not read is
written. No minimum cacheable length is enforced.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from .call import CacheBreakpoint, Call, text_chars
from .limits import AnthropicDecision, Level
from .synth import chars_tokens, request_digest, synthesize
from .wire import Answer, json_answer, sse_answer, sse_event

__all__ = [
    "BROKEN_EVENT",
    "BadRequest",
    "PromptCache",
    "auth_error",
    "bad_request",
    "count_tokens_answer",
    "message_answer",
    "models_answer",
    "not_found",
    "overloaded_error",
    "parse_count_tokens",
    "parse_messages",
    "rate_limit_error",
    "rate_limit_no_hint",
    "ratelimit_headers",
    "request_id",
    "server_error",
    "spend_limit_error",
]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_UNITS = {"requests": "requests", "input_tokens": "input tokens", "output_tokens": "output tokens"}
_DOCS = "https://docs.claude.com/en/api/rate-limits"
_MAX_BREAKPOINTS = 4
# A truncated event for the `malformed_json` fault: the SDK fails to decode it.
BROKEN_EVENT = b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {\n\n'


class BadRequest(ValueError):
    """The request body is not something the endpoint accepts (400)."""


def request_id() -> str:
    """A fresh `request-id` value."""
    return f"req_emu{secrets.token_hex(12)}"


def _error(
    status: int,
    message: str,
    headers: Sequence[tuple[str, str]] = (),
    details: dict[str, Any] | None = None,
) -> Answer:
    rid = request_id()
    err: dict[str, Any] = {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}
    if details is not None:
        err["details"] = details
    body = {"type": "error", "error": err, "request_id": rid}
    return json_answer(status, body, [("request-id", rid), *headers])


def bad_request(message: str) -> Answer:
    """400 invalid_request_error."""
    return _error(400, message)


def not_found(path: str) -> Answer:
    """404 not_found_error."""
    return _error(404, f"Not found: {path}")


def auth_error(key: str | None) -> Answer:
    """401 authentication_error: no key, or a key not in the configured list."""
    return _error(401, "x-api-key header is required" if not key else "invalid x-api-key")


def server_error(status: int) -> Answer:
    """Injected error status in Anthropic's shape (529 is overloaded_error)."""
    if status == 529:
        return overloaded_error()
    message = "Internal server error" if status >= 500 else "Injected error."
    return _error(status, message)


def overloaded_error() -> Answer:
    """529 overloaded_error: the SDK retries it with backoff."""
    return _error(529, "Overloaded")


def spend_limit_error() -> Answer:
    """429 for a reached spend cap: no retry-after, since waiting a minute does not help."""
    return _error(
        429,
        "You have reached your specified workspace API usage limits. You will regain access"
        " when your limits reset or after you raise them.",
        details={"error_code": "enforced_spend_limit_reached"},
    )


def _rfc3339(epoch: float) -> str:
    """UTC time, whole seconds rounded up: `2026-12-02T10:00:05Z`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(epoch - 1e-9)))


def ratelimit_headers(d: AnthropicDecision, now: float) -> list[tuple[str, str]]:
    """anthropic-ratelimit-{requests,input-tokens,output-tokens,tokens}-{limit,remaining,reset}.

    Token figures remaining are rounded down to thousands, as Anthropic rounds them (a bucket of
    1,500 shows 1000 when full, 0 below 1,000); `tokens` is the tighter of input and output.
    """
    tokens = [lv for lv in (d.input_tokens, d.output_tokens) if lv is not None]
    tightest = min(tokens, key=lambda lv: lv.level) if tokens else None
    out: list[tuple[str, str]] = []
    dims: tuple[tuple[str, Level | None], ...] = (
        ("requests", d.requests),
        ("input-tokens", d.input_tokens),
        ("output-tokens", d.output_tokens),
        ("tokens", tightest),
    )
    for name, lv in dims:
        if lv is None:
            continue
        left = max(0, math.floor(lv.level + 1e-9))
        if name != "requests":
            left = left // 1000 * 1000
        out += [
            (f"anthropic-ratelimit-{name}-limit", str(lv.limit)),
            (f"anthropic-ratelimit-{name}-remaining", str(left)),
            (f"anthropic-ratelimit-{name}-reset", _rfc3339(now + lv.full_in)),
        ]
    return out


def rate_limit_error(
    d: AnthropicDecision, organization: str, now: float, limit_headers: bool = True
) -> Answer:
    """429 rate_limit_error naming the dimension that refused, with `retry-after` (seconds).

    A request whose input alone is above the ITPM limit can never pass: it gets the same error
    with `x-should-retry: false` and no `retry-after`.
    """
    unit = _UNITS.get(d.verdict, "input tokens")
    message = (
        f"This request would exceed the rate limit for your organization ({organization}) of"
        f" {d.limit or 0:,} {unit} per minute. For details, refer to: {_DOCS}. You can see the"
        " response headers for current usage. Please reduce the prompt length or the maximum"
        " tokens requested, or try again later. You may also contact sales at"
        " https://www.anthropic.com/contact-sales to discuss your options for a rate limit"
        " increase."
    )
    headers: list[tuple[str, str]] = []
    if d.verdict == "too_large":
        message += f" This request has {d.requested:,} input tokens: it can never succeed."
        headers.append(("x-should-retry", "false"))
    elif math.isfinite(d.retry_after):
        headers.append(("retry-after", str(max(1, math.ceil(d.retry_after - 1e-6)))))
    if limit_headers:
        headers += ratelimit_headers(d, now)
    return _error(429, message, headers)


def rate_limit_no_hint(organization: str) -> Answer:
    """429 rate_limit_error with no retry-after and no rate-limit headers (the fault)."""
    return _error(
        429,
        f"This request would exceed the rate limit for your organization ({organization})."
        " Please try again later.",
    )


# --- requests ---------------------------------------------------------------------------------


def _strip_cache_control(block: Any) -> Any:
    if isinstance(block, dict):
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def _blocks(payload: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(role, block) in cache-prefix order: tools, system, then each message's content."""
    for tool in payload.get("tools") or ():
        yield "tool", tool
    system = payload.get("system")
    if isinstance(system, list):
        for block in system:
            yield "system", block
    elif system is not None:
        yield "system", system
    for message in payload.get("messages") or ():
        role = str(message.get("role", "")) if isinstance(message, dict) else ""
        content = message.get("content") if isinstance(message, dict) else message
        if isinstance(content, list):
            for block in content:
                yield role, block
        else:
            yield role, content


def _ttl(mark: Any) -> float:
    return 3600.0 if isinstance(mark, dict) and mark.get("ttl") == "1h" else 300.0


def _common(raw: Any) -> tuple[dict[str, Any], str]:
    if not isinstance(raw, dict):
        raise BadRequest("Request body must be a JSON object.")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Field required")
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: Field required (a non-empty list)")
    return raw, model


def _prompt(payload: dict[str, Any], model: str) -> tuple[int, tuple[CacheBreakpoint, ...]]:
    """Characters of the prompt and its cache breakpoints."""
    digest = hashlib.sha256(model.encode())
    chars = 0
    marks: list[CacheBreakpoint] = []
    for role, block in _blocks(payload):
        chars += text_chars(block)
        digest.update(json.dumps([role, _strip_cache_control(block)], sort_keys=True).encode())
        if isinstance(block, dict) and "cache_control" in block:
            ttl = _ttl(block["cache_control"])
            marks.append(CacheBreakpoint(digest.copy().hexdigest()[:32], chars, ttl))
    if len(marks) > _MAX_BREAKPOINTS:
        raise BadRequest(
            f"A maximum of {_MAX_BREAKPOINTS} blocks with cache_control may be provided."
            f" Found {len(marks)}."
        )
    return chars, tuple(marks)


def parse_messages(raw: Any, lo: int, hi: int) -> Call:
    """POST /v1/messages -> Call (no cache applied yet: see PromptCache.resolve)."""
    payload, model = _common(raw)
    max_tokens = payload.get("max_tokens")
    if max_tokens is None:
        raise BadRequest("max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest(f"max_tokens: Input should be an integer >= 1, got {max_tokens!r}")
    chars, marks = _prompt(payload, model)
    prompt = chars_tokens(chars)
    return Call(
        vendor="anthropic",
        api="messages",
        model=model,
        stream=bool(payload.get("stream")),
        prompt_chars=chars,
        prompt_tokens=prompt,
        max_output=max_tokens,
        charge=prompt,
        reply=synthesize(request_digest(payload, "anthropic", model), max_tokens, lo, hi),
        payload=payload,
        breakpoints=marks,
    )


def parse_count_tokens(raw: Any) -> tuple[str, int]:
    """POST /v1/messages/count_tokens -> (model, input tokens), the cache left out."""
    payload, model = _common(raw)
    chars, _ = _prompt(payload, model)
    return model, chars_tokens(chars)


class PromptCache:
    """Which marked prompt prefixes are cached, and until when (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}

    def resolve(self, call: Call, now: float) -> Call:
        """The call with its input split into read, written and uncached tokens."""
        if not call.breakpoints:
            return call
        with self._lock:
            read_chars = next(
                (
                    bp.chars
                    for bp in reversed(call.breakpoints)
                    if self._expiry.get(bp.key, 0) > now
                ),
                0,
            )
        write_chars = max(read_chars, call.breakpoints[-1].chars)
        read = chars_tokens(read_chars)
        creation = chars_tokens(write_chars) - read
        uncached = chars_tokens(call.prompt_chars) - read - creation
        return replace(
            call,
            prompt_tokens=uncached,
            cache_read=read,
            cache_creation=creation,
            charge=uncached + creation,
        )

    def store(self, call: Call, now: float) -> None:
        """Cache (or refresh) every marked prefix of a served call."""
        with self._lock:
            if len(self._expiry) > 10_000:
                self._expiry = {k: t for k, t in self._expiry.items() if t > now}
            for bp in call.breakpoints:
                self._expiry[bp.key] = max(self._expiry.get(bp.key, 0), now + bp.ttl)

    def clear(self) -> None:
        """Forget every cached prefix."""
        with self._lock:
            self._expiry.clear()


# --- answers ----------------------------------------------------------------------------------


def _usage(call: Call, output: int) -> dict[str, Any]:
    return {
        "input_tokens": call.prompt_tokens,
        "cache_creation_input_tokens": call.cache_creation,
        "cache_read_input_tokens": call.cache_read,
        "output_tokens": output,
        "service_tier": "standard",
    }


def _message(call: Call, content: list[dict[str, Any]], stop: str | None, output: int) -> Any:
    return {
        "id": f"msg_emu{call.reply.digest}",
        "type": "message",
        "role": "assistant",
        "model": call.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": _usage(call, output),
    }


def message_answer(
    call: Call,
    headers: Sequence[tuple[str, str]],
    delay: float = 0.0,
    stream_error: bool = False,
) -> Answer:
    """The message as JSON, or as the SSE event sequence (cut by an error event if asked)."""
    stop = "max_tokens" if call.reply.truncated else "end_turn"
    done = call.reply.tokens
    if not call.stream:
        body = _message(call, [{"type": "text", "text": call.reply.text}], stop, done)
        return json_answer(200, body, headers)
    pieces = call.reply.pieces()
    events = [
        sse_event(
            {"type": "message_start", "message": _message(call, [], None, 1)}, "message_start"
        ),
        sse_event(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            "content_block_start",
        ),
        sse_event({"type": "ping"}, "ping"),
    ]
    for piece in pieces[:1] if stream_error else pieces:
        delta = {"type": "text_delta", "text": piece}
        events.append(
            sse_event(
                {"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta"
            )
        )
    if stream_error:
        err = {"type": "overloaded_error", "message": "Overloaded"}
        events.append(sse_event({"type": "error", "error": err}, "error"))
        return sse_answer(events, headers, delay)
    events += [
        sse_event({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse_event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {k: v for k, v in _usage(call, done).items() if k != "service_tier"},
            },
            "message_delta",
        ),
        sse_event({"type": "message_stop"}, "message_stop"),
    ]
    return sse_answer(events, headers, delay)


def count_tokens_answer(tokens: int) -> Answer:
    """POST /v1/messages/count_tokens result."""
    return json_answer(200, {"input_tokens": tokens}, [("request-id", request_id())])


def models_answer(models: Sequence[str]) -> Answer:
    """GET /v1/models in Anthropic's shape (chosen for an x-api-key or anthropic-version)."""
    data = [
        {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
        for m in models
    ]
    return json_answer(
        200,
        {
            "data": data,
            "has_more": False,
            "first_id": models[0] if models else None,
            "last_id": models[-1] if models else None,
        },
        [("request-id", request_id())],
    )
