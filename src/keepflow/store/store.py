"""The Store: the only API through which durable state changes.

Every public method that writes is named after the transition it performs and is **one
transaction** (SPEC §4, §5.1, §5.3, §6): e.g. :meth:`commit_consumer_run` writes the publishes,
the new state, the consumed events and the committed run together or not at all. Every commit
of a run's work checks the workflow's fence (SPEC §13).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from keepflow import faults
from keepflow.errors import Conflict
from keepflow.model import (
    UNFINISHED,
    EventDraft,
    EventRecord,
    EventStatus,
    Fence,
    LedgerStatus,
    MutationDraft,
    MutationRecord,
    PublishReport,
    Reservation,
    RunDraft,
    RunRecord,
    RunStatus,
    StateUpdate,
    VersionRecord,
    WorkflowRecord,
    WorkflowStatus,
)
from keepflow.store import events as ev
from keepflow.store import ledger, runs
from keepflow.store import workflows as wf
from keepflow.store.bookkeeping import SchedulerBookkeeping
from keepflow.store.engine import make_engine, migrate
from keepflow.store.notifications import NotificationStore
from keepflow.store.operations import PeopleOperations
from keepflow.store.rows import utcnow

LEASE_TTL = timedelta(minutes=5)


@dataclass(frozen=True)
class Sleep:
    """SPEC §7.3: the consumer sleeps until ``until`` or an event newer than ``watermark``."""

    until: datetime
    watermark: int


@dataclass(frozen=True)
class Settle:
    """A ledger attempt's new status, written with the run (SPEC §6)."""

    mutation_id: int
    status: LedgerStatus
    result: Any = None
    error: dict[str, Any] | None = None
    reconcile_attempted: bool = False
    resolved_by: str = "host"
    next_reconcile_at: datetime | None = None
    reset_attempts: bool = False


