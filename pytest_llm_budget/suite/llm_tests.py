"""Which collected test items are LLM tests; duck-typed, so it imports neither pytest nor an SDK."""

from __future__ import annotations

from typing import Any

__all__ = ["CLIENT_SUFFIX", "LLM_FIXTURES", "MARKER", "MATRIX_ARGS", "is_llm_test", "llm_fixtures"]

#: The marker that declares an LLM test and what it expects to spend.
MARKER = "llm_budget"
#: The fixtures a test takes to be parametrized over the scenario x model matrix.
MATRIX_ARGS = ("llm_model", "llm_scenario")
#: How every provider's client fixture name ends (`openai_client`, `gemini_client`).
CLIENT_SUFFIX = "_client"
#: Fixtures that make a test an LLM test (as does the marker), beside the providers' own.
LLM_FIXTURES = frozenset({*MATRIX_ARGS, "llm_http_client", "llm_async_http_client"})


def llm_fixtures() -> frozenset[str]:
    """Every fixture that makes a test an LLM test: `LLM_FIXTURES` and each provider's."""
    from pytest_llm_budget.providers.registry import providers

    return LLM_FIXTURES.union(*(p.fixtures for p in providers()))


def is_llm_test(item: Any) -> bool:
    """True for a test marked `llm_budget` or using an LLM fixture.

    Providers' fixture names end in `_client` (the registry checks), so a test using none such
    is decided without loading the providers (a plain suite's start-up stays cheap).
    """
    if item.get_closest_marker(MARKER) is not None:
        return True
    names = getattr(item, "fixturenames", ())
    if not LLM_FIXTURES.isdisjoint(names):
        return True
    return any(n.endswith(CLIENT_SUFFIX) for n in names) and not llm_fixtures().isdisjoint(names)
