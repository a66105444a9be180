"""CLI: `python -m pytest_llm_budget.emulator` / `llm-budget-emulator` runs the emulator."""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from typing import Any

from .config import (
    AnthropicLimitSpec,
    EmulatorConfig,
    LimitSpec,
    azure_deployments,
    parse_limit_rule,
)
from .faults import parse_fault
from .server import Emulator

__all__ = ["build_config", "main"]


def _limit(text: str) -> int | None:
    """A positive integer, or none/unlimited."""
    if text.lower() in ("none", "unlimited", "inf"):
        return None
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llm-budget-emulator",
        description="OpenAI, Gemini and Anthropic API emulator that enforces limits like the "
        "providers. By default each vendor has one bucket, like the plugin's (--llm-tpm, "
        "--llm-rpm); Anthropic has token buckets for RPM, ITPM and OTPM.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    p.add_argument("--tpm", type=_limit, default=30_000, help="default TPM for both vendors")
    p.add_argument(
        "--rpm", type=_limit, default=None, help="default RPM for both vendors; none = unlimited"
    )
    p.add_argument("--openai-tpm", type=_limit, help="OpenAI default TPM (overrides --tpm)")
    p.add_argument("--openai-rpm", type=_limit, help="OpenAI default RPM (overrides --rpm)")
    p.add_argument("--gemini-tpm", type=_limit, help="Gemini default TPM (overrides --tpm)")
    p.add_argument("--gemini-rpm", type=_limit, help="Gemini default RPM (overrides --rpm)")
    p.add_argument("--anthropic-rpm", type=_limit, default=50, help="Anthropic requests/min")
    p.add_argument(
        "--anthropic-itpm", type=_limit, default=30_000, help="Anthropic input tokens/min"
    )
    p.add_argument(
        "--anthropic-otpm", type=_limit, default=8_000, help="Anthropic output tokens/min"
    )
    p.add_argument(
        "--gemini-rpd", type=_limit, default=None, help="Gemini requests/day per model (none)"
    )
    p.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="RULE",
        help="per-model rule, repeatable, first match wins: 'openai:gpt-5* tpm=30000 rpm=500', "
        "'anthropic:claude-sonnet-4* itpm=30000 otpm=8000 rpm=50'",
    )
    p.add_argument("--window", type=float, default=60.0, help="window length, seconds")
    p.add_argument("--mode", choices=("sliding", "bucket"), default="sliding")
    buckets = p.add_mutually_exclusive_group()
    buckets.add_argument(
        "--per-model",
        action="store_true",
        help="one bucket per model, as OpenAI keys are limited, instead of one per vendor (or "
        "rule) as the plugin paces by default",
    )
    buckets.add_argument(
        "--shared-bucket", action="store_true", help="one bucket per vendor or rule (the default)"
    )
    p.add_argument(
        "--default-max-output",
        type=int,
        default=4096,
        help="output tokens charged when a request declares none (OpenAI)",
    )
    p.add_argument("--no-auth", action="store_true", help="accept requests without a key")
    p.add_argument("--insufficient-quota", action="store_true", help="answer every call 429 quota")
    p.add_argument("--vertex-429", action="store_true", help="Gemini 429s without RetryInfo")
    p.add_argument(
        "--no-limit-headers",
        action="store_true",
        help="send no x-ratelimit-* / anthropic-ratelimit-* headers (429 bodies still name limits)",
    )
    p.add_argument(
        "--azure-deployment",
        action="append",
        default=[],
        metavar="DEPLOYMENT=MODEL",
        help="Azure OpenAI deployment serving MODEL (repeatable; unlisted: the name is the model)",
    )
    p.add_argument(
        "--embedding-dimensions", type=int, default=16, help="length of /v1/embeddings vectors"
    )
    p.add_argument("--fault", help="fault for every request, e.g. 'latency=0.2'")
    p.add_argument("--log", dest="log_path", metavar="FILE", help="append records as JSONL")
    p.add_argument("--stream-delay", type=float, default=0.0, help="seconds between SSE events")
    p.add_argument(
        "--reply-tokens", metavar="LO:HI", type=_reply_tokens, default=(8, 40),
        help="reply lengths in tokens (each reply drawn from LO..HI, cut at its max tokens)",
    )
    return p


def _reply_tokens(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(lo), int(hi)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO:HI (e.g. 100:300), got {text!r}") from None


def build_config(argv: Sequence[str] | None = None) -> EmulatorConfig:
    """Parse CLI arguments into an EmulatorConfig (exits with usage on bad input)."""
    parser = _parser()
    a = parser.parse_args(argv)
    try:
        if a.fault:
            parse_fault(a.fault)
        kwargs: dict[str, Any] = {
            "host": a.host,
            "port": a.port,
            "window": a.window,
            "mode": a.mode,
            "openai": LimitSpec(
                a.openai_tpm if a.openai_tpm is not None else a.tpm,
                a.openai_rpm if a.openai_rpm is not None else a.rpm,
            ),
            "gemini": LimitSpec(
                a.gemini_tpm if a.gemini_tpm is not None else a.tpm,
                a.gemini_rpm if a.gemini_rpm is not None else a.rpm,
            ),
            "anthropic": AnthropicLimitSpec(
                rpm=a.anthropic_rpm, itpm=a.anthropic_itpm, otpm=a.anthropic_otpm
            ),
            "gemini_rpd": a.gemini_rpd,
            "limit_headers": not a.no_limit_headers,
            "model_limits": tuple(parse_limit_rule(r) for r in a.limit),
            "per_model": a.per_model,
            "default_max_output": a.default_max_output,
            "require_key": not a.no_auth,
            "insufficient_quota": a.insufficient_quota,
            "gemini_retry_info": not a.vertex_429,
            "fault": a.fault,
            "azure_deployments": azure_deployments(a.azure_deployment),
            "embedding_dimensions": a.embedding_dimensions,
            "log_path": a.log_path,
            "stream_delay": a.stream_delay,
            "reply_min_tokens": a.reply_tokens[0],
            "reply_max_tokens": a.reply_tokens[1],
        }
        return EmulatorConfig(**kwargs)
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until Ctrl-C; returns the process exit code."""
    config = build_config(argv)
    try:
        emulator = Emulator(config).start()
    except OSError as exc:
        why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound: {exc.strerror}"
        print(
            f"llm-budget-emulator: {config.host}:{config.port} {why} (--port 0 picks a free one)",
            file=sys.stderr,
        )
        return 2
    print(
        f"llm-budget-emulator listening on {emulator.url}\n"
        f"  OpenAI base_url: {emulator.openai_base_url}\n"
        f"  Gemini base_url: {emulator.gemini_base_url}\n"
        f"  Anthropic base_url: {emulator.anthropic_base_url}\n"
        f"  Azure OpenAI azure_endpoint: {emulator.azure_endpoint}\n"
        f"  Vertex AI base_url: {emulator.vertex_base_url}\n"
        f"  mode={config.mode} window={config.window}s openai={config.openai} "
        f"gemini={config.gemini} anthropic={config.anthropic}",
        flush=True,
    )
    try:
        emulator.serve_forever()
    except KeyboardInterrupt:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
