"""The pace benchmark's outputs: the markdown table, BENCHMARKS.md and a hand-written SVG chart.

Everything here renders from the results JSON (benchmarks/pace-results.json), so a saved run can
be re-rendered (`python -m benchmarks.pace --render`) without running anything.
"""

from __future__ import annotations

import html
import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["markdown", "summarize", "svg", "table"]

TARGET = 1.05
_PALETTE = ("#8c8c8c", "#2b6cb0", "#2f855a", "#b7791f", "#6b46c1")


def _median(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return round(statistics.median(xs), 3) if xs else None


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row's figures over its repetitions: medians, and the worst count of 429s/failures."""
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        return {"status": runs[0].get("status", "error") if runs else "not run"}

    def med(key: str) -> float | None:
        return _median([r.get(key) for r in ok])

    oracle: dict[str, float | None] = {}
    for vendor in sorted({v for r in ok for v in r["oracle"]}):
        oracle[vendor] = _median([r["oracle"].get(vendor) for r in ok])
    est = [
        sum(p["estimated"] for p in r["plugin"]) / sum(r["charged"].values())
        for r in ok
        if r.get("plugin") and sum(r["charged"].values())
    ]
    return {
        "status": "ok",
        "runs": len(ok),
        "passed": min(r["passed"] for r in ok),
        "failed": max(r["failed"] for r in ok),
        "tests": max(r["tests"] for r in ok),
        "rejected_429": max(r["rejected_429"] for r in ok),
        "wall": med("wall"),
        "span": med("span"),
        "oracle": oracle,
        "span_over_oracle": med("span_over_oracle"),
        "span_over_oracle_range": _range([r.get("span_over_oracle") for r in ok]),
        "span_over_floor": _median(
            [
                r["span"] / max(r["floor"].values())
                for r in ok
                if max(r["floor"].values(), default=0)
            ]
        ),
        "wall_over_floor": med("wall_over_floor"),
        "peak_over_budget": med("peak_over_budget"),
        "estimate_over_charge": _median(est),
    }


def _range(values: Sequence[float | None]) -> list[float] | None:
    xs = [v for v in values if v is not None]
    return [min(xs), max(xs)] if len(xs) > 1 else None


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if x is None else fmt.format(x)


def table(run: dict[str, Any]) -> str:
    """The markdown table of one labelled run."""
    head = (
        "| configuration | passed / failed | 429s | wall s | span s "
        "| oracle s (openai / gemini) | **span / oracle** | span / floor | wall / floor "
        "| peak window / B | estimate / charge |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for row in run["rows"]:
        s = row["summary"]
        name = (
            f"{row['label']}<br><sub>{html.escape(row['note'])}</sub>"
            if row.get("note")
            else (row["label"])
        )
        if s.get("status") != "ok":
            lines.append(f"| {name} | {s.get('status')} | | | | | | | | | |")
            continue
        o = s["oracle"]
        oracle = f"{_f(o.get('openai'), '{:.1f}')} / {_f(o.get('gemini'), '{:.1f}')}"
        if "anthropic" in o:  # the token-bucket oracle of the Anthropic rows
            oracle = f"anthropic {_f(o.get('anthropic'), '{:.1f}')}"
        runs = f" (median of {s['runs']})" if s["runs"] > 1 else ""
        r = s.get("span_over_oracle_range")
        spread = f" <sub>{r[0]:.2f}-{r[1]:.2f}</sub>" if r else ""
        lines.append(
            f"| {name}{runs} | {s['passed']} / {s['failed']} | {s['rejected_429']} "
            f"| {_f(s['wall'], '{:.1f}')} | {_f(s['span'], '{:.1f}')} | {oracle} "
            f"| **{_f(s['span_over_oracle'])}**{spread} | {_f(s.get('span_over_floor'))} "
            f"| {_f(s['wall_over_floor'])} "
            f"| {_f(s['peak_over_budget'])} | {_f(s['estimate_over_charge'])} |"
        )
    return head + "\n".join(lines) + "\n"


#: The rows where the plugin must learn the limit (issue [limits]) and their target.
_LEARNING = frozenset({"plugin-n4-unknown", "plugin-n4-5x"})
LEARNING_TARGET = 1.10


def _commentary(run: dict[str, Any]) -> str:
    """What the figures mean, computed from them (so that a re-run rewrites it truthfully)."""
    rows = {r["key"]: r["summary"] for r in run["rows"]}
    labels = {r["key"]: r["label"] for r in run["rows"]}
    ok = {k: s for k, s in rows.items() if s.get("status") == "ok"}
    claude = {k: ok.pop(k) for k in list(ok) if k.startswith("anthropic")}
    plugin = {
        k: s
        for k, s in ok.items()
        if k.startswith("plugin") and k not in (_LEARNING | {"plugin-n4-bucket"})
    }
    ratios = {k: s["span_over_oracle"] for k, s in plugin.items() if s["span_over_oracle"]}
    out = []
    if ratios:
        worst = max(ratios.values())
        n429 = sum(s["rejected_429"] for s in plugin.values())
        failed = sum(s["failed"] for s in plugin.values())
        met = worst <= TARGET and n429 == 0 and failed == 0
        worst_key = max(ratios, key=ratios.__getitem__)
        miss = (
            ""
            if met
            else (
                f"; the worst row ({labels[worst_key].split('<br>')[0]}) is {worst:.3f}, "
                f"{(worst / TARGET - 1) * 100:.1f}% over {TARGET}"
            )
        )
        out.append(
            f"pytest-llm-budget (sliding-window rows): span / oracle "
            f"{min(ratios.values()):.2f}-{worst:.2f} with {n429} 429s and {failed} failed tests: "
            f"it **{'meets' if met else 'misses'}** the target (span / oracle <= {TARGET}, "
            f"0 429s){miss}."
        )
        est = [s["estimate_over_charge"] for s in plugin.values() if s["estimate_over_charge"]]
        if est:
            out.append(
                f"Its estimates add up to {min(est):.2f}-{max(est):.2f}x what the emulator "
                "charged: the budget it holds back for charges that never come."
            )
    learning = {k: s for k, s in ok.items() if k in _LEARNING}
    if learning:
        worst = max((s["span_over_oracle"] or 0.0) for s in learning.values())
        n429 = max(s["rejected_429"] for s in learning.values())
        failed = sum(s["failed"] for s in learning.values())
        met = worst <= LEARNING_TARGET and n429 <= 2 and failed == 0
        floors = [s["span_over_floor"] for s in learning.values() if s.get("span_over_floor")]
        floor = f" (span / floor {min(floors):.2f}-{max(floors):.2f})" if floors else ""
        out.append(
            "Limits it was not told (" + "; ".join(labels[k] for k in learning) + "): span / "
            f"oracle up to {worst:.2f}{floor}, at most {n429} 429s per run, {failed} failed "
            f"tests: it **{'meets' if met else 'misses'}** the target (span / oracle <= "
            f"{LEARNING_TARGET}, at most 2 429s)."
        )
    bucket = ok.get("plugin-n4-bucket")
    if bucket:
        out.append(
            f"Against the token-bucket emulator: {bucket['rejected_429']} 429s, "
            f"{bucket['failed']} failed, span / oracle {_f(bucket['span_over_oracle'])} (a bucket "
            "admits more than B in some windows, so the sliding oracle is not a bound there)."
        )
    best = min(ratios.values(), default=None)
    for key, s in ok.items():
        if key.startswith("plugin"):
            continue
        trouble = []
        if s["rejected_429"]:
            trouble.append(f"{s['rejected_429']} 429s")
        if s["failed"]:
            trouble.append(f"{s['failed']} failed tests (their calls are missing from its oracle)")
        ratio = s["span_over_oracle"]
        speed = f"span / oracle {_f(ratio)}"
        if best and ratio:
            speed += (
                f", {'slower' if ratio > best else 'faster'} than the plugin's best ({best:.2f})"
            )
        peak = s["peak_over_budget"]
        if peak and peak > 1:
            speed += (
                f"; peak window {peak:.2f} x B: it spent the headroom the plugin and the oracle "
                "keep" + (", hence a ratio below 1" if ratio and ratio < 1 else "")
            )
        pays = "pays in " + " and ".join(trouble) if trouble else "no 429s, no failures"
        out.append(f"{labels[key]}: {pays}; {speed}.")
    out += _anthropic_commentary(claude, labels)
    skipped = [f"{labels[k]} ({s['status']})" for k, s in rows.items() if s.get("status") != "ok"]
    if skipped:
        out.append("Not measured: " + ", ".join(skipped) + ".")
    return "\n".join(f"- {line}" for line in out) + "\n"


def _anthropic_commentary(rows: dict[str, dict[str, Any]], labels: dict[str, str]) -> list[str]:
    """The Anthropic rows against the token-bucket oracle."""
    plugin = {k: s for k, s in rows.items() if k != "anthropic-sdk"}
    ratios = {k: s["span_over_oracle"] for k, s in plugin.items() if s["span_over_oracle"]}
    out = []
    if ratios:
        n429 = sum(s["rejected_429"] for s in plugin.values())
        failed = sum(s["failed"] for s in plugin.values())
        out.append(
            f"pytest-llm-budget (Anthropic rows): span / token-bucket oracle "
            f"{min(ratios.values()):.2f}-{max(ratios.values()):.2f} with {n429} 429s and "
            f"{failed} failed tests. Below 1.00 is possible: the oracle waits until the output "
            "bucket holds each answer's whole output, Anthropic (and the plugin) only until it "
            "is not exhausted."
        )
    sdk = rows.get("anthropic-sdk")
    if sdk:
        trouble = [f"{sdk['rejected_429']} 429s"] if sdk["rejected_429"] else []
        if sdk["failed"]:
            trouble.append(f"{sdk['failed']} failed tests")
        pays = "pays in " + " and ".join(trouble) if trouble else "no 429s, no failures"
        missing = " (its failed tests' calls are missing from its oracle)" if sdk["failed"] else ""
        out.append(
            f"{labels['anthropic-sdk']}: {pays}; span / token-bucket oracle "
            f"{_f(sdk['span_over_oracle'])}{missing}."
        )
    return out


_EXPLAIN = """\
How to read it: the suite's calls are charged by the emulator exactly as it admits them
(OpenAI: ceil(chars/4) + max output tokens; Gemini: input tokens only), against 6000 tokens per
6 s per vendor (one bucket per vendor); every limiter is told B = 5400 (10% headroom).

- **span**: first to last LLM request arriving at the emulator (429'd attempts included).
- **oracle**: per vendor, the emulator's admitted charges in arrival order, admitted FIFO from t=0
  as soon as a sliding 6 s window holding at most B allows; its last admission time. Vendors are
  paced independently, so the run's oracle is the larger of the two (Gemini is charged input only
  and never needs pacing here: its oracle is 0). **span / oracle** = span / max-vendor oracle;
  1.00 is the pace of a zero-429 limiter that knows every charge. Calls are about a quarter of B,
  so the oracle moves in steps of about one window: the same charges in another arrival order
  give 24 s or 30 s here. **span / floor** (order-free) helps tell a real change from a
  reshuffle.
- **token-bucket oracle** (Anthropic rows): the same knowing client against Anthropic's model,
  one token bucket per dimension (input tokens, output tokens, requests), each full at t=0 and
  refilled continuously at limit / W per second, never above its limit. Taking the emulator's
  admitted requests in arrival order with their exact `(input, output, 1)` charges, it admits
  each FIFO as soon as every bucket holds its charge: at the later of the previous admission and,
  over the dimensions, the time to refill the missing part (missing / rate), then takes the
  charge from each bucket. Knowing each answer's output, it charges output at admission, which
  no real client can (the output is known only when the answer reports it); its last admission
  time is the yardstick (`benchmarks/pace_oracle.py: token_bucket_span`).
  With two token dimensions a request's wait is the longer of the two refills (input missing /
  (ITPM / W), output missing / (OTPM / W)) and both buckets refill during it, so the dimension
  that binds may change from one request to the next; the floor is the slower dimension's fluid
  floor, (S_d - L_d) / L_d x W. The Anthropic rows hold the oracle to the rule less the headroom
  (as the sliding rows hold it to B) while the emulator enforces the full limits. Since a real
  client (and Anthropic) only needs the output bucket not exhausted, where the oracle waits for
  each answer's whole output, a zero-429 client can beat it slightly: span / oracle below 1.00
  there spends no headroom. Their **estimate / charge** is the input dimension's alone (the
  output is declared as max_tokens, never estimated); the emulator counts input as
  ceil(chars / 4), below the plugin's tokenizer count for Japanese or German prompts.
- **floor**: the fluid floor (S - B) / B x W of the slower vendor, S its total admitted charge.
  **wall / floor** uses pytest's wall time (start-up and xdist included).
- **peak window / B**: the emulator's `max_window_tokens` (largest charge in any 6 s window) over
  B; above 1.00 a client spent the headroom, at 1.11 it is at the provider's limit.
- **estimate / charge**: the plugin's summed estimates (its JSON report) over what the emulator
  charged: how much budget its estimates hold back.
- **429s**: requests the emulator rejected (every failed SDK retry counts); **failed**: tests
  that failed (an SDK ran out of retries).
- With several runs per row (each against a fresh emulator) the figures are medians, 429s and
  failures the worst run's, passed the worst run's; the small figures beside span / oracle are
  the lowest and highest of the runs.
- **limit unknown** / **limit 5x too high** (issue [limits]): the plugin is told nothing
  (`--llm-tpm auto`) or `--llm-tpm 30000`, and learns the real limit from the emulator's
  `x-ratelimit-limit-*` headers. "Limit unknown" runs against an emulator that limits each model
  to 6000 per 6 s (as OpenAI does; the plugin then gives each model a bucket), and its oracle
  paces each model apart; "5x too high" against the usual one bucket per vendor. Target: span /
  oracle <= 1.10 with at most 2 429s.
"""


def markdown(results: dict[str, Any]) -> str:
    """BENCHMARKS.md: every labelled run in the results file, newest first, with the chart."""
    runs = sorted(results["runs"].values(), key=lambda r: r["date"], reverse=True)
    parts = [
        "# Benchmarks\n\n"
        "## Pace: how close to the budget's pace, and at what cost in 429s\n\n"
        "Generated by `python -m benchmarks.pace` from `benchmarks/pace-results.json` (re-render "
        "with `python -m benchmarks.pace --render`). The suite is generated from a fixed seed: "
        "25 tests, 28 calls, prompts of 200-1200 characters in English, German, Japanese and "
        "code, max output 300-1500 tokens, OpenAI chat + Responses and Gemini generateContent, "
        "sync, async and streaming; each test declares its total with "
        "`@pytest.mark.llm_budget(tokens=..., vendor=...)`. It runs against the bundled emulator "
        "(a fresh one per run). Alternatives run at `-n 4`.\n\n"
        "![span / oracle per configuration](benchmarks/pace.svg)\n\n",
        _EXPLAIN,
    ]
    for run in runs:
        parts.append(
            f"\n### {run['label']}: {run['date']}\n\n"
            f"- command: `{run['command']}`\n"
            f"- code: {run.get('code', '?')}\n"
            f"- machine: {run['machine']}\n"
        )
        if any(not row["key"].startswith("anthropic") for row in run["rows"]):
            parts.append(
                f"- suite: {run['suite']['tests']} tests, {run['suite']['calls']} calls "
                f"({run['suite']['calls_by_vendor']}), seed {run['suite']['seed']}\n"
            )
        claude = run.get("anthropic_suite")
        if claude:
            emu = run["anthropic_emulator"]
            itpm, otpm, rpm = emu["itpm_otpm_rpm"]
            parts.append(
                f"- Anthropic rows: their own suite, {claude['tests']} tests, {claude['calls']} "
                f"calls, seed {claude['seed']}; emulator ITPM {itpm}, OTPM {otpm}, RPM {rpm} per "
                f"{emu['window']:g} s, replies of {emu['reply_tokens'].replace(':', '-')} "
                f"tokens; oracle held to {' / '.join(str(x) for x in emu['oracle_limits'])}\n"
            )
        parts.append("\n")
        parts.append(table(run))
        parts.append("\nWhat this means:\n\n" + _commentary(run))
    return "".join(parts)


def svg(results: dict[str, Any]) -> str:
    """Horizontal bars of span / oracle per configuration, one colour per labelled run."""
    runs = sorted(results["runs"].values(), key=lambda r: r["date"])
    keys: list[tuple[str, str]] = []
    for run in runs:
        for row in run["rows"]:
            if (row["key"], row["label"]) not in keys and row["key"] not in [k for k, _ in keys]:
                keys.append((row["key"], row["label"]))
    values = {(run["label"], row["key"]): row["summary"] for run in runs for row in run["rows"]}
    top = max([2.0] + [s["span_over_oracle"] for s in values.values() if s.get("span_over_oracle")])
    scale_max = float(int(top * 2) + 1) / 2  # next half-unit above the largest bar
    left, width, bar, gap = 330, 420, 14, 10
    group = bar * len(runs) + gap
    height = 60 + group * len(keys) + 40

    def x(v: float) -> float:
        return left + v / scale_max * width

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 130}" '
        f'height="{height}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="20" font-size="14" font-weight="bold">span / oracle per '
        f"configuration (1.00 = the oracle; target &lt;= {TARGET})</text>",
    ]
    y0 = 40
    for tick in [i / 2 for i in range(int(scale_max * 2) + 1)]:
        out.append(
            f'<line x1="{x(tick):.1f}" y1="{y0}" x2="{x(tick):.1f}" y2="{height - 35}" '
            f'stroke="#e2e2e2"/><text x="{x(tick):.1f}" y="{height - 22}" '
            f'text-anchor="middle">{tick:.1f}</text>'
        )
    out.append(
        f'<line x1="{x(TARGET):.1f}" y1="{y0}" x2="{x(TARGET):.1f}" y2="{height - 35}" '
        f'stroke="#c53030" stroke-dasharray="4 3"/>'
    )
    for i, (key, label) in enumerate(keys):
        gy = y0 + 10 + i * group
        out.append(
            f'<text x="{left - 8}" y="{gy + bar * len(runs) / 2 + 3:.1f}" text-anchor="end">'
            f"{html.escape(label)}</text>"
        )
        for j, run in enumerate(runs):
            s = values.get((run["label"], key))
            by = gy + j * bar
            if not s or s.get("status") != "ok" or not s.get("span_over_oracle"):
                status = s.get("status", "not run") if s else "not run"
                out.append(
                    f'<text x="{left + 4}" y="{by + bar - 3}" fill="#777">'
                    f"{html.escape(str(status))}</text>"
                )
                continue
            v = s["span_over_oracle"]
            colour = _PALETTE[j % len(_PALETTE)]
            flag = ""
            if s["rejected_429"] or s["failed"]:
                flag = f" ({s['rejected_429']} 429s, {s['failed']} failed)"
            out.append(
                f'<rect x="{left}" y="{by}" width="{x(v) - left:.1f}" height="{bar - 2}" '
                f'fill="{colour}"/><text x="{x(v) + 4:.1f}" y="{by + bar - 3}">'
                f"{v:.2f}{html.escape(flag)}</text>"
            )
    lx = 10
    for j, run in enumerate(runs):
        legend = f"{run['label']} ({run['date'][:10]})"
        out.append(
            f'<rect x="{lx}" y="{height - 14}" width="10" height="10" '
            f'fill="{_PALETTE[j % len(_PALETTE)]}"/><text x="{lx + 14}" y="{height - 5}">'
            f"{html.escape(legend)}</text>"
        )
        lx += 14 + 7 * len(legend) + 24  # ~7 px a character at the chart's font size
    out.append("</svg>")
    return "\n".join(out) + "\n"
