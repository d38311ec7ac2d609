"""``GET /metrics``: the host in the Prometheus text format (docs/operations.md#metrics).

Two kinds of metrics, in a registry of the app's own (never the process-wide default one):

* read from the store at scrape time, by :class:`HostCollector` — runs per workflow and status,
  pending events per topic, mutations per ledger status and their reconcile attempts (the three
  grouped queries of ``Store.metrics_snapshot``), the inbox's size, and the sandbox workers
  and runs in progress of this process;
* counted by this server as its runs end, from the scheduler's ``run.end`` event —
  ``keepflow_runs_finished_total`` and the histogram ``keepflow_run_duration_seconds``. They
  start at zero with each ``keepflow serve``.

The route sits behind the app's guard like every other one (a bearer token when one is
configured, loopback ``Host`` otherwise) and is left out of the OpenAPI schema.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from keepflow import service
from keepflow.runtime.host import Host
from keepflow.scheduler.loop import SchedulerLoop

#: The classic Prometheus text format (what every scraper reads).
CONTENT_TYPE = "text/plain; version=0.0.4"
#: Runs take from a fraction of a second (a producer that publishes) to many minutes (calls
#: that retry with backoff, a slow reconciliation).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                    600.0, 1800.0)
RUN_LABELS = ("workflow", "kind", "status")


class FinishedRuns:
    """Counts and times the runs this server finishes (a scheduler listener)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.finished = Counter(
            "keepflow_runs_finished", "Runs this server finished since it started, by "
            "workflow, kind (producer, consumer) and outcome (committed, failed, suspended; "
            "error: it ended without one, crashed in the host or lost its lease).",
            RUN_LABELS, registry=registry)
        self.duration = Histogram(
            "keepflow_run_duration_seconds", "Wall time of the runs this server finished, from "
            "the scheduler starting one to its end, by workflow, kind and outcome.",
            RUN_LABELS, buckets=DURATION_BUCKETS, registry=registry)

    def observe(self, event: str, fields: dict[str, object]) -> None:
        if event != "run.end":
            return
        labels = (str(fields.get("workflow")), str(fields.get("kind")),
                  str(fields.get("status")))
        self.finished.labels(*labels).inc()
        seconds = fields.get("duration")
        if isinstance(seconds, int | float):
            self.duration.labels(*labels).observe(float(seconds))



class HostCollector(Collector):
    """What the store and this process hold now, read at each scrape."""

    def __init__(self, host: Host, loop: SchedulerLoop) -> None:
        self.host = host
        self.loop = loop

    def collect(self) -> Iterator[Metric]:
        snap = self.host.store.metrics_snapshot()
        runs = GaugeMetricFamily(
            "keepflow_runs", "Runs in the store, by workflow and run status.",
            labels=["workflow", "status"])
        for (workflow, status), n in sorted(snap.runs.items()):
            runs.add_metric([workflow, status], n)
        yield runs

        pending = GaugeMetricFamily(
            "keepflow_events_pending", "Events in status pending (reserved by a run or "
            "not), by workflow and topic.", labels=["workflow", "topic"])
        for (workflow, topic), n in sorted(snap.pending_events.items()):
            pending.add_metric([workflow, topic], n)
        yield pending

        mutations = GaugeMetricFamily(
            "keepflow_mutations", "Mutations in the ledger, by workflow and ledger status.",
            labels=["workflow", "status"])
        attempts: dict[str, int] = defaultdict(int)
        for (workflow, status), counts in sorted(snap.mutations.items()):
            mutations.add_metric([workflow, status], counts.count)
            attempts[workflow] += counts.reconcile_attempts
        yield mutations

        reconcile = GaugeMetricFamily(
            "keepflow_reconcile_attempts", "Reconcile attempts recorded on the mutations of a "
            "workflow (the sum over its ledger).", labels=["workflow"])
        for workflow, n in sorted(attempts.items()):
            reconcile.add_metric([workflow], n)
        yield reconcile

        yield GaugeMetricFamily(
            "keepflow_inbox_items", "Items in the action-needed inbox (keepflow inbox).",
            value=len(service.inbox(self.host)))

        pool = self.host.started_pool
        yield GaugeMetricFamily(
            "keepflow_sandbox_workers", "Sandbox worker processes of this server alive now "
            "(0 until the first run or deploy starts them).",
            value=len(pool.worker_pids()) if pool is not None else 0)
        yield GaugeMetricFamily(
            "keepflow_sandbox_pool_size", "Sandbox worker processes this server keeps ready "
            "(KEEPFLOW_SANDBOX_WORKERS).",
            value=pool.size if pool is not None else self.host.settings.sandbox_workers)
        yield GaugeMetricFamily(
            "keepflow_runs_in_progress", "Runs this server is carrying out now.",
            value=self.loop.scheduler.running())


def metrics_router(host: Host, loop: SchedulerLoop) -> APIRouter:
    """``GET /metrics`` over a registry of this app's own. Nothing is read from ``host`` or
    ``loop`` until the app starts (the run listener) or is scraped."""
    registry = CollectorRegistry()
    finished = FinishedRuns(registry)
    registry.register(HostCollector(host, loop))

    @asynccontextmanager
    async def listening(_: Any) -> AsyncIterator[None]:
        loop.scheduler.listeners.append(finished.observe)
        try:
            yield
        finally:
            loop.scheduler.listeners.remove(finished.observe)

    router = APIRouter(lifespan=listening)

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE)

    return router
