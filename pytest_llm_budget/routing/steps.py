"""Write a sync/async protocol once: a generator of I/O steps, driven with blocking or awaited I/O.

The router's flow (gate -> send -> settle -> retry) yields steps such as `(SEND, request)`; the
sync driver carries them out with `do`, the async one with `ado`, and sends each result (or
throws each error) back in, the way httpx drives an auth flow.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Generator, Iterator
from typing import Any

#: The I/O steps a flow asks of its driver: pay a gate, read a request's body, send a request,
#: read (and close) a 429's body.
PAY, LOAD, SEND, READ = "pay", "load", "send", "read"
Flow = Generator[tuple[str, Any], Any, Any]


class Steps:
    """A flow as its driver sees it: iterate the steps, answer each with a result or an error."""

    def __init__(self, flow: Flow) -> None:
        self._flow = flow
        self._error: BaseException | None = None
        self.result: Any = None
        self.value: Any = None

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        while True:
            error, self._error = self._error, None
            try:
                if error is not None:
                    step = self._flow.throw(error)
                else:
                    step = self._flow.send(self.result)
            except StopIteration as done:
                self.value = done.value
                return
            yield step

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """The step's exception goes back into the flow (which handles or re-raises it)."""
        try:
            yield
        except BaseException as exc:
            self._error = exc


def do(kind: str, arg: Any, send: Callable[[Any], Any]) -> Any:
    """Carry out one step with blocking I/O."""
    if kind == SEND:
        return send(arg)
    if kind == PAY:
        return arg.pay()
    if kind == LOAD:
        return arg.read()
    try:
        return arg.read()
    finally:
        arg.close()


async def ado(kind: str, arg: Any, send: Callable[[Any], Awaitable[Any]]) -> Any:
    """Carry out one step on the event loop."""
    if kind == SEND:
        return await send(arg)
    if kind == PAY:
        return await arg.apay()
    if kind == LOAD:
        return await arg.aread()
    try:
        return await arg.aread()
    finally:
        await arg.aclose()
