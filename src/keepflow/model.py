"""The states of SPEC, named exactly as SPEC names them, and the records the store returns.

Nothing here does I/O; the store (``keepflow.store``) reads and writes these records, the
runtime decides transitions, the CLI and UI render them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

#: How long a workflow's lease lasts without renewal (SPEC §13).
LEASE_TTL = timedelta(minutes=5)


class WorkflowStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    NEEDS_ACTION = "needs_action"
    FAILED = "failed"
    DISABLED = "disabled"


class EventStatus(StrEnum):
    """SPEC §3."""

    PENDING = "pending"
    CONSUMED = "consumed"
    SKIPPED = "skipped"


class RunKind(StrEnum):
    PRODUCER = "producer"
    CONSUMER = "consumer"


class RunStatus(StrEnum):
    """SPEC §5.4, plus ``running`` for producers (SPEC §4: they have no phases)."""

    PENDING = "pending"
    RUNNING = "running"
    PREPARING = "preparing"
    PREPARED = "prepared"
    MUTATING = "mutating"
    MUTATED = "mutated"
    EMITTING = "emitting"
    COMMITTED = "committed"
    SUSPENDED = "suspended"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (RunStatus.COMMITTED, RunStatus.FAILED)


#: Statuses a run may be in when the host starts and must resume (SPEC §5.5).
UNFINISHED = (
    RunStatus.RUNNING,
    RunStatus.PREPARING,
    RunStatus.PREPARED,
    RunStatus.MUTATING,
    RunStatus.MUTATED,
    RunStatus.EMITTING,
)

#: Allowed run transitions (SPEC §5.4). Producers: pending → running → committed | failed.
RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset({RunStatus.RUNNING, RunStatus.PREPARING, RunStatus.FAILED}),
    RunStatus.RUNNING: frozenset({RunStatus.COMMITTED, RunStatus.FAILED}),
    RunStatus.PREPARING: frozenset({RunStatus.PREPARED, RunStatus.FAILED}),
    RunStatus.PREPARED: frozenset({RunStatus.MUTATING, RunStatus.EMITTING, RunStatus.FAILED}),
    RunStatus.MUTATING: frozenset(
        {RunStatus.MUTATED, RunStatus.SUSPENDED, RunStatus.FAILED, RunStatus.MUTATING}
    ),
    RunStatus.MUTATED: frozenset({RunStatus.EMITTING, RunStatus.FAILED}),
    RunStatus.EMITTING: frozenset({RunStatus.COMMITTED, RunStatus.FAILED}),
    RunStatus.SUSPENDED: frozenset(
        {RunStatus.MUTATED, RunStatus.EMITTING, RunStatus.MUTATING, RunStatus.FAILED}
    ),
    RunStatus.COMMITTED: frozenset(),
    # A failed run can be retried from its last durable point (SPEC §7.4, issue: user Retry).
    RunStatus.FAILED: frozenset(
        {RunStatus.PREPARING, RunStatus.MUTATING, RunStatus.MUTATED, RunStatus.EMITTING}
    ),
}


class SuspendReason(StrEnum):
    NEEDS_RECONCILE = "needs_reconcile"
    INDETERMINATE = "indeterminate"
    AWAITING_APPROVAL = "awaiting_approval"


class LedgerStatus(StrEnum):
    """SPEC §6."""

    IN_FLIGHT = "in_flight"
    APPLIED = "applied"
    FAILED = "failed"
    NEEDS_RECONCILE = "needs_reconcile"
    INDETERMINATE = "indeterminate"


class Phase(StrEnum):
    PRODUCER = "producer"
    PREPARE = "prepare"
    MUTATE = "mutate"
    NEXT = "next"


@dataclass(frozen=True)
class WorkflowRecord:
    id: str
    name: str
    status: WorkflowStatus
    status_reason: str | None
    current_version_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class VersionRecord:
    id: str
    workflow_id: str
    major: int
    minor: int
    source: str
    source_sha256: str
    manifest: dict[str, Any]
    findings: list[dict[str, Any]]
    created_by: str
    created_at: datetime

    @property
    def label(self) -> str:
        return f"{self.major}.{self.minor}"


@dataclass(frozen=True)
class EventRecord:
    id: int
    workflow_id: str
    topic: str
    message_id: str
    title: str
    payload: Any
    status: EventStatus
    reserved_by: str | None
    attempt: int
    created_by: str | None
    created_at: datetime
    updated_at: datetime

    def script_view(self) -> dict[str, Any]:
        """The fields scripts may see (SPEC §3)."""
        return {
            "messageId": self.message_id,
            "title": self.title,
            "payload": self.payload,
            "topic": self.topic,
            "createdAt": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class RunRecord:
    id: str
    workflow_id: str
    version_id: str
    handler: str
    kind: RunKind
    status: RunStatus
    suspend_reason: SuspendReason | None
    trigger: str
    prepared: Any
    mutation_result: Any
    failure: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    approval: dict[str, Any] | None = None
    #: A person asked to retry this failed run; the host has not carried it on yet.
    retry_requested_at: datetime | None = None


@dataclass(frozen=True)
class MutationRecord:
    id: int
    run_id: str
    workflow_id: str
    attempt: int
    connection: str
    tool: str
    params: Any
    idempotency_key: str
    description: str
    can_reconcile: bool
    status: LedgerStatus
    result: Any
    error: dict[str, Any] | None
    reconcile_attempts: int
    resolved_by: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Transition:
    from_status: RunStatus | None
    to_status: RunStatus
    at: datetime
    note: str | None = None


@dataclass
class ToolCallRecord:
    seq: int
    phase: Phase
    target: str  # "tool" | "peek" | "getByIds"
    connection: str | None
    tool: str | None
    kind: str | None
    params: Any
    ok: bool
    result: Any = None
    error: dict[str, Any] | None = None
    started_at: datetime | None = None
    duration_ms: float = 0.0


@dataclass
class LogRecord:
    seq: int
    phase: Phase | None
    level: str
    message: str
    at: datetime


@dataclass
class EventDraft:
    """An event a run published; committed with the run (SPEC §4, §5.3)."""

    topic: str
    message_id: str
    title: str
    payload: Any
    payload_sha256: str
    #: Bytes the event makes the store keep: payload JSON, title and messageId (UTF-8).
    size: int = 0


@dataclass
class PublishReport:
    inserted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)


@dataclass
class RunDraft:
    """A run as the executor builds it between durable points.

    The runtime records the path it takes (:meth:`step`), the tool calls and the logs in
    memory; the store's transition owner (``keepflow.store.transitions``) checks that path
    against :data:`RUN_TRANSITIONS` and against the status the store holds (compare-and-set
    on ``durable_status``), and writes it with the next durable commit — each step with its own
    timestamp, so the durable points are exactly those of SPEC §5.5 and the run page still
    shows every transition (SPEC §5.4).
    """

    id: str
    workflow_id: str
    version_id: str
    handler: str
    kind: RunKind
    trigger: str
    status: RunStatus
    created_at: datetime
    suspend_reason: SuspendReason | None = None
    prepared: Any = None
    mutation_result: Any = None
    failure: dict[str, Any] | None = None
    finished_at: datetime | None = None
    approval: dict[str, Any] | None = None
    #: The status the store holds for this run (None: never written). Every commit is a
    #: compare-and-set on it.
    durable_status: RunStatus | None = None
    transitions: list[Transition] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    logs: list[LogRecord] = field(default_factory=list)
    #: Bytes of logs, tool calls, state and PrepareResult not yet charged to the workflow's
    #: storage (published events are charged by the store, which knows which are new).
    stored_bytes: int = 0

    @classmethod
    def from_record(cls, rec: RunRecord, *, version_id: str | None = None) -> RunDraft:
        """A stored run, to be carried on from its last durable point."""
        return cls(
            id=rec.id, workflow_id=rec.workflow_id, version_id=version_id or rec.version_id,
            handler=rec.handler, kind=rec.kind, trigger=rec.trigger, status=rec.status,
            created_at=rec.created_at, suspend_reason=rec.suspend_reason,
            prepared=rec.prepared, mutation_result=rec.mutation_result, failure=rec.failure,
            approval=rec.approval, finished_at=rec.finished_at, durable_status=rec.status)

    @property
    def persisted(self) -> bool:
        return self.durable_status is not None

    def step(self, to: RunStatus, at: datetime, note: str | None = None) -> None:
        """Record ``status → to`` on the run's path (a note when ``to`` is the same status).
        The store refuses the commit if the path is not legal (SPEC §5.4)."""
        self.transitions.append(Transition(self.status, to, at, note))
        self.status = to
        self.finished_at = at if to.finished else None

    def rewind(self, keep: int = 0) -> None:
        """Forget the path not yet written after its first ``keep`` steps."""
        if len(self.transitions) > keep:
            self.status = self.transitions[keep].from_status or self.status
            del self.transitions[keep:]
            if not self.status.finished:
                self.finished_at = None

    def mark_flushed(self) -> None:
        self.durable_status = self.status
        self.transitions.clear()
        self.tool_calls.clear()
        self.logs.clear()
        self.stored_bytes = 0


@dataclass(frozen=True)
class MutationDraft:
    """A declared mutation about to be attempted (SPEC §6)."""

    run_id: str
    workflow_id: str
    attempt: int
    connection: str
    connector_type: str
    tool: str
    params: Any
    idempotency_key: str
    description: str
    can_reconcile: bool


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


@dataclass(frozen=True)
class Sleep:
    """SPEC §7.3: the consumer sleeps until ``until`` or an event newer than ``watermark``."""

    until: datetime
    watermark: int


@dataclass(frozen=True)
class Fence:
    """Proof that this host holds a workflow's lease (SPEC §13)."""

    workflow_id: str
    owner: str
    token: int


