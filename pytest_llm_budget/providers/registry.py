"""The registered providers: which one a request is for, and what the rest of the plugin asks them.

Built-in providers are registered on first use; `register(provider)` adds one (checked after
those registered before it, so the first provider whose `handles(host, path)` is true wins).
Everything vendor-specific the plugin needs (hosts, key variables, secrets, price ids, fixtures)
is read from here, never named elsewhere.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from pytest_llm_budget.providers.base import Provider, missing_key

__all__ = [
    "placeholder_keys",
    "price_id",
    "provider_for",
    "provider_of_fixture",
    "providers",
    "register",
    "unknown_vendor",
    "unregister",
    "vendors",
]

_lock = threading.Lock()
_registered: list[Provider] = []
_builtins_loaded = False


def _builtins() -> list[Provider]:
    """The bundled providers, in the order they are asked (Gemini's OpenAI-compatible endpoint
    before plain OpenAI, whose paths it shares)."""
    from pytest_llm_budget.providers.anthropic import AnthropicProvider
    from pytest_llm_budget.providers.gemini import GeminiOpenAIProvider, GeminiProvider
    from pytest_llm_budget.providers.openai import OpenAIProvider

    return [GeminiProvider(), GeminiOpenAIProvider(), AnthropicProvider(), OpenAIProvider()]


def providers() -> tuple[Provider, ...]:
    """Every registered provider, built-ins first, in the order they are asked."""
    global _builtins_loaded
    with _lock:
        if not _builtins_loaded:
            _registered[:0] = _builtins()
            _builtins_loaded = True
        return tuple(_registered)


def register(provider: Provider) -> Provider:
    """Add a provider (after those registered before it); returns it."""
    providers()
    with _lock:
        if provider not in _registered:
            _registered.append(provider)
    return provider


def unregister(provider: Provider) -> None:
    """Undo one `register`."""
    with _lock:
        if provider in _registered:
            _registered.remove(provider)


def provider_for(host: str, path: str) -> Provider | None:
    """The first provider that handles a request to `host` and `path`, else None."""
    return next((p for p in providers() if p.handles(host, path)), None)


def vendors() -> tuple[str, ...]:
    """The known vendor names, in registration order."""
    return tuple(dict.fromkeys(p.vendor for p in providers()))


def unknown_vendor(name: str) -> str | None:
    """Why a vendor name (or glob) in a rule or marker names no registered provider, else None."""
    if any(c in name for c in "*?[") or name.lower() in vendors():
        return None
    return f"unknown vendor {name!r} (known: {', '.join(vendors())})"


def price_id(vendor: str) -> str | None:
    """genai-prices' provider id of a vendor, None when no provider names one."""
    return next((p.price_id for p in providers() if p.vendor == vendor and p.price_id), None)


def provider_of_fixture(fixture: str) -> Provider | None:
    """The provider that builds the client of a fixture, else None."""
    return next((p for p in providers() if fixture in p.fixtures), None)


def placeholder_keys(environ: Mapping[str, str]) -> dict[str, str]:
    """Replay-only keys: for each provider whose key variables are all unset, its first one."""
    found: dict[str, str] = {}
    for provider in providers():
        if provider.key_env and provider.placeholder_key and missing_key(provider, environ):
            found.setdefault(provider.key_env[0], provider.placeholder_key)
    return found
