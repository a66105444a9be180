"""vcrpy glue: one cassette per LLM test, record modes, secret filters, replay accounting.

vcrpy is imported only when a cassette is opened (record mode other than `off`) and used through
its public options (`vcr.VCR`, a registered matcher, `before_record_*` hooks, `skip_patchers`);
its httpx stubs are installed over the routing by `vcr_httpx.Tape`, so a replayed call never
waits or spends budget and a recorded one is paced, on httpx2 and legacy httpx alike.

Cassettes hold LLM traffic only (requests a provider recognises, or hosts in `llm_hosts`); other
HTTP passes through untouched and unrecorded.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pytest_llm_budget.records import CallRecord
from pytest_llm_budget.redact import mask_loggers
from pytest_llm_budget.settings.resolved import Settings

__all__ = [
    "REPLAYING_MODES", "CassettePolicy", "CassetteUse", "Cassettes", "cassette_name",
    "cassette_path", "replayed_record", "secret_headers", "secret_query",
    "secret_response_headers", "use_placeholder_keys",
]

#: Headers no cassette keeps, whatever the provider (plus the providers' own, and ini
#: `llm_filter_headers`).
GENERIC_SECRET_HEADERS = ("authorization", "cookie", "set-cookie", "proxy-authorization")
GENERIC_SECRET_RESPONSE_HEADERS = ("set-cookie",)
#: Record modes in which an existing cassette is replayed.
REPLAYING_MODES = ("once", "none", "new_episodes")
MAX_NAME = 120
_SAFE = re.compile(r"[^A-Za-z0-9_.\-\[\]]")


def secret_headers() -> tuple[str, ...]:
    """Request headers never written to a cassette: the generic ones and every provider's."""
    from pytest_llm_budget.providers.registry import providers

    return _unique(GENERIC_SECRET_HEADERS + tuple(h for p in providers() for h in p.secret_headers))


def secret_response_headers() -> tuple[str, ...]:
    """Response headers never written to a cassette: the generic ones and every provider's."""
    from pytest_llm_budget.providers.registry import providers

    named = tuple(h for p in providers() for h in p.secret_response_headers)
    return _unique(GENERIC_SECRET_RESPONSE_HEADERS + named)


def secret_query() -> tuple[str, ...]:
    """Query parameters never written to a cassette: every provider's."""
    from pytest_llm_budget.providers.registry import providers

    return _unique(tuple(q for p in providers() for q in p.secret_query))


def use_placeholder_keys(environ: MutableMapping[str, str]) -> Callable[[], None]:
    """Set each provider's placeholder key where none of its key variables is set (replay-only
    mode: a cassette answers every LLM request of an LLM test, so these are never sent, and
    request key headers never reach a cassette); returns the undo."""
    from pytest_llm_budget.providers.registry import placeholder_keys

    added = placeholder_keys(environ)
    environ.update(added)

    def undo() -> None:
        for variable, key in added.items():
            if environ.get(variable) == key:
                del environ[variable]

    return undo


def cassette_name(test_id: str) -> str:
    """A file-safe cassette name from a test id (`Class::test[params]`), unique per id.

    `::` becomes `.`; any other unsafe character becomes `_`, and then (or when the name is
    longer than MAX_NAME) a hash of the full id is appended, so ids that differ only in
    sanitised characters, or only past the cut, still get different files.
    """
    base, bracket, params = test_id.partition("[")
    name = base.replace("::", ".") + bracket + params
    safe = _SAFE.sub("_", name)
    if safe == name and len(safe) <= MAX_NAME:
        return safe
    digest = hashlib.sha256(test_id.encode("utf-8")).hexdigest()[:10]
    return f"{safe[: MAX_NAME - 11]}-{digest}"


def cassette_path(module: Path, cassette_dir: str, nodeid: str) -> Path:
    """`<module folder>/<cassette_dir>/<module name>/<cassette_name(test id)>.yaml`."""
    test_id = nodeid.split("::", 1)[1] if "::" in nodeid else nodeid
    folder = Path(cassette_dir)
    if not folder.is_absolute():
        folder = module.parent / folder
    return folder / module.stem / f"{cassette_name(test_id)}.yaml"


