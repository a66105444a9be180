"""The cost ledger: money spent and held against a cap, apart from the token windows.

Amounts are whole nano-dollars (1e-9 USD), so every backend (Python, Redis Lua) adds and
compares them exactly. A call holds its worst case before it is sent (`hold`, refused when spent +
held + worst case would pass the cap) and settles what it really cost when it ends (`settle`).
A ledger idle for `IDLE_TTL` seconds is forgotten, so a shared backend starts a later run afresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["IDLE_TTL", "NANO", "LedgerAnswer", "LedgerState"]

#: Nano-dollars per dollar.
NANO = 1_000_000_000
#: Seconds without any operation after which a ledger is dropped.
IDLE_TTL = 3600.0


@dataclass(frozen=True)
class LedgerAnswer:
    """A hold's outcome, and the ledger's figures as the decision saw them (nano-dollars)."""

    admitted: bool
    spent: int
    held: int


@dataclass
class LedgerState:
    """One ledger: settled spend, the holds of calls in flight, and how many were refused."""

    spent: int = 0
    holds: dict[str, int] = field(default_factory=dict)
    refused: int = 0
    touched: float = 0.0

    @property
    def held(self) -> int:
        """Nano-dollars held by calls in flight."""
        return sum(self.holds.values())

    def expire(self, now: float) -> None:
        """Forget everything when the ledger has been idle too long."""
        if self.touched and now - self.touched > IDLE_TTL:
            self.spent, self.holds, self.refused = 0, {}, 0
        self.touched = now

    def hold(self, hold_id: str, amount: int, cap: int | None) -> LedgerAnswer:
        """Hold `amount` unless spent + held + amount would pass `cap` (then count a refusal)."""
        held = self.held
        if cap is not None and self.spent + held + amount > cap:
            self.refused += 1
            return LedgerAnswer(False, self.spent, held)
        self.holds[hold_id] = self.holds.get(hold_id, 0) + amount
        return LedgerAnswer(True, self.spent, held)

    def settle(self, hold_id: str, actual: int) -> int:
        """Drop the hold and add what the call really cost; returns the new spend."""
        self.holds.pop(hold_id, None)
        self.spent += max(0, actual)
        return self.spent

    def to_json(self) -> dict[str, Any]:
        return {
            "spent": self.spent,
            "holds": self.holds,
            "refused": self.refused,
            "touched": self.touched,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LedgerState:
        return cls(
            int(data.get("spent", 0)),
            {str(k): int(v) for k, v in dict(data.get("holds", {})).items()},
            int(data.get("refused", 0)),
            float(data.get("touched", 0.0)),
        )
