"""Credentials out of every output: `mask_url` for one URL, `redact` for any text.

Masked: the password of `scheme://user:password@host` (the whole user part when it has no
colon, since redis-py reads `redis://secret@host` as a password), mistyped URLs included
(`redis:/:pw@host`), the value of any query parameter whose name looks like a credential
(`password`, `key`, `api_key`, `access_token`, `secret`, `sig`, ...), and, in free text, OpenAI
and Google API keys. Used by the terminal summary, usage errors, the JSON and HTML reports,
cassette miss messages, failing tests' reports (`redact_report`), log records and warnings.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["MASK", "MaskFilter", "mask_loggers", "mask_url", "redact", "redact_report"]

MASK = "***"
_WORD = r"[A-Za-z0-9_.\-]*"
_SECRET_NAME = rf"{_WORD}(?:pass|pwd|secret|token|key|sig|auth|cred|session){_WORD}"
_SECRET_QUERY = re.compile(rf"(?i)([?&;]{_SECRET_NAME}=)[^&;#\s'\"<>]*")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:/[^\s'\"<>]*")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*:/+)(.*)$", re.DOTALL)
_API_KEYS = re.compile(r"\b(?:sk-(?:proj-)?[A-Za-z0-9_-]{20,}|AIza[0-9A-Za-z_-]{30,})")


def mask_url(url: str) -> str:
    """The URL with its password and credential-like query values replaced by `***`."""
    masked = _SECRET_QUERY.sub(rf"\g<1>{MASK}", url)
    match = _SCHEME.match(masked)
    head, rest = match.groups() if match else ("", masked)
    before_query = re.split(r"[?#]", rest, maxsplit=1)[0]
    at = before_query.rfind("@")
    if at < 0:
        return masked
    user, colon, _ = before_query[:at].partition(":")
    userinfo = f"{user}:{MASK}" if colon else MASK
    return f"{head}{userinfo}{rest[at:]}"


def redact(text: str) -> str:
    """`text` with every URL masked, stray `?key=...` query strings and API keys too."""
    text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    return _API_KEYS.sub(MASK, _SECRET_QUERY.sub(rf"\g<1>{MASK}", text))


def redact_report(report: Any) -> None:
    """Mask a test report's failure text and captured sections in place (terminal, junit)."""
    if report.failed and report.longrepr is not None:
        text = str(report.longrepr)
        masked = redact(text)
        if masked != text:
            report.longrepr = masked
    report.sections = [(title, redact(content)) for title, content in report.sections]


class MaskFilter(logging.Filter):
    """Rewrites a log record's message with the credentials in its URLs masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's to report, not ours
            return True
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def mask_loggers(names: Iterable[str]) -> Callable[[], None]:
    """Mask URLs in the records of these loggers (e.g. httpx's `HTTP Request: POST <url>`)."""
    added = []
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, MaskFilter) for f in logger.filters):
            mask = MaskFilter()
            logger.addFilter(mask)
            added.append((logger, mask))

    def undo() -> None:
        for logger, mask in added:
            logger.removeFilter(mask)

    return undo
