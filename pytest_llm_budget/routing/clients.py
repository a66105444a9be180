"""Routed clients: httpx2 clients, the fixtures' SDK clients, and `wrap(client)` for others.

The clients built here raise the plugin's structured errors (`RateLimitExhausted`, ...) and
leave retrying 429s to the plugin. An SDK client of a fixture is built by the provider that
declares the fixture (`Provider.client`), given a `Routed`: the OpenAI SDK's own retries are
off (`max_retries=0`), google-genai gets httpx2 clients for both its sync and `.aio` paths
(never aiohttp). Keys and base URLs come from the SDKs' own environment variables.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pytest_llm_budget.routing.router import router_for
from pytest_llm_budget.routing.transport import AsyncBudgetTransport, BudgetTransport

if TYPE_CHECKING:
    from pytest_llm_budget.session import BudgetSession

__all__ = [
    "Routed",
    "async_http_client",
    "default_session",
    "fixture_client",
    "http_client",
    "http_library",
    "wrap",
]

_default: BudgetSession | None = None
_default_lock = threading.Lock()


def default_session() -> BudgetSession:
    """The session `wrap()` uses when given none: the plugin's, else one with default settings."""
    global _default
    from pytest_llm_budget.routing import intercept

    active = intercept.active_session()
    if active is not None:
        return active
    with _default_lock:
        if _default is None:
            from pytest_llm_budget.session import BudgetSession
            from pytest_llm_budget.settings.resolved import Settings

            _default = BudgetSession(Settings())
        return _default


def http_library(sdk_class: type | None = None) -> ModuleType:
    """The HTTP library an SDK class is built on (`httpx2` or `httpx`), else the one installed.

    openai >= 3 and google-genai >= 3 use httpx2, older majors httpx: the routed clients must be
    of the library the SDK isinstance-checks, so the plugin never forces an SDK upgrade.
    """
    for cls in getattr(sdk_class, "__mro__", ()):
        root = (cls.__module__ or "").split(".")[0]
        if root in ("httpx2", "httpx"):
            return importlib.import_module(root)
    for name in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            return importlib.import_module(name)
    raise ImportError("pytest-llm-budget: routed clients need httpx2 or httpx (pip install httpx2)")


def http_client(session: BudgetSession, library: ModuleType | None = None, **kwargs: Any) -> Any:
    """An httpx2 (or `library`) client whose LLM requests are routed (structured errors raised)."""
    lib = library or http_library()
    transport = BudgetTransport(lib.HTTPTransport(), router_for(session, raise_errors=True))
    return lib.Client(transport=transport, **kwargs)


def async_http_client(
    session: BudgetSession, library: ModuleType | None = None, **kwargs: Any
) -> Any:
    """The async `http_client`."""
    lib = library or http_library()
    transport = AsyncBudgetTransport(
        lib.AsyncHTTPTransport(), router_for(session, raise_errors=True)
    )
    return lib.AsyncClient(transport=transport, **kwargs)


class Routed:
    """What a provider's client builder gets (`providers.base.RoutedHTTP`): one session's routed
    httpx2 / httpx transports and clients."""

    def __init__(self, session: BudgetSession) -> None:
        self.session = session

    @property
    def replay_only(self) -> bool:
        """True in record mode `none`."""
        return self.session.settings.record_mode == "none"

    def library(self, sdk_class: type | None = None) -> ModuleType:
        """`http_library(sdk_class)`."""
        return http_library(sdk_class)

    def transport(self, library: ModuleType, *, is_async: bool = False) -> Any:
        """A routed `library` transport that raises the structured errors."""
        router = router_for(self.session, raise_errors=True)
        if is_async:
            return AsyncBudgetTransport(library.AsyncHTTPTransport(), router)
        return BudgetTransport(library.HTTPTransport(), router)

    def client(self, library: ModuleType, *, is_async: bool = False, **kwargs: Any) -> Any:
        """`http_client` / `async_http_client` of `library`."""
        if is_async:
            return async_http_client(self.session, library, **kwargs)
        return http_client(self.session, library, **kwargs)


def fixture_client(fixture: str, session: BudgetSession, **kwargs: Any) -> Any:
    """The SDK client of a provider's fixture (`openai_client`, `gemini_client`, ...)."""
    from pytest_llm_budget.providers.registry import provider_of_fixture

    provider = provider_of_fixture(fixture)
    if provider is None:
        raise LookupError(f"pytest-llm-budget: no registered provider builds {fixture!r}")
    return provider.client(fixture, Routed(session), **kwargs)


def _wrap_httpx(client: Any, router_sync: Any, router_async: Any) -> None:
    """Wrap an httpx2/httpx client's transport and mounts in place (idempotent)."""
    is_async = hasattr(client, "aclose") and not hasattr(client, "close")
    wrapper = AsyncBudgetTransport if is_async else BudgetTransport
    router = router_async if is_async else router_sync
    transport = client._transport
    if not isinstance(transport, (BudgetTransport, AsyncBudgetTransport)):
        client._transport = wrapper(transport, router)
    mounts = getattr(client, "_mounts", {})
    for pattern, mounted in list(mounts.items()):
        if mounted is not None and not isinstance(mounted, (BudgetTransport, AsyncBudgetTransport)):
            mounts[pattern] = wrapper(mounted, router)


def wrap(client: Any, session: BudgetSession | None = None) -> Any:
    """Route an existing openai / genai / httpx2 / httpx client's LLM calls; returns it.

    The client keeps its own settings (and its SDK's retries, which now only see the plugin's
    final answer); the plugin's structured errors are raised from its calls.
    """
    session = session or default_session()
    router = router_for(session, raise_errors=True)
    api_client = getattr(client, "_api_client", None)
    if api_client is not None:  # google-genai Client (or its .aio)
        _wrap_genai(api_client, session)
        return client
    inner = getattr(client, "_client", None)
    if inner is not None and hasattr(inner, "_transport"):  # openai.OpenAI / AsyncOpenAI
        _wrap_httpx(inner, router, router)
        return client
    if hasattr(client, "_transport"):
        _wrap_httpx(client, router, router)
        return client
    raise TypeError(
        f"wrap(): cannot route a {type(client).__name__}: expected an openai, google-genai, "
        "httpx2 or httpx client"
    )


def _wrap_genai(api_client: Any, session: BudgetSession) -> None:
    """Wrap genai's sync client in place; replace its async one (aiohttp / per-loop pools)."""
    router = router_for(session, raise_errors=True)
    sync = getattr(api_client, "_httpx_client", None)
    if sync is not None:
        _wrap_httpx(sync, router, router)
    current = getattr(api_client, "_async_httpx_client", None)
    if current is not None and isinstance(
        getattr(current, "_transport", None), AsyncBudgetTransport
    ):
        return
    from pytest_llm_budget.providers.gemini import genai_library

    routed_async = async_http_client(session, genai_library(Routed(session)))
    api_client._async_httpx_client = routed_async
    options = getattr(api_client, "_http_options", None)
    if options is not None:
        options.httpx_async_client = routed_async
