"""vcrpy glue: one cassette per LLM test, record modes, secret filters, replay accounting.

vcrpy is imported only when a cassette is opened (record mode other than `off`), and used through
its public options (`vcr.VCR`, a registered matcher, `before_record_*` hooks, `skip_patchers`)
plus the httpx stubs it ships: `_Tape` installs those over the transport methods of httpx2 and
legacy httpx in place when the cassette opens (the routing wrapper). So a replayed call is
answered by vcr before any budget gate (no wait, no budget), and a recorded call goes vcr ->
routing (limiter, retries) -> network, whenever `vcr.patch` was first imported.

Cassettes hold LLM traffic only (requests a provider recognises, or hosts in `llm_hosts`); other
HTTP passes through untouched and unrecorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from .records import CallRecord
from .redact import mask_loggers, mask_url
from .settings import Settings

__all__ = [
    "PLACEHOLDER_KEYS",
    "REPLAYING_MODES",
    "SECRET_HEADERS",
    "SECRET_QUERY",
    "CassettePolicy",
    "CassetteUse",
    "Cassettes",
    "cassette_name",
    "cassette_path",
    "placeholder_key",
    "replayed_record",
    "use_placeholder_keys",
]

#: Request headers never written to a cassette (plus ini `llm_filter_headers`).
SECRET_HEADERS = (
    "authorization",
    "x-goog-api-key",
    "api-key",
    "openai-organization",
    "openai-project",
    "cookie",
    "set-cookie",
    "proxy-authorization",
)
#: Response headers never written to a cassette (plus ini `llm_filter_headers`).
SECRET_RESPONSE_HEADERS = ("set-cookie", "openai-organization", "openai-project")
#: Query parameters never written to a cassette (plus ini `llm_filter_query_parameters`).
SECRET_QUERY = ("key",)
#: Keys the SDKs find in replay-only mode when none is set: a cassette answers every LLM request
#: of an LLM test, so these are never sent (and request key headers never reach a cassette).
PLACEHOLDER_KEYS = {
    "OPENAI_API_KEY": "sk-llm-budget-replay-placeholder",
    "GEMINI_API_KEY": "llm-budget-replay-placeholder",
}
#: Record modes in which an existing cassette is replayed.
REPLAYING_MODES = ("once", "none", "new_episodes")
MAX_NAME = 120
_SAFE = re.compile(r"[^A-Za-z0-9_.\-\[\]]")


def placeholder_key(variable: str, environ: Mapping[str, str]) -> str | None:
    """The placeholder for a key variable the SDKs would find missing, else None."""
    same = ("GEMINI_API_KEY", "GOOGLE_API_KEY") if variable == "GEMINI_API_KEY" else (variable,)
    return None if any(environ.get(name) for name in same) else PLACEHOLDER_KEYS[variable]


def use_placeholder_keys(environ: MutableMapping[str, str]) -> Callable[[], None]:
    """Set the placeholder of every missing key variable (replay-only mode); returns the undo."""
    added = [v for v in PLACEHOLDER_KEYS if placeholder_key(v, environ)]
    for variable in added:
        environ[variable] = PLACEHOLDER_KEYS[variable]

    def undo() -> None:
        for variable in added:
            if environ.get(variable) == PLACEHOLDER_KEYS[variable]:
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
    filter_headers: tuple[str, ...] = SECRET_HEADERS
    filter_response_headers: tuple[str, ...] = SECRET_RESPONSE_HEADERS
    filter_query: tuple[str, ...] = SECRET_QUERY
    hosts: tuple[str, ...] = ()
    match_host: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> CassettePolicy:
        """The policy of a session's settings (user filters added to the built-in ones)."""
        extra = tuple(h.lower() for h in settings.filter_headers)
        return cls(
            mode=settings.record_mode,
            filter_headers=_unique(SECRET_HEADERS + extra),
            filter_response_headers=_unique(SECRET_RESPONSE_HEADERS + extra),
            filter_query=_unique(SECRET_QUERY + tuple(settings.filter_query)),
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
        from .traffic import classify

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
    from .traffic import classify

    url = request.url
    provider = classify(url.host, url.port, url.path).provider
    if provider is None:
        return None
    if "text/event-stream" in content_type:
        parser = provider.sse_usage_parser()
        parser.feed(payload)
        parser.close()
        usage = parser.usage
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
        status="ok" if status < 400 else f"http_{status}",
        attempts=1,
        waited_s=0.0,
        replayed=True,
        worker=worker,
        rate_limit_events=int(status == 429),
        malformed=usage is None and status < 400,
        cached_tokens=usage.cached_tokens if usage else 0,
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
            # the httpx stubs are installed by `_Tape`, over the routed transport methods
            skip_patchers=HTTPX_PATCHERS,
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
        if vcr_cassette_open():
            yield CassetteUse(path, self.policy.mode, test, aside=True)
            return
        from .transport import REPLAY_CHECKS

        use = CassetteUse(path, self.policy.mode, test)
        with self._vcr.use_cassette(str(path)) as cassette, _Tape(cassette, use, self._replayed):
            check = partial(_will_replay, cassette)
            REPLAY_CHECKS.append(check)  # a fixture client's router, paying before it sends
            try:
                yield use
            finally:
                REPLAY_CHECKS.remove(check)

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


def _will_replay(cassette: Any, request: Any) -> bool:
    """True for an httpx request the cassette will answer (the router then skips the budget).

    Needed where the router pays before sending (`--llm-route fixtures`: no pool gate patched).
    """
    from vcr import Request

    body = getattr(request, "_content", None)
    return bool(cassette.can_play_response_for(Request(request.method, str(request.url), body, {})))


#: vcr's loggers that quote request URLs (with any `?key=`) at INFO and DEBUG.
_VCR_LOGGERS = ("vcr.request", "vcr.cassette", "vcr.stubs", "vcr.stubs.httpx_stubs")
#: vcr's patcher groups skipped (`skip_patchers`): `_Tape` installs vcr's httpx stubs itself.
HTTPX_PATCHERS = ("httpx", "httpx2")
#: The transport methods vcr stubs in httpx and httpx2 (the set vcr's own patchers cover).
_STUBBED = (
    ("HTTPTransport", "handle_request"),
    ("AsyncHTTPTransport", "handle_async_request"),
    ("MockTransport", "handle_request"),
    ("MockTransport", "handle_async_request"),
    ("WSGITransport", "handle_request"),
    ("ASGITransport", "handle_async_request"),
)


def vcr_httpx_stubs() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """vcr's own stub factories for httpx transports, `(sync, async)`: `(cassette, real, httpx)`.

    Not in vcrpy's documented API: `custom_patches` cannot take them (a stub needs the open
    cassette) and vcr's patchers call the "real" method saved when `vcr.patch` was first
    imported, which skips the routing installed later. test_cassettes.py checks they still
    exist and answer from a cassette, so a vcrpy release that drops them fails loudly.
    """
    from vcr.stubs import httpx_stubs

    return httpx_stubs.vcr_handle_request, httpx_stubs.vcr_handle_async_request


def _httpx_modules() -> list[ModuleType]:
    """httpx2 and legacy httpx, whichever is installed (`vcr.patch` imports both anyway)."""
    modules = []
    for name in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            modules.append(importlib.import_module(name))
    return modules


def vcr_cassette_open() -> bool:
    """True when a vcr cassette other than ours has stubbed an httpx transport right now."""
    stub_code = vcr_httpx_stubs()[0](None, _httpx_modules, None).__code__
    methods = (module.HTTPTransport.handle_request for module in _httpx_modules())
    return any(getattr(method, "__code__", None) is stub_code for method in methods)


class _Tape:
    """vcr's httpx stubs for one open cassette, over the transport methods in place now.

    While routing is installed the method in place is the routing wrapper, so a recorded call
    goes stub -> routing (limiter, retries) -> network, and a replayed one is answered before
    any budget gate is paid. Each stub call is watched: answered without going live is a replay
    (counted, its recorded usage reported), a request the cassette lacks is noted as a miss.
    """

    def __init__(
        self, cassette: Any, use: CassetteUse, replayed: Callable[[CassetteUse, Any, Any], None]
    ) -> None:
        self.cassette = cassette
        self.use = use
        self._replayed = replayed
        self._live: set[int] = set()
        self._saved: list[tuple[type, str, Any]] = []

    def __enter__(self) -> None:
        """Install the stubs on httpx2's and httpx's transports (undone by `__exit__`)."""
        sync, async_ = vcr_httpx_stubs()
        saved: list[tuple[type, str, Any]] = []
        for module in _httpx_modules():
            for cls_name, attr in _STUBBED:
                cls = getattr(module, cls_name, None)
                if cls is None or attr not in vars(cls):
                    continue
                saved.append((cls, attr, vars(cls)[attr]))
                real = self._marking_live(getattr(cls, attr))
                if attr == "handle_request":
                    setattr(cls, attr, self._sync(sync(self.cassette, real, module)))
                else:
                    setattr(cls, attr, self._async(async_(self.cassette, real, module)))
        self._saved = saved

    def __exit__(self, *exc: object) -> None:
        for cls, attr, method in reversed(self._saved):
            setattr(cls, attr, method)

    def _marking_live(self, real: Callable[..., Any]) -> Callable[..., Any]:
        """`real`, noting each request it sends (sync, or returning the coroutine for async)."""

        def send(transport: Any, request: Any) -> Any:
            self._live.add(id(request))
            return real(transport, request)

        return send

    def _sync(self, stub: Callable[..., Any]) -> Callable[..., Any]:
        def handle_request(transport: Any, request: Any) -> Any:
            with self._noting_misses():
                response = stub(transport, request)
            return self._watched(request, response)

        return handle_request

    def _async(self, stub: Callable[..., Any]) -> Callable[..., Any]:
        async def handle_async_request(transport: Any, request: Any) -> Any:
            with self._noting_misses():
                response = await stub(transport, request)
            return self._watched(request, response)

        return handle_async_request

    def _watched(self, request: Any, response: Any) -> Any:
        """Report a replayed response (one the real method never sent); pass it on unchanged."""
        if id(request) in self._live:
            self._live.discard(id(request))
        else:
            request.read()  # vcr left both bodies in memory streams: no I/O here
            response.read()
            self._replayed(self.use, request, response)
        return response

    @contextlib.contextmanager
    def _noting_misses(self) -> Iterator[None]:
        """Note a request the cassette lacks; vcr's error, re-raised, quotes it masked."""
        from vcr.errors import CannotOverwriteExistingCassetteException as Missing

        try:
            yield
        except Missing as exc:
            request = exc.failed_request
            request.uri = mask_url(request.uri)
            miss = f"{request.method} {request.uri}"
            if miss not in self.use.misses:
                self.use.misses.append(miss)
            raise Missing(cassette=exc.cassette, failed_request=request) from None
