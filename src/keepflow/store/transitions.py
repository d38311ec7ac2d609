"""The transition owner: every durable change of a run, its events, reservations and ledger.

The runtime decides *which* transition to ask for; this module decides whether it may happen
and writes it. Each public method is named after the transition (SPEC §5.5's durable points,
SPEC §6's ledger procedure and user actions), is **one transaction**, and refuses — changing
nothing — when:

- this host no longer holds the workflow's lease (fencing token, SPEC §13: :class:`LeaseLost`);
- the run's path is not a legal sequence of SPEC §5.4 transitions, or does not end where the
  transition must end (:class:`TransitionRefused`, a bug in the caller);
- the run's status in the store is not the status the caller started from — another actor
  moved it on (compare-and-set, :class:`RunChanged`);
- a ledger attempt is not in a status it may leave for the new one (compare-and-set in the
  ledger's UPDATE, see ``store/ledger_records.py``).

Transition history rows (``run_transitions``) are written here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from keepflow import faults
from keepflow.errors import RunChanged, TransitionRefused
from keepflow.model import (
    LEASE_TTL,
    RUN_TRANSITIONS,
    EventClaim,
    EventDraft,
    EventStatus,
    Fence,
    LedgerStatus,
    MutationDraft,
    MutationRecord,
    PublishReport,
    RunDraft,
    RunStatus,
    Settle,
    Sleep,
    StateUpdate,
    SuspendReason,
    WorkflowStatus,
)
from keepflow.store import events as ev
from keepflow.store import ledger_records, runs
from keepflow.store import workflows as wf
from keepflow.store.session import StoreBase

S = RunStatus

#: Where a run may stand after each kind of ledger settlement (SPEC §6 steps 3–6).
_AFTER_SETTLE: dict[LedgerStatus, frozenset[RunStatus]] = {
    LedgerStatus.APPLIED: frozenset({S.MUTATED}),
    LedgerStatus.FAILED: frozenset({S.MUTATING}),  # mutate again, or the run fails next
    LedgerStatus.NEEDS_RECONCILE: frozenset({S.SUSPENDED}),
    LedgerStatus.INDETERMINATE: frozenset({S.SUSPENDED}),
}
#: Where a person's answer may leave a run (SPEC §6 user actions).
_AFTER_ANSWER = frozenset({S.SUSPENDED, S.MUTATING, S.EMITTING})
#: Points a run may be persisted at with no other effect (a producer or consumer started).
_CHECKPOINTS = frozenset({S.RUNNING, S.PREPARING, S.PREPARED})


def path_error(start: RunStatus, run: RunDraft, ends: frozenset[RunStatus]) -> str | None:
    """Why ``run``'s unwritten path from ``start`` is not legal (SPEC §5.4), or None.

    A step to the same status is a note on the path (e.g. "try again" while suspended).
    """
    at = start
    for t in run.transitions:
        if t.from_status is not at:
            return (f"its path says {_name(t.from_status)} → {t.to_status.value} but it is "
                    f"{at.value}")
        if t.to_status is not at and t.to_status not in RUN_TRANSITIONS[at]:
            return f"{at.value} → {t.to_status.value} is not a legal run transition"
        at = t.to_status
    if at is not run.status:
        return f"its path ends at {at.value} but the run says {run.status.value}"
    if at not in ends:
        return (f"it would end {at.value}; this transition must end "
                + " or ".join(sorted(s.value for s in ends)))
    return None


def _name(status: RunStatus | None) -> str:
    return status.value if status else "(new)"


@dataclass
class _Txn:
    conn: Connection
    now: datetime
    run: RunDraft


class RunTransitions(StoreBase):
    """The durable transitions of runs (mixed into :class:`keepflow.store.Store`)."""

    # ---------------------------------------------------------------- the one write path

    @contextmanager
    def _run_txn(self, run: RunDraft, fence: Fence | None, ends: frozenset[RunStatus],
                 point: str, *, expected: RunStatus | None = None) -> Iterator[_Txn]:
        """Check and write ``run``'s path in one transaction; the body adds the rest of the
        transition. ``point`` names the fault-injection points around the commit
        (``<point>.mid_commit``, ``<point>.after_commit``, see ``keepflow.faults``)."""
        start = run.durable_status or S.PENDING
        if expected is not None and start is not expected:
            raise RunChanged(f"run {run.id} is {_name(run.durable_status)}, not "
                             f"{expected.value}; look at it again")
        why = path_error(start, run, ends)
        if why is not None:
            raise TransitionRefused(f"run {run.id}: refused, {why}; nothing was written")
        now = self.clock()
        with self.write() as conn:
            if fence is not None:
                wf.check_fence_txn(conn, fence, LEASE_TTL, now)
            if not runs.flush_run_txn(conn, run, now):
                current = runs.status_of(conn, run.id)
                raise RunChanged(
                    f"run {run.id} is now {_name(current)} in the store, not "
                    f"{_name(run.durable_status)}; another actor moved it on — look at it "
                    "again (nothing was written)")
            yield _Txn(conn, now, run)
            faults.point(f"{point}.mid_commit")
        run.mark_flushed()
        faults.point(f"{point}.after_commit")

    def _claim(self, t: _Txn, claim: EventClaim | None) -> None:
        if claim is not None:
            ev.reserve_txn(t.conn, t.run.workflow_id, t.run.id, claim.reservations,
                           claim.subscribed, t.now)

    def _publish(self, t: _Txn, publishes: Sequence[EventDraft], quota: int | None
                 ) -> PublishReport:
        """The run's new events, and the storage it now uses charged to its workflow: past
        the quota the whole transition rolls back (docs/security.md#limits)."""
        report = PublishReport()
        charge = t.run.stored_bytes
        if publishes:
            report = ev.publish_txn(t.conn, t.run.workflow_id, t.run.id, publishes, t.now)
            inserted = set(report.inserted)
            charge += sum(d.size for d in publishes if f"{d.topic}/{d.message_id}" in inserted)
        if charge:
            wf.charge_storage_txn(t.conn, t.run.workflow_id, charge, quota)
        return report

    def _charge(self, t: _Txn) -> None:
        """Charge what the run keeps (logs, tool calls, state) at a point with no publishes."""
        self._publish(t, (), None)

    def _state(self, t: _Txn, state: StateUpdate | None, sleep: Sleep | None, *,
               wake: bool) -> None:
        """The handler's state and its sleep (SPEC §7.3) in one statement."""
        run = t.run
        own: dict[str, Any] = {}
        if state is not None:
            values = runs.state_values(state, run.id, t.now)
            if state.handler == run.handler:
                own.update(values)
            else:
                runs.update_state_row_txn(t.conn, run.workflow_id, state.handler, values, t.now)
        if sleep is not None:
            own.update(runs.sleep_values(sleep.until, sleep.watermark))
        elif wake:
            own.update(runs.sleep_values(None, None))
        if own:
            runs.update_state_row_txn(t.conn, run.workflow_id, run.handler, own, t.now)

    def _settle(self, t: _Txn, settle: Settle) -> MutationRecord:
        return ledger_records.settle_txn(
            t.conn, settle.mutation_id, settle.status, t.now, result=settle.result,
            error=settle.error, resolved_by=settle.resolved_by,
            reconcile_attempted=settle.reconcile_attempted,
            next_reconcile_at=settle.next_reconcile_at, reset_attempts=settle.reset_attempts)

    def _workflow(self, t: _Txn, status: tuple[WorkflowStatus, str | None] | None) -> None:
        if status is not None:
            wf.set_status_txn(t.conn, t.run.workflow_id, status[0], status[1], t.now)

    # ---------------------------------------------------------------- producers (SPEC §4)

    def commit_producer_run(self, run: RunDraft, fence: Fence | None,
                            publishes: Sequence[EventDraft], state: StateUpdate | None, *,
                            quota: int | None = None) -> PublishReport:
        """SPEC §4: publishes, new state and the committed run in one transaction (refused
        with :class:`QuotaExceeded` when it would pass the workflow's storage ``quota``)."""
        with self._run_txn(run, fence, frozenset({S.COMMITTED}), "producer_commit") as t:
            report = self._publish(t, publishes, quota)
            self._state(t, state, None, wake=False)
        return report

    # ---------------------------------------------------------------- consumers (SPEC §5, §6)

    def checkpoint_run(self, run: RunDraft, fence: Fence | None, *,
                       claim: EventClaim | None = None) -> None:
        """Persist a started run (``running``, ``preparing``, or ``prepared`` with its
        reservations) with no other effect."""
        with self._run_txn(run, fence, _CHECKPOINTS, "record_run") as t:
            self._claim(t, claim)

    def record_in_flight(self, run: RunDraft, fence: Fence | None, draft: MutationDraft, *,
                         claim: EventClaim | None = None) -> MutationRecord:
        """SPEC §6 step 2 (and §5.1 on a run's first mutation): the PrepareResult, the
        reservations and the ``in_flight`` attempt, durable before the external call."""
        with self._run_txn(run, fence, frozenset({S.MUTATING}), "in_flight") as t:
            self._claim(t, claim)
            mutation = ledger_records.record_in_flight_txn(t.conn, draft, t.now)
            self._charge(t)
        return mutation

    def settle_mutation(self, run: RunDraft, fence: Fence | None, settle: Settle
                        ) -> MutationRecord:
        """SPEC §6 step 3: the attempt's outcome (``applied`` → the run is ``mutated``;
        ``failed`` → it mutates again or fails) and the run's new status together."""
        if settle.status is LedgerStatus.APPLIED:
            run.suspend_reason = None
        with self._run_txn(run, fence, _AFTER_SETTLE[settle.status],
                           f"settle_{settle.status.value}") as t:
            mutation = self._settle(t, settle)
            self._charge(t)
        return mutation

    def suspend_for_reconcile(self, run: RunDraft, fence: Fence | None, mutation_id: int, *,
                              error: dict[str, Any], next_at: datetime) -> MutationRecord:
        """SPEC §6 step 5: the outcome is uncertain and the connector can be asked again at
        ``next_at``: ledger ``needs_reconcile``, run ``suspended`` (needs reconcile)."""
        run.suspend_reason = SuspendReason.NEEDS_RECONCILE
        settle = Settle(mutation_id, LedgerStatus.NEEDS_RECONCILE, error=error,
                        reconcile_attempted=True, resolved_by="reconcile",
                        next_reconcile_at=next_at)
        with self._run_txn(run, fence, frozenset({S.SUSPENDED}),
                           "settle_needs_reconcile") as t:
            mutation = self._settle(t, settle)
            self._charge(t)
        return mutation

    def suspend_indeterminate(self, run: RunDraft, fence: Fence | None, mutation_id: int, *,
                              error: dict[str, Any], reconciled: bool,
                              workflow_status: tuple[WorkflowStatus, str] | None
                              ) -> MutationRecord:
        """SPEC §6 step 6: nothing can (or could) verify the outcome; ledger
        ``indeterminate``, run ``suspended`` (indeterminate), the workflow needs a person."""
        run.suspend_reason = SuspendReason.INDETERMINATE
        settle = Settle(mutation_id, LedgerStatus.INDETERMINATE, error=error,
                        resolved_by="reconcile" if reconciled else "host",
                        reconcile_attempted=reconciled)
        with self._run_txn(run, fence, frozenset({S.SUSPENDED}),
                           "settle_indeterminate") as t:
            mutation = self._settle(t, settle)
            self._charge(t)
            self._workflow(t, workflow_status)
        return mutation

    def await_approval(self, run: RunDraft, fence: Fence | None, *,
                       claim: EventClaim | None = None) -> None:
        """SPEC §6 step 1: the mutation needs a person's approval; the run is suspended
        before anything is attempted (``run.approval`` holds what will be shown)."""
        run.suspend_reason = SuspendReason.AWAITING_APPROVAL
        with self._run_txn(run, fence, frozenset({S.SUSPENDED}), "record_run") as t:
            self._claim(t, claim)
            self._charge(t)

    def commit_consumer_run(
        self, run: RunDraft, fence: Fence | None, *, publishes: Sequence[EventDraft],
        state: StateUpdate | None, outcome: EventStatus, claim: EventClaim | None = None,
        sleep: Sleep | None = None, quota: int | None = None,
    ) -> PublishReport:
        """SPEC §5.3: publishes, state, reserved events → consumed/skipped, run → committed."""
        with self._run_txn(run, fence, frozenset({S.COMMITTED}), "consumer_commit") as t:
            self._claim(t, claim)
            report = self._publish(t, publishes, quota)
            ev.finish_reservations_txn(t.conn, run.id, outcome, t.now)
            self._state(t, state, sleep, wake=sleep is None)
        return report

    # ---------------------------------------------------------------- failures (SPEC §8)

    def fail_run(self, run: RunDraft, fence: Fence | None, *,
                 claim: EventClaim | None = None,
                 workflow_status: tuple[WorkflowStatus, str] | None = None) -> None:
        """The run failed (``run.failure`` says how); its workflow's new status with it."""
        with self._run_txn(run, fence, frozenset({S.FAILED}), "record_run") as t:
            self._claim(t, claim)
            self._charge(t)
            self._workflow(t, workflow_status)

    # ---------------------------------------------------------------- people (SPEC §6, §12)

    def answer_person(
        self, run: RunDraft, *, expected: RunStatus, actor: str, action: str,
        before: dict[str, Any], after: dict[str, Any], settle: Settle | None = None,
        workflow_status: tuple[WorkflowStatus, str | None] | None = None,
    ) -> None:
        """A person's answer about a run, with its audit record, in one transaction; refused
        if the run is no longer ``expected`` (someone else answered, or it moved on)."""
        with self._run_txn(run, None, _AFTER_ANSWER, "answer", expected=expected) as t:
            if settle is not None:
                self._settle(t, settle)
            if workflow_status is not None:
                self._workflow(t, workflow_status)
            else:
                wf.touch_txn(t.conn, run.workflow_id, t.now)  # a running host re-reads it
            wf.audit_txn(t.conn, actor=actor, action=action, target_type="run",
                         target_id=run.id, before=before, after=after, now=t.now)

    def retry_run(self, run_id: str, *, actor: str, before: dict[str, Any],
                  after: dict[str, Any], reactivate: bool) -> None:
        """A person retries a failed run (SPEC §7.4): the decision and its audit record, and
        the workflow active again if it needed action, in one transaction; refused unless the
        run is still ``failed``. The executor then carries the run on from its last durable
        point."""
        now = self.clock()
        with self.write() as conn:
            current = runs.status_for_update(conn, run_id)
            if current is not S.FAILED:
                raise RunChanged(f"run {run_id} is {_name(current)}; only a failed run can be "
                                 "retried")
            workflow = wf.get(conn, runs.get(conn, run_id).workflow_id)
            if reactivate and workflow.status is WorkflowStatus.NEEDS_ACTION:
                wf.set_status_txn(conn, workflow.id, WorkflowStatus.ACTIVE, None, now)
                after = after | {"workflow": WorkflowStatus.ACTIVE.value}
            runs.request_retry_txn(conn, run_id, now)
            wf.audit_txn(conn, actor=actor, action="run.retry", target_type="run",
                         target_id=run_id, before=before, after=after, now=now)
