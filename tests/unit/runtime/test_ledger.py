"""The ledger procedure (SPEC §6, ``runtime/ledger.py``) against an in-memory SQLite store with
a scripted connector: each decision it makes for reserve → in_flight → settle / reconcile /
indeterminate, seen in the ledger rows, the run, its events and its workflow."""

from __future__ import annotations

from datetime import timedelta

import pytest

from keepflow.clock import FakeClock
from keepflow.connectors.base import ReconcileOutcome
from keepflow.errors import (
    AuthError,
    PermanentError,
    PreconditionError,
    TransientError,
    UncertainOutcome,
)
from keepflow.model import (
    LedgerStatus,
    MutationRecord,
    RunStatus,
    SuspendReason,
    WorkflowStatus,
)
from keepflow.policies import ApprovalPolicy, Policy, ReconcilePolicy
from keepflow.runtime.bridge import DeclaredMutation
from keepflow.runtime.ledger import (
    DIDNT_HAPPEN,
    Outcome,
    approved,
    failure_of,
    idempotency_key,
    reconcile_now,
)
from keepflow.store.store import Store
from tests.support.ledger_world import Scripted, World, answer, world

L = LedgerStatus
S = RunStatus


@pytest.fixture
def w(store: Store, clock: FakeClock) -> World:
    return world(store, clock)


def ledger(w: World, run_id: str) -> list[MutationRecord]:
    return w.store.mutations_of(run_id)


def reserved_by(w: World) -> str | None:
    return w.store.events_by_ids(w.workflow_id, "items", ["a"])["a"].reserved_by


def test_in_flight_is_durable_with_the_reservation_before_the_call_then_applied(
        w: World) -> None:
    conn = Scripted(does={"id": 7})
    scope, out = w.perform(conn)
    run_id = scope.run.id
    assert conn.ledger_during_call == [L.IN_FLIGHT]  # written before the external call
    [call] = conn.calls
    assert call.idempotency_key == idempotency_key(w.workflow_id, run_id, 1) == \
        f"kf-{w.workflow_id}-{run_id}-1"
    assert out.outcome is Outcome.APPLIED
    [m] = ledger(w, run_id)
    assert (m.status, m.result, m.resolved_by, m.attempt, m.reconcile_attempts) == (
        L.APPLIED, {"id": 7}, "host", 1, 0)
    assert m.description == "POST https://api.example/1"
    rec = w.store.get_run(run_id)
    assert (rec.status, rec.mutation_result) == (S.MUTATED, {"status": "applied",
                                                            "result": {"id": 7}})
    assert reserved_by(w) == run_id
    assert conn.asked == []  # a definite answer needs no reconcile
    [logged] = w.store.run_detail(run_id).tool_calls  # the attempt's call, kept with the run
    assert (logged["ok"], logged["params"]["idempotencyKey"]) == (True, call.idempotency_key)


@pytest.mark.parametrize(("error", "outcome"), [
    (TransientError("503"), Outcome.REMUTATE),  # mutate again after backoff
    (PermanentError("400 bad"), Outcome.FAILED),
    (AuthError("401"), Outcome.FAILED),
    (PreconditionError("412"), Outcome.FAILED),
])
def test_a_definite_failure_is_settled_failed_and_never_reconciled(
        w: World, error: Exception, outcome: Outcome) -> None:
    conn = Scripted(does=error)
    scope, out = w.perform(conn)
    assert out.outcome is outcome
    assert out.error is error
    [m] = ledger(w, scope.run.id)
    assert (m.status, m.resolved_by, m.error and m.error["code"]) == (
        L.FAILED, "host", error.code)  # type: ignore[attr-defined]
    assert w.store.get_run(scope.run.id).status is S.MUTATING  # the executor decides next
    assert conn.asked == []
    assert type(failure_of(m)) is type(error)


def test_an_uncertain_outcome_is_reconciled_at_once_applied(w: World) -> None:
    conn = Scripted(does=UncertainOutcome("timeout"),
                    answers=[answer(ReconcileOutcome.APPLIED, {"id": 9})])
    scope, out = w.perform(conn)
    assert out.outcome is Outcome.APPLIED
    [asked] = conn.asked
    assert asked.idempotency_key == conn.calls[0].idempotency_key  # the same attempt
    [m] = ledger(w, scope.run.id)
    assert (m.status, m.result, m.resolved_by, m.reconcile_attempts) == (
        L.APPLIED, {"id": 9}, "reconcile", 1)
    rec = w.store.get_run(scope.run.id)
    assert rec.status is S.MUTATED
    assert rec.mutation_result == {"status": "applied", "result": {"id": 9}}


