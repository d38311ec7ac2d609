"""A person's answers (SPEC §6 user actions, ``runtime/actions.py``; retry, SPEC §7.4) against an
in-memory SQLite store: each one performs its transition and writes its audit row in one
transaction, and from a wrong state it is refused and changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from keepflow.clock import FakeClock
from keepflow.connectors.base import ReconcileOutcome
from keepflow.errors import Conflict, PermanentError, RunChanged, TransientError, UncertainOutcome
from keepflow.model import (
    LedgerStatus,
    RunStatus,
    SuspendReason,
    WorkflowStatus,
)
from keepflow.policies import ApprovalPolicy, Policy, ReconcilePolicy
from keepflow.runtime import actions
from keepflow.runtime.ledger import DIDNT_HAPPEN, failure_of
from keepflow.store.store import Store
from tests.support.ledger_world import Scripted, World, answer, everything, world

L = LedgerStatus
S = RunStatus


# ---------------------------------------------------------------- runs in each state


def indeterminate(store: Store, clock: FakeClock, *, reconcilable: bool = False
                  ) -> tuple[World, str]:
    """Suspended, outcome unknown, the workflow needs action."""
    w = world(store, clock)
    conn = Scripted(does=UncertainOutcome("timeout"), reconcilable=reconcilable,
                    answers=[TransientError("down")] * 20)
    if reconcilable:  # past the budget: indeterminate although the connector could verify
        w.policy = Policy(reconcile=ReconcilePolicy(max_attempts=1))
    scope, _ = w.perform(conn)
    assert store.get_run(scope.run.id).suspend_reason is SuspendReason.INDETERMINATE
    return w, scope.run.id


def needs_reconcile(store: Store, clock: FakeClock) -> tuple[World, str]:
    w = world(store, clock)
    scope, _ = w.perform(Scripted(does=UncertainOutcome("timeout"),
                                  answers=[answer(ReconcileOutcome.RETRY)]))
    assert store.get_run(scope.run.id).suspend_reason is SuspendReason.NEEDS_RECONCILE
    return w, scope.run.id


def awaiting_approval(store: Store, clock: FakeClock) -> tuple[World, str]:
    w = world(store, clock, Policy(approvals=ApprovalPolicy(require=("api.post",))))
    scope, _ = w.perform(Scripted(does={"id": 1}))
    return w, scope.run.id


def failed(store: Store, clock: FakeClock, *, applied: bool = False) -> tuple[World, str]:
    """A failed run: its mutation was refused for good (or, ``applied``, it happened and
    next failed after it)."""
    w = world(store, clock)
    scope, _ = w.perform(Scripted(does={"id": 1} if applied else PermanentError("400 no")))
    run = scope.run
    if applied:
        run.step(S.EMITTING, clock.now())
    run.failure = {"class": "logic", "message": "it broke"}
    run.step(S.FAILED, clock.now())
    store.fail_run(run, None, workflow_status=(WorkflowStatus.NEEDS_ACTION, "it broke"))
    return w, run.id


def audit(store: Store, run_id: str) -> list[dict[str, Any]]:
    return store.audit_entries("run", run_id)


def wf_status(w: World) -> WorkflowStatus:
    return w.store.get_workflow(w.workflow_id).status


# ---------------------------------------------------------------- outcome unknown


def test_try_again_asks_the_connector_again_now_with_a_fresh_budget(
        store: Store, clock: FakeClock) -> None:
    w, run_id = indeterminate(store, clock, reconcilable=True)
    assert wf_status(w) is WorkflowStatus.NEEDS_ACTION
    rec = actions.resolve(store, run_id, "try_again", "eve")
    assert (rec.status, rec.suspend_reason) == (S.SUSPENDED, SuspendReason.NEEDS_RECONCILE)
    [m] = store.mutations_of(run_id)
    assert (m.status, m.resolved_by, m.reconcile_attempts) == (L.NEEDS_RECONCILE, "user:eve", 0)
    assert store.pending_reconciles(w.workflow_id) == [(w.workflow_id, run_id, "h",
                                                        clock.now())]
    assert wf_status(w) is WorkflowStatus.ACTIVE
    [entry] = audit(store, run_id)
    assert (entry["actor"], entry["action"]) == ("eve", "run.try_again")
    assert entry["before"] == {"status": "suspended", "suspendReason": "indeterminate",
                               "ledger": "indeterminate"}
    assert entry["after"] == {"status": "suspended", "ledger": "needs_reconcile",
                              "effect": actions.EFFECTS["try_again"]}


def test_it_didnt_happen_lets_mutate_run_again_as_a_new_attempt(
        store: Store, clock: FakeClock) -> None:
    w, run_id = indeterminate(store, clock)
    rec = actions.resolve(store, run_id, "didnt_happen", "eve")
    assert (rec.status, rec.suspend_reason) == (S.MUTATING, None)
    [m] = store.mutations_of(run_id)
    assert (m.status, m.resolved_by) == (L.FAILED, "user:eve")
    assert m.error == {"code": DIDNT_HAPPEN, "message": "eve reported that it did not happen"}
    assert isinstance(failure_of(m), TransientError)  # so the executor mutates again
    assert wf_status(w) is WorkflowStatus.ACTIVE
    assert [e["action"] for e in audit(store, run_id)] == ["run.didnt_happen"]


def test_skip_leaves_the_mutation_as_it_is_and_goes_on_with_skipped(
        store: Store, clock: FakeClock) -> None:
    w, run_id = needs_reconcile(store, clock)
    rec = actions.resolve(store, run_id, "skip", "eve")
    assert (rec.status, rec.mutation_result) == (S.EMITTING, {"status": "skipped"})
    [m] = store.mutations_of(run_id)
    assert (m.status, m.resolved_by) == (L.INDETERMINATE, "user:eve (skipped)")
    assert store.pending_reconciles(w.workflow_id) == []  # nobody asks again
    [entry] = audit(store, run_id)
    assert (entry["action"], entry["after"]["ledger"]) == ("run.skip", "indeterminate")


def test_try_again_is_refused_when_nobody_can_verify_and_nothing_changes(
        store: Store, clock: FakeClock) -> None:
    _, run_id = indeterminate(store, clock, reconcilable=False)
    before = everything(store)
    with pytest.raises(Conflict, match="cannot be verified by its connector"):
        actions.resolve(store, run_id, "try_again", "eve")
    assert everything(store) == before


# ---------------------------------------------------------------- approvals


def test_approve_lets_exactly_the_shown_mutation_run(store: Store, clock: FakeClock) -> None:
    w, run_id = awaiting_approval(store, clock)
    rec = actions.approve(store, run_id, "eve", accept=True)
    assert (rec.status, rec.suspend_reason) == (S.MUTATING, None)
    assert rec.approval is not None
    assert (rec.approval["status"], rec.approval["by"]) == ("approved", "eve")
    assert rec.approval["mutation"]["params"] == {"n": 1}
    assert store.mutations_of(run_id) == []  # approving sends nothing by itself
    [entry] = audit(store, run_id)
    assert (entry["action"], entry["after"]["approval"]) == ("run.approve", "approved")
    assert wf_status(w) is WorkflowStatus.ACTIVE


def test_reject_means_the_mutation_never_runs_and_next_sees_skipped(
        store: Store, clock: FakeClock) -> None:
    _, run_id = awaiting_approval(store, clock)
    rec = actions.approve(store, run_id, "eve", accept=False)
    assert (rec.status, rec.mutation_result) == (S.EMITTING, {"status": "skipped"})
    assert rec.approval is not None
    assert rec.approval["status"] == "rejected"
    [entry] = audit(store, run_id)
    assert (entry["action"], entry["before"]["approval"]) == ("run.reject", "pending")


# ---------------------------------------------------------------- failed runs


def test_skip_of_a_failed_run_whose_mutation_never_took_effect(
        store: Store, clock: FakeClock) -> None:
    w, run_id = failed(store, clock)
    rec = actions.resolve(store, run_id, "skip", "eve")
    assert (rec.status, rec.failure, rec.mutation_result) == (
        S.EMITTING, None, {"status": "skipped"})
    assert [m.status for m in store.mutations_of(run_id)] == [L.FAILED]  # left as it was
    [entry] = audit(store, run_id)
    assert (entry["action"], entry["before"]["failure"]) == ("run.skip", "it broke")
    assert wf_status(w) is WorkflowStatus.ACTIVE


def test_retry_of_a_failed_run_is_recorded_and_reactivates_the_workflow(
        store: Store, clock: FakeClock) -> None:
    """What ``service.retry_run`` records before the executor carries the run on."""
    w, run_id = failed(store, clock)
    store.retry_run(run_id, actor="eve", reactivate=True,
                    before={"status": "failed", "failure": "it broke"},
                    after={"effect": actions.EFFECTS["retry"]})
    assert wf_status(w) is WorkflowStatus.ACTIVE
    assert store.get_run(run_id).status is S.FAILED  # the executor moves it on, not this
    [entry] = audit(store, run_id)
    assert (entry["actor"], entry["action"]) == ("eve", "run.retry")
    assert entry["after"] == {"effect": actions.EFFECTS["retry"], "workflow": "active"}


def test_a_retry_stays_asked_for_until_the_run_moves_on(store: Store, clock: FakeClock) -> None:
    """A retry recorded while a server runs (or just before a crash) is not lost: the failed
    run counts as unfinished — the scheduler and recovery carry it on — until its next
    durable write."""
    _, run_id = failed(store, clock)
    wf_id = store.get_run(run_id).workflow_id
    assert store.active_runs(wf_id) == []
    store.retry_run(run_id, actor="eve", reactivate=True, before={}, after={})
    assert store.get_run(run_id).retry_requested_at is not None
    assert [r for r, _, _ in store.active_runs(wf_id)] == [run_id]
    assert run_id in [r.id for r in store.unfinished_runs()]
    assert [(i.run.id) for f in store.inbox_facts(lambda _: clock.now())
            for i in f.blocked] == []  # no longer asks a person
    actions.resolve(store, run_id, "skip", "eve")  # any durable step of the run clears it
    assert store.get_run(run_id).retry_requested_at is None


# ---------------------------------------------------------------- refused from a wrong state


def _try_again(s: Store, r: str) -> object:
    return actions.resolve(s, r, "try_again", "eve")


def _didnt_happen(s: Store, r: str) -> object:
    return actions.resolve(s, r, "didnt_happen", "eve")


def _skip(s: Store, r: str) -> object:
    return actions.resolve(s, r, "skip", "eve")


def _approve(s: Store, r: str) -> object:
    return actions.approve(s, r, "eve", accept=True)


def _reject(s: Store, r: str) -> object:
    return actions.approve(s, r, "eve", accept=False)


def _retry(s: Store, r: str) -> object:
    s.retry_run(r, actor="eve", reactivate=True, before={}, after={})
    return None


Make = Callable[[Store, FakeClock], tuple[World, str]]
Act = Callable[[Store, str], object]


def _applied_then_failed(store: Store, clock: FakeClock) -> tuple[World, str]:
    return failed(store, clock, applied=True)


@pytest.mark.parametrize(("make", "act", "refusal"), [
    (awaiting_approval, _try_again, "only a run whose mutation outcome is unknown"),
    (awaiting_approval, _didnt_happen, "only a run whose mutation outcome is unknown"),
    (awaiting_approval, _skip, "only a run whose mutation outcome is unknown"),
    (failed, _try_again, "is failed; only a run whose mutation outcome is unknown"),
    (failed, _didnt_happen, "is failed; only a run whose mutation outcome is unknown"),
    (_applied_then_failed, _skip, "took effect \\(or may have\\); skipping would hide it"),
    (indeterminate, _approve, "is not waiting for an approval"),
    (needs_reconcile, _reject, "is not waiting for an approval"),
    (failed, _approve, "is not waiting for an approval"),
    (indeterminate, _retry, "only a failed run can be retried"),
    (awaiting_approval, _retry, "only a failed run can be retried"),
], ids=lambda v: getattr(v, "__name__", None))
def test_an_answer_from_a_wrong_state_is_refused_and_changes_nothing(
        store: Store, clock: FakeClock, make: Make, act: Act, refusal: str) -> None:
    _, run_id = make(store, clock)
    before = everything(store)
    with pytest.raises((Conflict, RunChanged), match=refusal):
        act(store, run_id)
    assert everything(store) == before


def test_a_second_answer_to_the_same_question_is_refused(store: Store, clock: FakeClock
                                                        ) -> None:
    _, run_id = indeterminate(store, clock)
    actions.resolve(store, run_id, "skip", "eve")
    before = everything(store)
    with pytest.raises(Conflict, match="is emitting"):
        actions.resolve(store, run_id, "didnt_happen", "frank")
    assert everything(store) == before


def test_an_answer_races_another_actor_and_the_store_keeps_the_first(
        store: Store, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compare-and-set: the answer was checked against a stale read of the run."""
    _, run_id = indeterminate(store, clock)
    stale = store.get_run(run_id)
    actions.resolve(store, run_id, "skip", "eve")
    before = everything(store)
    monkeypatch.setattr(store, "get_run", lambda _rid: stale)
    monkeypatch.setattr(store, "mutations_of", lambda _rid: [
        replace(m, status=L.INDETERMINATE) for m in Store.mutations_of(store, run_id)])
    with pytest.raises(RunChanged, match="another actor moved it on"):
        actions.resolve(store, run_id, "didnt_happen", "frank")
    assert everything(store) == before
    assert Store.get_run(store, run_id).status is S.EMITTING
