"""Take credentials out of free text (tracebacks, captured logs) before pytest shows or saves it."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["redact", "redact_report"]

_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:key|api[_-]?key|password|passwd|pwd|token|access_token|secret|sig|signature)=)"
    r"[^&#\s'\"<>)]+"
)
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@'\"<>]*:)[^@/\s'\"<>]+(@)")
_API_KEYS = re.compile(r"\b(?:sk-(?:proj-)?[A-Za-z0-9_-]{20,}|AIza[0-9A-Za-z_-]{30,})")


def redact(text: str) -> str:
    """`text` with URL passwords, secret query values and OpenAI/Google API keys as `***`."""
    text = _SECRET_QUERY.sub(r"\1***", text)
    text = _USERINFO.sub(r"\1***\2", text)
    return _API_KEYS.sub("***", text)


def redact_report(report: Any) -> None:
    """Mask a test report's failure text and captured sections in place (terminal, junit)."""
    if report.failed and report.longrepr is not None:
        text = str(report.longrepr)
        masked = redact(text)
        if masked != text:
            report.longrepr = masked
    report.sections = [(title, redact(content)) for title, content in report.sections]