@dataclass(frozen=True)
class CassettePolicy:
    """What the settings say about cassettes: mode, filters, which hosts are LLM hosts."""

    mode: str = "off"
    filter_headers: tuple[str, ...] = field(default_factory=secret_headers)
    filter_response_headers: tuple[str, ...] = field(default_factory=secret_response_headers)
    filter_query: tuple[str, ...] = field(default_factory=secret_query)
    hosts: tuple[str, ...] = ()
    match_host: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> CassettePolicy:
        """The policy of a session's settings (user filters added to the built-in ones)."""
        extra = tuple(h.lower() for h in settings.filter_headers)
        return cls(
            mode=settings.record_mode,
            filter_headers=_unique(secret_headers() + extra),
            filter_response_headers=_unique(secret_response_headers() + extra),
            filter_query=_unique(secret_query() + tuple(settings.filter_query)),
            hosts=tuple(h.lower() for h in settings.hosts),
            match_host=settings.match_host,
        )

    @property
    def match_on(self) -> tuple[str, ...]:
        """vcr matchers: method, host (unless `llm_match_host = false`), path, query, body."""
        host = ("host",) if self.match_host else ()
        return ("method", *host, "path", "query", "llm_body")

    @property
    def active(self) -> bool:
        """True unless the record mode is `off`."""
        return self.mode != "off"

    def replays(self, path: Path) -> bool:
        """True when a test with this cassette path makes no live call (for the preflight)."""
        return self.mode == "none" or (self.mode in REPLAYING_MODES and path.exists())

    def is_llm(self, host: str, port: int | None, path: str) -> bool:
        """True for a request the cassette should hold (a provider's path, or an `llm_hosts`)."""
        from pytest_llm_budget.routing.traffic import classify

        traffic = classify(host, port, path, self.hosts)
        return traffic.provider is not None or traffic.listed


