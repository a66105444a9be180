"""A provider emulator (OpenAI + Gemini wire formats) that enforces limits like the providers.

Stdlib only at import: no SDK, no tokenizer. Start one with ``Emulator(config).start()`` or
``python -m pytest_llm_budget.emulator --port 8787``.
"""

from __future__ import annotations

from .config import EmulatorConfig, LimitSpec, ModelLimit, parse_limit_rule
from .core import EmulatorCore
from .faults import Fault, parse_fault
from .limits import BucketLimiter, Decision, SlidingWindow, TokenBucket
from .records import RequestRecord
from .server import Emulator

__all__ = [
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
