"""Using the budget from a script, outside pytest: build a session, wrap clients, report.

    from pytest_llm_budget import budget_session, wrap

    with budget_session(tpm=30000, reports=["run.html"]) as session:
        client = wrap(openai.OpenAI(), session)
        ...
    # leaving the block prints the summary and writes the reports

Keywords are the option names of the plugin (`tpm`, `rpm`, `window`, `headroom`, `limits`,
`backend`, `reports`, `notice_after`, ...), validated like the command line; the environment
(`LLM_BUDGET_*`) fills what they leave out, then the defaults. No pytest here.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import IO, Any

from pytest_llm_budget.events import RateLimitEvent, WaitEvent
from pytest_llm_budget.reporting.notices import retry_line, wait_line
from pytest_llm_budget.reporting.report import write_report
from pytest_llm_budget.reporting.summary import session_report, session_summary
from pytest_llm_budget.session import BudgetSession
from pytest_llm_budget.settings.resolved import OPTIONS, Settings

__all__ = ["budget_session", "open_budget", "report_document", "summary_text", "write_reports"]


def open_budget(
    *,
    env: Mapping[str, str] | None = None,
    notices: IO[str] | None = sys.stderr,
    **settings: Any,
) -> BudgetSession:
    """A `BudgetSession` from keyword settings (then `env`, default os.environ); close it after.

    `notices`: where live wait and retry lines go (None: nowhere).
    """
    known = {o.name for o in OPTIONS}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(
            f"open_budget(): unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    resolved = Settings.resolve(
        {k: v for k, v in settings.items() if v is not None},
        os.environ if env is None else env,
        {},
    )
    session = BudgetSession(resolved)
    if notices is not None:
        stream = notices

        def on_wait(event: WaitEvent) -> None:
            if not event.finished:
                print(wait_line(event), file=stream, flush=True)

        def on_429(event: RateLimitEvent) -> None:
            if event.retrying:
                print(retry_line(event), file=stream, flush=True)

        session.wait_observers.append(on_wait)
        session.rate_limit_observers.append(on_429)
    return session


@contextmanager
def budget_session(
    *, summary: IO[str] | None = sys.stdout, **settings: Any
) -> Iterator[BudgetSession]:
    """`open_budget(...)` as a `with` block: at its end, print the summary to `summary` (None:
    don't), write the `reports=` files, close the session."""
    session = open_budget(**settings)
    try:
        yield session
    finally:
        try:
            if summary is not None:
                print(summary_text(session), file=summary, flush=True)
            write_reports(session)
        finally:
            session.close()


def summary_text(session: BudgetSession) -> str:
    """The `LLM budget` summary the plugin prints at the end of a pytest run."""
    return "\n".join(["LLM budget", *session_summary(session)])


def report_document(session: BudgetSession) -> dict[str, Any]:
    """The JSON report's document of the session so far (with `run` wall time and `tests`)."""
    document = session_report(session)
    started = session.started
    finished = time.time()
    document["run"] = {
        "started": round(started, 3),
        "finished": round(finished, 3),
        "wall_s": round(finished - started, 3),
        "workers": 0,
        "backend": session.backend.description,
        "preflight": None,
    }
    return document


def write_reports(session: BudgetSession, paths: Sequence[str] | None = None) -> list[str]:
    """Write the report to `paths` (default: the session's `reports` setting); returns them."""
    targets = list(session.settings.reports if paths is None else paths)
    if targets:
        document = report_document(session)
        for path in targets:
            write_report(path, document)
    return targets
