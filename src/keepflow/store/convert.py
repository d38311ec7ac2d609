"""Row ↔ record conversion and small helpers shared by the store modules."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import RowMapping

from keepflow.model import (
    EventRecord,
    EventStatus,
    LedgerStatus,
    MutationRecord,
    RunKind,
    RunRecord,
    RunStatus,
    SuspendReason,
    VersionRecord,
    WorkflowRecord,
    WorkflowStatus,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def canonical_json(value: Any) -> str:
    """One spelling per JSON value: sorted keys, no spaces (hashing, messageId derivation)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_json(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def workflow(r: RowMapping) -> WorkflowRecord:
    return WorkflowRecord(
        id=r["id"],
        name=r["name"],
        status=WorkflowStatus(r["status"]),
        status_reason=r["status_reason"],
        current_version_id=r["current_version_id"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


def version(r: RowMapping) -> VersionRecord:
    return VersionRecord(
        id=r["id"],
        workflow_id=r["workflow_id"],
        major=r["major"],
        minor=r["minor"],
        source=r["source"],
        source_sha256=r["source_sha256"],
        manifest=r["manifest"],
        findings=r["findings"],
        created_by=r["created_by"],
        created_at=r["created_at"],
    )


def event(r: RowMapping) -> EventRecord:
    return EventRecord(
        id=r["id"],
        workflow_id=r["workflow_id"],
        topic=r["topic"],
        message_id=r["message_id"],
        title=r["title"],
        payload=r["payload"],
        status=EventStatus(r["status"]),
        reserved_by=r["reserved_by"],
        attempt=r["attempt"],
        created_by=r["created_by"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


def run(r: RowMapping) -> RunRecord:
    return RunRecord(
        id=r["id"],
        workflow_id=r["workflow_id"],
        version_id=r["version_id"],
        handler=r["handler"],
        kind=RunKind(r["kind"]),
        status=RunStatus(r["status"]),
        suspend_reason=SuspendReason(r["suspend_reason"]) if r["suspend_reason"] else None,
        trigger=r["trigger"],
        prepared=r["prepared"],
        mutation_result=r["mutation_result"],
        failure=r["failure"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        finished_at=r["finished_at"],
        approval=r["approval"],
        retry_requested_at=r.get("retry_requested_at"),
    )


def mutation(r: RowMapping) -> MutationRecord:
    return MutationRecord(
        id=r["id"],
        run_id=r["run_id"],
        workflow_id=r["workflow_id"],
        attempt=r["attempt"],
        connection=r["connection"],
        tool=r["tool"],
        params=r["params"],
        idempotency_key=r["idempotency_key"],
        description=r["description"],
        can_reconcile=r["can_reconcile"],
        status=LedgerStatus(r["status"]),
        result=r["result"],
        error=r["error"],
        reconcile_attempts=r["reconcile_attempts"],
        resolved_by=r["resolved_by"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )
