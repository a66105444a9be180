"""Token estimation: encodings loaded offline, counting with a fallback, and the estimate policy.

`encodings` loads tiktoken encodings from verified local bytes (never the network) and seeds a
tiktoken cache; `counting` counts texts and chat messages (`TokenCounter`) and falls back to a
character-class estimate; `policy` turns counts into reservations (`EstimatePolicy`,
`chars_tokens`). Estimating a request of each provider lives in `providers/`. tiktoken itself is
imported only when an encoding is first needed.
"""

from __future__ import annotations

from pytest_llm_budget.errors import LLMBudgetWarning, TiktokenSeedError
from pytest_llm_budget.tokens.counting import (
    NON_TEXT_PART_TOKENS,
    TextMeasure,
    TokenCounter,
    default_counter,
    fallback_tokens,
    iter_message_texts,
)
from pytest_llm_budget.tokens.encodings import (
    CL100K_BASE,
    O200K_BASE,
    encoding_name_for,
    load_encoding,
    seed_tiktoken_cache,
)
from pytest_llm_budget.tokens.policy import EstimatePolicy, chars_tokens

__all__ = [
    "CL100K_BASE",
    "NON_TEXT_PART_TOKENS",
    "O200K_BASE",
    "EstimatePolicy",
    "LLMBudgetWarning",
    "TextMeasure",
    "TiktokenSeedError",
    "TokenCounter",
    "chars_tokens",
    "default_counter",
    "encoding_name_for",
    "fallback_tokens",
    "iter_message_texts",
    "load_encoding",
    "seed_tiktoken_cache",
]
