"""Is a request LLM traffic, and whose: the one classifier routing, the router and cassettes call.

Two facts about a request: its host is an LLM host (the registered providers' hosts, the hosts
of their base-URL env vars, `llm_hosts` entries, hosts registered with `add_host`: globs, `host`
or `host:port`, or URLs), and a registered provider handles it (which decides the wire format).
"""

from __future__ import annotations

import fnmatch
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from pytest_llm_budget.providers.base import Provider

__all__ = ["Traffic", "add_host", "classify", "default_hosts", "remove_host"]

_lock = threading.Lock()
_extra_hosts: list[str] = []


@dataclass(frozen=True)
class Traffic:
    """What `classify` found: the provider of the path, and whether the host is an LLM host."""

    provider: Provider | None
    llm_host: bool
    listed: bool


def classify(host: str, port: int | None, path: str, hosts: Sequence[str] = ()) -> Traffic:
    """Classify a request by host, port and path; `hosts` are the `llm_hosts` entries in force.

    `provider`: the provider whose API path this is (None: not an LLM call). `llm_host`: the host
    is an LLM host (defaults, base-URL env vars, `hosts`, `add_host`). `listed`: it is in `hosts`.
    """
    from pytest_llm_budget.providers.registry import provider_for, providers

    host = host.lower().rstrip(".")
    variables = [name for p in providers() for name in p.base_url_env]
    env = [h for h in (_host_of(os.environ.get(name, "")) for name in variables) if h]
    with _lock:
        registered = list(_extra_hosts)
    listed = any(_matches(p, host, port) for p in hosts)
    candidates = (*default_hosts(), *env, *registered)
    known = listed or any(_matches(p, host, port) for p in candidates)
    return Traffic(provider_for(host, path), known, listed)


def default_hosts() -> tuple[str, ...]:
    """Hosts whose requests are LLM calls: every registered provider's (globs)."""
    from pytest_llm_budget.providers.registry import providers

    return tuple(dict.fromkeys(h for p in providers() for h in p.hosts))


def add_host(host: str) -> None:
    """Treat requests to `host` (`name`, `name:port`, glob or URL) as LLM calls."""
    with _lock:
        _extra_hosts.append(host)


def remove_host(host: str) -> None:
    """Undo one `add_host`."""
    with _lock:
        if host in _extra_hosts:
            _extra_hosts.remove(host)


@lru_cache(maxsize=64)
def _host_of(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        if not parts.hostname:
            return None
        return f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    except ValueError:
        return None


def _matches(pattern: str, host: str, port: int | None) -> bool:
    pattern = pattern.strip().lower()
    if "://" in pattern:
        pattern = _host_of(pattern) or pattern
    if ":" in pattern.rsplit("]", 1)[-1]:
        return port is not None and fnmatch.fnmatchcase(f"{host}:{port}", pattern)
    return fnmatch.fnmatchcase(host, pattern)
