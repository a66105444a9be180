"""The emulator's core, free of sockets and pytest: route, authenticate, fault, admit, log."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from . import anthropic_api, gemini_api, openai_api
from .call import Call
from .config import AnthropicLimitSpec, EmulatorConfig, LimitSpec, Vendor
from .faults import Fault, FaultQueue, parse_fault
from .limits import AnthropicDecision, AnthropicLimiter, BucketLimiter, DailyQuota, Decision
from .records import RequestLog, RequestRecord
from .wire import Answer, Request, json_answer

__all__ = ["EmulatorCore"]

# Gemini API (`/v1beta/models/M:method`) and Vertex AI, with a project and location
# (`/v1beta1/projects/P/locations/L/publishers/google/models/M:method`) or in express mode
# (`/v1beta1/publishers/google/models/M:method`, an API key).
_GEMINI_PATH = re.compile(
    r"^(?:/(?P<ver>v1|v1beta|v1alpha|v1beta1))?(?P<vertex>(?:/projects/[^/]+/locations/[^/]+)?"
    r"/publishers/google)?/models/(?P<model>[^/:]+):(?P<method>generateContent|"
    r"streamGenerateContent|countTokens)$"
)
# OpenAI (`/v1/...`) and Azure OpenAI: `/openai/deployments/D/...?api-version=`, whose
# deployment names the model, and the deployment-less `/openai/responses`, `/openai/v1/...`.
_OPENAI_PATH = re.compile(
    r"^(?:/v1|/openai(?:/v1)?|/openai/deployments/(?P<deployment>[^/]+))"
    r"/(?P<endpoint>chat/completions|responses|embeddings)$"
)
_RESET_FIELDS = ("window", "mode", "per_model", "model_limits", "anthropic_classes")
_MESSAGES = "/v1/messages"
_COUNT_TOKENS = "/v1/messages/count_tokens"


class _Wire(Protocol):
    """What every vendor module answers errors with (the modules satisfy it)."""

    def bad_request(self, message: str) -> Answer: ...
    def auth_error(self, key: str | None) -> Answer: ...
    def not_found(self, path: str) -> Answer: ...
    def server_error(self, status: int) -> Answer: ...


_WIRE: dict[Vendor, _Wire] = {
    "openai": openai_api,
    "gemini": gemini_api,
    "anthropic": anthropic_api,
}
_BAD_REQUEST = (openai_api.BadRequest, gemini_api.BadRequest, anthropic_api.BadRequest)


class EmulatorCore:
    """Handles one Request at a time (thread-safe); the HTTP server only moves bytes."""

    def __init__(
        self, config: EmulatorConfig | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config or EmulatorConfig()
        self.clock = clock
        self.faults = FaultQueue()
        self.log = RequestLog(self.config.log_path, self.config.log_limit)
        self._lock = threading.Lock()
        self._limiters: dict[str, BucketLimiter] = {}
        self._limiter_models: dict[str, tuple[Vendor, str]] = {}
        self._anthropic: dict[str, AnthropicLimiter] = {}
        self._anthropic_models: dict[str, str] = {}
        self._daily = DailyQuota()
        self.cache = anthropic_api.PromptCache()
        self._in_flight = 0
        #: The port the server bound (the HTTP side sets it; config.port may be 0).
        self.bound_port: int | None = None
        self._server_fault = parse_fault(self.config.fault) if self.config.fault else None

    # --- control -----------------------------------------------------------------------------

    def configure(self, changes: Mapping[str, Any] | EmulatorConfig) -> EmulatorConfig:
        """Apply run-time changes (or a whole config; host/port stay); window/mode/rules reset."""
        with self._lock:
            if isinstance(changes, EmulatorConfig):
                new = replace(changes, host=self.config.host, port=self.config.port)
            else:
                new = self.config.updated(changes)
            if any(getattr(new, f) != getattr(self.config, f) for f in _RESET_FIELDS):
                self._clear_limiters()
            else:
                for key, (vendor, model) in self._limiter_models.items():
                    _, spec = new.limits_for(vendor, model)
                    self._limiters[key].set_limits(spec.tpm, spec.rpm)
                for key, model in self._anthropic_models.items():
                    _, aspec = new.anthropic_limits_for(model)
                    self._anthropic[key].set_limits(aspec.rpm, aspec.itpm, aspec.otpm)
            self.config = new
            self._server_fault = parse_fault(new.fault) if new.fault else None
            return new

    def reset(self) -> None:
        """Forget all windows, buckets, daily counts, cached prompts, records, stats and faults."""
        with self._lock:
            self._clear_limiters()
            self._daily.clear()
        self.cache.clear()
        self.log.clear()
        self.faults.clear()

    def _clear_limiters(self) -> None:
        self._limiters.clear()
        self._limiter_models.clear()
        self._anthropic.clear()
        self._anthropic_models.clear()

    def stats(self) -> dict[str, Any]:
        """Totals per vendor and bucket, plus the configuration in force."""
        out = self.log.stats()
        out["config"] = self.config_dict()
        out["in_flight"] = self._in_flight
        out["queued_faults"] = len(self.faults)
        return out

    def config_dict(self) -> dict[str, Any]:
        """The configuration in force as JSON, with the bound port rather than 0."""
        data = self.config.to_dict()
        if self.bound_port is not None:
            data["port"] = self.bound_port
        return data

    def admit(self, vendor: Vendor, model: str, charge: int) -> tuple[Decision, str, LimitSpec]:
        """Charge `charge` to the model's bucket if it fits (the enforcement point)."""
        with self._lock:
            return self._admit_locked(vendor, model, charge)

    def _admit_locked(
        self, vendor: Vendor, model: str, charge: int
    ) -> tuple[Decision, str, LimitSpec]:
        key, spec = self.config.limits_for(vendor, model)
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = BucketLimiter(self.config.mode, self.config.window, spec.tpm, spec.rpm)
            self._limiters[key] = limiter
            self._limiter_models[key] = (vendor, model)
        return limiter.admit(charge, self.clock()), key, spec

    def admit_gemini(self, model: str, charge: int) -> tuple[Decision | None, str, LimitSpec]:
        """Like `admit`, after the model's requests-per-day quota (None: the day is spent)."""
        rpd = self.config.gemini_rpd
        with self._lock:
            now = self.clock()
            if rpd is not None and self._daily.used(model, now) >= rpd:
                key, spec = self.config.limits_for("gemini", model)
                return None, key, spec
            decision, key, spec = self._admit_locked("gemini", model, charge)
            if decision.admitted:
                self._daily.commit(model, now)
            return decision, key, spec

    def admit_anthropic(
        self, call: Call
    ) -> tuple[AnthropicDecision, Call, str, AnthropicLimitSpec]:
        """Split the input by the prompt cache, then charge the model class's three buckets.

        The reply's output tokens are charged at once, as the emulator produces the whole reply
        when it admits the request; a refused request is charged nothing and caches nothing.
        """
        with self._lock:
            key, spec = self.config.anthropic_limits_for(call.model)
            limiter = self._anthropic.get(key)
            if limiter is None:
                limiter = AnthropicLimiter(self.config.window, spec.rpm, spec.itpm, spec.otpm)
                self._anthropic[key] = limiter
                self._anthropic_models[key] = call.model
            now = self.clock()
            call = self.cache.resolve(call, now)
            decision = limiter.admit(call.charge, call.completion_tokens, now)
            if decision.admitted:
                self.cache.store(call, now)
            return decision, call, key, spec

    # --- request handling --------------------------------------------------------------------

    def handle(self, req: Request) -> Answer:
        """Answer one HTTP request."""
        with self._lock:
            self._in_flight += 1
        try:
            if req.path.startswith("/__emulator/"):
                return self._control(req)
            return self._api(req)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _control(self, req: Request) -> Answer:
        name = req.path[len("/__emulator/") :]
        try:
            body: Any = json.loads(req.body) if req.body.strip() else {}
            if req.method == "GET" and name == "stats":
                return json_answer(200, self.stats())
            if req.method == "GET" and name == "log":
                return json_answer(200, [r.__dict__ for r in self.log.records()])
            if req.method == "GET" and name == "config":
                return json_answer(200, self.config_dict())
            if req.method == "POST" and name == "reset":
                self.reset()
                return json_answer(200, {"ok": True})
            if req.method == "POST" and name == "config":
                self.configure(body)
                return json_answer(200, self.config_dict())
            if req.method == "POST" and name == "faults":
                if body.get("clear"):
                    self.faults.clear()
                specs = body.get("faults", [body["fault"]] if "fault" in body else [])
                for spec in specs:
                    self.faults.push(parse_fault(spec), body.get("count"))
                return json_answer(200, {"queued": len(self.faults)})
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return json_answer(400, {"error": {"message": str(exc), "type": "emulator_error"}})
        return json_answer(404, {"error": {"message": f"no such control endpoint {req.path}"}})

    def _vendor_of(self, req: Request) -> Vendor:
        if req.path == _MESSAGES or req.path.startswith(_MESSAGES + "/"):
            return "anthropic"
        if _GEMINI_PATH.match(req.path) or "x-goog-api-key" in req.headers or "key" in req.query:
            return "gemini"
        if "x-api-key" in req.headers or "anthropic-version" in req.headers:
            return "anthropic"
        return "openai"

    def _key(self, vendor: Vendor, req: Request) -> str | None:
        if vendor == "gemini" and (req.headers.get("x-goog-api-key") or req.query.get("key")):
            return req.headers.get("x-goog-api-key") or req.query.get("key")
        if vendor == "anthropic" and req.headers.get("x-api-key"):
            return req.headers["x-api-key"]
        if vendor == "openai" and req.path.startswith("/openai/") and req.headers.get("api-key"):
            return req.headers["api-key"]  # Azure's key header
        # Vertex AI (and Azure with Entra ID) send an OAuth bearer token.
        auth = req.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None

    def _api(self, req: Request) -> Answer:
        cfg = self.config
        vendor = self._vendor_of(req)
        wire = _WIRE[vendor]
        try:
            fault = self._fault_for(req)
        except ValueError as exc:
            return wire.bad_request(str(exc))
        if fault is not None and fault.latency:
            time.sleep(fault.latency)
        if cfg.require_key or cfg.valid_keys is not None:
            key = self._key(vendor, req)
            if key is None or (cfg.valid_keys is not None and key not in cfg.valid_keys):
                azure = vendor == "openai" and req.path.startswith("/openai/")
                answer = openai_api.azure_auth_error() if azure else wire.auth_error(key)
                self._record(vendor, "", req.path, answer.status, None, "auth", fault)
                return answer
        now = int(self.clock())
        if req.method == "GET" and req.path == "/v1/models":
            if vendor == "gemini":
                return gemini_api.models_answer(cfg.gemini_models)
            if vendor == "anthropic":
                return anthropic_api.models_answer(cfg.anthropic_models)
            return openai_api.models_answer(cfg.models, now)
        if req.method == "POST" and req.path == _COUNT_TOKENS:
            return self._count_tokens(req, fault)
        gemini = _GEMINI_PATH.match(req.path)
        if req.method == "POST" and gemini and gemini["method"] == "countTokens":
            return self._gemini_count_tokens(req, gemini["model"], fault)
        try:
            call, sse = self._parse(req)
        except _BAD_REQUEST as exc:
            return wire.bad_request(str(exc))
        except LookupError:
            return wire.not_found(req.path)
        if vendor == "anthropic":
            return self._serve_anthropic(req, call, fault)
        return self._serve(req, call, sse, fault)

    def _count_tokens(self, req: Request, fault: Fault | None) -> Answer:
        """POST /v1/messages/count_tokens: free of the Messages buckets, logged as a request.

        Anthropic limits token counting by its own RPM, independent of the Messages API's RPM,
        ITPM and OTPM: so a count is never charged to (nor refused by) those buckets. It is
        logged, in a bucket of its own (`anthropic:count_tokens`); status/overloaded faults apply.
        """
        bucket = "anthropic:count_tokens"
        try:
            model, tokens = anthropic_api.parse_count_tokens(_json(req.body))
        except anthropic_api.BadRequest as exc:
            return anthropic_api.bad_request(str(exc))
        rejected = self._fault_answer("anthropic", None, fault) if fault is not None else None
        if rejected is not None:
            answer, outcome = rejected
        else:
            answer, outcome = anthropic_api.count_tokens_answer(tokens), "ok"
        self._record("anthropic", model, req.path, answer.status, None, outcome, fault, bucket)
        return answer

    def _gemini_count_tokens(self, req: Request, model: str, fault: Fault | None) -> Answer:
        """models/M:countTokens (Gemini API and Vertex AI): free of TPM and RPM, logged.

        Google limits countTokens apart from generateContent, so it is never charged to (nor
        refused by) the model's bucket; it is logged in a bucket of its own
        (`gemini:count_tokens`), and status/overloaded faults apply.
        """
        cfg = self.config
        try:
            call = gemini_api.parse_generate(
                _json(req.body), model, False, cfg.reply_min_tokens, cfg.reply_max_tokens
            )
        except gemini_api.BadRequest as exc:
            return gemini_api.bad_request(str(exc))
        rejected = self._fault_answer("gemini", call, fault) if fault is not None else None
        answer, outcome = rejected or (gemini_api.count_tokens_answer(call), "ok")
        bucket = "gemini:count_tokens"
        self._record("gemini", model, req.path, answer.status, None, outcome, fault, bucket)
        return answer

    def _fault_for(self, req: Request) -> Fault | None:
        fault = self._server_fault
        queued = self.faults.pop()
        header = req.headers.get("x-emulator-fault")
        for extra in (queued, parse_fault(header) if header else None):
            if extra is not None:
                fault = extra if fault is None else fault.merged(extra)
        return fault

    def _parse(self, req: Request) -> tuple[Call, bool]:
        cfg = self.config
        lo, hi = cfg.reply_min_tokens, cfg.reply_max_tokens
        payload = _json(req.body)
        m = _GEMINI_PATH.match(req.path)
        if req.method == "POST" and m:
            stream = m["method"] == "streamGenerateContent"
            call = gemini_api.parse_generate(payload, m["model"], stream, lo, hi)
            return call, req.query.get("alt") == "sse"
        o = _OPENAI_PATH.match(req.path)
        if req.method == "POST" and o:
            if o["deployment"] and isinstance(payload, dict):
                # Azure ignores the body's model: the deployment decides it (and the bucket).
                payload = {**payload, "model": cfg.azure_model(o["deployment"])}
            if o["endpoint"] == "embeddings":
                return openai_api.parse_embeddings(payload, cfg.embedding_dimensions), False
            if o["endpoint"] == "chat/completions":
                return openai_api.parse_chat(payload, cfg.default_max_output, lo, hi), True
            return openai_api.parse_responses(payload, cfg.default_max_output, lo, hi), True
        if req.method == "POST" and req.path == _MESSAGES:
            return anthropic_api.parse_messages(payload, lo, hi), True
        raise LookupError(req.path)

    def _fault_answer(
        self, vendor: Vendor, call: Call | None, fault: Fault
    ) -> tuple[Answer, str] | None:
        """The vendor's answer to a fault that refuses the request, and its outcome name."""
        cfg = self.config
        model = call.model if call is not None else ""
        if fault.status is not None:
            return _WIRE[vendor].server_error(fault.status), "fault"
        if fault.overloaded:
            if vendor == "anthropic":
                return anthropic_api.overloaded_error(), "overloaded"
            return _WIRE[vendor].server_error(503), "overloaded"
        if vendor == "anthropic" and (
            fault.spend_limit or fault.insufficient_quota or fault.daily_quota
        ):
            return anthropic_api.spend_limit_error(), "spend_limit"
        if fault.spend_limit or fault.insufficient_quota:
            if vendor == "gemini":
                return gemini_api.quota_error(model), "insufficient_quota"
            return openai_api.quota_error(), "insufficient_quota"
        if fault.daily_quota:
            wait = DailyQuota.reset_after(self.clock())
            if vendor == "gemini":
                return gemini_api.daily_quota_error(model, cfg.gemini_rpd, wait), "daily_quota"
            return openai_api.daily_quota_error(model, cfg.organization, wait), "daily_quota"
        return None

    def _serve(self, req: Request, call: Call, sse: bool, fault: Fault | None) -> Answer:
        cfg = self.config
        gem = call.vendor == "gemini"
        bucket, spec = cfg.limits_for(call.vendor, call.model)
        limits = (spec.tpm, spec.rpm, None)
        rejected = self._fault_answer(call.vendor, call, fault) if fault is not None else None
        if rejected is None and cfg.insufficient_quota:
            rejected = (
                gemini_api.quota_error(call.model) if gem else openai_api.quota_error(),
                "insufficient_quota",
            )
        if rejected is None and fault is not None and fault.rate_limit_no_hint:
            d = Decision("tokens", call.charge, spec.tpm, 0, 0.0, None, None, 0.0, None, None, 0.0)
            no_hint = (
                gemini_api.rate_limit_error(call, d, retry_info=False)
                if gem
                else openai_api.rate_limit_error(call, d, cfg.organization, hint=False)
            )
            rejected = (no_hint, "rate_limit_no_hint")
        if rejected is not None:
            answer, outcome = rejected
            self._record(
                call.vendor, call.model, req.path, answer.status, call, outcome, fault, bucket,
                limits,
            )  # fmt: skip
            return answer
        decision: Decision | None
        if gem:
            decision, bucket, spec = self.admit_gemini(call.model, call.charge)
        else:
            decision, bucket, spec = self.admit(call.vendor, call.model, call.charge)
        limits = (spec.tpm, spec.rpm, None)
        if decision is None:
            wait = DailyQuota.reset_after(self.clock())
            answer = gemini_api.daily_quota_error(call.model, cfg.gemini_rpd, wait)
            self._record(
                call.vendor, call.model, req.path, 429, call, "daily_quota", fault, bucket, limits
            )
            return answer
        if not decision.admitted:
            answer = (
                gemini_api.rate_limit_error(call, decision, cfg.gemini_retry_info)
                if gem
                else openai_api.rate_limit_error(
                    call, decision, cfg.organization, limit_headers=cfg.limit_headers
                )
            )
            outcome = decision.verdict
            self._record(
                call.vendor, call.model, req.path, 429, call, outcome, fault, bucket, limits
            )
            return answer
        created = int(self.clock())
        delay = cfg.stream_delay
        if gem:
            answer = gemini_api.generate_answer(call, sse, delay)
        else:
            headers = openai_api.ratelimit_headers(decision) if cfg.limit_headers else []
            headers.append(("x-request-id", f"req_emu{call.reply.digest}"))
            if call.api == "embeddings":
                answer = openai_api.embeddings_answer(call, headers)
            else:
                build = (
                    openai_api.chat_answer if call.api == "chat" else openai_api.responses_answer
                )
                answer = build(call, created, headers, delay)
        answer = _apply_output_faults(answer, fault, call)
        self._record(call.vendor, call.model, req.path, 200, call, "ok", fault, bucket, limits)
        return answer

    def _serve_anthropic(self, req: Request, call: Call, fault: Fault | None) -> Answer:
        """POST /v1/messages: faults, then the three buckets, then the message (JSON or SSE)."""
        cfg = self.config
        org = [("anthropic-organization-id", cfg.organization)]
        bucket, spec = cfg.anthropic_limits_for(call.model)
        limits = (spec.itpm, spec.rpm, spec.otpm)
        rejected = self._fault_answer("anthropic", call, fault) if fault is not None else None
        if rejected is None and cfg.insufficient_quota:
            rejected = anthropic_api.spend_limit_error(), "spend_limit"
        if rejected is None and fault is not None and fault.rate_limit_no_hint:
            rejected = anthropic_api.rate_limit_no_hint(cfg.organization), "rate_limit_no_hint"
        if rejected is not None:
            answer, outcome = rejected
            self._record(
                "anthropic", call.model, req.path, answer.status, call, outcome, fault, bucket,
                limits,
            )  # fmt: skip
            return answer.with_headers(org)
        decision, call, bucket, spec = self.admit_anthropic(call)
        limits = (spec.itpm, spec.rpm, spec.otpm)
        now = self.clock()
        levels = decision.levels()
        if not decision.admitted:
            answer = anthropic_api.rate_limit_error(
                decision, cfg.organization, now, cfg.limit_headers
            )
            self._record(
                "anthropic", call.model, req.path, 429, call, decision.verdict, fault, bucket,
                limits, levels,
            )  # fmt: skip
            return answer.with_headers(org)
        headers = [("request-id", anthropic_api.request_id()), *org]
        if cfg.limit_headers:
            headers += anthropic_api.ratelimit_headers(decision, now)
        stream_error = fault is not None and fault.stream_error
        answer = anthropic_api.message_answer(call, headers, cfg.stream_delay, stream_error)
        answer = _apply_output_faults(answer, fault, call)
        self._record(
            "anthropic", call.model, req.path, 200, call, "ok", fault, bucket, limits, levels
        )
        return answer

    def _record(
        self,
        vendor: str,
        model: str,
        path: str,
        status: int,
        call: Call | None,
        outcome: str,
        fault: Fault | None,
        bucket: str = "",
        limits: tuple[int | None, int | None, int | None] = (None, None, None),
        levels: dict[str, float] | None = None,
    ) -> None:
        """Log one request; `limits` is (tpm or Anthropic's itpm, rpm, otpm)."""
        ok = outcome == "ok" and call is not None
        record = RequestRecord(
            t=self.clock(),
            vendor=vendor,
            model=model,
            path=path,
            status=status,
            charge=call.charge if call is not None and ok else 0,
            prompt_tokens=call.prompt_tokens if call is not None and ok else 0,
            completion_tokens=call.completion_tokens if call is not None and ok else 0,
            in_flight=self._in_flight,
            fault=fault.spec if fault is not None and fault.spec else None,
            outcome=outcome,
            bucket=bucket or f"{vendor}:{model}",
            stream=call.stream if call is not None else False,
            cache_read_tokens=call.cache_read if call is not None and ok else 0,
            cache_creation_tokens=call.cache_creation if call is not None and ok else 0,
            levels=levels,
        )
        tpm, rpm, otpm = limits
        self.log.add(record, self.config.window, tpm, rpm, otpm)


