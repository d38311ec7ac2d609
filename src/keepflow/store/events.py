"""Every SQL statement about events, their history and reservations (SPEC §3, §5.1, §5.3).

Functions named ``*_txn`` run inside the caller's transaction so that, e.g., publishing and the
state update of a producer commit together (SPEC §4).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, func, insert, literal, select, update
from sqlalchemy.sql.elements import BindParameter

from keepflow.errors import Conflict, NotFound, ReservationRejected
from keepflow.model import EventDraft, EventRecord, EventStatus, PublishReport, Reservation
from keepflow.store import convert
from keepflow.store.schema import event_history, events, inbound_tokens, reservations

#: Pending and unreserved: the predicate of the partial index ``ix_events_ready``. The status is
#: a literal in the SQL, not a bound parameter: PostgreSQL only uses a partial index when it can
#: prove the predicate from the query text (with a parameter, a generic plan walks the primary
#: key through the whole history instead).
_SCRIPT_READY = and_(
    events.c.status == literal(EventStatus.PENDING.value, literal_execute=True),
    events.c.reserved_by.is_(None),
)

# The statements of a run's hot path, built once (building one costs more than running it).
_TOPIC = (events.c.workflow_id == bindparam("b_workflow_id"),
          events.c.topic == bindparam("b_topic"))
_IDS: BindParameter[Any] = bindparam("b_ids", expanding=True)
_INSERT_EVENT = insert(events).returning(events.c.id)
_INSERT_HISTORY = insert(event_history)
_INSERT_RESERVATION = insert(reservations)
_PEEK = (select(events).where(*_TOPIC, _SCRIPT_READY).order_by(events.c.id)
         .limit(bindparam("b_limit")))
_BY_MESSAGE_IDS = select(events).where(*_TOPIC, events.c.message_id.in_(_IDS))
_PAYLOAD_HASHES = select(events.c.message_id, events.c.payload_sha256).where(
    *_TOPIC, events.c.message_id.in_(_IDS))
_RESERVE = (update(events).where(events.c.id.in_(_IDS), _SCRIPT_READY)
            .values(reserved_by=bindparam("b_run_id"), updated_at=bindparam("b_now")))
_NEWEST_ID = select(func.max(events.c.id))
_FINISH_EVENTS = (update(events).where(events.c.reserved_by == bindparam("b_run_id"))
                  .values(status=bindparam("b_status"), reserved_by=None,
                          updated_at=bindparam("b_now"))
                  .returning(events.c.id))
_FINISH_RESERVATIONS = (
    update(reservations)
    .where(reservations.c.run_id == bindparam("b_run_id"), reservations.c.outcome.is_(None))
    .values(outcome=bindparam("b_outcome"), ended_at=bindparam("b_now")))


def publish_txn(
    conn: Connection, workflow_id: str, run_id: str | None, drafts: Sequence[EventDraft],
    now: datetime, note: str = "published",
) -> PublishReport:
    """Insert new events; an existing ``(workflow, topic, messageId)`` is a no-op (SPEC §3)."""
    report = PublishReport()
    by_topic: dict[str, list[str]] = {}
    for d in drafts:
        by_topic.setdefault(d.topic, []).append(d.message_id)
    existing: dict[tuple[str, str], str] = {}
    for topic, ids in by_topic.items():
        for mid, sha in payload_hashes(conn, workflow_id, topic, ids).items():
            existing[(topic, mid)] = sha
    for d in drafts:  # in publish order: append order is the order the script published in
        key = (d.topic, d.message_id)
        if key in existing:
            report.duplicates.append(f"{d.topic}/{d.message_id}")
            if existing[key] != d.payload_sha256:
                report.differing.append(f"{d.topic}/{d.message_id}")
            continue
        existing[key] = d.payload_sha256
        event_id = conn.execute(_INSERT_EVENT, {
            "workflow_id": workflow_id, "topic": d.topic, "message_id": d.message_id,
            "title": d.title, "payload": d.payload, "payload_sha256": d.payload_sha256,
            "status": EventStatus.PENDING.value, "attempt": 1, "created_by": run_id,
            "created_at": now, "updated_at": now,
        }).scalar_one()
        _history(conn, event_id, EventStatus.PENDING, run_id, note, now)
        report.inserted.append(f"{d.topic}/{d.message_id}")
    return report


def peek(conn: Connection, workflow_id: str, topic: str, limit: int) -> list[EventRecord]:
    """Pending, unreserved events of a topic in append order (SPEC §3, §5.1)."""
    got = conn.execute(_PEEK, {"b_workflow_id": workflow_id, "b_topic": topic, "b_limit": limit})
    return [convert.event(r) for r in got.mappings()]


def by_message_ids(
    conn: Connection, workflow_id: str, topic: str, message_ids: Iterable[str]
) -> dict[str, EventRecord]:
    got = conn.execute(_BY_MESSAGE_IDS, {"b_workflow_id": workflow_id, "b_topic": topic,
                                         "b_ids": list(message_ids)})
    return {r["message_id"]: convert.event(r) for r in got.mappings()}


def payload_hashes(conn: Connection, workflow_id: str, topic: str, message_ids: Iterable[str]
                   ) -> dict[str, str]:
    got = conn.execute(_PAYLOAD_HASHES, {"b_workflow_id": workflow_id, "b_topic": topic,
                                         "b_ids": list(message_ids)})
    return {r.message_id: r.payload_sha256 for r in got}


def reserved_titles(conn: Connection, run_id: str) -> list[str]:
    q = select(events.c.title).join(reservations, reservations.c.event_id == events.c.id) \
        .where(reservations.c.run_id == run_id).order_by(events.c.id)
    return [r.title for r in conn.execute(q)]


def check_reservations(
    conn: Connection, workflow_id: str, run_id: str, wanted: Sequence[Reservation],
    subscribed: Iterable[str],
) -> list[EventRecord]:
    """The events a PrepareResult reserves, or ``ReservationRejected`` naming the event and the
    rule it breaks (SPEC §5.1, §15 scenario 4)."""
    allowed = set(subscribed)
    found: list[EventRecord] = []
    for res in wanted:
        if res.topic not in allowed:
            raise ReservationRejected(
                f"prepare reserved events of topic '{res.topic}', which this consumer does not "
                f"subscribe to (it subscribes to: {', '.join(sorted(allowed))})",
                topic=res.topic,
            )
        got = by_message_ids(conn, workflow_id, res.topic, res.message_ids)
        for mid in res.message_ids:
            ev = got.get(mid)
            if ev is None:
                raise ReservationRejected(
                    f"prepare reserved '{mid}' in topic '{res.topic}', but no such event exists",
                    topic=res.topic, message_id=mid,
                )
            if ev.status is not EventStatus.PENDING:
                raise ReservationRejected(
                    f"prepare reserved event '{ev.title}' ({res.topic}/{mid}), but it is already "
                    f"{ev.status.value}; only pending events can be reserved",
                    topic=res.topic, message_id=mid,
                )
            if ev.reserved_by is not None and ev.reserved_by != run_id:
                raise ReservationRejected(
                    f"prepare reserved event '{ev.title}' ({res.topic}/{mid}), but it is "
                    f"reserved by run {ev.reserved_by}",
                    topic=res.topic, message_id=mid,
                )
            found.append(ev)
    return found


def reserve_txn(
    conn: Connection, workflow_id: str, run_id: str, wanted: Sequence[Reservation],
    subscribed: Iterable[str], now: datetime,
) -> list[EventRecord]:
    """Reserve events for a run, capturing each event's attempt (SPEC §3, §5.1)."""
    evs = check_reservations(conn, workflow_id, run_id, wanted, subscribed)
    ids = [e.id for e in evs if e.reserved_by is None]
    if ids:
        n = conn.execute(_RESERVE, {"b_ids": ids, "b_run_id": run_id, "b_now": now}).rowcount
        if n != len(ids):
            raise ReservationRejected("another run reserved some of these events at the same time")
    for e in evs:
        if e.reserved_by is None:
            conn.execute(_INSERT_RESERVATION, {"run_id": run_id, "event_id": e.id,
                                               "attempt": e.attempt, "reserved_at": now})
            _history(conn, e.id, EventStatus.PENDING, run_id, f"reserved (attempt {e.attempt})",
                     now)
    return evs