@dataclass(frozen=True)
class Reservation:
    topic: str
    message_ids: tuple[str, ...]


@dataclass(frozen=True)
class EventClaim:
    """What a run's PrepareResult reserves (SPEC §5.1), written with its first durable point:
    the reservations, checked against the topics the consumer subscribes to."""

    reservations: tuple[Reservation, ...]
    subscribed: tuple[str, ...]


@dataclass(frozen=True)
class StateUpdate:
    """New handler state; ``None`` means the handler returned ``undefined`` (keep the old)."""

    handler: str
    value: Any


class NotificationKind(StrEnum):
    """SPEC §12 "Notifications": the three problems a person is told about."""

    NEEDS_ACTION = "needs_action"
    STALE_EVENTS = "stale_events"
    REPEATED_FAILURES = "repeated_failures"


class WebhookStatus(StrEnum):
    NONE = "none"  # no webhook_url in the workflow's policy when it opened
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up after ``webhook_max_attempts``


@dataclass(frozen=True)
class NotificationRecord:
    """One problem, open while it lasts (SPEC §12); ``workflow`` is the workflow's name."""

    id: int
    kind: NotificationKind
    workflow_id: str
    workflow: str
    key: str
    title: str
    body: str
    status: str  # open | resolved
    created_at: datetime
    resolved_at: datetime | None
    webhook_status: WebhookStatus
    webhook_attempts: int
    webhook_next_at: datetime | None
    webhook_error: str | None
