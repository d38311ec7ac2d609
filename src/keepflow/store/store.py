"""The Store: the only API through which durable state changes.

Every public method that writes is named after the transition it performs and is **one
transaction** (SPEC §4, §5.1, §5.3, §6). The run transitions — with their compare-and-set on
the run's and the ledger's status, and the fence check (SPEC §13) — live in
:mod:`keepflow.store.transitions`; people's operations in :mod:`keepflow.store.operations`;
the scheduler's bookkeeping and notifications in their own modules.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from keepflow.model import (
    LEASE_TTL,
    UNFINISHED,
    EventDraft,
    EventRecord,
    Fence,
    LedgerStatus,
    MutationRecord,
    Reservation,
    RunRecord,
    VersionRecord,
    WorkflowRecord,
)
from keepflow.store import events as ev
from keepflow.store import ledger_records, runs
from keepflow.store import workflows as wf
from keepflow.store.bookkeeping import SchedulerBookkeeping
from keepflow.store.convert import utcnow
from keepflow.store.database import make_engine, migrate
from keepflow.store.notification_records import NotificationStore
from keepflow.store.operations import PeopleOperations
from keepflow.store.read_models import ReadModels
from keepflow.store.transitions import RunTransitions


class Store(RunTransitions, ReadModels, PeopleOperations, SchedulerBookkeeping, NotificationStore):
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
            ids = set(runs.runs_with_status(conn, UNFINISHED)) | set(runs.retries_requested(conn))
            return [runs.get(conn, i) for i in sorted(ids)]

    def mutations_of(self, run_id: str) -> list[MutationRecord]:
        with self.read() as conn:
            return ledger_records.for_run(conn, run_id)

    def mutations_with_status(self, status: LedgerStatus) -> list[MutationRecord]:
        with self.read() as conn:
            return ledger_records.with_status(conn, status)