def _unique(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


@dataclass
class CassetteUse:
    """One open cassette: where it lives, what it replayed and which requests it lacked."""

    path: Path
    mode: str
    test: str
    replayed: int = 0
    misses: list[str] = field(default_factory=list)
    aside: bool = False

    def miss_message(self) -> str:
        """Why the test fails: the requests with no recording, and the cassette file."""
        lines = [
            f"pytest-llm-budget: no recording for {len(self.misses)} request(s) in cassette "
            f"{self.path} (record mode '{self.mode}'; no network was used):",
            *(f"  {m}" for m in self.misses),
            "Record it: run this test with --llm-record-mode once (or all to re-record) "
            "against the provider or the bundled emulator.",
        ]
        return "\n".join(lines)


def _json_or_bytes(body: Any) -> Any:
    """A request body parsed as JSON when it is JSON, else its bytes (for matching)."""
    if body is None:
        return b""
    raw = body if isinstance(body, bytes) else str(body).encode("utf-8")
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _body_matcher(r1: Any, r2: Any) -> None:
    """vcr matcher: JSON bodies compared parsed (key order, spacing ignored), others as bytes."""
    if _json_or_bytes(r1.body) != _json_or_bytes(r2.body):
        raise AssertionError("request bodies differ")


def _model_of(path: str, body: Any) -> str:
    """Model named by a request: the JSON body's `model`, else a Gemini path's `models/M:`."""
    parsed = _json_or_bytes(body)
    if isinstance(parsed, dict) and isinstance(parsed.get("model"), str):
        return str(parsed["model"])
    match = re.search(r"/models/([^/:?]+)", path)
    return match.group(1) if match else "*"


def replayed_record(
    request: Any, status: int, content_type: str, payload: bytes, *, test: str, worker: str
) -> CallRecord | None:
    """The CallRecord of one replayed call: usage parsed from the recorded response, replayed."""
    from pytest_llm_budget.routing.traffic import classify

    url = request.url
    provider = classify(url.host, url.port, url.path).provider
    if provider is None:
        return None
    stream_error = None
    if "text/event-stream" in content_type:
        parser = provider.sse_usage_parser()
        parser.feed(payload)
        parser.close()
        usage = parser.usage
        stream_error = parser.error
    else:
        usage = provider.usage_from_json(payload)
    return CallRecord(
        t=time.time(),
        test=test,
        vendor=provider.vendor,
        model=_model_of(url.path, request.content),
        estimated=0,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        status=f"http_{status}" if status >= 400 else "stream_error" if stream_error else "ok",
        attempts=1,
        waited_s=0.0,
        replayed=True,
        worker=worker,
        rate_limit_events=int(status == 429),
        malformed=usage is None and status < 400,
        cached_tokens=usage.cached_tokens if usage else 0,
        cache_write_tokens=usage.cache_write_tokens if usage else 0,
        reasoning_tokens=usage.reasoning_tokens if usage else 0,
        service_tier=usage.service_tier if usage else None,
        cost_usd=0.0,
    )


class Cassettes:
    """Opens per-test cassettes for a session; builds the vcr.VCR object on first use."""

    def __init__(self, policy: CassettePolicy, record: Callable[[CallRecord], None], worker: str):
        self.policy = policy
        self._record = record
        self._worker = worker
        self._vcr: Any = None

    def _build(self) -> Any:
        """The vcr.VCR configured with the policy (imports vcrpy: only ever called lazily)."""
        import vcr

        from pytest_llm_budget.replay.vcr_httpx import HTTPX_PATCHERS

        policy = self.policy

        def before_record_request(request: Any) -> Any:
            split = urlsplit(request.uri)
            llm = policy.is_llm(split.hostname or "", split.port, split.path)
            return request if llm else None

        def before_record_response(response: dict[str, Any]) -> dict[str, Any]:
            headers = response.get("headers") or {}
            drop = {h.lower() for h in policy.filter_response_headers}
            response["headers"] = {k: v for k, v in headers.items() if k.lower() not in drop}
            return response

        recorder = vcr.VCR(
            record_mode=policy.mode,
            match_on=policy.match_on,
            filter_headers=list(policy.filter_headers),
            filter_query_parameters=list(policy.filter_query),
            decode_compressed_response=True,
            before_record_request=before_record_request,
            before_record_response=before_record_response,
            skip_patchers=HTTPX_PATCHERS,  # vcr_httpx.Tape installs them over the routing
        )
        recorder.register_matcher("llm_body", _body_matcher)
        mask_loggers(_VCR_LOGGERS)
        return recorder

    @contextlib.contextmanager
    def use(self, path: Path, test: str) -> Iterator[CassetteUse]:
        """Open the cassette at `path` for one test; count replays, note requests it lacked.

        Steps aside (yields a use with `aside=True`, opens nothing) when another vcr cassette is
        already open, e.g. a user's own `vcr.use_cassette` around the test.
        """
        if self._vcr is None:
            self._vcr = self._build()
        from pytest_llm_budget.replay.vcr_httpx import Tape, vcr_cassette_open

        if vcr_cassette_open():
            yield CassetteUse(path, self.policy.mode, test, aside=True)
            return
        use = CassetteUse(path, self.policy.mode, test)
        replayed = functools.partial(self._replayed, use)
        with self._vcr.use_cassette(str(path)) as cassette, Tape(cassette, use.misses, replayed):
            yield use

    def _replayed(self, use: CassetteUse, request: Any, response: Any) -> None:
        """Count one replayed call and record its usage (priced as if live by the session)."""
        use.replayed += 1
        record = replayed_record(
            request,
            response.status_code,
            response.headers.get("content-type", ""),
            response.content,
            test=use.test,
            worker=self._worker,
        )
        if record is not None:
            self._record(record)


#: vcr's loggers that quote request URLs (with any `?key=`) at INFO and DEBUG.
_VCR_LOGGERS = ("vcr.request", "vcr.cassette", "vcr.stubs", "vcr.stubs.httpx_stubs")
