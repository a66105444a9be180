"""OpenAI wire format: parse chat/responses requests, build bodies, SSE events, errors, headers."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Sequence
from typing import Any

from .call import Call, text_chars
from .limits import Decision
from .synth import Reply, chars_tokens, request_digest, synthesize
from .wire import Answer, go_duration, json_answer, sse_answer, sse_event

__all__ = [
    "auth_error",
    "azure_auth_error",
    "bad_request",
    "chat_answer",
    "daily_quota_error",
    "embeddings_answer",
    "models_answer",
    "not_found",
    "parse_chat",
    "parse_embeddings",
    "parse_responses",
    "quota_error",
    "rate_limit_error",
    "ratelimit_headers",
    "responses_answer",
    "server_error",
    "stream_error_event",
]

MESSAGE_OVERHEAD = 3  # tokens per message reported on top of ceil(chars/4) (bound: 4)


class BadRequest(ValueError):
    """The request body is not something the endpoint accepts (400)."""


def _error(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    param: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> Answer:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return json_answer(status, body, headers)


def bad_request(message: str, param: str | None = None) -> Answer:
    """400 invalid_request_error."""
    return _error(400, message, "invalid_request_error", None, param)


def not_found(path: str) -> Answer:
    """404 for unknown paths, as OpenAI answers them."""
    return _error(404, f"Invalid URL (POST {path})", "invalid_request_error", None)


def auth_error(key: str | None) -> Answer:
    """401: no key, or a key not in the configured list."""
    if not key:
        msg = (
            "You didn't provide an API key. You need to provide your API key in an Authorization"
            " header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password"
            " field (with blank username) if you're accessing the API from your browser and are"
            " prompted for a username and password. You can obtain an API key from"
            " https://platform.openai.com/account/api-keys."
        )
        return _error(401, msg, "invalid_request_error", None)
    shown = f"{key[:3]}***{key[-2:]}" if len(key) > 6 else "***"
    msg = (
        f"Incorrect API key provided: {shown}. You can find your API key at"
        " https://platform.openai.com/account/api-keys."
    )
    return _error(401, msg, "invalid_request_error", "invalid_api_key")


def azure_auth_error() -> Answer:
    """401 as Azure OpenAI answers a missing or wrong `api-key`."""
    msg = (
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to"
        " provide a valid key for an active subscription and use a correct regional API"
        " endpoint for your resource."
    )
    return json_answer(401, {"error": {"code": "401", "message": msg}})


def server_error(status: int) -> Answer:
    """Injected 5xx (or other status) in OpenAI's shape."""
    if status == 503:
        msg = "The engine is currently overloaded, please try again later."
    else:
        msg = "The server had an error while processing your request. Sorry about that!"
    type_ = "server_error" if status >= 500 else "invalid_request_error"
    return _error(status, msg, type_, None)


def quota_error() -> Answer:
    """429 insufficient_quota: never succeeds on retry, so no retry hints."""
    msg = (
        "You exceeded your current quota, please check your plan and billing details. For more"
        " information on this error, read the docs:"
        " https://platform.openai.com/docs/guides/error-codes/api-errors."
    )
    return _error(429, msg, "insufficient_quota", "insufficient_quota")


def ratelimit_headers(d: Decision) -> list[tuple[str, str]]:
    """x-ratelimit-{limit,remaining,reset}-{tokens,requests}, as on every OpenAI answer."""
    out: list[tuple[str, str]] = []
    for kind, limit, remaining, reset in (
        ("requests", d.limit_requests, d.remaining_requests, d.reset_requests),
        ("tokens", d.limit_tokens, d.remaining_tokens, d.reset_tokens),
    ):
        if limit is not None and remaining is not None:
            out += [
                (f"x-ratelimit-limit-{kind}", str(limit)),
                (f"x-ratelimit-remaining-{kind}", str(remaining)),
                (f"x-ratelimit-reset-{kind}", go_duration(reset)),
            ]
    return out


