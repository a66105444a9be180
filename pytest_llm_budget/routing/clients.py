"""Routed clients: the fixtures' OpenAI / Gemini / httpx2 clients, and `wrap(client)` for others.

The clients built here raise the plugin's structured errors (`RateLimitExhausted`, ...) and
leave retrying 429s to the plugin: the OpenAI SDK's own retries are off (`max_retries=0`), and
google-genai gets httpx2 clients for both its sync and `.aio` paths (never aiohttp). Keys and
base URLs come from the SDKs' own environment variables.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pytest_llm_budget.routing.transport import AsyncBudgetTransport, BudgetTransport, router_for

if TYPE_CHECKING:
    import openai
    from google import genai

    from pytest_llm_budget.session import BudgetSession

__all__ = [
    "async_http_client",
    "async_openai_client",
    "default_session",
    "gemini_client",
    "http_client",
    "http_library",
    "openai_client",
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


def _replay_key(session: BudgetSession, variable: str, kwargs: dict[str, Any]) -> None:
    """In replay-only mode, give a client with no key a placeholder (cassettes answer it)."""
    if session.settings.record_mode == "none" and "api_key" not in kwargs:
        from pytest_llm_budget.replay.cassettes import placeholder_key

        key = placeholder_key(variable, os.environ)
        if key is not None:
            kwargs["api_key"] = key


def openai_client(session: BudgetSession, **kwargs: Any) -> openai.OpenAI:
    """`openai.OpenAI` with routed transport and the SDK's retries off."""
    import openai

    _replay_key(session, "OPENAI_API_KEY", kwargs)
    lib = http_library(openai.DefaultHttpxClient)
    transport = BudgetTransport(lib.HTTPTransport(), router_for(session, raise_errors=True))
    kwargs.setdefault("max_retries", 0)
    client = openai.DefaultHttpxClient(transport=transport)  # type: ignore[arg-type]
    return openai.OpenAI(http_client=client, **kwargs)


def async_openai_client(session: BudgetSession, **kwargs: Any) -> openai.AsyncOpenAI:
    """`openai.AsyncOpenAI` with routed transport and the SDK's retries off."""
    import openai

    _replay_key(session, "OPENAI_API_KEY", kwargs)
    lib = http_library(openai.DefaultAsyncHttpxClient)
    transport = AsyncBudgetTransport(
        lib.AsyncHTTPTransport(), router_for(session, raise_errors=True)
    )
    kwargs.setdefault("max_retries", 0)
    client = openai.DefaultAsyncHttpxClient(transport=transport)  # type: ignore[arg-type]
    return openai.AsyncOpenAI(http_client=client, **kwargs)


def _genai_library() -> ModuleType:
    """google-genai >= 3 takes httpx2 clients (and httpx); older majors httpx only."""
    from google.genai import _api_client

    return http_library() if getattr(_api_client, "httpx2", None) else importlib.import_module(
        "httpx"
    )


def gemini_client(session: BudgetSession, **kwargs: Any) -> genai.Client:
    """`genai.Client` whose sync and `.aio` paths both use routed httpx2 (or httpx) clients."""
    from google import genai
    from google.genai import types

    options = kwargs.pop("http_options", None)
    if isinstance(options, dict):
        options = types.HttpOptions(**options)
    options = options or types.HttpOptions()
    base_url = os.environ.get("GOOGLE_GEMINI_BASE_URL")
    lib = _genai_library()
    update: dict[str, Any] = {
        "httpx_client": http_client(session, lib),
        "httpx_async_client": async_http_client(session, lib),
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
    routed_async = async_http_client(session, _genai_library())
    api_client._async_httpx_client = routed_async
    options = getattr(api_client, "_http_options", None)
    if options is not None:
        options.httpx_async_client = routed_async