def test_an_uncertain_outcome_that_did_not_take_effect_mutates_again(w: World) -> None:
    conn = Scripted(does=UncertainOutcome("reset by peer"),
                    answers=[answer(ReconcileOutcome.FAILED, detail="no such order")])
    scope, out = w.perform(conn)
    assert out.outcome is Outcome.REMUTATE
    [m] = ledger(w, scope.run.id)
    assert m.status is L.FAILED
    assert m.error is not None
    assert (m.error["code"], m.error["reconcile"]) == ("uncertain", "no such order")
    assert isinstance(failure_of(m), TransientError)  # safe to send again
    rec = w.store.get_run(scope.run.id)
    assert (rec.status, rec.suspend_reason) == (S.MUTATING, None)


@pytest.mark.parametrize("reply", [
    answer(ReconcileOutcome.RETRY, detail="still processing"),
    TransientError("reconcile endpoint down"),  # asking failed: ask again later
])
def test_an_outcome_not_known_yet_suspends_the_run_for_the_background_reconciler(
        w: World, reply: object) -> None:
    conn = Scripted(does=UncertainOutcome("timeout"), answers=[reply])
    scope, out = w.perform(conn)
    assert out.outcome is Outcome.SUSPENDED
    [m] = ledger(w, scope.run.id)
    assert (m.status, m.reconcile_attempts, m.resolved_by) == (
        L.NEEDS_RECONCILE, 1, "reconcile")
    rec = w.store.get_run(scope.run.id)
    assert (rec.status, rec.suspend_reason) == (S.SUSPENDED, SuspendReason.NEEDS_RECONCILE)
    delay = w.policy.reconcile.delay(1)
    assert w.store.pending_reconciles(w.workflow_id) == [
        (w.workflow_id, scope.run.id, "h", w.clock.now() + timedelta(seconds=delay))]
    assert w.store.get_workflow(w.workflow_id).status is WorkflowStatus.ACTIVE
    assert reserved_by(w) == scope.run.id  # the events stay reserved


def test_an_outcome_nothing_can_verify_is_indeterminate_and_the_workflow_needs_a_person(
        w: World) -> None:
    conn = Scripted(does=UncertainOutcome("timeout"), reconcilable=False)
    scope, out = w.perform(conn)
    assert out.outcome is Outcome.SUSPENDED
    assert conn.asked == []  # nobody to ask
    [m] = ledger(w, scope.run.id)
    assert (m.status, m.resolved_by, m.can_reconcile) == (L.INDETERMINATE, "host", False)
    rec = w.store.get_run(scope.run.id)
    assert (rec.status, rec.suspend_reason) == (S.SUSPENDED, SuspendReason.INDETERMINATE)
    wf = w.store.get_workflow(w.workflow_id)
    assert wf.status is WorkflowStatus.NEEDS_ACTION
    assert wf.status_reason is not None
    assert wf.status_reason.startswith(
        'Unknown whether POST https://api.example/1 for "Item a" took effect: timeout. '
        "the connector cannot verify it by itself.")
    assert w.store.pending_reconciles(w.workflow_id) == []


def test_a_connector_that_raises_anything_else_is_treated_as_uncertain(w: World) -> None:
    conn = Scripted(does=RuntimeError("socket went away"),
                    answers=[answer(ReconcileOutcome.APPLIED, {"ok": True})])
    scope, out = w.perform(conn)
    assert out.outcome is Outcome.APPLIED
    assert conn.asked  # never assumed failed: it may have happened
    assert ledger(w, scope.run.id)[0].resolved_by == "reconcile"


def test_past_the_reconcile_budget_an_uncertain_outcome_becomes_indeterminate(
        store: Store, clock: FakeClock) -> None:
    w = world(store, clock, Policy(reconcile=ReconcilePolicy(max_attempts=1)))
    conn = Scripted(does=UncertainOutcome("timeout"),
                    answers=[answer(ReconcileOutcome.RETRY, detail="unknown order")])
    scope, out = w.perform(conn)
    assert out.outcome is Outcome.SUSPENDED
    [m] = ledger(w, scope.run.id)
    assert (m.status, m.resolved_by) == (L.INDETERMINATE, "reconcile")
    wf = w.store.get_workflow(w.workflow_id)
    assert wf.status is WorkflowStatus.NEEDS_ACTION
    assert "could not verify it after 1 attempt(s)" in (wf.status_reason or "")
    assert "the connector can check again (Try again)" in (wf.status_reason or "")


