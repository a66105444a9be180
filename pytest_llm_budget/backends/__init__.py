"""Where the windows live: memory (one process), file (xdist, one host), redis (many hosts)."""

from __future__ import annotations

import os

from pytest_llm_budget.backends.base import Backend, StateBackend
from pytest_llm_budget.backends.memory import MemoryBackend

__all__ = ["Backend", "MemoryBackend", "StateBackend", "open_backend", "validate_backend_spec"]


def validate_backend_spec(spec: str) -> str:
    """Check a `--llm-backend` value's shape; returns it, raises ValueError naming what is wrong."""
    if spec in ("auto", "memory", "file") or spec.startswith("file:"):
        if spec.startswith("file:") and not spec[5:]:
            raise ValueError("file: needs a path, e.g. file:/tmp/llm-budget.json")
        return spec
    if spec.startswith(("redis://", "rediss://", "unix://", "redis+cluster://",
                        "rediss+cluster://")):
        return spec
    raise ValueError(
        "expected auto, memory, file, file:PATH, redis://host:port/db, rediss://... or "
        "redis+cluster://host:port"
    )


def open_backend(spec: str, *, shared_dir: str | None = None, xdist: bool = False) -> Backend:
    """Open the backend a `--llm-backend` value names; `auto` is memory, or file under xdist."""
    validate_backend_spec(spec)
    if spec == "auto":
        spec = "file" if xdist else "memory"
    if spec == "memory":
        return MemoryBackend()
    if spec == "file" or spec.startswith("file:"):
        from pytest_llm_budget.backends.file import FileBackend

        path = (
            spec[5:]
            if spec.startswith("file:")
            else os.path.join(shared_dir or os.getcwd(), "llm-budget-state.json")
        )
        return FileBackend(path)
    from pytest_llm_budget.backends.redis import RedisBackend

    return RedisBackend.from_url(spec)
