"""Every SQL statement about runs, their transitions, tool calls, logs and handler state."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, bindparam, insert, or_, select, update

from keepflow.errors import NotFound
from keepflow.model import RunDraft, RunRecord, RunStatus, StateUpdate
from keepflow.store import convert
from keepflow.store.schema import handler_state, run_logs, run_transitions, runs, tool_calls

# Statements of the hot path are built once (SPEC §5: a consumer run writes at three points);
# building a statement costs several times more than executing it.
_RUN_COLUMNS = ("status", "suspend_reason", "prepared", "mutation_result", "failure", "approval",
                "updated_at", "finished_at", "retry_requested_at")
_INSERT_RUN = insert(runs)
#: Compare-and-set: the row changes only if it still holds the status the run started from.
_UPDATE_RUN = (update(runs).where(runs.c.id == bindparam("b_id"),
                                  runs.c.status == bindparam("b_expected"))
               .values({c: bindparam(f"b_{c}") for c in _RUN_COLUMNS}))
_INSERT_TRANSITIONS = insert(run_transitions)
_INSERT_TOOL_CALLS = insert(tool_calls)
_INSERT_LOGS = insert(run_logs)
_STATE_KEY = (handler_state.c.workflow_id == bindparam("b_workflow_id"),
              handler_state.c.handler == bindparam("b_handler"))
_LOAD_STATE = select(handler_state.c.has_state, handler_state.c.state).where(*_STATE_KEY)


def flush_run_txn(conn: Connection, run: RunDraft, now: datetime) -> bool:
    """Write the run row and everything it accumulated since the last durable point.

    Only ``store/transitions.py`` calls this, after checking the run's path. Returns False —
    having written nothing — when the stored row no longer holds ``run.durable_status``.
    """
    values: dict[str, Any] = {
        "status": run.status.value,
        "suspend_reason": run.suspend_reason.value if run.suspend_reason else None,
        "prepared": run.prepared,
        "mutation_result": run.mutation_result,
        "failure": run.failure,
        "approval": run.approval,
        "updated_at": now,
        "finished_at": run.finished_at,
        "retry_requested_at": None,  # a retried run is carried on by this very write
    }
    if run.durable_status is not None:
        changed = conn.execute(_UPDATE_RUN, {
            "b_id": run.id, "b_expected": run.durable_status.value,
            **{f"b_{k}": v for k, v in values.items()}}).rowcount
        if changed != 1:
            return False
    else:
        conn.execute(_INSERT_RUN, {
            "id": run.id, "workflow_id": run.workflow_id, "version_id": run.version_id,
            "handler": run.handler, "kind": run.kind.value, "trigger": run.trigger,
            "created_at": run.created_at, **values,
        })
    if run.transitions:
        conn.execute(_INSERT_TRANSITIONS, [
            {"run_id": run.id, "from_status": t.from_status.value if t.from_status else None,
             "to_status": t.to_status.value, "at": t.at, "note": t.note}
            for t in run.transitions
        ])
    if run.tool_calls:
        conn.execute(_INSERT_TOOL_CALLS, [
            {"run_id": run.id, "seq": c.seq, "phase": c.phase.value, "target": c.target,
             "connection": c.connection, "tool": c.tool, "kind": c.kind, "params": c.params,
             "ok": c.ok, "result": c.result, "error": c.error,
             "started_at": c.started_at or now, "duration_ms": c.duration_ms}
            for c in run.tool_calls
        ])
    if run.logs:
        conn.execute(_INSERT_LOGS, [
            {"run_id": run.id, "seq": lg.seq, "phase": lg.phase.value if lg.phase else None,
             "level": lg.level, "message": lg.message, "at": lg.at}
            for lg in run.logs
        ])
    return True


def get(conn: Connection, run_id: str) -> RunRecord:
    row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
    if row is None:
        raise NotFound(f"no run {run_id} (see `keepflow runs WORKFLOW`)")
    return convert.run(row)


def status_of(conn: Connection, run_id: str) -> RunStatus | None:
    row = conn.execute(select(runs.c.status).where(runs.c.id == run_id)).first()
    return RunStatus(row.status) if row else None


def status_for_update(conn: Connection, run_id: str) -> RunStatus | None:
    """The run's status, locking its row until the transaction ends (PostgreSQL)."""
    row = conn.execute(select(runs.c.status).where(runs.c.id == run_id).with_for_update()
                       ).first()
    return RunStatus(row.status) if row else None


