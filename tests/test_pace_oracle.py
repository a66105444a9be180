"""The pace benchmark's oracle and fluid floor (benchmarks/pace_oracle.py): pure, no network."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# `python -m pytest` has the repo root on sys.path; a bare `pytest` (tox) does not.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pace_oracle import (
    admitted_charges,
    figures,
    fluid_floor,
    oracle_admissions,
    oracle_span,
    token_bucket_admissions,
    token_bucket_figures,
    token_bucket_span,
)


def test_everything_that_fits_goes_at_zero() -> None:
    assert oracle_admissions([1000, 2000, 2400], budget=5400, window=6) == [0, 0, 0]
    assert oracle_span([], budget=5400, window=6) == 0.0


def test_a_charge_waits_for_the_oldest_charges_to_leave_the_window() -> None:
    # 3 x 1800 fill B=5400 at t=0; the 4th needs the first to expire (t=6), the 5th too
    # (each frees exactly 1800); the 6th fits beside them, the 7th waits for t=12.
    times = oracle_admissions([1800] * 7, budget=5400, window=6)
    assert times == [0, 0, 0, 6, 6, 6, 12]


def test_fifo_a_small_charge_never_overtakes_a_waiting_large_one() -> None:
    times = oracle_admissions([5000, 5000, 100], budget=5400, window=6)
    assert times == [0, 6, 6]


def test_a_large_charge_may_need_several_expiries() -> None:
    times = oracle_admissions([1000, 1000, 3000, 4000], budget=5400, window=2)
    # 5000 in the window, 4000 more must free 3600: only all three leaving at t=2 does
    assert times == [0, 0, 0, 2]


def test_window_boundary_matches_the_emulator_a_slot_frees_exactly_one_window_later() -> None:
    assert oracle_admissions([5400, 1], budget=5400, window=6) == [0, 6]


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="never fit"):
        oracle_span([6000], budget=5400, window=6)
    with pytest.raises(ValueError, match="negative"):
        oracle_span([-1], budget=5400, window=6)
    with pytest.raises(ValueError, match="positive"):
        oracle_span([1], budget=0, window=6)


def test_fluid_floor() -> None:
    assert fluid_floor([5400], 5400, 6) == 0.0
    assert fluid_floor([3000, 3000, 3000, 3000], 5400, 6) == pytest.approx((12000 - 5400) / 900)
    assert fluid_floor([], 5400, 6) == 0.0


def test_oracle_is_never_below_the_fluid_floor() -> None:
    charges = [1500 + (i * 397) % 1300 for i in range(30)]
    assert oracle_span(charges, 5400, 6) >= fluid_floor(charges, 5400, 6)


def _rec(t: float, vendor: str, charge: int, status: int = 200) -> dict[str, object]:
    outcome = "ok" if status == 200 else "tokens"
    return {
        "t": t,
        "vendor": vendor,
        "model": "m",
        "status": status,
        "outcome": outcome,
        "charge": charge if status == 200 else 0,
    }


def test_figures_from_an_emulator_log() -> None:
    log = [
        _rec(100.0, "openai", 3000),
        _rec(100.5, "gemini", 200),
        _rec(101.0, "openai", 3000, status=429),
        _rec(106.2, "openai", 3000),
        _rec(106.3, "openai", 3000),
    ]
    assert admitted_charges(log) == {"openai": [3000, 3000, 3000], "gemini": [200]}
    f = figures(log, wall=12.0, budget=5400, window=6)
    assert f.requests == 5 and f.rejected == 1
    assert f.span == pytest.approx(6.3)
    assert f.oracle == {"openai": 12.0, "gemini": 0.0}
    assert f.span_over_oracle == pytest.approx(6.3 / 12.0)
    assert f.floor["openai"] == pytest.approx(4.0)
    assert f.wall_over_floor == pytest.approx(3.0)


def test_figures_with_no_pacing_needed_has_no_ratio() -> None:
    f = figures([_rec(1.0, "openai", 100)], wall=1.0, budget=5400, window=6)
    assert f.span_over_oracle is None and f.wall_over_floor is None


def test_figures_of_an_emulator_that_limits_each_model() -> None:
    log = [
        {**_rec(100.0 + i, "openai", 3000), "model": m, "bucket": f"openai:{m}"}
        for i, m in enumerate(["a", "b", "a", "b", "a"])
    ]
    shared = figures(log, wall=12.0, budget=5400, window=6)
    apart = figures(log, wall=12.0, budget=5400, window=6, per_model=True)
    assert shared.oracle["openai"] == 24.0  # 15000 through one 5400 window
    assert apart.oracle["openai"] == 12.0  # model a's 9000: its slowest bucket
    assert apart.charged["openai"] == 15000


# -- token buckets (Anthropic): input 1500 and output 800 per 6 s ------------------------------
def test_token_buckets_admit_what_fits_at_zero() -> None:
    assert token_bucket_admissions([(500, 250, 1)] * 3, 1500, 800, 6) == [0, 0, 0]
    # 3 x 300 output: 100 short, refilled at 133.3/s
    assert token_bucket_admissions([(500, 300, 1)] * 3, 1500, 800, 6)[2] == pytest.approx(0.75)
    assert token_bucket_span([], 1500, 800, 6) == 0.0


def test_each_dimension_can_bind_and_the_slowest_decides() -> None:
    # input: 1500 spent, the next 500 refills at 250/s
    assert token_bucket_admissions([(1500, 0, 1), (500, 0, 1)], 1500, 800, 6) == [0, 2.0]
    # output: 800 spent, the next 400 refills at 133.3/s
    times = token_bucket_admissions([(10, 800, 1), (10, 400, 1)], 1500, 800, 6)
    assert times == [0, pytest.approx(3.0)]
    # both short: output's 3 s beats input's 2 s
    times = token_bucket_admissions([(1500, 800, 1), (500, 400, 1)], 1500, 800, 6)
    assert times == [0, pytest.approx(3.0)]
    # requests: 2 per 6 s, the third waits 3 s
    times = token_bucket_admissions([(1, 1, 1)] * 3, 1500, 800, 6, requests_limit=2)
    assert times == [0, 0, pytest.approx(3.0)]


def test_token_buckets_are_fifo_and_refill_only_up_to_the_limit() -> None:
    # the small third request waits behind the second, whatever room it would find alone
    times = token_bucket_admissions([(1500, 0, 1), (1500, 0, 1), (10, 0, 1)], 1500, None, 6)
    assert times == [0, pytest.approx(6.0), pytest.approx(6.04)]
    # a long pause refills to full, never beyond: two 1500s after it still wait for each other
    times = token_bucket_admissions([(1500, 0, 1)] * 2, 1500, None, 6)
    assert times[1] - times[0] == pytest.approx(6.0)


def test_token_bucket_oracle_is_at_least_the_fluid_floor_of_each_dimension() -> None:
    charges = [(300 + (i * 397) % 900, 100 + (i * 211) % 600, 1) for i in range(30)]
    span = token_bucket_span(charges, 1500, 800, 6)
    assert span >= fluid_floor([c[0] for c in charges], 1500, 6) - 1e-9
    assert span >= fluid_floor([c[1] for c in charges], 800, 6) - 1e-9


def test_token_bucket_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="never fit"):
        token_bucket_span([(1600, 0, 1)], 1500, 800, 6)
    with pytest.raises(ValueError, match="negative"):
        token_bucket_span([(1, -1, 1)], 1500, 800, 6)
    with pytest.raises(ValueError, match="positive"):
        token_bucket_span([(1, 1, 1)], 0, 800, 6)


def test_token_bucket_figures_from_an_emulator_log() -> None:
    def claude(t: float, charge: int, output: int, status: int = 200) -> dict[str, object]:
        record = _rec(t, "anthropic", charge, status=status)
        return {**record, "completion_tokens": output}

    log = [
        claude(10.0, 1000, 100),
        claude(10.1, 1000, 600, status=429),  # refused: not charged
        claude(12.0, 1000, 600),
        claude(16.0, 200, 700),
        _rec(11.0, "openai", 3000),  # another vendor: not this row's
    ]
    f = token_bucket_figures(log, wall=9.0, limits=(1500, 800, None), window=6)
    assert f.requests == 4 and f.rejected == 1 and f.span == pytest.approx(6.0)
    # input: 500 left, the second 1000 waits 2 s (250/s); output: full again by then (700 +
    # 266.7, at most 800), 200 left after it; the third needs 700: 500 more at 133.3/s = 3.75 s
    assert f.oracle["anthropic"] == pytest.approx(5.75)
    assert f.span_over_oracle == pytest.approx(6.0 / 5.75)
    assert f.floor["anthropic"] == pytest.approx(max((2200 - 1500) / 1500, (1400 - 800) / 800) * 6)
    assert f.charged == {"anthropic": 2200.0}
