"""Which collected test items are LLM tests; duck-typed, so it imports neither pytest nor more."""

from __future__ import annotations

from typing import Any

__all__ = ["LLM_FIXTURES", "MARKER", "MATRIX_ARGS", "is_llm_test"]

#: The marker that declares an LLM test and what it expects to spend.
MARKER = "llm_budget"
#: The fixtures a test takes to be parametrized over the scenario x model matrix.
MATRIX_ARGS = ("llm_model", "llm_scenario")
#: Fixtures that make a test an LLM test (as does the marker).
LLM_FIXTURES = frozenset(
    {
        *MATRIX_ARGS,
        "openai_client",
        "async_openai_client",
        "gemini_client",
        "llm_http_client",
        "llm_async_http_client",
    }
)


def is_llm_test(item: Any) -> bool:
    """True for a test marked `llm_budget` or using an LLM fixture."""
    if item.get_closest_marker(MARKER) is not None:
        return True
    return not LLM_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))
