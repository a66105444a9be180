"""Credentials out of every output: one `mask_url` for URLs, one `mask_text` for messages.

Masked: the password of `scheme://user:password@host` (the whole user part when it has no
colon, since redis-py reads `redis://secret@host` as a password), mistyped URLs included
(`redis:/:pw@host`), and the value of any query parameter whose name looks like a credential
(`password`, `key`, `api_key`, `access_token`, `secret`, `sig`, ...). Used by the terminal
summary, usage errors, the JSON and HTML reports, cassette miss messages and warnings.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

__all__ = ["MASK", "MaskFilter", "mask_loggers", "mask_text", "mask_url"]

MASK = "***"
_WORD = r"[A-Za-z0-9_.\-]*"
_SECRET_NAME = rf"{_WORD}(?:pass|pwd|secret|token|key|sig|auth|cred|session){_WORD}"
_SECRET_QUERY = re.compile(rf"(?i)([?&;]{_SECRET_NAME}=)[^&;#\s'\"<>]*")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:/[^\s'\"<>]*")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*:/+)(.*)$", re.DOTALL)


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


def mask_text(text: str) -> str:
    """A message with every URL in it masked (and stray `?key=...` query strings too)."""
    return _SECRET_QUERY.sub(rf"\g<1>{MASK}", _URL.sub(lambda m: mask_url(m.group(0)), text))


class MaskFilter(logging.Filter):
    """Rewrites a log record's message with the credentials in its URLs masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's to report, not ours
            return True
        masked = mask_text(message)
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
