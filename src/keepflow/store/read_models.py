"""Read models: what the surfaces (CLI, API, pages) show, as typed records from one read
transaction each. The shaping into JSON and words lives in ``keepflow.views``; nothing outside
``store/`` writes a SELECT (enforced by ``make lint``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from keepflow.errors import NotFound
from keepflow.model import (
    EventRecord,
    EventStatus,
    LedgerStatus,
    MutationRecord,
    RunRecord,
    RunStatus,
    VersionRecord,
    WorkflowRecord,
)
from keepflow.store import convert, ledger_records, queries, runs, schedule
from keepflow.store import events as ev
from keepflow.store import workflows as wf
from keepflow.store.metrics_queries import MetricsSnapshot, metrics_snapshot
from keepflow.store.queries import EventCursor, EventFilter
from keepflow.store.schedule import HandlerFacts, LastRun
from keepflow.store.schema import events
from keepflow.store.schema import runs as run_table
from keepflow.store.session import StoreBase

#: Event counts per topic and status (``{"pending": n, "consumed": n, "skipped": n}``).
TopicCounts = dict[str, dict[str, int]]


@dataclass(frozen=True)
class WorkflowSummary:
    workflow: WorkflowRecord
    version: VersionRecord | None
    counts: TopicCounts


@dataclass(frozen=True)
class EventDetail:
    event: EventRecord
    history: list[dict[str, Any]]
    #: Every run that reserved it: runId, attempt, reservedAt, outcome, runStatus (SPEC §12).
    reservations: list[dict[str, Any]]


@dataclass(frozen=True)
class RunSummary:
    run: RunRecord
    transitions: list[dict[str, Any]]
    mutations: list[MutationRecord]


@dataclass(frozen=True)
class RunDetail(RunSummary):
    reservations: list[dict[str, Any]]
    published: list[dict[str, Any]]
    tool_calls: list[dict[str, Any]]
    logs: list[dict[str, Any]]


@dataclass(frozen=True)
class ActiveRun:
    run_id: str
    handler: str
    status: str


@dataclass(frozen=True)
class WorkflowFacts:
    """What ``keepflow status`` explains a workflow from (SPEC §7.3, §12)."""

    workflow: WorkflowRecord
    version: VersionRecord | None
    handlers: dict[str, HandlerFacts]
    last_runs: dict[str, LastRun]
    active: list[ActiveRun]
    counts: TopicCounts
    #: topic → (oldest, newest) id of its pending unreserved events (None, None if none).
    ready: dict[str, tuple[int | None, int | None]]


@dataclass(frozen=True)
class BlockedRun:
    """A suspended or failed run the inbox may ask a person about (SPEC §12)."""

    run: RunRecord
    mutations: list[MutationRecord]
    titles: list[str]  # of the events it reserved
    holds_events: bool
    latest_of_handler: bool


@dataclass(frozen=True)
class InboxFacts:
    workflow: WorkflowRecord
    blocked: list[BlockedRun]
    stale: list[EventRecord]


class ReadModels(StoreBase):
    """Read-only queries for the surfaces (mixed into :class:`keepflow.store.Store`)."""

    def workflow_summaries(self) -> list[WorkflowSummary]:
        with self.read() as conn:
            return [WorkflowSummary(w, _version(conn, w), queries.topic_counts(conn, w.id))
                    for w in wf.list_all(conn)]

    def event_list(self, workflow_id: str, *, topic: str | None = None,
                   status: EventStatus | None = None, limit: int = 200) -> list[EventRecord]:
        with self.read() as conn:
            return queries.list_events(conn, workflow_id, topic=topic, status=status,
                                       limit=limit)

    def event_detail(self, workflow: WorkflowRecord, topic: str, message_id: str
                     ) -> EventDetail:
        with self.read() as conn:
            found = ev.by_message_ids(conn, workflow.id, topic, [message_id]).get(message_id)
            if found is None:
                raise NotFound(f"workflow '{workflow.name}' has no event '{message_id}' in "
                               f"topic '{topic}'")
            reservations = ev.event_reservations(conn, found.id)
            status = queries.run_status_of(conn, [r["runId"] for r in reservations])
            for r in reservations:
                r["runStatus"] = status.get(r["runId"])
            return EventDetail(found, ev.history(conn, found.id), reservations)

    def event_page(self, workflow_id: str, f: EventFilter, *,
                   after: EventCursor | None = None, limit: int = 50
                   ) -> tuple[list[EventRecord], EventCursor | None]:
        """A page of the events view and the cursor of the next one (None: the last page)."""
        with self.read() as conn:
            return queries.event_page(conn, workflow_id, f, after=after, limit=limit)

    def change_marker(self) -> str:
        """A text that changes when anything the pages show changes (live refresh)."""
        with self.read() as conn:
            return queries.change_marker(conn)

    def topic_counts(self, workflow_id: str) -> TopicCounts:
        with self.read() as conn:
            return queries.topic_counts(conn, workflow_id)

    def stale_counts(self, workflow_id: str, before: datetime, cap: int = 10_000
                     ) -> dict[str, int]:
        with self.read() as conn:
            return queries.stale_counts(conn, workflow_id, before, cap)

    def run_list(self, workflow_id: str, limit: int = 100, *, before: str | None = None,
                 status: str | None = None) -> list[RunSummary]:
        with self.read() as conn:
            return [_summary(conn, r)
                    for r in queries.list_runs(conn, workflow_id, limit, before, status)]

    def ledger_page(self, workflow_id: str, *, status: LedgerStatus | None = None,
                    before: int | None = None, limit: int = 100) -> list[MutationRecord]:
        with self.read() as conn:
            return ledger_records.page(conn, workflow_id, status=status, before=before,
                                       limit=limit)

    def versions(self, workflow_id: str) -> list[VersionRecord]:
        """Every script version of a workflow, oldest first."""
        with self.read() as conn:
            return wf.versions(conn, workflow_id)

    def audit_page(self, *, before: int | None = None, limit: int = 100,
                   workflow_id: str | None = None, action: str | None = None
                   ) -> list[dict[str, Any]]:
        with self.read() as conn:
            return queries.audit_page(conn, before=before, limit=limit,
                                      workflow_id=workflow_id, action=action)

    def run_detail(self, run_id: str) -> RunDetail:
        with self.read() as conn:
            r = runs.get(conn, run_id)
            s = _summary(conn, r)
            return RunDetail(
                s.run, s.transitions, s.mutations,
                reservations=queries.run_reservations(conn, r.id),
                published=queries.events_created_by(conn, r.id),
                tool_calls=runs.run_tool_calls(conn, r.id), logs=runs.logs(conn, r.id))

    def workflow_facts(self, workflow: str | None = None) -> list[WorkflowFacts]:
        with self.read() as conn:
            targets = [wf.get(conn, workflow)] if workflow else wf.list_all(conn)
            return [_facts(conn, w) for w in targets]

    def inbox_facts(self, stale_before: Callable[[WorkflowRecord], datetime],
                    stale_limit: int = 20) -> list[InboxFacts]:
        """Per workflow: its suspended and failed runs, and its pending unreserved events
        created before ``stale_before(workflow)``."""
        out = []
        with self.read() as conn:
            for w in wf.list_all(conn):
                q = (select(run_table).where(
                    run_table.c.workflow_id == w.id,
                    run_table.c.status.in_([RunStatus.SUSPENDED.value, RunStatus.FAILED.value]),
                    run_table.c.retry_requested_at.is_(None))
                     .order_by(run_table.c.id))
                blocked = [_blocked(conn, convert.run(r)) for r in conn.execute(q).mappings()]
                stale_q = (select(events).where(
                    events.c.workflow_id == w.id, events.c.status == EventStatus.PENDING.value,
                    events.c.reserved_by.is_(None), events.c.created_at < stale_before(w))
                           .order_by(events.c.id).limit(stale_limit))
                stale = [convert.event(r) for r in conn.execute(stale_q).mappings()]
                out.append(InboxFacts(w, blocked, stale))
        return out

    def metrics_snapshot(self) -> MetricsSnapshot:
        """Runs per workflow and status, pending events per topic, mutations per ledger status
        with their reconcile attempts: three grouped queries in one read transaction."""
        with self.read() as conn:
            return metrics_snapshot(conn)


def _version(conn: Connection, w: WorkflowRecord) -> VersionRecord | None:
    return wf.version(conn, w.current_version_id) if w.current_version_id else None


def _summary(conn: Connection, r: RunRecord) -> RunSummary:
    return RunSummary(r, runs.transitions(conn, r.id), ledger_records.for_run(conn, r.id))


def _facts(conn: Connection, w: WorkflowRecord) -> WorkflowFacts:
    version = _version(conn, w)
    topics = list((version.manifest if version else {}).get("topics", []))
    return WorkflowFacts(
        workflow=w, version=version,
        handlers={h: f for (_, h), f in schedule.handler_facts(conn, w.id).items()},
        last_runs=schedule.last_runs(conn, w.id),
        active=[ActiveRun(*a) for a in runs.active_runs(conn, w.id)],
        counts=queries.topic_counts(conn, w.id),
        ready={t: ev.ready_window(conn, w.id, [t]) for t in topics})


def _blocked(conn: Connection, r: RunRecord) -> BlockedRun:
    holds = conn.execute(select(events.c.id).where(events.c.reserved_by == r.id).limit(1)
                         ).first() is not None
    newer = conn.execute(select(run_table.c.id).where(
        run_table.c.workflow_id == r.workflow_id, run_table.c.handler == r.handler,
        run_table.c.id > r.id).limit(1)).first()
    return BlockedRun(r, ledger_records.for_run(conn, r.id), ev.reserved_titles(conn, r.id), holds,
                      latest_of_handler=newer is None)
