"""A person's answers about a blocked run (SPEC §6 user actions, §12), as durable state changes.

Each function checks that the answer is allowed *now*, refuses with one clear sentence
otherwise (nothing changes), and records the new state with its audit entry in one
transaction. Carrying the run on (reconcile, mutate again, next) is the caller's business —
the executor resumes it from this durable state like any other.
"""

from __future__ import annotations

from typing import Any, Literal

from keepflow.errors import Conflict
from keepflow.model import (
    LedgerStatus,
    MutationRecord,
    RunDraft,
    RunRecord,
    RunStatus,
    Settle,
    SuspendReason,
    WorkflowStatus,
)
from keepflow.runtime.ledger import DIDNT_HAPPEN
from keepflow.store.store import Store

Answer = Literal["try_again", "didnt_happen", "skip"]

#: What each answer does, in the words the inbox and the CLI use.
EFFECTS: dict[str, str] = {
    "try_again": "keepflow asks the external system again (with backoff) whether it happened",
    "didnt_happen": "mutate runs again as a new attempt; if it did happen after all, this "
                    "does it twice",
    "skip": "the mutation is left as it is, next runs with {status: 'skipped'} and the "
            "reserved events end skipped",
    "approve": "the mutation runs now, exactly as shown",
    "reject": "the mutation never runs; next runs with {status: 'skipped'} and the reserved "
              "events end skipped",
    "retry": "the run continues from its last durable point with the current script version; "
             "an applied mutation is never repeated",
}


def _snapshot(rec: RunRecord, m: MutationRecord | None) -> dict[str, Any]:
    return {"status": rec.status.value,
            "suspendReason": rec.suspend_reason.value if rec.suspend_reason else None,
            "ledger": m.status.value if m else None}


def _suspended_attempt(store: Store, run_id: str) -> tuple[RunRecord, MutationRecord]:
    rec = store.get_run(run_id)
    muts = store.mutations_of(run_id)
    last = muts[-1] if muts else None
    if (rec.status is not RunStatus.SUSPENDED or last is None or last.status not in
            (LedgerStatus.NEEDS_RECONCILE, LedgerStatus.INDETERMINATE)):
        state = rec.status.value + (f" ({rec.suspend_reason.value})" if rec.suspend_reason
                                    else "")
        raise Conflict(f"run {run_id} is {state}; only a run whose mutation outcome is unknown "
                       "can be answered with try again / it didn't happen / skip")
    return rec, last


def skip_failed(store: Store, run_id: str, actor: str) -> RunRecord:
    """Skip a failed run whose mutation never took effect: next runs with ``skipped`` and its
    reserved events end skipped (so a permanently rejected call does not hold them forever)."""
    rec = store.get_run(run_id)
    muts = store.mutations_of(run_id)
    if rec.status is not RunStatus.FAILED:
        raise Conflict(f"run {run_id} is {rec.status.value}; skip applies to a failed run or "
                       "to one whose mutation outcome is unknown")
    if any(m.status is not LedgerStatus.FAILED for m in muts) or (
            rec.mutation_result or {}).get("status") == "applied":
        raise Conflict(f"run {run_id}'s mutation took effect (or may have); skipping would hide "
                       "it — retry the run instead")
    if rec.prepared is None:
        # Failed in prepare: it reserved nothing and declared no mutation, and `next` needs
        # the PrepareResult it never produced. Its events are still pending for a retry.
        raise Conflict(f"run {run_id} failed in prepare, before it reserved any event or "
                       "declared a mutation: there is nothing to skip; retry it once the "
                       "script is fixed (its events are still pending)")
    run = RunDraft.from_record(rec)
    now = store.clock()
    run.failure, run.finished_at = None, None
    run.mutation_result = {"status": "skipped"}
    run.step(RunStatus.EMITTING, now, note=f"{actor}: skip")
    store.answer_person(
        run, expected=RunStatus.FAILED, actor=actor, action="run.skip",
        before=_snapshot(rec, muts[-1] if muts else None) | {
            "failure": (rec.failure or {}).get("message")},
        after={"status": run.status.value, "effect": EFFECTS["skip"]},
        workflow_status=_unblocked(store, rec))
    return store.get_run(run_id)


