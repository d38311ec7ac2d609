"""The "action needed" inbox (SPEC §12): every blocked thing, what is blocked, why, exactly what
to check or do, and what happens after each choice — in words built from event titles and the
tool's own description of the mutation."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from keepflow.model import (
    EventRecord,
    LedgerStatus,
    MutationRecord,
    RunStatus,
    SuspendReason,
    WorkflowRecord,
    WorkflowStatus,
)
from keepflow.policies import PolicyBook
from keepflow.runtime.actions import EFFECTS
from keepflow.store.read_models import BlockedRun, InboxFacts


def _about(titles: list[str]) -> str:
    if not titles:
        return "this run"
    quoted = ", ".join(f'"{t}"' for t in titles[:3])
    return quoted + (f" and {len(titles) - 3} more" if len(titles) > 3 else "")


def _choice(answer: str, command: str, warning: str | None = None) -> dict[str, Any]:
    return {"answer": answer, "command": command, "effect": EFFECTS[answer],
            **({"warning": warning} if warning else {})}


def _suspended(wf: WorkflowRecord, b: BlockedRun, policies: PolicyBook
               ) -> dict[str, Any] | None:
    run, muts = b.run, b.mutations
    last: MutationRecord | None = muts[-1] if muts else None
    about = _about(b.titles)
    blocked = f"workflow '{wf.name}': nothing else of it runs until this is answered"
    if run.suspend_reason is SuspendReason.AWAITING_APPROVAL:
        m = (run.approval or {}).get("mutation", {})
        return {
            "kind": "approval", "title": f"Approve {m.get('description')} for {about}?",
            "blocked": blocked,
            "why": f"the policy requires approval of {m.get('connection')}.{m.get('tool')}",
            "check": f"the call it would make: {m.get('description')} with parameters "
                     f"{_short(m.get('params'))}",
            "choices": [_choice("approve", f"keepflow approve {run.id}"),
                        _choice("reject", f"keepflow reject {run.id}")],
        }
    if last is None:
        return None
    key = last.idempotency_key
    error = (last.error or {}).get("message", "no answer")
    if last.status is LedgerStatus.NEEDS_RECONCILE:
        policy = policies.effective(wf.name, last.connection).reconcile
        return {
            "kind": "reconciling",
            "title": f"Checking whether {last.description} for {about} happened",
            "blocked": blocked,
            "why": f"the call's outcome is unknown ({error}); keepflow is asking the external "
                   f"system (attempt {last.reconcile_attempts} of {policy.max_attempts}); no "
                   "answer is needed unless you know better",
            "check": f"in the target of {last.description}, look for idempotency key {key}",
            "choices": [_choice("didnt_happen", f"keepflow resolve {run.id} --didnt-happen",
                                "if it did happen, it happens twice"),
                        _choice("skip", f"keepflow resolve {run.id} --skip")],
        }
    if last.status is LedgerStatus.INDETERMINATE:
        verify = ("the connector can check again" if last.can_reconcile
                  else "the connector cannot verify it by itself")
        choices = []
        if last.can_reconcile:
            choices.append(_choice("try_again", f"keepflow resolve {run.id} --try-again"))
        choices += [_choice("didnt_happen", f"keepflow resolve {run.id} --didnt-happen",
                            "if it did happen, it happens twice"),
                    _choice("skip", f"keepflow resolve {run.id} --skip")]
        return {
            "kind": "unknown_outcome",
            "title": f"Did {last.description} for {about} happen?",
            "blocked": blocked,
            "why": f"the outcome is unknown: {error}; {verify}",
            "check": f"in the target of {last.description}, look for what it would have done "
                     f"for {about} (idempotency key {key}, sent "
                     f"{last.created_at.isoformat(timespec='seconds')})",
            "choices": choices,
        }
    return None


def _standing(status: WorkflowStatus) -> str:
    """A workflow's status as the end of a sentence ("workflow 'x' ...")."""
    return {WorkflowStatus.NEEDS_ACTION: "waits for your answer: nothing else of it runs",
            WorkflowStatus.PAUSED: "is paused"}.get(status, f"is {status.value}")