def rate_limit_error(
    call: Call, d: Decision, organization: str, hint: bool = True, limit_headers: bool = True
) -> Answer:
    """429 for a rejected admission: TPM/RPM, or "Request too large"; hint=False drops hints."""
    limits = ratelimit_headers(d) if limit_headers else []
    unit = "requests per min (RPM)" if d.verdict == "requests" else "tokens per min (TPM)"
    where = f"for {call.model} in organization {organization} on {unit}"
    if d.verdict == "too_large":
        msg = (
            f"Request too large {where}: Limit {d.limit}, Requested {d.requested}. The input or"
            " output tokens must be reduced in order to run successfully. Visit"
            " https://platform.openai.com/account/rate-limits to learn more."
        )
        return _error(429, msg, "tokens", "rate_limit_exceeded", headers=limits)
    type_ = "requests" if d.verdict == "requests" else "tokens"
    msg = f"Rate limit reached {where}: Limit {d.limit}, Used {d.used}, Requested {d.requested}."
    if not hint:
        return _error(429, msg, type_, "rate_limit_exceeded")
    msg += (
        f" Please try again in {go_duration(d.retry_after)}. Visit"
        " https://platform.openai.com/account/rate-limits to learn more."
    )
    headers = [
        ("retry-after", str(max(1, math.ceil(d.retry_after - 1e-6)))),
        ("retry-after-ms", str(max(1, math.ceil(d.retry_after * 1000 - 1e-6)))),
        *limits,
    ]
    return _error(429, msg, type_, "rate_limit_exceeded", headers=headers)


DAILY_REQUESTS = 10_000  # the RPD figure the `daily_quota` fault reports


def daily_quota_error(model: str, organization: str, retry_after: float) -> Answer:
    """429 on requests per day (RPD), the `daily_quota` fault: retry-after until the day turns."""
    msg = (
        f"Rate limit reached for {model} in organization {organization} on requests per day"
        f" (RPD): Limit {DAILY_REQUESTS}, Used {DAILY_REQUESTS}, Requested 1. Please try again in"
        f" {go_duration(retry_after)}. Visit https://platform.openai.com/account/rate-limits to"
        " learn more."
    )
    headers = [
        ("retry-after", str(max(1, math.ceil(retry_after - 1e-6)))),
        ("retry-after-ms", str(max(1, math.ceil(retry_after * 1000 - 1e-6)))),
    ]
    return _error(429, msg, "requests", "rate_limit_exceeded", headers=headers)


def stream_error_event(api: str) -> bytes:
    """The error event that ends a stream cut by the `stream_error` fault (chat or responses)."""
    msg = "The server had an error while processing your request. Sorry about that!"
    if api == "responses":
        err = {"type": "error", "code": "server_error", "message": msg, "param": None}
        return sse_event(err, "error")
    return sse_event({"error": {"message": msg, "type": "server_error", "param": None,
                                "code": None}})  # fmt: skip


