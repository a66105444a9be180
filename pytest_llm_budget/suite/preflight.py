"""Preflight: project a run's tokens and the least time the budget allows, before any call.

Per LLM test: the marker's `tokens=` (the whole test's expected spend, taken as declared), else
`--llm-est-tokens` times (1 + grounded overhead) when the test is grounded (the overhead once,
never on a declared total); zero when its cassette replays. Tests go to the bucket of their
vendor and model (ini `llm_limits`, then `--llm-tpm`): the marker's `vendor=`, else the
`llm_model` case's, else that of the provider of its client fixture (`gemini_client` -> gemini),
else the default vendor's (that of the first `llm_models` entry). Each bucket admits `budget =
tpm * (1 - headroom)` tokens per sliding window: the first `budget` tokens leave at once, and `T`
tokens need their last admission at least `(ceil(T / budget) - 1)` windows after the first. That
is a true
lower bound of the run's wall time when every test declares `tokens=` (and spends at least that)
and its bucket is known: the line says "at least" then, "about" otherwise. No pytest here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_llm_budget.limiting.buckets import LimitRule, rule_for
from pytest_llm_budget.replay.cassettes import CassettePolicy, cassette_path
from pytest_llm_budget.session import TestContext
from pytest_llm_budget.settings.resolved import Settings
from pytest_llm_budget.suite.matrix import LLMModel

if TYPE_CHECKING:
    from pytest_llm_budget.cost.prices import PriceBook

__all__ = [
    "Projection",
    "TestEstimate",
    "cost_note",
    "default_vendor",
    "estimate_item",
    "format_duration",
    "over_budget_message",
    "project",
]


@dataclass(frozen=True)
class TestEstimate(TestContext):
    """What one collected LLM test is expected to spend live (`tokens`, estimated if undeclared)."""

    __test__ = False

    tokens: int = 0
    replayed: bool = False
    declared: bool = True


@dataclass(frozen=True)
class Bucket:
    """One budget bucket's share of the projection."""

    name: str
    rule: LimitRule
    tokens: int
    #: None while the bucket's limit is not known (`--llm-tpm auto`, nothing learned yet).
    budget: int | None
    seconds: float


@dataclass(frozen=True)
class Projection:
    """The run's projected tokens and least duration (its busiest bucket's)."""

    tests: int
    replayed: int
    tokens: int
    window: float
    headroom: float
    buckets: tuple[Bucket, ...]
    aside: int = 0
    lower_bound: bool = True

    @property
    def busiest(self) -> Bucket | None:
        """The bucket that takes longest (it sets the run's least duration)."""
        return max(
            self.buckets, key=lambda b: (b.budget is not None, b.seconds, b.tokens), default=None
        )

    @property
    def seconds(self) -> float:
        """The least wall time the budget allows for the live part of the run."""
        busiest = self.busiest
        return busiest.seconds if busiest else 0.0

    @property
    def qualifier(self) -> str:
        """`at least` of a true lower bound, else `about`."""
        return "at least" if self.lower_bound else "about"

    def figures(self) -> dict[str, Any]:
        """The projection as plain JSON (for the report, beside the real figures)."""
        return {
            "tests": self.tests,
            "replayed": self.replayed,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "lower_bound": self.lower_bound,
            "buckets": [
                {"name": b.name, "tokens": b.tokens, "budget": b.budget, "seconds": b.seconds}
                for b in self.buckets
            ],
        }

    def line(self, fallback_budget: int | None) -> str:
        """`LLM budget preflight: N LLM tests, ~T tokens, at least 6m35s at B tokens/60s`."""
        busiest = self.busiest
        budget = busiest.budget if busiest else fallback_budget
        plural = "" if self.tests == 1 else "s"
        text = f"LLM budget preflight: {self.tests} LLM test{plural}, ~{self.tokens} tokens, "
        if budget is None:
            text += "limit not known yet (--llm-tpm auto: learned from the provider's answers)"
        else:
            text += (
                f"{self.qualifier} {format_duration(self.seconds)} at {budget} "
                f"tokens/{self.window:g}s"
            )
        unknown = sum(1 for b in self.buckets if b.budget is None)
        notes = []
        if unknown and budget is not None:
            notes.append(f"{unknown} bucket(s) of unknown limit not projected")
        if len(self.buckets) > 1 and busiest is not None:
            notes.append(f"busiest bucket {busiest.name} of {len(self.buckets)}")
        if self.replayed:
            notes.append(f"{self.replayed} replayed from cassettes")
        if self.aside:
            notes.append(f"{self.aside} left to pytest-recording's vcr marker")
        return text + (f" ({'; '.join(notes)})" if notes else "")


def format_duration(seconds: float) -> str:
    """`6m35s`, `1h2m0s`, `42s` (rounded up to the second)."""
    total = math.ceil(round(seconds, 6))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def default_vendor(settings: Settings) -> str:
    """The vendor of a test that names none: the first `llm_models` entry's (else openai)."""
    first = settings.models[0] if settings.models else ""
    return first.split(":", 1)[0] if ":" in first else "openai"


