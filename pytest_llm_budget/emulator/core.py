"""The emulator's core, free of sockets and pytest: route, authenticate, fault, admit, log."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from . import gemini_api, openai_api
from .call import Call
from .config import EmulatorConfig, LimitSpec, Vendor
from .faults import Fault, FaultQueue, parse_fault
from .limits import BucketLimiter, Decision
from .records import RequestLog, RequestRecord
from .wire import Answer, Request, json_answer

__all__ = ["EmulatorCore"]

_GEMINI_PATH = re.compile(
    r"^(?:/(?P<ver>v1|v1beta|v1alpha))?/models/(?P<model>[^/:]+):(?P<method>generateContent|"
    r"streamGenerateContent)$"
)
_RESET_FIELDS = ("window", "mode", "per_model", "model_limits")


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
        self._in_flight = 0
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
                self._limiters.clear()
                self._limiter_models.clear()
            else:
                for key, (vendor, model) in self._limiter_models.items():
                    _, spec = new.limits_for(vendor, model)
                    self._limiters[key].set_limits(spec.tpm, spec.rpm)
            self.config = new
            self._server_fault = parse_fault(new.fault) if new.fault else None
            return new

    def reset(self) -> None:
        """Forget all windows, records, stats and queued faults."""
        with self._lock:
            self._limiters.clear()
            self._limiter_models.clear()
        self.log.clear()
        self.faults.clear()

    def stats(self) -> dict[str, Any]:
        """Totals per vendor and bucket, plus the configuration in force."""
        out = self.log.stats()
        out["config"] = self.config.to_dict()
        out["in_flight"] = self._in_flight
        out["queued_faults"] = len(self.faults)
        return out

    def admit(self, vendor: Vendor, model: str, charge: int) -> tuple[Decision, str, LimitSpec]:
        """Charge `charge` to the model's bucket if it fits (the enforcement point)."""
        with self._lock:
            key, spec = self.config.limits_for(vendor, model)
            limiter = self._limiters.get(key)
            if limiter is None:
                limiter = BucketLimiter(self.config.mode, self.config.window, spec.tpm, spec.rpm)
                self._limiters[key] = limiter
                self._limiter_models[key] = (vendor, model)
            return limiter.admit(charge, self.clock()), key, spec

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
                return json_answer(200, self.config.to_dict())
            if req.method == "POST" and name == "reset":
                self.reset()
                return json_answer(200, {"ok": True})
            if req.method == "POST" and name == "config":
                return json_answer(200, self.configure(body).to_dict())
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
        if _GEMINI_PATH.match(req.path) or "x-goog-api-key" in req.headers or "key" in req.query:
            return "gemini"
        return "openai"

    def _key(self, vendor: Vendor, req: Request) -> str | None:
        if vendor == "gemini":
            return req.headers.get("x-goog-api-key") or req.query.get("key") or None
        auth = req.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None

    def _api(self, req: Request) -> Answer:
        cfg = self.config
        vendor = self._vendor_of(req)
        gem = vendor == "gemini"
        try:
            fault = self._fault_for(req)
        except ValueError as exc:
            return gemini_api.bad_request(str(exc)) if gem else openai_api.bad_request(str(exc))
        if fault is not None and fault.latency:
            time.sleep(fault.latency)
        if cfg.require_key or cfg.valid_keys is not None:
            key = self._key(vendor, req)
            if key is None or (cfg.valid_keys is not None and key not in cfg.valid_keys):
                answer = gemini_api.auth_error(key) if gem else openai_api.auth_error(key)
                self._record(vendor, "", req.path, answer.status, None, "auth", fault)
                return answer
        now = int(self.clock())
        if req.method == "GET" and req.path == "/v1/models":
            if vendor == "gemini":
                return gemini_api.models_answer(cfg.gemini_models)
            return openai_api.models_answer(cfg.models, now)
        try:
            call, sse = self._parse(req)
        except (openai_api.BadRequest, gemini_api.BadRequest) as exc:
            return gemini_api.bad_request(str(exc)) if gem else openai_api.bad_request(str(exc))
        except LookupError:
            return gemini_api.not_found(req.path) if gem else openai_api.not_found(req.path)
        return self._serve(req, call, sse, fault)

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
        try:
            payload = json.loads(req.body or b"null")
        except ValueError:
            payload = None
        m = _GEMINI_PATH.match(req.path)
        if req.method == "POST" and m:
            stream = m["method"] == "streamGenerateContent"
            call = gemini_api.parse_generate(payload, m["model"], stream, lo, hi)
            return call, req.query.get("alt") == "sse"
        if req.method == "POST" and req.path == "/v1/chat/completions":
            return openai_api.parse_chat(payload, cfg.default_max_output, lo, hi), True
        if req.method == "POST" and req.path == "/v1/responses":
            return openai_api.parse_responses(payload, cfg.default_max_output, lo, hi), True
        raise LookupError(req.path)

    def _serve(self, req: Request, call: Call, sse: bool, fault: Fault | None) -> Answer:
        cfg = self.config
        gem = call.vendor == "gemini"
        if fault is not None and fault.status is not None:
            status = fault.status
            answer = gemini_api.server_error(status) if gem else openai_api.server_error(status)
            self._record(call.vendor, call.model, req.path, answer.status, call, "fault", fault)
            return answer
        if cfg.insufficient_quota or (fault is not None and fault.insufficient_quota):
            answer = gemini_api.quota_error(call.model) if gem else openai_api.quota_error()
            self._record(call.vendor, call.model, req.path, 429, call, "insufficient_quota", fault)
            return answer
        if fault is not None and fault.rate_limit_no_hint:
            bucket, spec = cfg.limits_for(call.vendor, call.model)
            d = Decision("tokens", call.charge, spec.tpm, 0, 0.0, None, None, 0.0, None, None, 0.0)
            answer = (
                gemini_api.rate_limit_error(call, d, retry_info=False)
                if gem
                else openai_api.rate_limit_error(call, d, cfg.organization, hint=False)
            )
            kind = "rate_limit_no_hint"
            self._record(call.vendor, call.model, req.path, 429, call, kind, fault, bucket, spec)
            return answer
        decision, bucket, spec = self.admit(call.vendor, call.model, call.charge)
        if not decision.admitted:
            answer = (
                gemini_api.rate_limit_error(call, decision, cfg.gemini_retry_info)
                if gem
                else openai_api.rate_limit_error(call, decision, cfg.organization)
            )
            outcome = decision.verdict
            self._record(call.vendor, call.model, req.path, 429, call, outcome, fault, bucket, spec)
            return answer
        created = int(self.clock())
        delay = cfg.stream_delay
        if gem:
            answer = gemini_api.generate_answer(call, sse, delay)
        else:
            headers = openai_api.ratelimit_headers(decision)
            headers.append(("x-request-id", f"req_emu{call.reply.digest}"))
            build = openai_api.chat_answer if call.api == "chat" else openai_api.responses_answer
            answer = build(call, created, headers, delay)
        answer = _apply_output_faults(answer, fault)
        self._record(call.vendor, call.model, req.path, 200, call, "ok", fault, bucket, spec)
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
        spec: LimitSpec | None = None,
    ) -> None:
        ok = outcome == "ok"
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
        )
        tpm = spec.tpm if spec is not None else None
        rpm = spec.rpm if spec is not None else None
        self.log.add(record, self.config.window, tpm, rpm)


def _apply_output_faults(answer: Answer, fault: Fault | None) -> Answer:
    """malformed_json corrupts the 200 body (or one event); drop_stream cuts the connection."""
    if fault is None:
        return answer
    if fault.malformed_json:
        if answer.events is not None:
            events = list(answer.events)
            events[min(1, len(events) - 1)] = b'data: {"id": "broken", "choices": [\n\n'
            answer = replace(answer, events=tuple(events))
        else:
            answer = replace(answer, body=answer.body[: max(1, len(answer.body) // 2)])
    if fault.drop_stream is not None:
        answer = replace(answer, drop_after=fault.drop_stream)
    return answer