def _max_output(payload: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = payload.get(key)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BadRequest(f"Invalid '{key}': expected an integer >= 1, got {value!r}.")
            return value
    return None


def _common(payload: Any, api: str) -> tuple[dict[str, Any], str]:
    if not isinstance(payload, dict):
        raise BadRequest("We could not parse the JSON body of your request.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter")
    return payload, model


def _charged_call(
    payload: dict[str, Any],
    model: str,
    api: str,
    text: object,
    items: int,
    output_keys: tuple[str, ...],
    sizes: tuple[int, int, int],
    include_usage: bool = False,
) -> Call:
    """A Call charged ceil(chars / 4) of `text` plus its declared output (else the default)."""
    default_max_output, lo, hi = sizes
    chars = text_chars(text)
    max_out = _max_output(payload, *output_keys)
    budget = max_out if max_out is not None else default_max_output
    return Call(
        vendor="openai",
        api=api,
        model=model,
        stream=bool(payload.get("stream")),
        prompt_chars=chars,
        prompt_tokens=chars_tokens(chars) + MESSAGE_OVERHEAD * items,
        max_output=max_out,
        charge=chars_tokens(chars) + budget,
        reply=synthesize(request_digest(payload, api), max_out, lo, hi),
        include_usage=include_usage,
        payload=payload,
    )


def parse_chat(raw: Any, default_max_output: int, lo: int, hi: int) -> Call:
    """POST /v1/chat/completions -> Call (charge = ceil(chars/4) + max output)."""
    payload, model = _common(raw, "chat")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("Invalid 'messages': expected a non-empty array.", "messages")
    options = payload.get("stream_options") or {}
    return _charged_call(
        payload, model, "chat", messages, len(messages),
        ("max_completion_tokens", "max_tokens"), (default_max_output, lo, hi),
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
    )


def parse_responses(raw: Any, default_max_output: int, lo: int, hi: int) -> Call:
    """POST /v1/responses -> Call (input + instructions text; max_output_tokens)."""
    payload, model = _common(raw, "responses")
    inp = payload.get("input")
    if inp is None:
        raise BadRequest("Missing required parameter: 'input'.", "input")
    items = len(inp) if isinstance(inp, list) else 1
    return _charged_call(
        payload, model, "responses", [inp, payload.get("instructions")], items,
        ("max_output_tokens",), (default_max_output, lo, hi),
    )


def _embedding_inputs(inp: object) -> list[str | list[int]]:
    """The inputs of an embeddings request: strings and token-id arrays (400 otherwise)."""
    if isinstance(inp, list) and inp and all(_is_id(t) for t in inp):
        inp = [inp]
    items = [inp] if isinstance(inp, str) else inp if isinstance(inp, list) else []
    valid: list[str | list[int]] = []
    for item in items:
        if isinstance(item, str) and item:
            valid.append(item)
        elif isinstance(item, list) and item and all(_is_id(t) for t in item):
            valid.append([int(t) for t in item])
    if not items or len(valid) != len(items):
        raise BadRequest(
            "'$.input' is invalid. Please check the API reference:"
            " https://platform.openai.com/docs/api-reference.",
            "input",
        )
    return valid


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_embeddings(raw: Any, dimensions: int) -> Call:
    """POST /v1/embeddings -> Call charged its input alone: ceil(chars/4) + token ids given."""
    payload, model = _common(raw, "embeddings")
    inputs = _embedding_inputs(payload.get("input"))
    fmt = payload.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise BadRequest(f"Invalid 'encoding_format': {fmt!r}.", "encoding_format")
    dims = payload.get("dimensions", dimensions)
    if not _is_id(dims) or dims < 1:
        raise BadRequest(f"Invalid 'dimensions': expected an integer >= 1, got {dims!r}.")
    chars = sum(len(i) for i in inputs if isinstance(i, str))
    tokens = chars_tokens(chars) + sum(len(i) for i in inputs if isinstance(i, list))
    digest = request_digest(payload, "embeddings")
    return Call(
        vendor="openai",
        api="embeddings",
        model=model,
        stream=False,
        prompt_chars=chars,
        prompt_tokens=tokens,
        max_output=0,
        charge=tokens,
        reply=Reply(words=(), truncated=False, digest=digest.hex()[:24]),
        payload={**payload, "input": inputs, "dimensions": dims, "encoding_format": fmt},
    )


def embedding_vector(model: str, item: str | list[int], dimensions: int) -> list[float]:
    """A unit vector drawn from a hash of the model and the input: same input, same vector."""
    seed = hashlib.sha256(f"{model}\x00{item!r}".encode()).digest()
    raw: list[float] = []
    block = seed
    while len(raw) < dimensions:
        block = hashlib.sha256(block).digest()
        raw += [b / 127.5 - 1.0 for b in block]
    vector = raw[:dimensions]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [round(v / norm, 6) for v in vector]


def embeddings_answer(call: Call, headers: Sequence[tuple[str, str]]) -> Answer:
    """The embeddings list (floats, or base64 little-endian float32 as the SDK asks by default)."""
    payload = call.payload
    data = []
    for index, item in enumerate(payload["input"]):
        vector = embedding_vector(call.model, item, payload["dimensions"])
        encoded: object = vector
        if payload["encoding_format"] == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    usage = {"prompt_tokens": call.prompt_tokens, "total_tokens": call.prompt_tokens}
    body = {"object": "list", "data": data, "model": call.model, "usage": usage}
    return json_answer(200, body, headers)


def _usage(call: Call) -> dict[str, Any]:
    return {
        "prompt_tokens": call.prompt_tokens,
        "completion_tokens": call.completion_tokens,
        "total_tokens": call.prompt_tokens + call.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_answer(
    call: Call, created: int, headers: Sequence[tuple[str, str]], delay: float = 0.0
) -> Answer:
    """The chat completion, as JSON or as chunks ending with usage (if asked) and [DONE]."""
    cid = f"chatcmpl-emu{call.reply.digest}"
    finish = "length" if call.reply.truncated else "stop"
    base = {"id": cid, "created": created, "model": call.model, "system_fingerprint": "fp_emulator"}
    if not call.stream:
        body = {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": call.reply.text,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": _usage(call),
            "service_tier": "default",
        }
        return json_answer(200, body, headers)
    chunk = {**base, "object": "chat.completion.chunk"}
    extra: dict[str, Any] = {"usage": None} if call.include_usage else {}

    def choice(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}

    events = [
        sse_event({**chunk, "choices": [choice({"role": "assistant", "content": ""})], **extra})
    ]
    events += [
        sse_event({**chunk, "choices": [choice({"content": p})], **extra})
        for p in call.reply.pieces()
    ]
    events.append(sse_event({**chunk, "choices": [choice({}, finish)], **extra}))
    if call.include_usage:
        events.append(sse_event({**chunk, "choices": [], "usage": _usage(call)}))
    events.append(sse_event("[DONE]"))
    return sse_answer(events, headers, delay)


def _response_object(call: Call, created: int, status: str, done: bool) -> dict[str, Any]:
    rid = f"resp_emu{call.reply.digest}"
    message = {
        "id": f"msg_emu{call.reply.digest}",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [
            {"type": "output_text", "text": call.reply.text, "annotations": [], "logprobs": []}
        ],
    }
    payload = call.payload if isinstance(call.payload, dict) else {}
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": payload.get("instructions"),
        "max_output_tokens": call.max_output,
        "model": call.model,
        "output": [message] if done else [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "metadata": {},
        "usage": {
            "input_tokens": call.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": call.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": call.prompt_tokens + call.completion_tokens,
        }
        if done
        else None,
    }


def responses_answer(
    call: Call, created: int, headers: Sequence[tuple[str, str]], delay: float = 0.0
) -> Answer:
    """The Responses API result, as JSON or as the typed SSE event sequence."""
    final = _response_object(call, created, "completed", True)
    if not call.stream:
        return json_answer(200, final, headers)
    item_id = f"msg_emu{call.reply.digest}"
    seq = 0
    events: list[bytes] = []

    def emit(type_: str, **fields: Any) -> None:
        nonlocal seq
        events.append(sse_event({"type": type_, "sequence_number": seq, **fields}, type_))
        seq += 1

    start = _response_object(call, created, "in_progress", False)
    emit("response.created", response=start)
    emit("response.in_progress", response=start)
    item = {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }
    emit("response.output_item.added", output_index=0, item=item)
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    loc = {"item_id": item_id, "output_index": 0, "content_index": 0}
    emit("response.content_part.added", **loc, part=part)
    for piece in call.reply.pieces():
        emit("response.output_text.delta", **loc, delta=piece, logprobs=[])
    emit("response.output_text.done", **loc, text=call.reply.text, logprobs=[])
    emit("response.content_part.done", **loc, part={**part, "text": call.reply.text})
    emit("response.output_item.done", output_index=0, item=final["output"][0])
    emit("response.completed", response=final)
    return sse_answer(events, headers, delay)


def models_answer(models: Sequence[str], created: int) -> Answer:
    """GET /v1/models."""
    data = [{"id": m, "object": "model", "created": created, "owned_by": "openai"} for m in models]
    return json_answer(200, {"object": "list", "data": data})
