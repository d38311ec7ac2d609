"""The Store API on SQLite and PostgreSQL: fencing, atomic commits, ledger moves."""

from __future__ import annotations

from datetime import timedelta

import pytest

from keepflow.clock import FakeClock
from keepflow.errors import (
    LeaseLost,
    NotFound,
    ReservationRejected,
    RunChanged,
    TransitionRefused,
)
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
    StateUpdate,
)
from keepflow.store import runs as store_runs
from keepflow.store.convert import sha256_json
from keepflow.store.store import Store
from tests.support import runs

pytestmark = pytest.mark.integration


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(store_url: str, clock: FakeClock):
    s = Store(store_url, clock=clock.now)
    yield s
    s.close()


def _setup(store: Store, clock: FakeClock) -> tuple[str, str]:
    wf = store.create_workflow("wf", "test")
    v = store.add_version(wf.id, source="x", source_sha256="0" * 64,
                          manifest={"format": 1}, findings=[], created_by="test")
    return wf.id, v.id


def _run(wid: str, vid: str, clock: FakeClock, kind: RunKind = RunKind.PRODUCER,
         run_id: str = "01RUN0000000000000000000AA") -> RunDraft:
    status = RunStatus.COMMITTED if kind is RunKind.PRODUCER else RunStatus.MUTATING
    return runs.draft(wid, vid, clock.now(), status, kind=kind, run_id=run_id)


def _event(mid: str, payload: object = None) -> EventDraft:
    return EventDraft("items", mid, f"Item {mid}", payload, sha256_json(payload))


def test_a_host_that_lost_its_lease_cannot_commit(store: Store, clock: FakeClock) -> None:
    wid, vid = _setup(store, clock)
    old = store.acquire_lease(wid, "host-a:1:x")
    assert old is not None
    assert store.acquire_lease(wid, "host-b:2:y") is None  # held
    clock.advance(LEASE_TTL.total_seconds() + 1)
    new = store.acquire_lease(wid, "host-b:2:y")  # expired: taken over, fence bumped
    assert new is not None
    assert new.token == old.token + 1
    with pytest.raises(LeaseLost):
        store.commit_producer_run(_run(wid, vid, clock), old, [_event("a")],
                                  StateUpdate("h", {"n": 1}))
    assert store.peek(wid, "items", 10) == []
    store.commit_producer_run(_run(wid, vid, clock), new, [_event("a")], None)
    assert [e.message_id for e in store.peek(wid, "items", 10)] == ["a"]


def test_each_commit_renews_the_lease(store: Store, clock: FakeClock) -> None:
    wid, vid = _setup(store, clock)
    fence = store.acquire_lease(wid, "host-a:1:x")
    clock.advance(LEASE_TTL.total_seconds() - 10)
    store.commit_producer_run(_run(wid, vid, clock), fence, [], None)
    clock.advance(60)
    assert store.acquire_lease(wid, "host-b:2:y") is None


def test_publish_dedupes_by_message_id_and_reports(store: Store, clock: FakeClock) -> None:
    wid, vid = _setup(store, clock)
    r1 = store.commit_producer_run(_run(wid, vid, clock), None, [_event("a", 1), _event("b")],
                                   None)
    assert r1.inserted == ["items/a", "items/b"]
    r2 = store.commit_producer_run(_run(wid, vid, clock, run_id="01RUN0000000000000000000AB"),
                                   None, [_event("a", 2)], None)
    assert r2.duplicates == ["items/a"]
    assert r2.differing == ["items/a"]
    assert store.events_by_ids(wid, "items", ["a"])["a"].payload == 1


def test_reservation_conflicts_are_refused_atomically(store: Store, clock: FakeClock) -> None:
    wid, vid = _setup(store, clock)
    store.commit_producer_run(_run(wid, vid, clock), None, [_event("a"), _event("b")], None)
    first = _run(wid, vid, clock, RunKind.CONSUMER, "01RUN0000000000000000000C1")
    first = runs.draft(wid, vid, clock.now(), RunStatus.PREPARED, kind=RunKind.CONSUMER,
                       run_id=first.id)
    store.checkpoint_run(first, None, claim=EventClaim((Reservation("items", ("a",)),),
                                                       ("items",)))
    second = _run(wid, vid, clock, RunKind.CONSUMER, "01RUN0000000000000000000C2")
    with pytest.raises(ReservationRejected, match="reserved by run 01RUN0000000000000000000C1"):
        store.checkpoint_run(
            runs.draft(wid, vid, clock.now(), RunStatus.PREPARED, kind=RunKind.CONSUMER,
                       run_id=second.id),
            None, claim=EventClaim((Reservation("items", ("b", "a")),), ("items",)))
    # nothing of the refused commit happened: b is still free, the run row does not exist
    assert store.events_by_ids(wid, "items", ["b"])["b"].reserved_by is None
    with pytest.raises(Exception, match="no run"):
        store.get_run(second.id)


