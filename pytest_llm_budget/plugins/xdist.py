"""pytest-xdist: the controller's merge of workers' records, gw0's preflight, workers' spools."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import pytest

from pytest_llm_budget.limiting.buckets import BucketStats
from pytest_llm_budget.plugins import budget, live
from pytest_llm_budget.plugins.recording import PREFLIGHT_FILE, preflight, report_preflight
from pytest_llm_budget.records import CallRecord
from pytest_llm_budget.session import BudgetSession


class XdistHooks:
    """Controller-side xdist hooks, registered only when xdist is present."""

    def __init__(self) -> None:
        from pytest_llm_budget.shared_dir import Handover, make_shared_dir

        self.dir = make_shared_dir()  # stale folders of dead controllers are removed first
        self.handover = Handover(self.dir)

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["llm_budget_dir"] = self.dir

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """Report gw0's preflight before any test is sent to a worker."""
        path = os.path.join(self.dir, PREFLIGHT_FILE)
        if node.workerinput["workerid"] != "gw0" or not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as handle:
            projection = json.load(handle)
        if projection is not None:
            report_preflight(node.config, *projection)

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """Merge a worker's records: from `workeroutput`, else (it crashed) from its spool."""
        raw = getattr(node, "workeroutput", {}).get("llm_budget")
        run = budget(node.config)
        declared = None
        notices = live(node.config)
        if not raw:
            records, buckets = self.handover.lost(node.workerinput["workerid"])
        else:
            data = json.loads(raw)
            if not self.handover.delivered(data.get("spool")):
                return
            records = [CallRecord.from_json(c) for c in data["calls"]]
            buckets = [BucketStats(**b) for b in data["buckets"]]
            declared = data.get("declared")
            notices.worker_backend = data.get("backend", notices.worker_backend)
        notices.workers += 1
        run.merged_stats.extend(buckets)
        run.calls.extend(records, declared)

    @pytest.hookimpl(tryfirst=True)  # before the reports are written
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Merge the spools of workers that never reported (crashed, never replaced, or the run
        was interrupted: then once the workers' calls in flight have ended)."""
        run = budget(session.config)
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            self.handover.stop_workers(run.settings.call_timeout)
        records, buckets = self.handover.lost()
        run.merged_stats.extend(buckets)
        run.calls.extend(records)
        notices = live(session.config)
        notices.workers = max(notices.workers, len(self.handover.workers()))

    def cleanup(self) -> None:
        """Remove the shared folder (after the session has closed its backend)."""
        shutil.rmtree(self.dir, ignore_errors=True)


class WorkerPreflight:
    """Registered in xdist worker gw0 only: hands the projection to the controller."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, PREFLIGHT_FILE)

    @pytest.hookimpl(tryfirst=True)  # before the worker tells the controller it collected
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        from pytest_llm_budget.atomic import PRIVATE, write_atomically

        write_atomically(self.path, json.dumps(preflight(session)).encode("utf-8"), PRIVATE)


def start_spool(
    config: pytest.Config, session: BudgetSession, workerinput: dict[str, Any], folder: str
) -> None:
    """Spool a worker's finished calls to the shared folder: a crashed worker's still count;
    watch for the controller's stop (an interrupted run)."""
    from pytest_llm_budget.shared_dir import RecordSpool, StopWatch

    spool = RecordSpool(folder, session.worker, session.limiter.stats)
    session.observers.append(spool)
    config.add_cleanup(spool.close)
    workerinput["llm_budget_spool"] = spool.name
    config.add_cleanup(StopWatch(folder, session.worker, session).close)
