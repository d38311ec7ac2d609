"""Read-only queries for the surfaces (CLI, API, UI): lists and details, never writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, func, or_, select

from keepflow.model import EventRecord, EventStatus, RunRecord
from keepflow.store import convert
from keepflow.store.schema import (
    audit_log,
    events,
    notifications,
    reservations,
    run_transitions,
    runs,
    workflows,
)


@dataclass(frozen=True)
class EventFilter:
    """What the events page filters by (SPEC §12 "Events"); every field optional."""

    topic: str | None = None
    status: EventStatus | None = None
    #: Case-insensitive substring of the title.
    title: str | None = None
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before


@dataclass(frozen=True)
class EventCursor:
    """Where a page of events ends: pending events come first (newest first), then the others
    (newest first); ``pending`` says which of the two groups ``event_id`` is in."""

    pending: bool
    event_id: int


def list_events(conn: Connection, workflow_id: str, *, topic: str | None = None,
                status: EventStatus | None = None, limit: int = 200) -> list[EventRecord]:
    """Events of a workflow, pending first, then newest first (SPEC §12 "Events")."""
    q = select(events).where(events.c.workflow_id == workflow_id)
    if topic:
        q = q.where(events.c.topic == topic)
    if status:
        q = q.where(events.c.status == status.value)
    pending_first = (events.c.status != EventStatus.PENDING.value)
    q = q.order_by(pending_first, events.c.id.desc()).limit(limit)
    return [convert.event(r) for r in conn.execute(q).mappings()]


def topic_counts(conn: Connection, workflow_id: str) -> dict[str, dict[str, int]]:
    q = select(events.c.topic, events.c.status, func.count()).where(
        events.c.workflow_id == workflow_id).group_by(events.c.topic, events.c.status)
    out: dict[str, dict[str, int]] = {}
    for topic, status, n in conn.execute(q):
        out.setdefault(topic, {s.value: 0 for s in EventStatus})[status] = int(n)
    return out


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _filtered(workflow_id: str, f: EventFilter, dialect: str) -> Select[Any]:
    q = select(events).where(events.c.workflow_id == workflow_id)
    if f.topic:
        q = q.where(events.c.topic == f.topic)
    if f.title:
        # SQLite's LIKE already ignores ASCII case, as its lower() does (neither folds other
        # letters): ilike's lower(title) LIKE lower(?) finds the same events, a third slower.
        title = events.c.title.like if dialect == "sqlite" else events.c.title.ilike
        q = q.where(title(_like(f.title), escape="\\"))
    if f.since is not None:
        q = q.where(events.c.created_at >= f.since)
    if f.until is not None:
        q = q.where(events.c.created_at < f.until)
    return q


def _plan_for_values(conn: Connection) -> None:
    """PostgreSQL: plan this transaction's statements for the values they are given.

    psycopg prepares a statement on its 5th use on a connection, and after 5 more PostgreSQL
    may keep one generic plan for it, costed without the values. For the events list that
    plan walks the whole primary key backwards, filtering every event of every workflow (a
    title search on a topic of 100,000 events: 36 → 64 ms; the stale count: 10 → 18 ms, in
    bench/web.py). A plan made for the values takes the workflow's and topic's index; making
    it costs a fraction of a millisecond. ``SET LOCAL`` ends with the read transaction."""
    if conn.dialect.name == "postgresql" and (conn.dialect.server_version_info or (0,)) >= (12,):
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")


def event_page(conn: Connection, workflow_id: str, f: EventFilter, *,
               after: EventCursor | None, limit: int
               ) -> tuple[list[EventRecord], EventCursor | None]:
    """One page of events, pending first, each group newest first, by keyset: each query walks
    an index (``ix_events_workflow_topic_status`` for one status, ``ix_events_workflow_topic_id``
    for the others) from the cursor and stops after ``limit + 1`` rows, so page 1 000 of a
    topic with 100 000 events costs what page 1 does. A title search reads every event of
    the topic that it does not match (a substring has no index)."""
    pending = EventStatus.PENDING.value
    _plan_for_values(conn)

    def group(condition: ColumnElement[bool], below: int | None, n: int) -> list[EventRecord]:
        q = _filtered(workflow_id, f, conn.dialect.name).where(condition)
        if below is not None:
            q = q.where(events.c.id < below)
        q = q.order_by(events.c.id.desc()).limit(n)
        return [convert.event(r) for r in conn.execute(q).mappings()]

    if f.status is not None:
        got = group(events.c.status == f.status.value,
                    after.event_id if after else None, limit + 1)
    else:
        got = []
        if after is None or after.pending:
            got = group(events.c.status == pending, after.event_id if after else None,
                        limit + 1)
        if len(got) <= limit:
            below = after.event_id if after is not None and not after.pending else None
            got += group(events.c.status != pending, below, limit + 1 - len(got))
    if len(got) <= limit:
        return got, None
    last = got[limit - 1]
    return got[:limit], EventCursor(last.status is EventStatus.PENDING, last.id)


def stale_counts(conn: Connection, workflow_id: str, before: datetime, cap: int
                 ) -> dict[str, int]:
    """Per topic, how many pending events were created before ``before`` — counted up to
    ``cap`` (oldest first along the ready index, so the count stops early)."""
    _plan_for_values(conn)
    out: dict[str, int] = {}
    topics = conn.execute(select(events.c.topic).where(events.c.workflow_id == workflow_id)
                          .distinct()).scalars().all()
    for topic in topics:
        inner = (select(events.c.id).where(
            events.c.workflow_id == workflow_id, events.c.topic == topic,
            events.c.status == EventStatus.PENDING.value, events.c.created_at < before)
                 .order_by(events.c.id).limit(cap).subquery())
        n = int(conn.execute(select(func.count()).select_from(inner)).scalar_one())
        if n:
            out[topic] = n
    return out


def list_runs(conn: Connection, workflow_id: str, limit: int = 100,
              before: str | None = None, status: str | None = None) -> list[RunRecord]:
    """Runs of a workflow newest first, by keyset (``before`` a run id)."""
    q = select(runs).where(runs.c.workflow_id == workflow_id)
    if before:
        q = q.where(runs.c.id < before)
    if status:
        q = q.where(runs.c.status == status)
    q = q.order_by(runs.c.id.desc()).limit(limit)
    return [convert.run(r) for r in conn.execute(q).mappings()]


def audit_page(conn: Connection, *, before: int | None, limit: int,
               workflow_id: str | None = None, action: str | None = None
               ) -> list[dict[str, Any]]:
    """Audit records newest first, by keyset (``before`` a record id); with ``workflow_id``,
    those about the workflow, its events and its runs."""
    q = select(audit_log)
    if before is not None:
        q = q.where(audit_log.c.id < before)
    if workflow_id is not None:
        its_runs = select(runs.c.id).where(runs.c.workflow_id == workflow_id)
        q = q.where(or_(audit_log.c.target_id == workflow_id,
                        audit_log.c.target_id.like(f"{workflow_id}/%"),
                        (audit_log.c.target_type == "run")
                        & audit_log.c.target_id.in_(its_runs)))
    if action:
        q = q.where(audit_log.c.action == action)
    q = q.order_by(audit_log.c.id.desc()).limit(limit)
    return [
        {"id": r["id"], "at": r["at"].isoformat(), "actor": r["actor"], "action": r["action"],
         "targetType": r["target_type"], "targetId": r["target_id"], "before": r["before"],
         "after": r["after"], "detail": r["detail"]}
        for r in conn.execute(q).mappings()
    ]


def run_reservations(conn: Connection, run_id: str) -> list[dict[str, Any]]:
    q = (select(reservations, events.c.topic, events.c.message_id, events.c.title)
         .join(events, events.c.id == reservations.c.event_id)
         .where(reservations.c.run_id == run_id).order_by(events.c.id))
    return [
        {"topic": r["topic"], "messageId": r["message_id"], "title": r["title"],
         "attempt": r["attempt"], "outcome": r["outcome"]}
        for r in conn.execute(q).mappings()
    ]


def events_created_by(conn: Connection, run_id: str) -> list[dict[str, Any]]:
    q = select(events.c.topic, events.c.message_id, events.c.title).where(
        events.c.created_by == run_id).order_by(events.c.id)
    return [{"topic": r.topic, "messageId": r.message_id, "title": r.title}
            for r in conn.execute(q)]


def run_status_of(conn: Connection, run_ids: list[str]) -> dict[str, str]:
    if not run_ids:
        return {}
    q = select(runs.c.id, runs.c.status).where(runs.c.id.in_(run_ids))
    return {r.id: r.status for r in conn.execute(q)}


def change_marker(conn: Connection) -> str:
    """Changes whenever anything a page shows changes: a run step, a new event, an audited
    action, a deploy or status change, a notification — four lookups of a maximum on an index."""
    parts = [conn.execute(select(func.max(c))).scalar()
             for c in (run_transitions.c.id, events.c.id, audit_log.c.id,
                       workflows.c.updated_at, notifications.c.id)]
    return "|".join("" if p is None else str(p) for p in parts)
