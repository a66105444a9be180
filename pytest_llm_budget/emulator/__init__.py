"""A provider emulator (OpenAI, Gemini, Anthropic wire formats) enforcing limits like theirs.

Stdlib only at import: no SDK, no tokenizer. Start one with ``Emulator(config).start()`` or
``python -m pytest_llm_budget.emulator --port 8787``.
"""

from __future__ import annotations

from .config import AnthropicLimitSpec, EmulatorConfig, LimitSpec, ModelLimit, parse_limit_rule
from .core import EmulatorCore
from .faults import Fault, parse_fault
from .limits import (
    AnthropicDecision,
    AnthropicLimiter,
    BucketLimiter,
    Decision,
    SlidingWindow,
    TokenBucket,
)
from .records import RequestRecord
from .server import Emulator

__all__ = [
    "AnthropicDecision",
    "AnthropicLimitSpec",
    "AnthropicLimiter",
    "BucketLimiter",
    "Decision",
    "Emulator",
    "EmulatorConfig",
    "EmulatorCore",
    "Fault",
    "LimitSpec",
    "ModelLimit",
    "RequestRecord",
    "SlidingWindow",
    "TokenBucket",
    "parse_fault",
    "parse_limit_rule",
]