def resolve(store: Store, run_id: str, answer: Answer, actor: str) -> RunRecord:
    """Try again / It didn't happen / Skip (SPEC §6)."""
    if answer == "skip" and store.get_run(run_id).status is RunStatus.FAILED:
        return skip_failed(store, run_id, actor)
    rec, m = _suspended_attempt(store, run_id)
    run = RunDraft.from_record(rec)
    now = store.clock()
    who = f"user:{actor[:40]}"
    if answer == "try_again":
        if not m.can_reconcile:
            raise Conflict(f"'{m.description}' cannot be verified by its connector, so trying "
                           "again would ask nobody; answer it didn't happen, or skip")
        run.suspend_reason = SuspendReason.NEEDS_RECONCILE
        run.step(RunStatus.SUSPENDED, now, note=f"{actor}: try again")  # a note
        settle = Settle(m.id, LedgerStatus.NEEDS_RECONCILE, resolved_by=who,
                        next_reconcile_at=now, reset_attempts=True)
    elif answer == "didnt_happen":
        run.suspend_reason = None
        run.step(RunStatus.MUTATING, now, note=f"{actor}: it didn't happen")
        settle = Settle(m.id, LedgerStatus.FAILED, resolved_by=who, error={
            "code": DIDNT_HAPPEN, "message": f"{actor} reported that it did not happen"})
    else:
        run.suspend_reason = None
        run.mutation_result = {"status": "skipped"}
        run.step(RunStatus.EMITTING, now, note=f"{actor}: skip")
        settle = Settle(m.id, LedgerStatus.INDETERMINATE, resolved_by=f"{who} (skipped)")
    store.answer_person(
        run, expected=RunStatus.SUSPENDED, actor=actor, action=f"run.{answer}",
        before=_snapshot(rec, m), after={"status": run.status.value,
                                         "ledger": settle.status.value,
                                         "effect": EFFECTS[answer]},
        settle=settle, workflow_status=_unblocked(store, rec))
    return store.get_run(run_id)


def approve(store: Store, run_id: str, actor: str, *, accept: bool) -> RunRecord:
    """Approve or reject a mutation waiting for approval (SPEC §6 step 1; reject = skip)."""
    rec = store.get_run(run_id)
    approval = rec.approval or {}
    if (rec.status is not RunStatus.SUSPENDED
            or rec.suspend_reason is not SuspendReason.AWAITING_APPROVAL
            or approval.get("status") != "pending"):
        raise Conflict(f"run {run_id} is not waiting for an approval (it is "
                       f"{rec.status.value}); nothing to approve or reject")
    run = RunDraft.from_record(rec)
    now = store.clock()
    run.approval = {**approval, "status": "approved" if accept else "rejected",
                    "by": actor, "at": now.isoformat()}
    run.suspend_reason = None
    if accept:
        run.step(RunStatus.MUTATING, now, note=f"{actor}: approved")
    else:
        run.mutation_result = {"status": "skipped"}
        run.step(RunStatus.EMITTING, now, note=f"{actor}: rejected")
    action = "approve" if accept else "reject"
    store.answer_person(
        run, expected=RunStatus.SUSPENDED, actor=actor, action=f"run.{action}",
        before=_snapshot(rec, None) | {"approval": "pending"},
        after={"status": run.status.value, "approval": run.approval["status"],
               "effect": EFFECTS[action]},
        workflow_status=_unblocked(store, rec))
    return store.get_run(run_id)


def _unblocked(store: Store, rec: RunRecord) -> tuple[WorkflowStatus, str | None] | None:
    """Answering the question that put the workflow in needs action makes it active again."""
    wf = store.get_workflow(rec.workflow_id)
    if wf.status is WorkflowStatus.NEEDS_ACTION:
        return WorkflowStatus.ACTIVE, None
    return None
