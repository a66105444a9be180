"""vcrpy's own httpx stubs, installed per cassette over the transport methods in place.

vcr's patchers call the "real" transport method saved when `vcr.patch` was first imported: if that
was before the routing layer patched httpx2/httpx (pytest-recording imports vcr at plugin load), a
recorded call would skip the limiter. So the plugin's VCR skips vcr's httpx patchers
(`skip_patchers`, public) and `Tape` builds vcr's stubs itself, for httpx2 and legacy httpx, with
the method in place when the cassette opens as the real one: the routing wrapper. A recorded call
goes stub -> routing (limiter, retries) -> network; a replayed one is answered before any budget
gate is paid (no wait, no budget), whenever vcr was imported.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from pytest_llm_budget.redact import mask_url

__all__ = ["HTTPX_PATCHERS", "Tape", "vcr_cassette_open", "vcr_httpx_stubs"]

#: vcr's patcher groups the plugin's VCR skips: `Tape` installs vcr's httpx stubs itself.
HTTPX_PATCHERS = ("httpx", "httpx2")
#: The transport methods vcr stubs in httpx and httpx2 (the set vcr's own patchers cover).
_STUBBED = (
    ("HTTPTransport", "handle_request"), ("AsyncHTTPTransport", "handle_async_request"),
    ("MockTransport", "handle_request"), ("MockTransport", "handle_async_request"),
    ("WSGITransport", "handle_request"), ("ASGITransport", "handle_async_request"),
)


def vcr_httpx_stubs() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """vcr's stub factories for httpx transports, `(sync, async)`, each `(cassette, real, httpx)`.

    Not in vcrpy's documented API, but no public point does this: `custom_patches` cannot build
    a stub (it needs the open cassette), and vcr's own patchers use the import-time "real"
    method. test_cassettes.py checks they still exist and answer from a cassette, so a vcrpy
    release that drops or changes them fails loudly.
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
    # every stub vcr's factory builds shares one code object (functools.wraps copies the names)
    stub_code = vcr_httpx_stubs()[0](None, _httpx_modules, None).__code__
    methods = (module.HTTPTransport.handle_request for module in _httpx_modules())
    return any(getattr(method, "__code__", None) is stub_code for method in methods)


class Tape:
    """One open cassette in the httpx transports: vcr's stubs, each call watched.

    A call answered without going live is a replay (`replayed(request, response)` reports it);
    a request the cassette lacks is noted in `misses`. A replayed call never reaches a
    connection pool, so it never pays the budget (`intercept.py`).
    """

    def __init__(
        self,
        cassette: Any,
        misses: list[str],
        replayed: Callable[[Any, Any], None],
        other_host: Callable[[], None] | None = None,
    ) -> None:
        self.cassette = cassette
        self.misses = misses
        #: Called when a missed request is in the cassette, recorded against another host.
        self._other_host = other_host
        self._replayed = replayed
        self._live: set[int] = set()
        self._saved: list[tuple[type, str, Any]] = []

    def __enter__(self) -> Tape:
        """Install the stubs on httpx2's and httpx's transports (undone by `__exit__`)."""
        sync, async_ = vcr_httpx_stubs()
        stubs = {"handle_request": (sync, self._sync)}
        stubs["handle_async_request"] = (async_, self._async)
        for module in _httpx_modules():
            for cls_name, attr in _STUBBED:
                cls = getattr(module, cls_name, None)
                if cls is None or attr not in vars(cls):
                    continue
                factory, watched = stubs[attr]
                stub = factory(self.cassette, self._marking_live(getattr(cls, attr)), module)
                self._saved.append((cls, attr, vars(cls)[attr]))
                setattr(cls, attr, watched(stub))
        return self

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
            with self._watching(request):
                return self._seen(request, stub(transport, request))

        return handle_request

    def _async(self, stub: Callable[..., Any]) -> Callable[..., Any]:
        async def handle_async_request(transport: Any, request: Any) -> Any:
            with self._watching(request):
                return self._seen(request, await stub(transport, request))

        return handle_async_request

    def _seen(self, request: Any, response: Any) -> Any:
        """Report a replayed response (one the real method never sent); pass it on unchanged."""
        if id(request) not in self._live:
            request.read()  # vcr left both bodies in memory streams: no I/O here
            response.read()
            self._replayed(request, response)
        return response

    @contextlib.contextmanager
    def _watching(self, request: Any) -> Iterator[None]:
        """Note a request the cassette lacks (vcr's error, re-raised, quotes it masked)."""
        from vcr.errors import CannotOverwriteExistingCassetteException as Missing

        try:
            yield
        except Missing as exc:
            failed = exc.failed_request
            if self._other_host is not None and _only_host_differs(exc.cassette, failed):
                self._other_host()
            failed.uri = mask_url(failed.uri)
            miss = f"{failed.method} {failed.uri}"
            if miss not in self.misses:
                self.misses.append(miss)
            raise Missing(cassette=exc.cassette, failed_request=failed) from None
        finally:
            self._live.discard(id(request))


def _only_host_differs(cassette: Any, request: Any) -> bool:
    """True when the cassette holds this request, recorded against another host."""
    try:
        similar = cassette.find_requests_with_most_matches(request)
    except Exception:  # vcr's hint machinery must never hide the miss itself
        return False
    return any(fails and all(name == "host" for name, *_ in fails) for _, _, fails in similar)
