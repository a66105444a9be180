"""Live notices: one terminal line per long wait and per retried 429. No pytest here.

Under xdist, workers append each notice to a file in the folder the controller shares with
them (`NoticeRelay`) and a controller thread prints new lines as they land (`NoticeTail`):
execnet offers plugins no channel of their own before the end of a worker's session.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable

from pytest_llm_budget.atomic import open_file
from pytest_llm_budget.events import LimitLearned, RateLimitEvent, WaitEvent

__all__ = ["NOTICE_FILE", "NoticeRelay", "NoticeTail", "limit_line", "retry_line", "wait_line"]

NOTICE_FILE = "notices.jsonl"
_PREFIX = "llm-budget:"


#: How a wait line names the token-bucket dimension a call waits for.
_DIMENSION_WORDS = {
    "input_tokens": ("input tokens", "input tokens in the bucket"),
    "output_tokens": ("output tokens", "output tokens produced or in flight"),
    "requests": ("requests", "requests in the bucket"),
}


def wait_line(event: WaitEvent) -> str:
    """`llm-budget: waiting 5.4s for openai:* (5322/5400 tokens in the window) - test id`;
    a token bucket names its dimension: `(waiting for output tokens; 702/680 output tokens
    produced or in flight)`."""
    if event.budget is None:
        fill = f"{event.used_tokens} tokens in the window, limit not known yet"
    else:
        fill = f"{event.used_tokens}/{event.budget} tokens in the window"
    why = {"paused": "paused after a 429; ", "requests": "requests per window full; "}
    reason = why.get(event.reason, "")
    words = _DIMENSION_WORDS.get(event.dimension)
    if words is not None:
        reason = f"waiting for {words[0]}; "
        of = "" if event.budget is None else f"/{event.budget}"
        fill = f"{event.used_tokens}{of} {words[1]}"
    if event.reason == "concurrency":
        reason = "calls in flight at the cap; "
    return (
        f"{_PREFIX} waiting {event.seconds:.1f}s for {event.bucket} ({reason}{fill})"
        f" - {event.test}{_worker(event.worker)}"
    )


def retry_line(event: RateLimitEvent) -> str:
    """`llm-budget: 429 from openai model gpt-5 (limit 30000), retry 2 in 3.1s - test id`."""
    limit = f" (limit {event.limit})" if event.limit else ""
    return (
        f"{_PREFIX} 429 from {event.vendor} model {event.model}{limit}, retry {event.attempt} "
        f"in {event.retry_in or 0:.1f}s - {event.test}{_worker(event.worker)}"
    )


def limit_line(event: LimitLearned, worker: str = "") -> str:
    """`llm-budget: openai:gpt-4o-mini: the server allows 6000 tokens per window, configured
    30000: using 6000`."""
    return f"{_PREFIX} {event.line()}{_worker(worker)}"


def _worker(worker: str) -> str:
    return f" [{worker}]" if worker.startswith("gw") else ""


class NoticeRelay:
    """Worker side: append each notice line to the shared file in one write (atomic append)."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, NOTICE_FILE)

    def __call__(self, line: str) -> None:
        data = (json.dumps({"line": line}) + "\n").encode()
        fd = open_file(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


class NoticeTail:
    """Controller side: a thread that prints the relayed notices as they land."""

    def __init__(self, folder: str, emit: Callable[[str], None], poll: float = 0.05) -> None:
        self.path = os.path.join(folder, NOTICE_FILE)
        self.emit = emit
        self.poll = poll
        self._offset = 0
        self._partial = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llm-budget-notices", daemon=True)

    def start(self) -> NoticeTail:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            self.drain()

    def drain(self) -> None:
        """Print every complete line written since the last look."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            try:
                line = json.loads(raw)["line"]
            except (ValueError, KeyError, TypeError):
                continue
            self.emit(str(line))

    def stop(self) -> None:
        """Stop the thread, then print what is left."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.drain()