def test_ledger_refuses_illegal_moves(store: Store, clock: FakeClock) -> None:
    wid, vid = _setup(store, clock)
    run = _run(wid, vid, clock, RunKind.CONSUMER, "01RUN0000000000000000000D1")
    m = store.record_in_flight(run, None, MutationDraft(
        run_id=run.id, workflow_id=wid, attempt=1, connection="api", connector_type="http",
        tool="post", params={}, idempotency_key="k1", description="POST x",
        can_reconcile=True))
    assert m.status is LedgerStatus.IN_FLIGHT
    run.step(RunStatus.MUTATED, clock.now())
    applied = store.settle_mutation(run, None, Settle(m.id, LedgerStatus.APPLIED, result={"ok": 1}))
    assert applied.status is LedgerStatus.APPLIED
    # The ledger's own compare-and-set: an applied attempt never becomes failed, whoever asks.
    other = _run(wid, vid, clock, RunKind.CONSUMER, "01RUN0000000000000000000D2")
    with pytest.raises(TransitionRefused, match="cannot become failed"):
        store.settle_mutation(other, None, Settle(m.id, LedgerStatus.FAILED))
    assert store.mutations_of(run.id)[0].result == {"ok": 1}
    with pytest.raises(NotFound):
        store.get_run(other.id)  # the refused transaction wrote nothing


def _snapshot(store: Store, run_id: str) -> tuple[object, ...]:
    with store.read() as conn:
        return (store.get_run(run_id), store.mutations_of(run_id),
                store_runs.transitions(conn, run_id))


def test_a_transition_from_a_stale_run_status_is_refused_and_changes_nothing(
        store: Store, clock: FakeClock) -> None:
    """Compare-and-set on the run: a second actor holding the old status cannot move it."""
    wid, vid = _setup(store, clock)
    run = _run(wid, vid, clock, RunKind.CONSUMER, "01RUN0000000000000000000E1")
    m = store.record_in_flight(run, None, MutationDraft(
        run_id=run.id, workflow_id=wid, attempt=1, connection="api", connector_type="http",
        tool="post", params={}, idempotency_key="k1", description="POST x",
        can_reconcile=True))
    stale = RunDraft.from_record(store.get_run(run.id))
    run.step(RunStatus.MUTATED, clock.now())
    store.settle_mutation(run, None, Settle(m.id, LedgerStatus.APPLIED, result={"ok": 1}))
    before = _snapshot(store, run.id)
    stale.step(RunStatus.SUSPENDED, clock.now(), note="someone else's idea")
    with pytest.raises(RunChanged, match="is now mutated in the store, not mutating"):
        store.suspend_for_reconcile(stale, None, m.id, error={"code": "x"},
                                    next_at=clock.now())
    assert _snapshot(store, run.id) == before
    assert stale.transitions, "the refused path is kept for the caller to look at"


@pytest.mark.parametrize("path", [
    (RunStatus.PREPARING, RunStatus.PREPARED, RunStatus.COMMITTED),  # skips next
    (RunStatus.RUNNING, RunStatus.COMMITTED, RunStatus.RUNNING),  # out of a finished run
    (RunStatus.PREPARING, RunStatus.PREPARED, RunStatus.EMITTING),  # does not end committed
])
def test_an_illegal_run_path_is_refused_before_the_store_is_touched(
        store: Store, clock: FakeClock, path: tuple[RunStatus, ...]) -> None:
    wid, vid = _setup(store, clock)
    store.commit_producer_run(_run(wid, vid, clock), None, [_event("a")], None)
    run = RunDraft(id="01RUN0000000000000000000F1", workflow_id=wid, version_id=vid,
                   handler="h", kind=RunKind.CONSUMER, trigger="test",
                   status=RunStatus.PENDING, created_at=clock.now())
    for to in path:
        run.step(to, clock.now())
    with pytest.raises(TransitionRefused, match=r"refused, .*nothing was written"):
        store.commit_consumer_run(
            run, None, publishes=[_event("b")], state=StateUpdate("h", 1),
            outcome=EventStatus.CONSUMED,
            claim=EventClaim((Reservation("items", ("a",)),), ("items",)))
    with pytest.raises(NotFound):
        store.get_run(run.id)
    assert store.events_by_ids(wid, "items", ["a"])["a"].reserved_by is None
    assert store.events_by_ids(wid, "items", ["b"]) == {}
    assert store.load_state(wid, "h") == (False, None)


def test_timestamps_are_utc_aware(store: Store, clock: FakeClock) -> None:
    wid, _ = _setup(store, clock)
    wf = store.get_workflow(wid)
    assert wf.created_at == clock.now()
    assert wf.created_at.utcoffset() == timedelta(0)
