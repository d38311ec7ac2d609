"""Every SQL statement about the mutation ledger (SPEC §6): one row per mutation attempt."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from keepflow.errors import TransitionRefused
from keepflow.model import LedgerStatus, MutationDraft, MutationRecord
from keepflow.store import convert
from keepflow.store.schema import mutations

#: Legal ledger moves. ``in_flight`` is written before the call; everything else follows it.
_MOVES: dict[LedgerStatus, frozenset[LedgerStatus]] = {
    LedgerStatus.IN_FLIGHT: frozenset(
        {LedgerStatus.APPLIED, LedgerStatus.FAILED, LedgerStatus.NEEDS_RECONCILE,
         LedgerStatus.INDETERMINATE}),
    LedgerStatus.NEEDS_RECONCILE: frozenset(
        {LedgerStatus.APPLIED, LedgerStatus.FAILED, LedgerStatus.NEEDS_RECONCILE,
         LedgerStatus.INDETERMINATE}),
    # SPEC §6 user actions: "Try again" and "It didn't happen" act on indeterminate attempts;
    # "Skip" leaves it indeterminate (nobody knows) and records who resolved it.
    LedgerStatus.INDETERMINATE: frozenset(
        {LedgerStatus.NEEDS_RECONCILE, LedgerStatus.FAILED, LedgerStatus.INDETERMINATE}),
    LedgerStatus.APPLIED: frozenset(),
    LedgerStatus.FAILED: frozenset(),
}
#: The statuses an attempt may be in to move to a given status (the inverse of ``_MOVES``).
_SOURCES: dict[LedgerStatus, list[str]] = {
    to: sorted(src.value for src, targets in _MOVES.items() if to in targets)
    for to in LedgerStatus
}


_INSERT_ATTEMPT = insert(mutations).returning(*mutations.c)  # built once: every mutation runs it


def record_in_flight_txn(conn: Connection, draft: MutationDraft, now: datetime
                         ) -> MutationRecord:
    """SPEC §6 step 2: durable before the external call starts."""
    row = conn.execute(_INSERT_ATTEMPT, {
        "run_id": draft.run_id, "workflow_id": draft.workflow_id, "attempt": draft.attempt,
        "connection": draft.connection, "connector_type": draft.connector_type,
        "tool": draft.tool, "params": draft.params, "idempotency_key": draft.idempotency_key,
        "description": draft.description, "can_reconcile": draft.can_reconcile,
        "status": LedgerStatus.IN_FLIGHT.value, "reconcile_attempts": 0,
        "created_at": now, "updated_at": now,
    }).mappings().one()
    return convert.mutation(row)


def settle_txn(
    conn: Connection, mutation_id: int, status: LedgerStatus, now: datetime, *,
    result: Any = None, error: dict[str, Any] | None = None, resolved_by: str = "host",
    reconcile_attempted: bool = False, next_reconcile_at: datetime | None = None,
    reset_attempts: bool = False,
) -> MutationRecord:
    """Move an attempt to ``status`` if that move is legal from its current status; one
    conditional UPDATE … RETURNING (the legality check is part of its WHERE clause)."""
    values: dict[str, Any] = {"status": status.value, "updated_at": now,
                              "resolved_by": resolved_by, "next_reconcile_at": next_reconcile_at}
    if result is not None:
        values["result"] = result
    if error is not None:
        values["error"] = error
    if reconcile_attempted:
        values["reconcile_attempts"] = mutations.c.reconcile_attempts + 1
    if reset_attempts:  # "Try again" (SPEC §6): the counter starts over
        values["reconcile_attempts"] = 0
    row = conn.execute(
        update(mutations)
        .where(mutations.c.id == mutation_id, mutations.c.status.in_(_SOURCES[status]))
        .values(**values)
        .returning(*mutations.c)
    ).mappings().first()
    if row is not None:
        return convert.mutation(row)
    current = get(conn, mutation_id)
    raise TransitionRefused(
        f"ledger attempt {current.attempt} of run {current.run_id} is {current.status.value}; "
        f"it cannot become {status.value} (nothing was written)"
    )


def get(conn: Connection, mutation_id: int) -> MutationRecord:
    row = conn.execute(select(mutations).where(mutations.c.id == mutation_id)).mappings().one()
    return convert.mutation(row)


def for_run(conn: Connection, run_id: str) -> list[MutationRecord]:
    q = select(mutations).where(mutations.c.run_id == run_id).order_by(mutations.c.attempt)
    return [convert.mutation(r) for r in conn.execute(q).mappings()]


def with_status(conn: Connection, status: LedgerStatus) -> list[MutationRecord]:
    q = select(mutations).where(mutations.c.status == status.value).order_by(mutations.c.id)
    return [convert.mutation(r) for r in conn.execute(q).mappings()]


def page(conn: Connection, workflow_id: str, *, status: LedgerStatus | None,
         before: int | None, limit: int) -> list[MutationRecord]:
    """A workflow's ledger, newest first, by keyset (``before`` a mutation id)."""
    q = select(mutations).where(mutations.c.workflow_id == workflow_id)
    if status is not None:
        q = q.where(mutations.c.status == status.value)
    if before is not None:
        q = q.where(mutations.c.id < before)
    q = q.order_by(mutations.c.id.desc()).limit(limit)
    return [convert.mutation(r) for r in conn.execute(q).mappings()]