def project(
    tests: Iterable[TestEstimate],
    settings: Settings,
    aside: int = 0,
    known_budget: Callable[[str, str], int | None] | None = None,
) -> Projection:
    """Sum tokens per bucket and the windows each bucket needs.

    A `tpm=auto` bucket's budget is what `known_budget(vendor, model)` says the backend already
    learned (a later run on the same file or Redis), else unknown: it is not projected.
    """
    spent: dict[str, tuple[LimitRule, int]] = {}
    budgets: dict[str, int | None] = {}
    count = replayed = 0
    certain = True
    for test in tests:
        count += 1
        if test.replayed:
            replayed += 1
            continue
        vendor, model = test.vendor or default_vendor(settings), test.model or "*"
        rule = rule_for(settings.rules, vendor, model)
        certain = certain and test.declared and test.vendor is not None
        if test.model is None and any(
            r.model != "*" and r.matches(vendor, r.model) for r in settings.rules[:-1]
        ):
            certain = False  # a model-specific rule of this vendor may take the calls
        name = rule.bucket_name(vendor, model)
        spent[name] = (rule, spent.get(name, (rule, 0))[1] + test.tokens)
        if name not in budgets:
            configured = rule.budget(settings.headroom)
            learned = known_budget(vendor, model) if known_budget is not None else None
            budgets[name] = learned if learned is not None else configured
    buckets = []
    for name, (rule, tokens) in sorted(spent.items()):
        budget = budgets[name]
        if budget is None:
            certain = False
            buckets.append(Bucket(name, rule, tokens, None, 0.0))
            continue
        budget = max(1, budget)
        buckets.append(Bucket(name, rule, tokens, budget, least_seconds(tokens, budget, settings)))
    return Projection(
        tests=count,
        replayed=replayed,
        tokens=sum(b.tokens for b in buckets),
        window=settings.window,
        headroom=settings.headroom,
        buckets=tuple(buckets),
        aside=aside,
        lower_bound=certain,
    )


def least_seconds(tokens: int, budget: int, settings: Settings) -> float:
    """The least time a sliding window of `budget` tokens takes to admit `tokens`."""
    return max(0, math.ceil(tokens / budget) - 1) * settings.window


def cost_note(
    tests: Iterable[TestEstimate], prices: PriceBook, max_cost: float | None = None
) -> str | None:
    """`LLM budget preflight: worst-case cost $1.234 ...`: live tests' tokens priced as output.

    None when no test runs live. A test's tokens are all priced at its model's output rate (the
    higher one), an upper bound whatever the split between input and output.
    """
    from pytest_llm_budget.cost.prices import usd

    total = 0.0
    live = unpriced = 0
    for test in tests:
        if test.replayed:
            continue
        live += 1
        cost = (
            prices.worst_case(test.vendor, test.model, 0, test.tokens)
            if test.vendor and test.model
            else None
        )
        if cost is None:
            unpriced += 1
        else:
            total += float(cost)
    if not live:
        return None
    notes = []
    if unpriced == live:
        notes.append("no live test declares a model with a known price: "
                     "llm_budget(vendor=, model=) or llm_model")
    elif unpriced:
        notes.append(f"{unpriced} of {live} live tests of unknown model or price not included")
    if max_cost is not None:
        over = ": calls that would pass it are refused" if total > max_cost else ""
        notes.append(f"--llm-max-cost {usd(max_cost)}{over}")
    text = f"LLM budget preflight: worst-case cost {usd(total if unpriced < live else None)}"
    return text + (f" ({'; '.join(notes)})" if notes else "")


def over_budget_message(projection: Projection, max_duration: float) -> str | None:
    """Why the run must not start (projection longer than --llm-max-duration), or None."""
    busiest = projection.busiest
    if busiest is None or busiest.budget is None or projection.seconds <= max_duration:
        return None
    over = projection.seconds - max_duration
    windows = math.floor(max_duration / projection.window) + 1
    needed_tpm = math.ceil(busiest.tokens / windows / (1 - projection.headroom))
    per_test = projection.tokens / max(1, projection.tests - projection.replayed)
    fit_tests = min(projection.tests, int(busiest.budget * windows / per_test))
    return (
        f"pytest-llm-budget: LLM_BATCH_RATE_LIMITED: the run needs {projection.qualifier} "
        f"{format_duration(projection.seconds)} (~{projection.tokens} tokens; bucket "
        f"{busiest.name}: {busiest.tokens} tokens at {busiest.budget} tokens/"
        f"{projection.window:g}s), {format_duration(over)} over --llm-max-duration="
        f"{format_duration(max_duration)}. No LLM call was made. To fit: raise the limit if the "
        f"key allows it (--llm-tpm {needed_tpm} or an llm_limits rule for {busiest.name}), "
        f"narrow the run with -k (about {fit_tests} of {projection.tests} LLM tests fit), "
        f"record cassettes (--llm-record-mode once) so replayed tests spend nothing, or raise "
        f"--llm-max-duration."
    )


def _fixture_vendor(fixtures: Iterable[str]) -> str | None:
    """The vendor of the first registered provider whose client fixture the test takes."""
    from pytest_llm_budget.providers.registry import providers

    taken = set(fixtures)
    return next((p.vendor for p in providers() if taken.intersection(p.fixtures)), None)


def estimate_item(item: Any, settings: Settings, policy: CassettePolicy) -> TestEstimate:
    """What one LLM test item is expected to spend live (zero-cost when its cassette replays)."""
    context = TestContext.of(item)
    tokens = settings.estimate_policy.test_tokens(context.tokens, grounded=context.grounded)
    callspec = getattr(item, "callspec", None)
    model = callspec.params.get("llm_model") if callspec is not None else None
    vendor, name = context.vendor, context.model
    if isinstance(model, LLMModel):
        vendor, name = vendor or model.vendor, name or model.name
    if vendor is None:
        vendor = _fixture_vendor(getattr(item, "fixturenames", ()))
    replayed = (
        policy.active
        and not item.get_closest_marker("vcr")
        and policy.replays(cassette_path(item.path, settings.cassette_dir, item.nodeid))
    )
    return TestEstimate(
        item.nodeid,
        tokens,
        vendor,
        name,
        grounded=context.grounded,
        replayed=replayed,
        declared=bool(context.tokens),
    )
