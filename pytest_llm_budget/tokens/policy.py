"""How token counts become reservations: the character estimate, margins on uncertain counts.

OpenAI admits a request on a character estimate, ceil(characters / 4), of the text it carries
(`chars_tokens`), so OpenAI estimates never need a tokenizer. Gemini charges its own tokenizer's
input count, for which o200k_base stands in: `EstimatePolicy` adds the safety margin there and the
grounded overhead on a grounded call (and, in the preflight, on a grounded test's default total).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["EstimatePolicy", "chars_tokens"]


def chars_tokens(chars: int) -> int:
    """OpenAI's admission estimate of an input: ceil(characters / 4), no tokenizer involved."""
    return math.ceil(chars / 4)


@dataclass(frozen=True)
class EstimatePolicy:
    """How counts become reservations: a margin only on input counts that are uncertain."""

    # safety_margin: on an input counted by a tokenizer that is not the provider's (o200k for
    # Gemini) or by the fallback; never on OpenAI's character estimate or output budgets.
    # grounded_overhead: on a grounded call's input where input tokens are charged (Gemini).
    safety_margin: float = 0.20
    grounded_overhead: float = 0.15
    default_output_tokens: int = 7000

    def __post_init__(self) -> None:
        if self.safety_margin < 0 or self.grounded_overhead < 0:
            raise ValueError("safety_margin and grounded_overhead must be >= 0")
        if self.default_output_tokens < 0:
            raise ValueError("default_output_tokens must be >= 0")

    def counted_input(self, counted: int, chars: int, *, grounded: bool = False) -> int:
        """Return ceil(max(counted, ceil(chars/4)) * (1 + margin) * (1 + grounded overhead))."""
        raw = max(counted, chars_tokens(chars))
        return self._scaled(raw, grounded, 1 + self.safety_margin)

    def test_tokens(self, declared: int | None, *, grounded: bool = False) -> int:
        """A test's spend: its declared total, else the default output (+ overhead if grounded)."""
        return declared if declared else self._scaled(self.default_output_tokens, grounded)

    def _scaled(self, tokens: int, grounded: bool, factor: float = 1.0) -> int:
        """Round up tokens x factor x (1 + grounded overhead when grounded); float noise ignored."""
        factor *= 1 + self.grounded_overhead if grounded else 1
        return math.ceil(round(tokens * factor, 6))

    def output_tokens(self, declared: int | None) -> int:
        """Return the declared output budget exactly, or the default when none is declared."""
        return self.default_output_tokens if declared is None else max(0, declared)
