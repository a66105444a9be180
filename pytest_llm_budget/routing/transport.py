"""The budget's transports: `BudgetTransport` / `AsyncBudgetTransport` wrap any inner httpx2 or
httpx transport so its LLM requests go through the session's `Router` (router.py).

The routing layer's public names stay importable from here: the router (`Router`, `Gate`), the
429 decision and the error registry (`RetryPolicy`, `errors_for`; retry.py), the metering's
`BACKEND_LOST` (metering.py).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from pytest_llm_budget.routing.metering import BACKEND_LOST
from pytest_llm_budget.routing.retry import ERRORS_LOCK, RetryPolicy, errors_for
from pytest_llm_budget.routing.router import Gate, Router, in_routed_send, pending_gate

if TYPE_CHECKING:
    from pytest_llm_budget.session import BudgetSession

__all__ = [
    "BACKEND_LOST",
    "AsyncBudgetTransport",
    "BudgetTransport",
    "Gate",
    "RetryPolicy",
    "Router",
    "errors_for",
    "in_routed_send",
    "is_pooled",
    "pending_gate",
    "router_for",
]

_ROUTERS: weakref.WeakKeyDictionary[BudgetSession, dict[bool, Router]] = (
    weakref.WeakKeyDictionary()
)


def router_for(session: BudgetSession, *, raise_errors: bool) -> Router:
    """The session's router of one error mode (created once)."""
    with ERRORS_LOCK:
        routers = _ROUTERS.setdefault(session, {})
        if raise_errors not in routers:
            routers[raise_errors] = Router(session, raise_errors=raise_errors)
        return routers[raise_errors]


def is_pooled(transport: Any) -> bool:
    """True for an httpx/httpx2 HTTPTransport over an httpcore pool (the pool pays the gate)."""
    pool = getattr(transport, "_pool", None)
    return pool is not None and type(pool).__module__.split(".")[0] in ("httpcore", "httpcore2")


def _pays(pooled: bool) -> bool:
    """A pool pays the gate only while `intercept` has patched it (outside pytest, `wrap()`
    of a client with no routing installed pays before sending instead)."""
    from pytest_llm_budget.routing.intercept import active_session

    return pooled and active_session() is not None


class BudgetTransport:
    """A sync transport wrapper (httpx2 or httpx): LLM requests go through the session budget."""

    def __init__(self, inner: Any, router: Router) -> None:
        self.inner = inner
        self.router = router
        self.pooled = is_pooled(inner)

    def handle_request(self, request: Any) -> Any:
        return self.router.handle(request, self.inner.handle_request, pooled=_pays(self.pooled))

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> BudgetTransport:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)


class AsyncBudgetTransport:
    """The async transport wrapper (see `BudgetTransport`)."""

    def __init__(self, inner: Any, router: Router) -> None:
        self.inner = inner
        self.router = router
        self.pooled = is_pooled(inner)

    async def handle_async_request(self, request: Any) -> Any:
        return await self.router.ahandle(
            request, self.inner.handle_async_request, pooled=_pays(self.pooled)
        )

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> AsyncBudgetTransport:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.inner.__aexit__(*exc)
