"""Pace benchmark: how close to the budget's pace a suite runs, beside the alternatives (issue 9).

    python -m benchmarks.pace --quick                 # one run per configuration, < 10 min
    python -m benchmarks.pace --repeat 3              # the full mode: medians of 3
    python -m benchmarks.pace --quick --label after   # keep 'before', add 'after' beside it
    python -m benchmarks.pace --only plugin-n0,plugin-n4 --quick
    python -m benchmarks.pace --render                # re-render BENCHMARKS.md + SVG from JSON

The Anthropic rows (`anthropic-*`) run a suite of their own against the emulator's token buckets
(ITPM, OTPM, RPM) and are measured against the token-bucket oracle.

Writes benchmarks/pace-results.json (raw figures and every run's request log, per label),
BENCHMARKS.md (tables, newest label first) and benchmarks/pace.svg, and prints the table.
Needs the `bench` extra for the alternatives (`pip install -e '.[test,bench]'`); a row whose
package is missing says "skipped: pip install X".
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from .pace_report import markdown, summarize, svg, table
from .pace_run import (
    ANTHROPIC_BUDGETS,
    ANTHROPIC_LIMITS,
    ANTHROPIC_REPLY_TOKENS,
    BUDGET,
    TPM,
    WINDOW,
    Processes,
    configurations,
    missing,
    run_config,
)
from .pace_suite import SEED, build_anthropic_suite, build_suite, describe, write_suite

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "pace-results.json"
CHART = ROOT / "benchmarks" / "pace.svg"
DOC = ROOT / "BENCHMARKS.md"


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.pace",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="one run per configuration (default 3)")
    p.add_argument("--repeat", type=int, help="runs per configuration (medians are reported)")
    p.add_argument("--label", default="before", help="name of this run in the results file")
    p.add_argument("--only", help="comma-separated configuration keys (see --list)")
    p.add_argument("--list", action="store_true", help="list the configurations and exit")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per pytest run")
    p.add_argument("--note", default="", help="added to the machine line (e.g. 'shared, busy')")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--render", action="store_true", help="only re-render from the JSON")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--keep", action="store_true", help="keep the temp folder (path printed)")
    a = p.parse_args(argv)
    if a.repeat is not None and a.repeat < 1:
        p.error(f"--repeat must be >= 1, got {a.repeat}")
    return a


def _machine(note: str) -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    text = (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average at start {load}"
    )
    return f"{text}; {note}" if note else text


def _code() -> str:
    """The commit measured (and whether the tree had changes)."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            timeout=10,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "pytest_llm_budget"],
            cwd=ROOT,
            timeout=10,
            capture_output=True,
            text=True,
        ).stdout
        branch = subprocess.run(
            ["git", "rev-parse", "--abbrev-ref", "HEAD"],
            cwd=ROOT,
            timeout=10,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return f"{branch} @ {rev}" + (" (pytest_llm_budget/ modified)" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _tiktoken_cache(folder: Path) -> str | None:
    """A TIKTOKEN_CACHE_DIR for the runs: the caller's, else one seeded from bpe-openai."""
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        return os.environ["TIKTOKEN_CACHE_DIR"]
    try:
        from pytest_llm_budget.tokens import seed_tiktoken_cache

        cache = folder / "tiktoken"
        seed_tiktoken_cache(cache)
        return str(cache)
    except Exception:  # no bpe-openai: the plugin then runs on its offline fallback
        return None


def _load(path: Path) -> dict[str, Any]:
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        if isinstance(data.get("runs"), dict):
            return data
    return {"runs": {}}


def _write(results: dict[str, Any], path: Path) -> None:
    for run in results["runs"].values():  # summaries follow the current rules on re-render
        for row in run["rows"]:
            if row["runs"]:
                row["summary"] = summarize(row["runs"])
    text = json.dumps(results, indent=1, ensure_ascii=False)
    # one line per innermost list (the request logs), so the file stays readable in a diff
    text = re.sub(
        r"\[\n\s+([^\[\]{}]*?)\n\s*\]",
        lambda m: "[" + re.sub(r",\n\s*", ", ", m[1].strip()) + "]",
        text,
    )
    path.write_text(text + "\n")
    doc, chart = _outputs(path)
    doc.write_text(markdown(results))
    chart.write_text(svg(results))


def _outputs(results: Path) -> tuple[Path, Path]:
    """BENCHMARKS.md and pace.svg for the default results file; beside any other one."""
    if results.resolve() == RESULTS:
        return DOC, CHART
    return results.with_suffix(".md"), results.with_suffix(".svg")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    if a.render:
        results = _load(a.results)
        if not results["runs"]:
            print(f"nothing to render: {a.results} has no runs", file=sys.stderr)
            return 1
        _write(results, a.results)
        for saved in results["runs"].values():
            print(f"\n{saved['label']} ({saved['date']}):\n{table(saved)}")
        return 0
    suite = build_suite(a.seed)
    claude_suite = build_anthropic_suite()
    configs = configurations(suite)
    if a.list:
        for c in configs:
            print(f"{c.key:18} {c.label}  [{c.note}]")
        return 0
    if a.only:
        wanted = [k.strip() for k in a.only.split(",") if k.strip()]
        unknown = sorted(set(wanted) - {c.key for c in configs})
        if unknown:
            print(f"unknown configuration(s) {unknown}; see --list", file=sys.stderr)
            return 2
        configs = [c for c in configs if c.key in wanted]
    repeat = a.repeat or (1 if a.quick else 3)
    given = list(argv if argv is not None else sys.argv[1:])
    if "--note" in given:  # the note is on the machine line already
        at = given.index("--note")
        del given[at : at + 2]
    given = [g for g in given if not g.startswith("--note=")]
    command = "python -m benchmarks.pace " + shlex.join(given)
    signal.signal(signal.SIGTERM, _on_sigterm)
    procs = Processes()
    tmp = tempfile.mkdtemp(prefix="pace-bench-")
    started = time.time()
    run: dict[str, Any] = {
        "label": a.label,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command.strip(),
        "code": _code(),
        "machine": _machine(a.note),
        "suite": describe(suite, BUDGET),
        "emulator": {"tpm_per_vendor": TPM, "window": WINDOW, "shared_bucket": True},
        "repeat": repeat,
        "rows": [],
    }
    if any(c.suite == "anthropic" for c in configs):
        run["anthropic_suite"] = describe(claude_suite, ANTHROPIC_BUDGETS[0])
        run["anthropic_emulator"] = {
            "itpm_otpm_rpm": list(ANTHROPIC_LIMITS), "window": WINDOW,
            "reply_tokens": ANTHROPIC_REPLY_TOKENS, "oracle_limits": list(ANTHROPIC_BUDGETS),
        }
    try:
        folder = Path(tmp)
        suites = {"mixed": (folder / "suite", suite), "anthropic": (folder / "suite-claude",
                                                                    claude_suite)}  # fmt: skip
        splits = {k: write_suite(s, d) for k, (d, s) in suites.items()}
        cache = _tiktoken_cache(folder)
        run["tiktoken_cache"] = "seeded from bpe-openai" if cache else "none (offline fallback)"
        for config in configs:
            runs: list[dict[str, Any]] = []
            reason = missing(config)
            for i in range(repeat if reason is None else 0):
                print(
                    f"[{time.time() - started:6.0f}s] {config.key} run {i + 1}/{repeat} ...",
                    flush=True,
                )
                try:
                    result = run_config(
                        config,
                        suites[config.suite][0],
                        splits[config.suite],
                        folder / f"{config.key}-{i}",
                        procs,
                        a.timeout,
                        cache,
                    )
                except (RuntimeError, OSError) as exc:
                    result = {"status": f"error: {exc}"}
                runs.append(result)
                s = result
                print(
                    f"         {s['status']}: {s.get('passed')} passed, {s.get('failed')} "
                    f"failed, {s.get('rejected_429')} 429s, wall {s.get('wall')} s, "
                    f"span/oracle {s.get('span_over_oracle')}",
                    flush=True,
                )
            summary = summarize(runs) if runs else {"status": f"skipped: {reason}"}
            run["rows"].append(
                {
                    "key": config.key,
                    "label": config.label,
                    "note": config.note,
                    "workers": config.workers,
                    "mode": config.mode,
                    "summary": summary,
                    "runs": runs,
                }
            )
    except KeyboardInterrupt:
        print("\ninterrupted: stopping emulators, redis and pytest runs", file=sys.stderr)
        return 130
    finally:
        procs.kill_all()
        if a.keep:
            print(f"kept {tmp}")
        else:
            import shutil

            with contextlib.suppress(OSError):
                shutil.rmtree(tmp, ignore_errors=True)
    results = _load(a.results)
    results["runs"][a.label] = run
    _write(results, a.results)
    print(f"\n{a.label} ({run['date']}), {time.time() - started:.0f} s:\n{table(run)}")
    print("written: " + ", ".join(str(p) for p in (a.results, *_outputs(a.results))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
