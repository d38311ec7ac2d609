"""The transition owner refuses a transition from the wrong state and changes nothing — the
run, its ledger, its events and the audit log stay as they were (in-memory SQLite; the same
code runs on PostgreSQL in tests/integration/store)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from keepflow.clock import FakeClock
from keepflow.errors import LeaseLost, RunChanged, TransitionRefused
from keepflow.model import (
    LEASE_TTL,
    EventClaim,
    EventDraft,
    EventStatus,
    LedgerStatus,
    MutationDraft,
    Reservation,
    RunDraft,
    RunKind,
    RunStatus,
    Settle,
)
from keepflow.store.convert import sha256_json
from keepflow.store.store import Store
from tests.support import runs

S = RunStatus


def _world(store: Store, clock: FakeClock) -> tuple[str, str]:
    wf = store.create_workflow("wf", "test")
    v = store.add_version(wf.id, source="x", source_sha256="0" * 64, manifest={"format": 1},
                          findings=[], created_by="test")
    draft = EventDraft("items", "a", "Item a", 1, sha256_json(1))
    store.commit_producer_run(runs.draft(wf.id, v.id, clock.now(), S.COMMITTED), None,
                              [draft], None)
    return wf.id, v.id


def _everything(store: Store) -> dict[str, Any]:
    """All of the store a refused transition could have touched."""
    out: dict[str, Any] = {}
    for w in store.list_workflows():
        out[w.id] = (w.status, [(s.run, s.transitions, s.mutations)
                                for s in store.run_list(w.id)],
                     store.event_list(w.id))
    out["audit"] = store.audit_entries()
    return out


def _in_flight(store: Store, wid: str, vid: str, clock: FakeClock) -> tuple[RunDraft, int]:
    run = runs.draft(wid, vid, clock.now(), S.MUTATING, kind=RunKind.CONSUMER)
    m = store.record_in_flight(run, None, MutationDraft(
        run_id=run.id, workflow_id=wid, attempt=1, connection="api", connector_type="http",
        tool="post", params={"n": 1}, idempotency_key="k", description="POST x",
        can_reconcile=True), claim=EventClaim((Reservation("items", ("a",)),), ("items",)))
    return run, m.id


def test_every_path_it_accepts_is_written_with_its_history(store: Store, clock: FakeClock
                                                           ) -> None:
    wid, vid = _world(store, clock)
    run, mid = _in_flight(store, wid, vid, clock)
    run.step(S.MUTATED, clock.now())
    store.settle_mutation(run, None, Settle(mid, LedgerStatus.APPLIED, result={"ok": True}))
    run.step(S.EMITTING, clock.now())
    run.step(S.COMMITTED, clock.now())
    store.commit_consumer_run(run, None, publishes=[], state=None, outcome=EventStatus.CONSUMED)
    detail = store.run_detail(run.id)
    assert [t["to"] for t in detail.transitions] == [
        "preparing", "prepared", "mutating", "mutated", "emitting", "committed"]
    assert run.durable_status is S.COMMITTED
    assert store.events_by_ids(wid, "items", ["a"])["a"].status is EventStatus.CONSUMED


@pytest.mark.parametrize("transition", [
    "settle_applied", "suspend_for_reconcile", "suspend_indeterminate", "fail_run",
    "commit_consumer_run", "await_approval",
])
def test_a_stale_runner_is_refused_and_nothing_changes(
        store: Store, clock: FakeClock, transition: str) -> None:
    """Another actor moved the run on (here: it was answered and failed); a runner still
    holding the old status cannot write anything — compare-and-set on the run's status."""
    wid, vid = _world(store, clock)
    run, mid = _in_flight(store, wid, vid, clock)
    stale = RunDraft.from_record(store.get_run(run.id))
    run.step(S.FAILED, clock.now(), note="someone else")
    run.failure = {"class": "logic", "message": "x"}
    store.fail_run(run, None)
    before = _everything(store)
    path = {"settle_applied": [S.MUTATED], "commit_consumer_run": [S.MUTATED, S.EMITTING],
            "fail_run": [S.FAILED]}.get(transition, [S.SUSPENDED])
    for to in path:
        stale.step(to, clock.now())
    with pytest.raises(RunChanged, match="is now failed in the store, not mutating"):
        _ask(store, transition, stale, mid, clock)
    assert _everything(store) == before


