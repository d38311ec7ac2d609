"""Every SQL statement about notifications (SPEC §12), and the two facts they are derived from:
stale pending events (SPEC §10 stale-event threshold) and runs of one handler failing in a row.

Notifications are derived from the current state by a sweep (``keepflow.notifications``), not
written by hooks, so a crash can never lose one. One problem gives one open row: the partial
unique index on ``(kind, workflow_id, key) WHERE status = 'open'`` is the arbiter, and opening
is ``INSERT … ON CONFLICT DO NOTHING`` so two hosts sweeping at once (SPEC §13) still open it
once, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Select,
    and_,
    exists,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from keepflow.model import (
    EventStatus,
    NotificationKind,
    NotificationRecord,
    RunStatus,
    WebhookStatus,
)
from keepflow.store.schema import events, notifications, runs, workflows
from keepflow.store.session import StoreBase

OPEN, RESOLVED = "open", "resolved"
#: The literal predicate of the partial unique index: PostgreSQL infers the arbiter index
#: of ``ON CONFLICT`` only from a predicate it can prove at plan time (no bound parameter).
_OPEN_PREDICATE = notifications.c.status == literal_column("'open'")
_FINISHED = (RunStatus.COMMITTED.value, RunStatus.FAILED.value)
_CHUNK = 500  # workflow ids per IN list: far below every driver's parameter limit


@dataclass(frozen=True)
class StaleTopic:
    """Pending, unreserved events of one topic older than the workflow's threshold."""

    workflow_id: str
    topic: str
    count: int
    oldest_title: str
    oldest_created_at: datetime


@dataclass(frozen=True)
class FailingHandler:
    """A handler whose newest finished run failed; ``streak`` counts failed finished runs
    from the newest back (at most the threshold asked for)."""

    workflow_id: str
    handler: str
    streak: int
    failure: dict[str, Any]


def _record(r: Any) -> NotificationRecord:
    return NotificationRecord(
        id=r["id"], kind=NotificationKind(r["kind"]), workflow_id=r["workflow_id"],
        workflow=r["workflow_name"], key=r["key"], title=r["title"], body=r["body"],
        status=r["status"], created_at=r["created_at"], resolved_at=r["resolved_at"],
        webhook_status=WebhookStatus(r["webhook_status"]),
        webhook_attempts=r["webhook_attempts"], webhook_next_at=r["webhook_next_at"],
        webhook_error=r["webhook_error"])


def _select() -> Select[Any]:
    return select(notifications, workflows.c.name.label("workflow_name")).join(
        workflows, workflows.c.id == notifications.c.workflow_id)


