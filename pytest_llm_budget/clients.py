"""Routed clients: the fixtures' OpenAI / Gemini / httpx2 clients, and `wrap(client)` for others.

The clients built here raise the plugin's structured errors (`RateLimitExhausted`, ...) and
leave retrying 429s to the plugin: the OpenAI SDK's own retries are off (`max_retries=0`), and
google-genai gets httpx2 clients for both its sync and `.aio` paths (never aiohttp). Keys and
base URLs come from the SDKs' own environment variables.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from .transport import AsyncBudgetTransport, BudgetTransport, router_for

if TYPE_CHECKING:
    import httpx2
    import openai
    from google import genai

    from .session import BudgetSession

__all__ = [
    "async_http_client",
    "async_openai_client",
    "default_session",
    "gemini_client",
    "http_client",
    "openai_client",
    "wrap",
]

_default: BudgetSession | None = None
_default_lock = threading.Lock()


def default_session() -> BudgetSession:
    """The session `wrap()` uses when given none: the plugin's, else one with default settings."""
    global _default
    from . import intercept

    active = intercept.active_session()
    if active is not None:
        return active
    with _default_lock:
        if _default is None:
            from .session import BudgetSession
            from .settings import Settings

            _default = BudgetSession(Settings())
        return _default


def http_client(session: BudgetSession, **kwargs: Any) -> httpx2.Client:
    """An httpx2 client whose LLM requests are routed (structured errors raised)."""
    import httpx2

    inner = httpx2.HTTPTransport()
    transport = BudgetTransport(inner, router_for(session, raise_errors=True))
    return httpx2.Client(transport=transport, **kwargs)  # type: ignore[arg-type]


def async_http_client(session: BudgetSession, **kwargs: Any) -> httpx2.AsyncClient:
    """The async `http_client`."""
    import httpx2

    inner = httpx2.AsyncHTTPTransport()
    transport = AsyncBudgetTransport(inner, router_for(session, raise_errors=True))
    return httpx2.AsyncClient(transport=transport, **kwargs)  # type: ignore[arg-type]


def _replay_key(session: BudgetSession, variable: str, kwargs: dict[str, Any]) -> None:
    """In replay-only mode, give a client with no key a placeholder (cassettes answer it)."""
    if session.settings.record_mode == "none" and "api_key" not in kwargs:
        from .cassettes import placeholder_key

        key = placeholder_key(variable, os.environ)
        if key is not None:
            kwargs["api_key"] = key


def openai_client(session: BudgetSession, **kwargs: Any) -> openai.OpenAI:
    """`openai.OpenAI` with routed transport and the SDK's retries off."""
    import httpx2
    import openai

    _replay_key(session, "OPENAI_API_KEY", kwargs)
    transport = BudgetTransport(httpx2.HTTPTransport(), router_for(session, raise_errors=True))
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(
        http_client=openai.DefaultHttpxClient(transport=transport),  # type: ignore[arg-type]
        **kwargs,
    )


def async_openai_client(session: BudgetSession, **kwargs: Any) -> openai.AsyncOpenAI:
    """`openai.AsyncOpenAI` with routed transport and the SDK's retries off."""
    import httpx2
    import openai

    _replay_key(session, "OPENAI_API_KEY", kwargs)
    transport = AsyncBudgetTransport(
        httpx2.AsyncHTTPTransport(), router_for(session, raise_errors=True)
    )
    kwargs.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(
        http_client=openai.DefaultAsyncHttpxClient(transport=transport),  # type: ignore[arg-type]
        **kwargs,
    )


def gemini_client(session: BudgetSession, **kwargs: Any) -> genai.Client:
    """`genai.Client` whose sync and `.aio` paths both use routed httpx2 clients."""
    from google import genai
    from google.genai import types

    options = kwargs.pop("http_options", None)
    if isinstance(options, dict):
        options = types.HttpOptions(**options)
    options = options or types.HttpOptions()
    base_url = os.environ.get("GOOGLE_GEMINI_BASE_URL")
    update: dict[str, Any] = {
        "httpx_client": http_client(session),
        "httpx_async_client": async_http_client(session),
    }
    if base_url and not options.base_url:
        update["base_url"] = base_url
    if "api_key" not in kwargs and not kwargs.get("vertexai"):
        key = os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
        if key:
            kwargs["api_key"] = key
        else:
            _replay_key(session, "GEMINI_API_KEY", kwargs)
    return genai.Client(http_options=options.model_copy(update=update), **kwargs)


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
    routed_async = async_http_client(session)
    api_client._async_httpx_client = routed_async
    options = getattr(api_client, "_http_options", None)
    if options is not None:
        options.httpx_async_client = routed_async