def finish_reservations_txn(
    conn: Connection, run_id: str, outcome: EventStatus, now: datetime
) -> int:
    """Reserved events of a run become consumed or skipped (SPEC §5.3)."""
    ids = sorted(r.id for r in conn.execute(_FINISH_EVENTS, {
        "b_run_id": run_id, "b_status": outcome.value, "b_now": now}))
    if not ids:
        return 0
    conn.execute(_FINISH_RESERVATIONS, {"b_run_id": run_id, "b_outcome": outcome.value,
                                        "b_now": now})
    for eid in ids:
        _history(conn, eid, outcome, run_id, outcome.value, now)
    return len(ids)


def skip_event_txn(conn: Connection, workflow_id: str, topic: str, message_id: str,
                   actor: str, now: datetime) -> EventRecord:
    """A person skips a pending, unreserved event (SPEC §12, §15 scenario 16)."""
    ev = by_message_ids(conn, workflow_id, topic, [message_id]).get(message_id)
    if ev is None:
        raise NotFound(f"no event '{message_id}' in topic '{topic}'")
    if ev.status is not EventStatus.PENDING:
        raise Conflict(f"event '{ev.title}' is already {ev.status.value}; nothing to skip")
    if ev.reserved_by is not None:
        raise Conflict(
            f"event '{ev.title}' is reserved by run {ev.reserved_by}; resolve that run instead"
        )
    n = conn.execute(
        update(events).where(events.c.id == ev.id, _SCRIPT_READY)
        .values(status=EventStatus.SKIPPED.value, updated_at=now)
    ).rowcount
    if n != 1:
        raise Conflict(f"event '{ev.title}' changed while skipping it; try again")
    _history(conn, ev.id, EventStatus.SKIPPED, None, f"skipped by {actor}", now)
    return by_message_ids(conn, workflow_id, topic, [message_id])[message_id]


