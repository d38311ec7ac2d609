"""Read-only queries for the surfaces (CLI, API, UI): lists and details, never writes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select

from keepflow.model import EventRecord, EventStatus, RunRecord
from keepflow.store import convert
from keepflow.store.schema import events, reservations, runs


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


def list_runs(conn: Connection, workflow_id: str, limit: int = 100) -> list[RunRecord]:
    q = select(runs).where(runs.c.workflow_id == workflow_id).order_by(runs.c.id.desc()) \
        .limit(limit)
    return [convert.run(r) for r in conn.execute(q).mappings()]


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
