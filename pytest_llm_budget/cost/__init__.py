"""Dollars: the price of every LLM call, and hard caps on what a run and a test may spend.

`prices` prices a call (a user's TOML price file, then genai-prices, imported only when a call is
first priced); `caps` holds a call's worst case against the caps and settles its actual cost.
"""

from __future__ import annotations

from pytest_llm_budget.cost.caps import CostGuard, CostHold
from pytest_llm_budget.cost.prices import ModelPrice, PriceBook, load_price_file, usd
from pytest_llm_budget.errors import CostWarning, PriceFileError

__all__ = [
    "CostGuard",
    "CostHold",
    "CostWarning",
    "ModelPrice",
    "PriceBook",
    "PriceFileError",
    "load_price_file",
    "usd",
]