def test_a_connector_that_says_no_look_can_tell_asks_the_person_at_once(w: World) -> None:
    """ReconcileOutcome.INDETERMINATE: escalated on the first answer, never read as FAILED,
    whatever reconcile budget the policy still allows (SPEC §6 step 6)."""
    assert w.policy.reconcile.max_attempts > 1
    conn = Scripted(does=UncertainOutcome("timeout"), answers=[
        answer(ReconcileOutcome.INDETERMINATE, detail="did the server keep it?")])
    scope, out = w.perform(conn)
    assert out.outcome is Outcome.SUSPENDED
    assert len(conn.asked) == 1
    [m] = ledger(w, scope.run.id)
    assert (m.status, m.resolved_by, m.reconcile_attempts) == (
        L.INDETERMINATE, "reconcile", 1)
    wf = w.store.get_workflow(w.workflow_id)
    assert wf.status is WorkflowStatus.NEEDS_ACTION
    assert "timeout; did the server keep it?" in (wf.status_reason or "")
    assert w.store.pending_reconciles(w.workflow_id) == []
    assert reserved_by(w) == scope.run.id  # nothing released: it may have happened


def test_an_in_flight_attempt_found_after_a_crash_is_reconciled_never_resent(w: World) -> None:
    """SPEC §5.5: the host stopped after in_flight was written; recovery asks, never sends."""
    conn = Scripted(answers=[answer(ReconcileOutcome.APPLIED, {"id": 3})])
    scope = w.scope(conn)
    from keepflow.model import MutationDraft

    m = w.store.record_in_flight(scope.run, None, MutationDraft(
        run_id=scope.run.id, workflow_id=w.workflow_id, attempt=1, connection="api",
        connector_type="scripted", tool="post", params={"n": 1},
        idempotency_key=idempotency_key(w.workflow_id, scope.run.id, 1),
        description="POST https://api.example/1", can_reconcile=True))
    out = reconcile_now(scope, m, conn, UncertainOutcome("the host stopped mid-call"))
    assert out.outcome is Outcome.APPLIED
    assert conn.calls == []
    assert [x.status for x in ledger(w, scope.run.id)] == [L.APPLIED]
    assert w.store.get_run(scope.run.id).status is S.MUTATED


def test_a_mutation_that_needs_approval_suspends_before_anything_is_attempted(
        store: Store, clock: FakeClock) -> None:
    w = world(store, clock, Policy(approvals=ApprovalPolicy(require=("api.post",))))
    conn = Scripted(does={"id": 1})
    scope, out = w.perform(conn, {"n": 5})
    assert (out.outcome, out.mutation) == (Outcome.SUSPENDED, None)
    assert conn.calls == []
    assert ledger(w, scope.run.id) == []  # no attempt: nothing may have happened
    rec = w.store.get_run(scope.run.id)
    assert (rec.status, rec.suspend_reason) == (S.SUSPENDED, SuspendReason.AWAITING_APPROVAL)
    assert rec.approval is not None
    assert rec.approval["status"] == "pending"
    assert rec.approval["mutation"] == {"connection": "api", "tool": "post",
                                        "params": {"n": 5},
                                        "description": "POST https://api.example/5"}
    assert reserved_by(w) == scope.run.id  # the events wait with it


def test_an_approved_declaration_runs_only_if_it_is_exactly_what_was_shown() -> None:
    shown = {"status": "approved", "mutation": {"connection": "api", "tool": "post",
                                                "params": {"n": 1}}}
    assert approved(shown, DeclaredMutation("api", "post", {"n": 1}))
    assert not approved(shown, DeclaredMutation("api", "post", {"n": True}))  # 1 is not true
    assert not approved(shown, DeclaredMutation("api", "post", {"n": "1"}))
    assert not approved(shown, DeclaredMutation("api", "put", {"n": 1}))
    assert not approved({**shown, "status": "pending"}, DeclaredMutation("api", "post", {"n": 1}))
    assert not approved(None, DeclaredMutation("api", "post", {"n": 1}))


def test_what_a_failed_attempt_means_for_trying_again(w: World) -> None:
    base = dict(id=1, run_id="r", workflow_id="w", attempt=1, connection="api", tool="post",
                params={}, idempotency_key="k", description="d", can_reconcile=True,
                status=L.FAILED, result=None, reconcile_attempts=0, resolved_by=None,
                created_at=w.clock.now(), updated_at=w.clock.now())
    didnt = MutationRecord(**base, error={"code": DIDNT_HAPPEN, "message": "eve said so"})
    assert isinstance(failure_of(didnt), TransientError)
    assert str(failure_of(didnt)).startswith("eve said so")
    assert isinstance(failure_of(MutationRecord(**base, error={"code": "weird"})),
                      PermanentError)
    assert isinstance(failure_of(MutationRecord(**base, error=None)), PermanentError)
