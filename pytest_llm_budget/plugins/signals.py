"""SIGTERM (what `timeout` and CI runners send first) is handled as Ctrl-C: an interrupted run.

pytest turns SIGINT into KeyboardInterrupt; this gives SIGTERM the same path in the main process
(not in xdist workers, which the controller stops): the summary and the reports are still written.
A handler someone else installed is left alone; the previous one is restored at unconfigure.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import pytest


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"pytest-llm-budget: signal {signal.Signals(signum).name}")


def handle_sigterm(config: pytest.Config) -> None:
    """Turn SIGTERM into KeyboardInterrupt for this session, when nobody else handles it."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        return
    signal.signal(signal.SIGTERM, _interrupt)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is _interrupt:
            signal.signal(signal.SIGTERM, previous)

    config.add_cleanup(restore)