def load_state(conn: Connection, workflow_id: str, handler: str) -> tuple[bool, Any]:
    """(has_state, state) of a handler; ``has_state`` is False before its first commit."""
    row = conn.execute(_LOAD_STATE, {"b_workflow_id": workflow_id, "b_handler": handler}).first()
    if row is None or not row.has_state:
        return False, None
    return True, row.state


def update_state_row_txn(conn: Connection, workflow_id: str, handler: str,
                         values: dict[str, Any], now: datetime) -> None:
    """Set columns of a handler's state row, creating the row on first use.

    One UPDATE in the common case (the row exists); the INSERT happens once per handler.
    """
    where = (handler_state.c.workflow_id == workflow_id, handler_state.c.handler == handler)
    if conn.execute(update(handler_state).where(*where).values(**values)).rowcount == 1:
        return
    conn.execute(insert(handler_state).values(
        workflow_id=workflow_id, handler=handler, has_state=False, updated_at=now))
    conn.execute(update(handler_state).where(*where).values(**values))


def state_values(update_: StateUpdate, run_id: str, now: datetime) -> dict[str, Any]:
    """Columns of a handler's new state (SPEC §4, §5.3)."""
    return {"state": update_.value, "has_state": True, "updated_by": run_id, "updated_at": now}


def sleep_values(until: datetime | None, watermark: int | None) -> dict[str, Any]:
    """SPEC §7.3: a consumer sleeps after empty reservations; any other outcome wakes it."""
    return {"sleep_until": until, "sleep_watermark": watermark}


def sleep_info(conn: Connection, workflow_id: str, handler: str
               ) -> tuple[datetime | None, int | None]:
    row = conn.execute(
        select(handler_state.c.sleep_until, handler_state.c.sleep_watermark).where(
            handler_state.c.workflow_id == workflow_id, handler_state.c.handler == handler)
    ).first()
    return (row.sleep_until, row.sleep_watermark) if row else (None, None)


def unfinished() -> ColumnElement[bool]:
    """Runs that are neither committed nor failed — or failed with a retry a person asked for
    and the host has not carried on yet."""
    return or_(runs.c.status.notin_([RunStatus.COMMITTED.value, RunStatus.FAILED.value]),
               runs.c.retry_requested_at.is_not(None))


def active_runs(conn: Connection, workflow_id: str) -> list[tuple[str, str, str]]:
    """(id, handler, status) of the unfinished runs of a workflow (:func:`unfinished`)."""
    q = select(runs.c.id, runs.c.handler, runs.c.status).where(
        runs.c.workflow_id == workflow_id, unfinished())
    return [(r.id, r.handler, r.status) for r in conn.execute(q)]


def transitions(conn: Connection, run_id: str) -> list[dict[str, Any]]:
    q = select(run_transitions).where(run_transitions.c.run_id == run_id) \
        .order_by(run_transitions.c.at, run_transitions.c.id)
    return [
        {"from": r["from_status"], "to": r["to_status"], "at": r["at"].isoformat(),
         "note": r["note"]}
        for r in conn.execute(q).mappings()
    ]


def run_tool_calls(conn: Connection, run_id: str) -> list[dict[str, Any]]:
    q = select(tool_calls).where(tool_calls.c.run_id == run_id).order_by(tool_calls.c.seq)
    return [
        {"seq": r["seq"], "phase": r["phase"], "target": r["target"],
         "connection": r["connection"], "tool": r["tool"], "kind": r["kind"],
         "params": r["params"], "ok": r["ok"], "result": r["result"], "error": r["error"],
         "startedAt": r["started_at"].isoformat(), "durationMs": r["duration_ms"]}
        for r in conn.execute(q).mappings()
    ]


def logs(conn: Connection, run_id: str) -> list[dict[str, Any]]:
    q = select(run_logs).where(run_logs.c.run_id == run_id).order_by(run_logs.c.seq)
    return [
        {"seq": r["seq"], "phase": r["phase"], "level": r["level"], "message": r["message"],
         "at": r["at"].isoformat()}
        for r in conn.execute(q).mappings()
    ]


def runs_with_status(conn: Connection, statuses: Sequence[RunStatus]) -> list[str]:
    q = select(runs.c.id).where(runs.c.status.in_([s.value for s in statuses])).order_by(runs.c.id)
    return [r.id for r in conn.execute(q)]


def retries_requested(conn: Connection) -> list[str]:
    """Failed runs a person asked to retry that no host has carried on yet."""
    q = select(runs.c.id).where(runs.c.retry_requested_at.is_not(None)).order_by(runs.c.id)
    return [r.id for r in conn.execute(q)]


def request_retry_txn(conn: Connection, run_id: str, now: datetime) -> None:
    conn.execute(update(runs).where(runs.c.id == run_id).values(retry_requested_at=now))
