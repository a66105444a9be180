"""Per-provider wire knowledge, chosen by the shape of a request's URL path."""

from __future__ import annotations

from pytest_llm_budget.providers.base import (
    Estimate,
    Provider,
    Rejection,
    RejectionKind,
    SSEUsageParser,
    Usage,
)
from pytest_llm_budget.providers.gemini import GeminiProvider
from pytest_llm_budget.providers.openai import OpenAIProvider

__all__ = [
    "Estimate",
    "GeminiProvider",
    "OpenAIProvider",
    "Provider",
    "Rejection",
    "RejectionKind",
    "SSEUsageParser",
    "Usage",
    "provider_for",
]

_GOOGLE_HOST_SUFFIX = "googleapis.com"
_GEMINI = GeminiProvider()
_OPENAI = OpenAIProvider()
_OPENAI_COMPAT_ON_GOOGLE = OpenAIProvider(vendor="gemini")


def provider_for(host: str, path: str) -> Provider | None:
    """The provider for a request: Gemini-style paths, else OpenAI-style paths, else None.

    An OpenAI-style path on a Google host (Gemini's OpenAI-compatible endpoint) keeps the OpenAI
    wire format but the "gemini" vendor, since the quota it spends is Gemini's.
    """
    if _GEMINI.handles(path):
        return _GEMINI
    if _OPENAI.handles(path):
        hostname = host.split(":", 1)[0].lower().rstrip(".")
        return _OPENAI_COMPAT_ON_GOOGLE if hostname.endswith(_GOOGLE_HOST_SUFFIX) else _OPENAI
    return None