def _ask(store: Store, transition: str, run: RunDraft, mid: int, clock: FakeClock) -> None:
    if transition == "settle_applied":
        store.settle_mutation(run, None, Settle(mid, LedgerStatus.APPLIED))
    elif transition == "suspend_for_reconcile":
        store.suspend_for_reconcile(run, None, mid, error={}, next_at=clock.now())
    elif transition == "suspend_indeterminate":
        store.suspend_indeterminate(run, None, mid, error={}, reconciled=False,
                                    workflow_status=None)
    elif transition == "fail_run":
        store.fail_run(run, None)
    elif transition == "commit_consumer_run":
        run.step(S.COMMITTED, clock.now())
        store.commit_consumer_run(run, None, publishes=[], state=None,
                                  outcome=EventStatus.CONSUMED)
    else:
        store.await_approval(run, None)


@pytest.mark.parametrize(("path", "why"), [
    ((S.MUTATED, S.COMMITTED), "mutated → committed is not a legal run transition"),
    ((S.EMITTING,), "mutating → emitting is not a legal run transition"),
    ((S.SUSPENDED, S.COMMITTED, S.MUTATED), "suspended → committed"),
])
def test_an_illegal_path_is_refused_and_nothing_changes(
        store: Store, clock: FakeClock, path: tuple[RunStatus, ...], why: str) -> None:
    wid, vid = _world(store, clock)
    run, mid = _in_flight(store, wid, vid, clock)
    before = _everything(store)
    for to in path:
        run.step(to, clock.now())
    with pytest.raises(TransitionRefused, match=why):
        store.settle_mutation(run, None, Settle(mid, LedgerStatus.APPLIED))
    assert _everything(store) == before


def test_a_transition_must_end_where_its_name_says(store: Store, clock: FakeClock) -> None:
    wid, vid = _world(store, clock)
    run, mid = _in_flight(store, wid, vid, clock)
    before = _everything(store)
    run.step(S.MUTATED, clock.now())  # legal, but a needs_reconcile attempt suspends the run
    with pytest.raises(TransitionRefused, match="must end suspended"):
        store.suspend_for_reconcile(run, None, mid, error={}, next_at=clock.now())
    assert _everything(store) == before


def test_the_ledger_refuses_a_move_its_status_does_not_allow(store: Store, clock: FakeClock
                                                            ) -> None:
    wid, vid = _world(store, clock)
    run, mid = _in_flight(store, wid, vid, clock)
    run.step(S.SUSPENDED, clock.now())
    store.suspend_indeterminate(run, None, mid, error={}, reconciled=False, workflow_status=None)
    before = _everything(store)
    run.step(S.MUTATED, clock.now())  # the run may go on, but indeterminate never → applied
    with pytest.raises(TransitionRefused, match="is indeterminate; it cannot become applied"):
        store.settle_mutation(run, None, Settle(mid, LedgerStatus.APPLIED))
    assert _everything(store) == before


def test_a_persons_answer_and_retry_are_compare_and_set(store: Store, clock: FakeClock) -> None:
    wid, vid = _world(store, clock)
    run, _ = _in_flight(store, wid, vid, clock)
    before = _everything(store)
    answer = RunDraft.from_record(store.get_run(run.id))
    answer.step(S.EMITTING, clock.now(), note="skip")
    with pytest.raises(RunChanged, match="is mutating, not suspended"):
        store.answer_person(answer, expected=S.SUSPENDED, actor="eve", action="run.skip",
                            before={}, after={})
    with pytest.raises(RunChanged, match="only a failed run can be retried"):
        store.retry_run(run.id, actor="eve", before={}, after={}, reactivate=True)
    assert _everything(store) == before


def test_a_host_that_lost_its_lease_writes_nothing(store: Store, clock: FakeClock) -> None:
    wid, vid = _world(store, clock)
    old = store.acquire_lease(wid, "a:1:x")
    assert old is not None
    clock.advance((LEASE_TTL + timedelta(seconds=1)).total_seconds())
    assert store.acquire_lease(wid, "b:2:y") is not None
    before = _everything(store)
    run = runs.draft(wid, vid, clock.now(), S.PREPARED, kind=RunKind.CONSUMER)
    with pytest.raises(LeaseLost):
        store.checkpoint_run(run, old, claim=EventClaim((Reservation("items", ("a",)),),
                                                        ("items",)))
    assert _everything(store) == before
