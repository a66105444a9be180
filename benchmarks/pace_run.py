"""Run the generated pace suite under one configuration: emulator, redis, pytest, figures.

Every process started here is tracked by `Processes` and killed (its whole process group) on
the way out, also on Ctrl-C or SIGTERM; every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .pace_oracle import figures, token_bucket_figures
from .pace_suite import Suite, mean_weight

__all__ = [
    "ANTHROPIC_LIMITS", "BUDGET", "TPM", "WINDOW", "Config", "Processes", "configurations",
    "run_config",
]

TPM = 6000  # the emulator's limit per vendor and window
WINDOW = 6.0
HEADROOM = 0.1
BUDGET = round(TPM * (1 - HEADROOM))  # B = 5400: what every limiter is told to keep to
PLUGIN_ARGS = ("--llm-tpm", str(TPM), "--llm-window", "6", "--llm-headroom", str(HEADROOM))
_SCRUB = ("LLM_BUDGET_", "OPENAI_", "GOOGLE_", "GEMINI_", "ANTHROPIC_", "PACE_", "PYTEST_")

#: The Anthropic rows' emulator: (ITPM, OTPM, RPM) per WINDOW, one pool for both Claude models,
#: replies of 100-300 tokens; the plugin is told the same rule, with HEADROOM.
ANTHROPIC_LIMITS = (1500, 1500, 50)
ANTHROPIC_REPLY_TOKENS = "100:300"
ANTHROPIC_RULE = "anthropic:* itpm={} otpm={} rpm={}".format(*ANTHROPIC_LIMITS)
#: What the token-bucket oracle is held to: each limit less the headroom (requests exact).
ANTHROPIC_BUDGETS = (
    round(ANTHROPIC_LIMITS[0] * (1 - HEADROOM)),
    round(ANTHROPIC_LIMITS[1] * (1 - HEADROOM)),
    float(ANTHROPIC_LIMITS[2]),
)


@dataclass(frozen=True)
class Config:
    """One row of the table: how pytest is run and what it needs."""

    key: str
    label: str
    plugin: bool
    workers: int
    env: Mapping[str, str] = field(default_factory=dict)
    needs: tuple[tuple[str, str], ...] = ()  # (module to import, pip package to name)
    processes: int = 1  # 2: the suite split over two pytest processes at once (one Redis)
    mode: str = "sliding"
    note: str = ""
    #: What the plugin is told the limit is (`--llm-tpm`); None: nothing (`--llm-tpm auto`).
    told_tpm: int | None = TPM
    #: The emulator limits each model apart (as OpenAI does) instead of each vendor.
    per_model: bool = False
    #: Which generated suite the row runs: "mixed" (OpenAI + Gemini) or "anthropic".
    suite: str = "mixed"


def configurations(suite: Suite) -> list[Config]:
    """The rows, in table order."""
    xdist = (("xdist", "pytest-xdist"),)
    per_window = {v: f"{BUDGET / mean_weight(suite.calls(v)):.2f}" for v in ("openai", "gemini")}
    calls_note = ", ".join(f"{v} {n}" for v, n in per_window.items())
    return [
        Config("plugin-n0", "pytest-llm-budget -n 0", True, 0, note="memory backend"),
        Config("plugin-n4", "pytest-llm-budget -n 4", True, 4, needs=xdist, note="file backend"),
        Config("plugin-n8", "pytest-llm-budget -n 8", True, 8, needs=xdist, note="file backend"),
        Config(
            "plugin-redis-2x",
            "pytest-llm-budget, 2 processes on one Redis",
            True,
            0,
            needs=(("redis", "redis"),),
            processes=2,
            note="suite split in two, both -n 0, started together",
        ),
        Config(
            "plugin-n4-bucket",
            "pytest-llm-budget -n 4, emulator in bucket mode",
            True,
            4,
            needs=xdist,
            mode="bucket",
            note="token bucket refilling B/W per s; the sliding oracle still the yardstick",
        ),
        Config(
            "plugin-n4-unknown",
            "pytest-llm-budget -n 4, limit unknown",
            True,
            4,
            needs=xdist,
            told_tpm=None,
            per_model=True,
            note="told nothing (--llm-tpm auto); the emulator limits each model (as OpenAI "
            "does) and says so in its headers; the oracle paces each model apart",
        ),
        Config(
            "plugin-n4-5x",
            "pytest-llm-budget -n 4, limit 5x too high",
            True,
            4,
            needs=xdist,
            told_tpm=5 * TPM,
            note=f"told --llm-tpm {5 * TPM}; the emulator enforces {TPM} per vendor and states it "
            "in its headers",
        ),
        Config(
            "sdk-default",
            "plain SDKs, default retries",
            False,
            4,
            needs=xdist,
            note="openai max_retries=2, google-genai no retries",
        ),
        Config(
            "sdk-retries",
            "plain SDKs, more retries",
            False,
            4,
            env={"PACE_OPENAI_RETRIES": "10", "PACE_GENAI_ATTEMPTS": "10"},
            needs=xdist,
            note="openai max_retries=10, google-genai HttpRetryOptions(attempts=10)",
        ),
        Config(
            "pyrate",
            "pyrate-limiter + SDK retries",
            False,
            4,
            env={"PACE_LIMITER": "pyrate", "PACE_GENAI_ATTEMPTS": "5"},
            needs=(*xdist, ("pyrate_limiter", "pyrate-limiter"), ("filelock", "filelock")),
            note=f"weight ceil(chars/4)+max_tokens, {BUDGET}/{WINDOW:g} s per vendor, SQLite "
            "bucket + file lock; openai max_retries=2, genai attempts=5",
        ),
        Config(
            "calls",
            "pytest-xdist-rate-limit + SDK retries",
            False,
            4,
            env={
                "PACE_LIMITER": "calls",
                "PACE_GENAI_ATTEMPTS": "5",
                **{f"PACE_CALLS_PER_WINDOW_{v.upper()}": n for v, n in per_window.items()},
            },
            needs=(*xdist, ("pytest_xdist_rate_limit", "pytest-xdist-rate-limit")),
            note=f"calls per {WINDOW:g} s = B / mean estimated call ({calls_note}); "
            "openai max_retries=2, genai attempts=5",
        ),
        *anthropic_configurations(),
    ]


def anthropic_configurations() -> list[Config]:
    """The Anthropic rows: their own suite, emulator token buckets, the token-bucket oracle."""
    xdist = (("xdist", "pytest-xdist"), ("anthropic", "anthropic"))
    told = f"rule {ANTHROPIC_RULE}"
    return [
        Config(
            "anthropic-n0", "pytest-llm-budget, Anthropic -n 0", True, 0,
            needs=(("anthropic", "anthropic"),), note=f"memory backend; {told}",
            suite="anthropic",
        ),
        Config(
            "anthropic-n4", "pytest-llm-budget, Anthropic -n 4", True, 4, needs=xdist,
            note=f"file backend; {told}", suite="anthropic",
        ),
        Config(
            "anthropic-redis-2x", "pytest-llm-budget, Anthropic, 2 processes on one Redis", True,
            0, needs=(("redis", "redis"), ("anthropic", "anthropic")), processes=2,
            note=f"suite split in two, both -n 0, started together; {told}", suite="anthropic",
        ),
        Config(
            "anthropic-sdk", "anthropic SDK, its own retries", False, 4, needs=xdist,
            note="max_retries=2 (its default: retry-after, x-should-retry), no pacing",
            suite="anthropic",
        ),
    ]


def missing(config: Config) -> str | None:
    """'pip install X' when a module the row needs is absent (or 'apt-get install ...')."""
    for module, package in config.needs:
        if importlib.util.find_spec(module) is None:
            return f"pip install {package}"
    if config.processes > 1 and shutil.which("redis-server") is None:
        return "apt-get install redis-server"
    return None


# -- processes -----------------------------------------------------------------------------------
class Processes:
    """Every child started for the benchmark, each in its own process group; `kill_all()`."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []

    def start(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(list(args), start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL if it lingers."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        # xdist workers share the group; make sure none outlives its controller
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self._procs:
            self._procs.remove(proc)

    def kill_all(self) -> None:
        for proc in list(self._procs):
            self.stop(proc, timeout=3.0)


def _first_line(path: Path, marker: str, proc: subprocess.Popen[Any], timeout: float) -> str:
    """The first line of a child's output file that holds `marker` (RuntimeError otherwise)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if marker in line:
                return line
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"the emulator did not start: {path.read_text(errors='replace')[-500:]!r}")


@contextlib.contextmanager
def emulator(
    procs: Processes, folder: Path, mode: str, per_model: bool = False, suite: str = "mixed"
) -> Iterator[tuple[str, Path]]:
    """The bundled emulator on a free port: TPM per vendor (or per model), a JSONL log; for the
    Anthropic suite its token buckets of ANTHROPIC_LIMITS and longer replies."""
    log = folder / "emulator.jsonl"
    buckets = "--per-model" if per_model else "--shared-bucket"
    args = [
        sys.executable, "-m", "pytest_llm_budget.emulator", "--host", "127.0.0.1", "--port", "0",
        "--openai-tpm", str(TPM), "--gemini-tpm", str(TPM), "--rpm", "none",
        "--window", f"{WINDOW:g}", "--mode", mode, buckets, "--log", str(log),
    ]  # fmt: skip
    if suite == "anthropic":
        itpm, otpm, rpm = ANTHROPIC_LIMITS
        args += ["--anthropic-itpm", str(itpm), "--anthropic-otpm", str(otpm),
                 "--anthropic-rpm", str(rpm), "--reply-tokens", ANTHROPIC_REPLY_TOKENS]  # fmt: skip
    out = folder / "emulator.out"  # a file, not a pipe: tracebacks must never block it
    with open(out, "wb") as fh:
        proc = procs.start(args, stdout=fh, stderr=subprocess.STDOUT)
    try:
        line = _first_line(out, "listening on ", proc, 30.0)
        yield line.split("listening on ", 1)[1].strip(), log
    finally:
        procs.stop(proc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def redis_server(procs: Processes, folder: Path) -> Iterator[str]:
    """A private redis-server (no persistence) in `folder`; yields its URL."""
    port = _free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(folder)]  # fmt: skip
    with open(folder / "redis.log", "wb") as out:
        proc = procs.start(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=0.5) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {folder / 'redis.log'}")
            time.sleep(0.05)
        else:
            raise RuntimeError("redis-server did not answer PING within 10 s")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        procs.stop(proc)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


# -- one run -------------------------------------------------------------------------------------
def base_env(
    emulator_url: str, tiktoken_cache: str | None, suite: str = "mixed"
) -> dict[str, str]:
    """The environment of a pytest run: no stray settings, SDKs pointed at the emulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
    env.update(
        OPENAI_BASE_URL=f"{emulator_url}/v1",
        OPENAI_API_KEY="sk-pace-bench",
        GOOGLE_GEMINI_BASE_URL=emulator_url,
        GEMINI_API_KEY="pace-bench",
        PACE_BUDGET=str(BUDGET),
        PACE_WINDOW=f"{WINDOW:g}",
    )
    if suite == "anthropic":
        env.update(ANTHROPIC_BASE_URL=emulator_url, ANTHROPIC_API_KEY="sk-ant-pace-bench")
    if tiktoken_cache:
        env["TIKTOKEN_CACHE_DIR"] = tiktoken_cache
    return env


def _junit(path: Path) -> dict[str, int]:
    """tests / failures / errors / skipped from a JUnit XML file (zeros when absent)."""
    out = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if not path.exists():
        return out
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    for s in suites:
        for k in out:
            out[k] += int(s.get(k, 0))
    return out


def _plugin_totals(path: Path) -> dict[str, Any] | None:
    """The plugin's JSON report: totals plus the sum of its estimates (None when absent)."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    calls = data.get("calls", [])
    return {
        "totals": data.get("totals", {}),
        "estimated": sum(int(c.get("estimated") or 0) for c in calls),
        "estimated_by_vendor": {
            v: sum(int(c.get("estimated") or 0) for c in calls if c.get("vendor") == v)
            for v in ("openai", "gemini", "anthropic")
        },
    }


def plugin_args(config: Config) -> list[str]:
    """What the plugin is told: the TPM of the mixed rows, the Anthropic rule for its rows."""
    if config.suite != "anthropic":
        told = [] if config.told_tpm is None else ["--llm-tpm", str(config.told_tpm)]
        return [*told, *PLUGIN_ARGS[2:]]
    from pytest_llm_budget.settings.options import DECLARED

    if any(option.cli == "--llm-limit" for option in DECLARED):
        rule = [f"--llm-limit={ANTHROPIC_RULE}"]
    else:
        rule = ["-o", f"llm_limits={ANTHROPIC_RULE}"]
    return ["--llm-window", f"{WINDOW:g}", "--llm-headroom", str(HEADROOM), *rule]


def run_config(
    config: Config,
    suite_dir: Path,
    split: Sequence[Sequence[str]],
    folder: Path,
    procs: Processes,
    timeout: float,
    tiktoken_cache: str | None,
) -> dict[str, Any]:
    """Run one configuration once, against a fresh emulator; returns the raw figures."""
    folder.mkdir(parents=True)
    load = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        url, log = stack.enter_context(
            emulator(procs, folder, config.mode, config.per_model, config.suite)
        )
        env = base_env(url, tiktoken_cache, config.suite)
        env.update(config.env)
        state = folder / "state"
        state.mkdir()
        env["PACE_STATE_DIR"] = str(state)
        backend: list[str] = []
        if config.processes > 1:
            backend = ["--llm-backend", stack.enter_context(redis_server(procs, folder))]
        parts = list(split) if config.processes > 1 else [[]]
        started, outs = [], []
        t0 = time.time()
        for i, files in enumerate(parts):
            args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE",
                    f"--junitxml={folder / f'junit-{i}.xml'}", f"--basetemp={folder / f'bt-{i}'}",
                    *files]  # fmt: skip
            if config.workers:
                args += ["-n", str(config.workers)]
            if config.plugin:
                args += [*plugin_args(config), *backend]
                args += ["--llm-report", str(folder / f"report-{i}.json")]
                args += ["-p", "no:xdist-rate-limit"]
            else:
                args += ["-p", "no:llm_budget"]
                if env.get("PACE_LIMITER") != "calls":
                    args += ["-p", "no:xdist-rate-limit"]
            out = folder / f"pytest-{i}.out"
            outs.append(out)
            with open(out, "wb") as fh:
                started.append(
                    procs.start(args, cwd=suite_dir, env=env, stdout=fh, stderr=subprocess.STDOUT)
                )
        timed_out = False
        for proc in started:
            remaining = max(1.0, t0 + timeout - time.time())
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                timed_out = True
            procs.stop(proc)
        wall = time.time() - t0
        stats = _get_json(f"{url}/__emulator/stats") if not timed_out else None
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    result = _result(config, records, stats, wall, timed_out, folder, outs, started)
    result["load1"] = [round(load, 2), round(os.getloadavg()[0], 2)]  # 1-min load: start, end
    return result


def _result(
    config: Config,
    records: list[dict[str, Any]],
    stats: dict[str, Any] | None,
    wall: float,
    timed_out: bool,
    folder: Path,
    outs: Sequence[Path],
    started: Sequence[subprocess.Popen[Any]],
) -> dict[str, Any]:
    if config.suite == "anthropic":
        fig = token_bucket_figures(records, wall, ANTHROPIC_BUDGETS, WINDOW)
    else:
        fig = figures(records, wall, BUDGET, WINDOW, config.per_model)
    junit = [_junit(folder / f"junit-{i}.xml") for i in range(len(outs))]
    tests = sum(j["tests"] for j in junit)
    failed = sum(j["failures"] + j["errors"] for j in junit)
    peak: dict[str, int] = {}
    levels: dict[str, float | None] = {}
    for b in (stats or {}).get("buckets", {}).values():
        if b["vendor"] == "anthropic":  # token buckets: the lowest level each one reached
            levels = {d: b.get(f"min_level_{d}") for d in ("requests", "input_tokens",
                                                            "output_tokens")}  # fmt: skip
            continue
        peak[b["vendor"]] = max(peak.get(b["vendor"], 0), int(b["max_window_tokens"]))
    reports = [_plugin_totals(folder / f"report-{i}.json") for i in range(len(outs))]
    t_first = min((float(r["t"]) for r in records), default=0.0)
    status = "timeout" if timed_out else "ok"
    codes = [p.returncode for p in started]
    if not timed_out and tests == 0:
        status = "error: no test ran"
    result: dict[str, Any] = {
        "status": status,
        "exit_codes": codes,
        "tests": tests,
        "passed": tests - failed - sum(j["skipped"] for j in junit),
        "failed": failed,
        "rejected_429": fig.rejected,
        "requests": fig.requests,
        "wall": round(wall, 3),
        "span": round(fig.span, 3),
        "oracle": {v: round(x, 3) for v, x in fig.oracle.items()},
        "floor": {v: round(x, 3) for v, x in fig.floor.items()},
        "charged": fig.charged,
        "span_over_oracle": _r(fig.span_over_oracle),
        "span_over_floor": _r(fig.span / fig.floor_max if fig.floor_max > 0 else None),
        "wall_over_floor": _r(fig.wall_over_floor),
        "peak_window": peak,
        "peak_over_budget": _r(max(peak.values()) / BUDGET) if peak else None,
        "plugin": [r for r in reports if r is not None] or None,
        **({"min_levels": levels} if levels else {}),
        "log": [
            [round(float(r["t"]) - t_first, 4), r["vendor"], int(r["status"]), int(r["charge"])]
            for r in records
        ],
    }
    if status != "ok" or failed:
        tail: list[str] = []
        for out in outs:
            tail += out.read_text(errors="replace").splitlines()[-25:]
        result["pytest_tail"] = tail
    return result


def _r(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else round(x, 3)
