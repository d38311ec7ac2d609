"""The stable JSON shapes of workflows, events and runs, shared by the CLI and the API.

Field names are a contract (documented in ``docs/cli.md``): add fields, never rename them.
Each view is a pure function of the store's read models (``keepflow.store.read_models``);
``views.status`` and ``views.inbox`` explain, in words, what runs when and what needs a person.
"""

from __future__ import annotations

from typing import Any

from keepflow.model import EventRecord, MutationRecord
from keepflow.runtime.outcome import RunOutcome
from keepflow.store.read_models import EventDetail, RunDetail, RunSummary, WorkflowSummary


def iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def workflow_view(summary: WorkflowSummary) -> dict[str, Any]:
    wf, version, counts = summary.workflow, summary.version, summary.counts
    manifest = version.manifest if version else {}
    return {
        "id": wf.id,
        "name": wf.name,
        "status": wf.status.value,
        "statusReason": wf.status_reason,
        "version": version.label if version else None,
        "versionId": version.id if version else None,
        "topics": {t: counts.get(t, {"pending": 0, "consumed": 0, "skipped": 0})
                   for t in manifest.get("topics", [])},
        "producers": sorted(manifest.get("producers", {})),
        "consumers": sorted(manifest.get("consumers", {})),
        "createdAt": iso(wf.created_at),
        "updatedAt": iso(wf.updated_at),
    }


def event_view(e: EventRecord, *, with_payload: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "topic": e.topic,
        "messageId": e.message_id,
        "title": e.title,
        "status": e.status.value,
        "attempt": e.attempt,
        "reservedBy": e.reserved_by,
        "createdBy": e.created_by,
        "createdAt": iso(e.created_at),
        "updatedAt": iso(e.updated_at),
    }
    if with_payload:
        out["payload"] = e.payload
    return out


def event_detail(d: EventDetail) -> dict[str, Any]:
    """SPEC §12: every run that reserved it, with the attempt it processed and its outcome."""
    return event_view(d.event) | {"history": d.history, "reservations": d.reservations}


def mutation_view(m: MutationRecord) -> dict[str, Any]:
    return {
        "attempt": m.attempt,
        "status": m.status.value,
        "connection": m.connection,
        "tool": m.tool,
        "description": m.description,
        "idempotencyKey": m.idempotency_key,
        "params": m.params,
        "result": m.result,
        "error": m.error,
        "canReconcile": m.can_reconcile,
        "reconcileAttempts": m.reconcile_attempts,
        "resolvedBy": m.resolved_by,
        "createdAt": iso(m.created_at),
        "updatedAt": iso(m.updated_at),
    }


def run_view(s: RunSummary) -> dict[str, Any]:
    r = s.run
    failure = r.failure or {}
    out: dict[str, Any] = {
        "id": r.id,
        "workflowId": r.workflow_id,
        "versionId": r.version_id,
        "handler": r.handler,
        "kind": r.kind.value,
        "status": r.status.value,
        "suspendReason": r.suspend_reason.value if r.suspend_reason else None,
        "trigger": r.trigger,
        "createdAt": iso(r.created_at),
        "finishedAt": iso(r.finished_at),
        "failureClass": failure.get("class"),
        "failureMessage": failure.get("message"),
        "transitions": s.transitions,
        "mutations": [mutation_view(m) for m in s.mutations],
    }
    if isinstance(s, RunDetail):
        out |= {
            "failure": r.failure,
            "approval": r.approval,
            "prepared": r.prepared,
            "mutationResult": r.mutation_result,
            "reservations": s.reservations,
            "published": s.published,
            "toolCalls": s.tool_calls,
            "logs": s.logs,
        }
    return out


def outcome_view(o: RunOutcome) -> dict[str, Any]:
    """A run's outcome as `trigger`, `retry` and `drain` report it."""
    return {"id": o.run_id, "handler": o.handler, "kind": o.kind.value,
            "status": o.status.value, "mutation": o.mutation,
            "failureClass": (o.failure or {}).get("class"),
            "failureMessage": (o.failure or {}).get("message")}