class NotificationStore(StoreBase):
    # ---------------------------------------------------------------- notifications table

    def open_notification(self, kind: NotificationKind, workflow_id: str, key: str,
                          title: str, body: str, webhook: bool) -> bool:
        """Open a notification unless one is open for ``(kind, workflow, key)``; True if new.

        Race-safe: the unique index decides, so concurrent sweeps open it exactly once.
        """
        now = self.clock()
        values = {
            "kind": kind.value, "workflow_id": workflow_id, "key": key[:256],
            "title": title[:300], "body": body, "status": OPEN, "created_at": now,
            "webhook_status": (WebhookStatus.PENDING if webhook else WebhookStatus.NONE).value,
            "webhook_attempts": 0, "webhook_next_at": now if webhook else None,
        }
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(notifications).values(**values).on_conflict_do_nothing(
            index_elements=["kind", "workflow_id", "key"], index_where=_OPEN_PREDICATE,
        ).returning(notifications.c.id)
        with self.write() as conn:
            return conn.execute(stmt).first() is not None

    def resolve_notifications(self, kind: NotificationKind, workflow_id: str,
                              keep_keys: set[str]) -> int:
        """Resolve the open notifications of that kind and workflow not in ``keep_keys``."""
        q = update(notifications).where(
            notifications.c.kind == kind.value, notifications.c.workflow_id == workflow_id,
            notifications.c.status == OPEN)
        if keep_keys:
            q = q.where(notifications.c.key.notin_(sorted(keep_keys)))
        with self.write() as conn:
            return conn.execute(q.values(status=RESOLVED, resolved_at=self.clock())).rowcount

    def list_notifications(self, status: str | None = None, workflow_id: str | None = None,
                           limit: int | None = 200) -> list[NotificationRecord]:
        """Newest first; ``limit=None`` returns all (the sweep reads every open one)."""
        q = _select()
        if status is not None:
            q = q.where(notifications.c.status == status)
        if workflow_id is not None:
            q = q.where(notifications.c.workflow_id == workflow_id)
        q = q.order_by(notifications.c.id.desc())
        if limit is not None:
            q = q.limit(limit)
        with self.read() as conn:
            return [_record(r) for r in conn.execute(q).mappings()]

    def due_webhooks(self, now: datetime, limit: int) -> list[NotificationRecord]:
        """Pending webhook deliveries whose next attempt is due, oldest due first."""
        q = _select().where(
            notifications.c.webhook_status == WebhookStatus.PENDING.value,
            or_(notifications.c.webhook_next_at.is_(None),
                notifications.c.webhook_next_at <= now),
        ).order_by(notifications.c.webhook_next_at, notifications.c.id).limit(limit)
        with self.read() as conn:
            return [_record(r) for r in conn.execute(q).mappings()]

    def claim_webhook(self, notification_id: int, now: datetime, until: datetime) -> bool:
        """Take one due delivery until ``until`` (compare-and-set on the due time), so two
        hosts sharing a database do not post the same notification at the same moment; a
        host that dies mid-delivery leaves it due again at ``until``."""
        q = update(notifications).where(
            notifications.c.id == notification_id,
            notifications.c.webhook_status == WebhookStatus.PENDING.value,
            or_(notifications.c.webhook_next_at.is_(None),
                notifications.c.webhook_next_at <= now),
        ).values(webhook_next_at=until)
        with self.write() as conn:
            return conn.execute(q).rowcount == 1

    def record_webhook_attempt(self, notification_id: int, delivered: bool, error: str | None,
                               next_at: datetime | None, give_up: bool) -> None:
        """One delivery attempt's outcome: delivered, retry at ``next_at``, or failed."""
        status = (WebhookStatus.DELIVERED if delivered else
                  WebhookStatus.FAILED if give_up else WebhookStatus.PENDING)
        q = update(notifications).where(
            notifications.c.id == notification_id,
            notifications.c.webhook_status == WebhookStatus.PENDING.value,
        ).values(webhook_status=status.value,
                 webhook_attempts=notifications.c.webhook_attempts + 1,
                 webhook_error=None if delivered else error,
                 webhook_next_at=next_at if status is WebhookStatus.PENDING else None)
        with self.write() as conn:
            conn.execute(q)

    # ---------------------------------------------------------------- facts for the sweep

    def stale_topics(self, cutoffs: Mapping[str, datetime]) -> list[StaleTopic]:
        """Per (workflow, topic): pending, unreserved events created before the workflow's
        cutoff (workflow id → cutoff; its policy's stale-event threshold, SPEC §10).

        One grouped query per distinct cutoff and chunk of workflows, each an index search
        on the ready-events partial index by ``workflow_id``: consumed history is never read.
        """
        groups: dict[datetime, list[str]] = {}
        for wid, cutoff in cutoffs.items():
            groups.setdefault(cutoff, []).append(wid)
        found: list[tuple[str, str, int, int]] = []
        with self.read() as conn:
            for cutoff, ids in groups.items():
                for i in range(0, len(ids), _CHUNK):
                    q = stale_query(cutoff, sorted(ids)[i:i + _CHUNK])
                    found += [(r[0], r[1], int(r[2]), int(r[3])) for r in conn.execute(q)]
            oldest = {r.id: r for r in conn.execute(
                select(events.c.id, events.c.title, events.c.created_at)
                .where(events.c.id.in_([f[3] for f in found])))} if found else {}
        return [StaleTopic(wid, topic, n, oldest[first].title, oldest[first].created_at)
                for wid, topic, n, first in sorted(found)]

    def failing_handlers(self, streaks: Mapping[str, int]) -> list[FailingHandler]:
        """Every handler of these workflows whose newest finished run failed, with its
        failure streak counted up to the workflow's threshold (workflow id → threshold).

        Candidates come from failed runs that no newer finished run of the same handler
        follows (an indexed anti-join on ``(workflow_id, handler, id)``); then one short
        indexed query per candidate.
        """
        newer = runs.alias("newer")
        candidates = select(runs.c.workflow_id, runs.c.handler).where(
            runs.c.status == RunStatus.FAILED.value,
            ~exists().where(and_(newer.c.workflow_id == runs.c.workflow_id,
                                 newer.c.handler == runs.c.handler, newer.c.id > runs.c.id,
                                 newer.c.status.in_(_FINISHED))))
        out: list[FailingHandler] = []
        with self.read() as conn:
            for wid, handler in sorted((r[0], r[1]) for r in conn.execute(candidates)):
                if wid not in streaks:
                    continue
                last = conn.execute(
                    select(runs.c.status, runs.c.failure)
                    .where(runs.c.workflow_id == wid, runs.c.handler == handler,
                           runs.c.status.in_(_FINISHED))
                    .order_by(runs.c.id.desc()).limit(streaks[wid])
                ).all()
                streak = 0
                for r in last:
                    if r.status != RunStatus.FAILED.value:
                        break
                    streak += 1
                if streak:
                    out.append(FailingHandler(wid, handler, streak, last[0].failure or {}))
        return out


def stale_query(cutoff: datetime, workflow_ids: list[str]) -> Select[Any]:
    """``workflow_id IN (…)`` lets SQLite, which has no statistics, pick the ready-events
    index instead of ``reserved_by`` (consumed events have ``reserved_by`` NULL too)."""
    return (select(events.c.workflow_id, events.c.topic, func.count(), func.min(events.c.id))
            .where(events.c.workflow_id.in_(workflow_ids),
                   events.c.status == EventStatus.PENDING.value,
                   events.c.reserved_by.is_(None), events.c.created_at < cutoff)
            .group_by(events.c.workflow_id, events.c.topic))