class Store(PeopleOperations, SchedulerBookkeeping, NotificationStore):
    def __init__(self, url: str, *, clock: Callable[[], datetime] = utcnow,
                 auto_migrate: bool = True) -> None:
        self.url = url
        self.clock = clock
        self.engine: Engine = make_engine(url)
        if self.engine.dialect.name == "sqlite":
            self._write_lock = threading.Lock()
        if auto_migrate:
            with self._translate():
                migrate(self.engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ leases (SPEC §13)

    def acquire_lease(self, workflow_id: str, owner: str, *, stale_owner: str | None = None
                      ) -> Fence | None:
        with self.write() as conn:
            return wf.acquire_lease_txn(conn, workflow_id, owner, LEASE_TTL, self.clock(),
                                        stale_owner=stale_owner)

    def lease_owner(self, workflow_id: str) -> str | None:
        with self.read() as conn:
            return wf.lease_owner(conn, workflow_id)

    def release_lease(self, fence: Fence) -> None:
        with self.write() as conn:
            wf.release_lease_txn(conn, fence)

    # ------------------------------------------------------------------ run commits

    def _commit(
        self, run: RunDraft, fence: Fence | None, *,
        reserve: Sequence[Reservation] | None = None, subscribed: Sequence[str] = (),
        in_flight: MutationDraft | None = None, settle: Settle | None = None,
        publishes: Sequence[EventDraft] = (), state: StateUpdate | None = None,
        finish_events: EventStatus | None = None, sleep: Sleep | None = None,
        wake: bool = False, workflow_status: tuple[WorkflowStatus, str] | None = None,
        quota: int | None = None, point: str,
    ) -> tuple[PublishReport, MutationRecord | None]:
        now = self.clock()
        report = PublishReport()
        mutation: MutationRecord | None = None
        with self.write() as conn:
            if fence is not None:
                wf.check_fence_txn(conn, fence, LEASE_TTL, now)
            runs.flush_run_txn(conn, run, now)
            if reserve:
                ev.reserve_txn(conn, run.workflow_id, run.id, reserve, subscribed, now)
            if settle is not None:
                mutation = ledger.settle_txn(
                    conn, settle.mutation_id, settle.status, now, result=settle.result,
                    error=settle.error, resolved_by=settle.resolved_by,
                    reconcile_attempted=settle.reconcile_attempted,
                    next_reconcile_at=settle.next_reconcile_at,
                    reset_attempts=settle.reset_attempts)
            if in_flight is not None:
                mutation = ledger.record_in_flight_txn(conn, in_flight, now)
            charge = run.stored_bytes
            if publishes:
                report = ev.publish_txn(conn, run.workflow_id, run.id, publishes, now)
                inserted = set(report.inserted)
                charge += sum(d.size for d in publishes if f"{d.topic}/{d.message_id}" in inserted)
            if charge:
                # docs/security.md#limits: refused past the quota, the whole commit rolls back.
                wf.charge_storage_txn(conn, run.workflow_id, charge, quota)
            if finish_events is not None:
                ev.finish_reservations_txn(conn, run.id, finish_events, now)
            # The handler's state and its sleep (SPEC §7.3) in one statement.
            own: dict[str, Any] = {}
            if state is not None:
                own_state = runs.state_values(state, run.id, now)
                if state.handler == run.handler:
                    own.update(own_state)
                else:
                    runs.update_state_row_txn(conn, run.workflow_id, state.handler, own_state,
                                              now)
            if sleep is not None:
                own.update(runs.sleep_values(sleep.until, sleep.watermark))
            elif wake:
                own.update(runs.sleep_values(None, None))
            if own:
                runs.update_state_row_txn(conn, run.workflow_id, run.handler, own, now)
            if workflow_status is not None:
                wf.set_status_txn(conn, run.workflow_id, workflow_status[0], workflow_status[1],
                                  now)
            faults.point(f"{point}.mid_commit")
        run.mark_flushed()
        faults.point(f"{point}.after_commit")
        return report, mutation

    def commit_producer_run(self, run: RunDraft, fence: Fence | None,
                            publishes: Sequence[EventDraft], state: StateUpdate | None, *,
                            quota: int | None = None) -> PublishReport:
        """SPEC §4: publishes, new state and the run record in one transaction (refused with
        :class:`QuotaExceeded` when it would pass the workflow's storage ``quota``)."""
        return self._commit(run, fence, publishes=publishes, state=state, quota=quota,
                            point="producer_commit")[0]

    def record_in_flight(self, run: RunDraft, fence: Fence | None, draft: MutationDraft, *,
                         reserve: Sequence[Reservation] | None = None,
                         subscribed: Sequence[str] = ()) -> MutationRecord:
        """SPEC §6 step 2 (and §5.1 on a run's first mutation): the PrepareResult, the
        reservations and the ``in_flight`` attempt, durable before the external call."""
        mutation = self._commit(run, fence, reserve=reserve, subscribed=subscribed,
                                in_flight=draft, point="in_flight")[1]
        assert mutation is not None
        return mutation

    def settle_mutation(self, run: RunDraft, fence: Fence | None, settle: Settle, *,
                        workflow_status: tuple[WorkflowStatus, str] | None = None
                        ) -> MutationRecord:
        """SPEC §6 steps 3–6: the attempt's outcome and the run's new status together."""
        mutation = self._commit(run, fence, settle=settle, workflow_status=workflow_status,
                                point=f"settle_{settle.status.value}")[1]
        assert mutation is not None
        return mutation

    def commit_consumer_run(
        self, run: RunDraft, fence: Fence | None, *, publishes: Sequence[EventDraft],
        state: StateUpdate | None, outcome: EventStatus,
        reserve: Sequence[Reservation] | None = None, subscribed: Sequence[str] = (),
        sleep: Sleep | None = None, quota: int | None = None,
    ) -> PublishReport:
        """SPEC §5.3: publishes, state, reserved events → consumed/skipped, run → committed."""
        return self._commit(
            run, fence, reserve=reserve, subscribed=subscribed, publishes=publishes,
            state=state, finish_events=outcome, sleep=sleep, wake=sleep is None, quota=quota,
            point="consumer_commit")[0]

    def record_user_action(
        self, run: RunDraft, *, expected: RunStatus, actor: str, action: str,
        before: dict[str, Any], after: dict[str, Any], settle: Settle | None = None,
        workflow_status: tuple[WorkflowStatus, str | None] | None = None,
    ) -> None:
        """A person's answer about a run (SPEC §6, §12), with its audit record, in one
        transaction; refused if the run changed since the person looked at it."""
        now = self.clock()
        with self.write() as conn:
            current = runs.status_for_update(conn, run.id)
            if current is not expected:
                raise Conflict(f"run {run.id} is now {current.value if current else 'gone'}; "
                               "look at it again before answering")
            runs.flush_run_txn(conn, run, now)
            if settle is not None:
                ledger.settle_txn(conn, settle.mutation_id, settle.status, now,
                                  result=settle.result, error=settle.error,
                                  resolved_by=settle.resolved_by,
                                  next_reconcile_at=settle.next_reconcile_at,
                                  reset_attempts=settle.reset_attempts)
            if workflow_status is not None:
                wf.set_status_txn(conn, run.workflow_id, workflow_status[0], workflow_status[1],
                                  now)
            else:
                wf.touch_txn(conn, run.workflow_id, now)  # a running host re-reads it
            wf.audit_txn(conn, actor=actor, action=action, target_type="run", target_id=run.id,
                         before=before, after=after, now=now)
        run.mark_flushed()

    def record_run(self, run: RunDraft, fence: Fence | None, *,
                   reserve: Sequence[Reservation] | None = None, subscribed: Sequence[str] = (),
                   workflow_status: tuple[WorkflowStatus, str] | None = None) -> None:
        """Persist a run at a point with no other effect (failure, suspension, prepared)."""
        self._commit(run, fence, reserve=reserve, subscribed=subscribed,
                     workflow_status=workflow_status, point="record_run")

    # ------------------------------------------------------------------ reads for the executor

    def load_state(self, workflow_id: str, handler: str) -> tuple[bool, Any]:
        with self.read() as conn:
            return runs.load_state(conn, workflow_id, handler)

    def peek(self, workflow_id: str, topic: str, limit: int) -> list[EventRecord]:
        with self.read() as conn:
            return ev.peek(conn, workflow_id, topic, limit)

    def events_by_ids(self, workflow_id: str, topic: str, ids: Sequence[str]
                      ) -> dict[str, EventRecord]:
        with self.read() as conn:
            return ev.by_message_ids(conn, workflow_id, topic, ids)

    def check_reservations(self, workflow_id: str, run_id: str, wanted: Sequence[Reservation],
                           subscribed: Sequence[str]) -> list[EventRecord]:
        with self.read() as conn:
            return ev.check_reservations(conn, workflow_id, run_id, wanted, subscribed)

    def consumer_inputs(self, workflow_id: str, handler: str) -> tuple[int, bool, Any]:
        """What a consumer run reads before prepare, in one read transaction: the wake-up
        watermark (SPEC §7.3, see :func:`events.newest_id`) and its (has_state, state)."""
        with self.read() as conn:
            return (ev.newest_id(conn), *runs.load_state(conn, workflow_id, handler))

    def existing_events(self, workflow_id: str, drafts: Sequence[EventDraft]
                        ) -> dict[tuple[str, str], str]:
        """(topic, messageId) → payload hash of the drafts that already exist."""
        out: dict[tuple[str, str], str] = {}
        with self.read() as conn:
            by_topic: dict[str, list[str]] = {}
            for d in drafts:
                by_topic.setdefault(d.topic, []).append(d.message_id)
            for topic, ids in by_topic.items():
                for mid, sha in ev.payload_hashes(conn, workflow_id, topic, ids).items():
                    out[(topic, mid)] = sha
        return out

    def get_run(self, run_id: str) -> RunRecord:
        with self.read() as conn:
            return runs.get(conn, run_id)

    def get_workflow(self, name_or_id: str) -> WorkflowRecord:
        with self.read() as conn:
            return wf.get(conn, name_or_id)

    def get_version(self, version_id: str) -> VersionRecord:
        with self.read() as conn:
            return wf.version(conn, version_id)

    def reserved_titles(self, run_id: str) -> list[str]:
        with self.read() as conn:
            return ev.reserved_titles(conn, run_id)

    def active_runs(self, workflow_id: str) -> list[tuple[str, str, str]]:
        with self.read() as conn:
            return runs.active_runs(conn, workflow_id)

    def unfinished_runs(self) -> list[RunRecord]:
        with self.read() as conn:
            return [runs.get(conn, i) for i in runs.runs_with_status(conn, UNFINISHED)]

    def mutations_of(self, run_id: str) -> list[MutationRecord]:
        with self.read() as conn:
            return ledger.for_run(conn, run_id)

    def mutations_with_status(self, status: LedgerStatus) -> list[MutationRecord]:
        with self.read() as conn:
            return ledger.with_status(conn, status)
