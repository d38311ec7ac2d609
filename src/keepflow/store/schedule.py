"""Every SQL statement of the scheduler's bookkeeping (SPEC §7): fire times, skipped ticks,
wake-ups, and the facts the status view shows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select

from keepflow.store import runs as run_rows
from keepflow.store.runs import update_state_row_txn
from keepflow.store.schema import handler_state, runs, workflows


@dataclass(frozen=True)
class HandlerFacts:
    last_fired_at: datetime | None
    sleep_until: datetime | None
    sleep_watermark: int | None
    skipped_ticks: int
    last_skipped_at: datetime | None
    woken_at: datetime | None
    wake_reason: str | None


@dataclass(frozen=True)
class LastRun:
    run_id: str
    status: str
    at: datetime
    failure_class: str | None


def is_asleep(sleep_until: datetime | None, watermark: int | None, newest_event: int | None,
              now: datetime) -> bool:
    """SPEC §7.3: a consumer that found nothing to do sleeps until its backoff timeout, or
    until an event newer than the newest it could see (its watermark) arrives."""
    if sleep_until is None or now >= sleep_until:
        return False
    return newest_event is None or (watermark is not None and newest_event <= watermark)


def handler_facts(conn: Connection, workflow_id: str | None = None
                  ) -> dict[tuple[str, str], HandlerFacts]:
    q = select(handler_state)
    if workflow_id is not None:
        q = q.where(handler_state.c.workflow_id == workflow_id)
    return {
        (r["workflow_id"], r["handler"]): HandlerFacts(
            last_fired_at=r["last_fired_at"], sleep_until=r["sleep_until"],
            sleep_watermark=r["sleep_watermark"], skipped_ticks=r["skipped_ticks"],
            last_skipped_at=r["last_skipped_at"], woken_at=r["woken_at"],
            wake_reason=r["wake_reason"])
        for r in conn.execute(q).mappings()
    }


def record_fire_txn(conn: Connection, workflow_id: str, handler: str, at: datetime) -> None:
    update_state_row_txn(conn, workflow_id, handler, {"last_fired_at": at}, at)


def record_skip_txn(conn: Connection, workflow_id: str, handler: str, at: datetime) -> None:
    update_state_row_txn(conn, workflow_id, handler, {
        "last_fired_at": at, "skipped_ticks": handler_state.c.skipped_ticks + 1,
        "last_skipped_at": at}, at)


def record_wake_txn(conn: Connection, workflow_id: str, handler: str, reason: str,
                    at: datetime) -> None:
    update_state_row_txn(conn, workflow_id, handler, {"woken_at": at, "wake_reason": reason},
                         at)


def last_runs(conn: Connection, workflow_id: str) -> dict[str, LastRun]:
    """The newest run of each handler of a workflow."""
    newest = (select(runs.c.handler, func.max(runs.c.id).label("id"))
              .where(runs.c.workflow_id == workflow_id).group_by(runs.c.handler).subquery())
    q = select(runs.c.id, runs.c.handler, runs.c.status, runs.c.created_at,
               runs.c.finished_at, runs.c.failure).join(newest, newest.c.id == runs.c.id)
    out = {}
    for r in conn.execute(q):
        failure = r.failure or {}
        out[r.handler] = LastRun(r.id, r.status, r.finished_at or r.created_at,
                                 failure.get("class"))
    return out


def newest_change(conn: Connection) -> datetime | None:
    """The newest ``updated_at`` of any workflow: a running host re-reads on change."""
    value: datetime | None = conn.execute(select(func.max(workflows.c.updated_at))).scalar()
    return value


def changed_since(conn: Connection, since: datetime) -> list[str]:
    """Workflows updated after ``since`` (indexed on ``updated_at``)."""
    q = select(workflows.c.id).where(workflows.c.updated_at > since)
    return [r.id for r in conn.execute(q)]


def current_manifests(conn: Connection, workflow_ids: list[str] | None = None
                      ) -> dict[str, dict[str, object]]:
    """workflow id → manifest of its current version, in one query."""
    from keepflow.store.schema import script_versions

    q = select(workflows.c.id, script_versions.c.manifest).join(
        script_versions, script_versions.c.id == workflows.c.current_version_id)
    if workflow_ids is not None:
        q = q.where(workflows.c.id.in_(workflow_ids))
    return {r.id: r.manifest for r in conn.execute(q)}


def pending_reconciles(conn: Connection, workflow_id: str | None = None
                       ) -> list[tuple[str, str, str, datetime | None]]:
    """(workflow id, run id, handler, next attempt) of every ``needs_reconcile`` mutation."""
    from keepflow.store.schema import mutations

    q = (select(mutations.c.workflow_id, mutations.c.run_id, runs.c.handler,
                mutations.c.next_reconcile_at)
         .join(runs, runs.c.id == mutations.c.run_id)
         .where(mutations.c.status == "needs_reconcile"))
    if workflow_id is not None:
        q = q.where(mutations.c.workflow_id == workflow_id)
    return [(r.workflow_id, r.run_id, r.handler, r.next_reconcile_at) for r in conn.execute(q)]


def unfinished_by_workflow(conn: Connection) -> dict[str, tuple[str, str, str]]:
    """workflow id → (run id, handler, status) of one unfinished run, in one query."""
    q = select(runs.c.workflow_id, runs.c.id, runs.c.handler, runs.c.status).where(
        run_rows.unfinished())
    return {r.workflow_id: (r.id, r.handler, r.status) for r in conn.execute(q)}