def _json(body: bytes) -> Any:
    """The request body decoded, or None when it is not JSON."""
    try:
        return json.loads(body or b"null")
    except ValueError:
        return None


def _apply_output_faults(answer: Answer, fault: Fault | None, call: Call) -> Answer:
    """malformed_json corrupts the 200 body (or one event); drop_stream cuts the connection;
    stream_error ends an OpenAI or Gemini stream with an error event (Anthropic builds its own).
    """
    if fault is None:
        return answer
    if fault.stream_error and answer.events is not None and call.vendor != "anthropic":
        keep = list(answer.events[: min(2, len(answer.events) - 1)])
        if call.vendor == "gemini":
            keep.append(gemini_api.stream_error_event())
        else:
            keep.append(openai_api.stream_error_event(call.api))
        answer = replace(answer, events=tuple(keep))
    if fault.malformed_json:
        if answer.events is not None:
            events = list(answer.events)
            broken = (
                anthropic_api.BROKEN_EVENT
                if call.vendor == "anthropic"
                else b'data: {"id": "broken", "choices": [\n\n'
            )
            events[min(1, len(events) - 1)] = broken
            answer = replace(answer, events=tuple(events))
        else:
            answer = replace(answer, body=answer.body[: max(1, len(answer.body) // 2)])
    if fault.drop_stream is not None:
        answer = replace(answer, drop_after=fault.drop_stream)
    return answer
