"""The budget's transports: `BudgetTransport` / `AsyncBudgetTransport` wrap any inner httpx2 or
httpx transport so its LLM requests go through the session's `Router` (router.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_llm_budget.routing.router import is_pooled

if TYPE_CHECKING:
    from pytest_llm_budget.routing.router import Router

__all__ = ["AsyncBudgetTransport", "BudgetTransport"]


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