def _reconnect(wf: WorkflowRecord, b: BlockedRun, connection: str) -> dict[str, Any]:
    """An auth failure: the credentials of ``connection`` were refused. Replacing its secret
    retries the run by itself (docs/connectors.md#configuring-connections)."""
    run, failure = b.run, b.run.failure or {}
    return {
        "kind": "reconnect", "connection": connection,
        "title": f"Reconnect {connection}: its credentials were refused"
                 + (f" ({run.handler} on {_about(b.titles)})" if b.titles else
                    f" ({run.handler})"),
        "blocked": f"workflow '{wf.name}' {_standing(wf.status)}",
        "why": f"{failure.get('phase')}: {failure.get('message')}",
        "check": f"that the secret of connection '{connection}' is current and has the access "
                 f"the script needs (`keepflow connection check {connection}`)",
        "choices": [
            {"answer": "reconnect",
             "command": f"keepflow connection secret {connection} <setting>",
             "effect": "stores the new secret; this run is then retried by itself"},
            _choice("retry", f"keepflow retry {run.id}"),
        ],
    }


def _failed(wf: WorkflowRecord, b: BlockedRun) -> dict[str, Any]:
    run = b.run
    failure = run.failure or {}
    connection = (failure.get("details") or {}).get("connection")
    if failure.get("class") == "auth" and isinstance(connection, str):
        return _reconnect(wf, b, connection)
    titles = b.titles
    held = titles if b.holds_events else []
    choices = [_choice("retry", f"keepflow retry {run.id}")]
    if held and all(m.status is LedgerStatus.FAILED for m in b.mutations):
        choices.append(_choice("skip", f"keepflow resolve {run.id} --skip"))
    return {
        "kind": "failed_run",
        "title": f"{run.handler} failed ({failure.get('class')}) on {_about(titles)}"
        if titles else f"{run.handler} failed ({failure.get('class')})",
        "blocked": (f"workflow '{wf.name}' {_standing(wf.status)}"
                    + (f"; {len(held)} event(s) stay reserved by this run" if held else "")),
        "why": f"{failure.get('phase')}: {failure.get('message')}",
        "check": (wf.status_reason or "").split(" — what to do: ")[-1] or
        "see `keepflow run show " + run.id + "`",
        "choices": choices,
    }


def _stale(wf: WorkflowRecord, found: list[EventRecord], days: float) -> list[dict[str, Any]]:
    return [{
        "kind": "stale_event", "title": f'"{e.title}" has waited since '
                                        f"{e.created_at.date().isoformat()}",
        "blocked": f"event {e.topic}/{e.message_id} of workflow '{wf.name}'",
        "why": f"it has been pending for more than {days:g} days: its consumer never took it",
        "check": "whether the consumer should handle it (then fix or resume the workflow) or "
                 "it can be dropped",
        "choices": [{"answer": "skip", "command":
                     f"keepflow event skip {wf.name} {e.topic} {e.message_id}",
                     "effect": "no run will ever reserve it"}],
        "event": {"topic": e.topic, "messageId": e.message_id},
    } for e in found]


def _short(value: Any, limit: int = 200) -> str:
    import json

    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + "…"


def stale_days(policies: PolicyBook, wf: WorkflowRecord) -> float:
    return policies.for_workflow(wf.name).consumer.stale_event_days


def inbox(facts: list[InboxFacts], policies: PolicyBook) -> list[dict[str, Any]]:
    """Every action-needed item of ``facts`` (see ``Store.inbox_facts``)."""
    items: list[dict[str, Any]] = []
    for f in facts:
        wf = f.workflow
        for b in f.blocked:
            item = (_suspended(wf, b, policies) if b.run.status is RunStatus.SUSPENDED
                    else _failed(wf, b) if b.holds_events or b.latest_of_handler else None)
            if item:
                items.append({"workflow": wf.name, "run": b.run.id, **item})
        items += [{"workflow": wf.name, "run": None, **s}
                  for s in _stale(wf, f.stale, stale_days(policies, wf))]
    return items


def stale_cutoff(policies: PolicyBook, now: datetime) -> Callable[[WorkflowRecord], datetime]:
    """When an event of each workflow starts to count as stale (its policy's days ago)."""
    return lambda wf: now - timedelta(days=stale_days(policies, wf))
