"""The interface backends offer the limiter, and a base for backends that hold a WindowState."""

from __future__ import annotations

import abc
from contextlib import AbstractContextManager

from ..window import Decision, Limits, WindowSnapshot, WindowState

__all__ = ["Backend", "StateBackend"]


class Backend(abc.ABC):
    """Where the windows of all buckets live; every method is atomic with respect to the others."""

    #: Shown in the summary and reports ("memory", "file:/tmp/x", "redis://host:6379/0").
    description: str = ""

    @abc.abstractmethod
    def admit(
        self, bucket: str, limits: Limits, ticket: str, estimate: int, now: float, owner: str
    ) -> Decision:
        """Admit the ticket's estimate now, or say how long to wait before asking again."""

    @abc.abstractmethod
    def settle(
        self, bucket: str, limits: Limits, ticket: str, estimate: int, charge: int, now: float
    ) -> int:
        """Charge what the call really cost and end its lease; returns the debt added."""

    @abc.abstractmethod
    def cancel(self, bucket: str, limits: Limits, ticket: str, now: float) -> int:
        """Take back an admitted charge whose request never left; returns the tokens freed."""

    @abc.abstractmethod
    def release(self, bucket: str, limits: Limits, ticket: str, now: float) -> None:
        """End a lease (or leave the queue) without settling: the estimate stays charged."""

    @abc.abstractmethod
    def penalize(
        self, bucket: str, limits: Limits, ticket: str, tokens: int, pause_until: float, now: float
    ) -> None:
        """Charge a 429's penalty now and pause the bucket until `pause_until`."""

    @abc.abstractmethod
    def calibrate(
        self, bucket: str, limits: Limits, ticket: str, server_used: int, now: float
    ) -> int:
        """Raise the bucket's usage to what the server reports; returns tokens added."""

    @abc.abstractmethod
    def snapshot(self, bucket: str, limits: Limits, now: float) -> WindowSnapshot:
        """The bucket's figures at `now`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free connections and files."""


class StateBackend(Backend):
    """A backend that loads a bucket's `WindowState`, applies one rule, and stores it back."""

    @abc.abstractmethod
    def _state(self, bucket: str, now: float) -> AbstractContextManager[WindowState]:
        """Hold the bucket's state exclusively for one operation, saving it on exit."""

    def admit(
        self, bucket: str, limits: Limits, ticket: str, estimate: int, now: float, owner: str
    ) -> Decision:
        with self._state(bucket, now) as state:
            return state.admit(limits, ticket, estimate, now, owner)

    def settle(
        self, bucket: str, limits: Limits, ticket: str, estimate: int, charge: int, now: float
    ) -> int:
        with self._state(bucket, now) as state:
            return state.settle(limits, ticket, estimate, charge, now)

    def cancel(self, bucket: str, limits: Limits, ticket: str, now: float) -> int:
        with self._state(bucket, now) as state:
            return state.cancel(ticket)

    def release(self, bucket: str, limits: Limits, ticket: str, now: float) -> None:
        with self._state(bucket, now) as state:
            state.release(ticket)

    def penalize(
        self, bucket: str, limits: Limits, ticket: str, tokens: int, pause_until: float, now: float
    ) -> None:
        with self._state(bucket, now) as state:
            state.penalize(tokens, pause_until, now, ticket)

    def calibrate(
        self, bucket: str, limits: Limits, ticket: str, server_used: int, now: float
    ) -> int:
        with self._state(bucket, now) as state:
            return state.calibrate(limits, server_used, now, ticket)

    def snapshot(self, bucket: str, limits: Limits, now: float) -> WindowSnapshot:
        with self._state(bucket, now) as state:
            return state.snapshot(limits, now)