def ready_window(
    conn: Connection, workflow_id: str, topics: Sequence[str]
) -> tuple[int | None, int | None]:
    """(oldest, newest) id of pending unreserved events in these topics (SPEC §7.1, §7.3)."""
    row = conn.execute(
        select(func.min(events.c.id), func.max(events.c.id)).where(
            events.c.workflow_id == workflow_id, events.c.topic.in_(list(topics)), _SCRIPT_READY
        )
    ).one()
    return row[0], row[1]


def newest_id(conn: Connection) -> int:
    """The newest event id of the whole store: a consumer's wake-up watermark (SPEC §7.3).

    Ids only grow, and a workflow's events are written only by its own runs, one at a time
    under its lease; so while a run of the workflow reads this, none of its events is being
    inserted, every event of it that exists has an id ≤ this, and every later one gets a
    larger id. That is exactly what a per-topic maximum would say, but this one is a single
    primary-key lookup, however long the history (a per-topic maximum walks every consumed
    event of the topic).
    """
    return int(conn.execute(_NEWEST_ID).scalar() or 0)


def _history(conn: Connection, event_id: int, status: EventStatus, run_id: str | None,
             note: str, now: datetime) -> None:
    conn.execute(_INSERT_HISTORY, {"event_id": event_id, "at": now, "status": status.value,
                                   "run_id": run_id, "note": note})


def history(conn: Connection, event_id: int) -> list[dict[str, Any]]:
    q = select(event_history).where(event_history.c.event_id == event_id) \
        .order_by(event_history.c.id)
    return [
        {"at": r["at"].isoformat(), "status": r["status"], "runId": r["run_id"], "note": r["note"]}
        for r in conn.execute(q).mappings()
    ]


def event_reservations(conn: Connection, event_id: int) -> list[dict[str, Any]]:
    q = select(reservations).where(reservations.c.event_id == event_id) \
        .order_by(reservations.c.reserved_at)
    return [
        {"runId": r["run_id"], "attempt": r["attempt"], "reservedAt": r["reserved_at"].isoformat(),
         "outcome": r["outcome"]}
        for r in conn.execute(q).mappings()
    ]


def inbound_token_txn(conn: Connection, workflow_id: str, token_sha256: str | None, actor: str,
                      now: datetime) -> bool:
    """Set (or delete, with None) a workflow's inbound-event token; whether one was set."""
    had = conn.execute(delete(inbound_tokens).where(
        inbound_tokens.c.workflow_id == workflow_id)).rowcount > 0
    if token_sha256 is not None:
        conn.execute(insert(inbound_tokens).values(
            workflow_id=workflow_id, token_sha256=token_sha256, created_at=now,
            created_by=actor[:64]))
    return had


def inbound_token_sha(conn: Connection, workflow_id: str) -> str | None:
    return conn.execute(select(inbound_tokens.c.token_sha256).where(
        inbound_tokens.c.workflow_id == workflow_id)).scalar_one_or_none()
