"""The scheduler's driver and leases against an in-memory SQLite store: the facts it gathers,
the decisions it applies, what it writes (fire times, skipped ticks, wake-ups) — no runs are
executed, no worker processes; a run's end is reported by hand."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest

from keepflow.clock import FakeClock
from keepflow.errors import Conflict, LeaseLost
from keepflow.model import (
    LEASE_TTL,
    EventClaim,
    EventDraft,
    MutationDraft,
    Reservation,
    RunKind,
    RunStatus,
    WorkflowStatus,
)
from keepflow.runtime.outcome import RunOutcome
from keepflow.scheduler.core import RunRequest
from keepflow.scheduler.driver import Scheduler
from keepflow.scheduler.leases import Leases
from keepflow.store.convert import sha256_json
from keepflow.store.store import Store
from keepflow.workflow import ConsumerSpec, ProducerSpec, Schedule, WorkflowManifest
from tests.support import runs

S = RunStatus


def deploy(store: Store, name: str, *, every: int | None = None,
           consumers: tuple[str, ...] = ()) -> tuple[str, str]:
    producers = {"seed": ProducerSpec(None), "more": ProducerSpec(None)}
    if every is not None:
        producers["poll"] = ProducerSpec(Schedule("interval", interval_seconds=every))
    manifest = WorkflowManifest(name=name, topics=("t",), producers=producers,
                                consumers={c: ConsumerSpec(("t",)) for c in consumers})
    wf = store.create_workflow(name, "test")
    v = store.add_version(wf.id, source="x", source_sha256="0" * 64,
                          manifest=manifest.to_dict(), findings=[], created_by="test")
    return wf.id, v.id


def publish(store: Store, clock: FakeClock, wid: str, vid: str, message_id: str) -> None:
    draft = EventDraft("t", message_id, f"Item {message_id}", 1, sha256_json(1))
    store.commit_producer_run(runs.draft(wid, vid, clock.now(), S.COMMITTED), None, [draft],
                              None)


def done(req: RunRequest, status: RunStatus = S.COMMITTED) -> RunOutcome:
    return RunOutcome("r", req.handler, req.kind, status)


class Events(list[tuple[str, dict[str, object]]]):
    def named(self, event: str) -> list[dict[str, object]]:
        return [f for e, f in self if e == event]


def scheduler(store: Store, clock: FakeClock) -> tuple[Scheduler, Events]:
    s = Scheduler(store, clock.now)
    seen = Events()
    s.listeners.append(lambda event, fields: seen.append((event, fields)))
    s.load()
    return s, seen


def test_workflows_are_served_first_come_first_served_one_run_each(
        store: Store, clock: FakeClock) -> None:
    ids = [deploy(store, name)[0] for name in ("a", "b", "c")]
    s, seen = scheduler(store, clock)
    s.trigger(ids[0], "seed")
    s.trigger(ids[0], "more")
    s.trigger(ids[1], "seed")
    s.trigger(ids[2], "seed")
    s.trigger(ids[2], "seed")  # coalesced with the one queued
    first = s.take(2)
    assert [(r.workflow_name, r.handler) for r in first] == [("a", "seed"), ("b", "seed")]
    assert [(r.workflow_name, r.handler) for r in s.take(10)] == [("c", "seed")]
    assert s.take(10) == []  # a's second trigger waits for its run
    assert s.running() == 3
    s.finished(first[0], done(first[0]))
    assert [(r.workflow_name, r.handler, r.trigger) for r in s.take(10)] == [
        ("a", "more", "manual")]
    assert s.counters.started == 4
    assert [f["handler"] for f in seen.named("run.start")] == ["seed", "seed", "seed", "more"]


def test_a_workflow_with_endless_work_goes_to_the_back_after_each_run(
        store: Store, clock: FakeClock) -> None:
    a, _ = deploy(store, "a")
    b, _ = deploy(store, "b")
    s, _ = scheduler(store, clock)
    order = []
    for _ in range(3):
        s.trigger(a, "seed")
        s.trigger(b, "seed")
        [req] = s.take(1)  # one slot of concurrency: the two must alternate
        order.append(req.workflow_name)
        s.finished(req, done(req))
    assert order == ["a", "b", "a"]


def test_a_consumer_with_pending_events_runs_before_a_due_producer(
        store: Store, clock: FakeClock) -> None:
    wid, vid = deploy(store, "a", every=60, consumers=("handle",))
    publish(store, clock, wid, vid, "m1")
    s, _ = scheduler(store, clock)
    s.advance(clock.now())
    [req] = s.take(4)
    assert (req.handler, req.kind, req.trigger) == ("handle", RunKind.CONSUMER, "event")
    s.finished(req, done(req))
    s.advance(clock.now())
    [req] = s.take(4)  # the event is still pending (no run really consumed it)
    assert req.trigger == "event"


def test_a_producer_fires_records_its_fire_and_a_tick_that_finds_it_busy_is_skipped(
        store: Store, clock: FakeClock) -> None:
    wid, _ = deploy(store, "a", every=60)
    t0 = clock.now()
    s, seen = scheduler(store, clock)
    s.advance(clock.now())
    [req] = s.take(4)
    assert (req.handler, req.trigger, req.fired_at) == ("poll", "schedule", t0)
    assert store.handler_facts(wid)[(wid, "poll")].last_fired_at == t0
    clock.advance(60)
    s.advance(clock.now())  # the run is still going
    assert s.take(4) == []
    assert s.counters.skipped_ticks == 1
    facts = store.handler_facts(wid)[(wid, "poll")]
    assert (facts.skipped_ticks, facts.last_skipped_at) == (1, t0 + timedelta(seconds=60))
    assert seen.named("tick.skipped") == [
        {"workflow": "a", "handler": "poll", "because": "poll is running"}]
    s.finished(req, done(req))
    assert s.take(4) == []  # the skipped tick is gone, not queued
    clock.advance(60)
    s.advance(clock.now())
    [again] = s.take(4)
    assert again.fired_at == t0 + timedelta(seconds=120)


def test_a_paused_workflows_ticks_are_neither_run_nor_counted(
        store: Store, clock: FakeClock) -> None:
    wid, _ = deploy(store, "a", every=60)
    store.set_workflow_status(wid, WorkflowStatus.PAUSED, None, "test")
    s, _ = scheduler(store, clock)
    for _ in range(3):
        s.advance(clock.now())
        assert s.take(4) == []
        clock.advance(60)
    assert s.counters.skipped_ticks == 0
    s.trigger(wid, "seed")  # a person's trigger still works when paused
    assert [r.trigger for r in s.take(4)] == ["manual"]


def test_at_start_up_the_schedule_goes_on_from_the_stored_fire_time(
        store: Store, clock: FakeClock) -> None:
    wid, _ = deploy(store, "a", every=60)
    store.record_fire(wid, "poll", clock.now())
    clock.advance(20)
    s, _ = scheduler(store, clock)
    assert s.next_due() == clock.now() + timedelta(seconds=40)
    clock.advance(5 * 3600)  # the host was down for hours: one run, not 300
    restarted, _ = scheduler(store, clock)
    restarted.advance(clock.now())
    assert len(restarted.take(10)) == 1
    assert restarted.take(10) == []


def test_a_crashing_run_holds_its_workflow_back_until_the_backoff_ends(
        store: Store, clock: FakeClock) -> None:
    wid, _ = deploy(store, "a", every=1)
    s, seen = scheduler(store, clock)
    s.advance(clock.now())
    [req] = s.take(4)
    s.finished(req, None)  # crashed inside the host
    assert seen.named("workflow.held") == [{
        "workflow": "a", "handler": "poll", "crashes": 1,
        "until": (clock.now() + timedelta(seconds=1)).isoformat()}]
    assert seen.named("run.end")[-1]["status"] == "error"
    clock.advance(0.5)
    s.advance(clock.now())
    assert s.take(4) == []
    clock.advance(0.5)
    s.advance(clock.now())
    [req] = s.take(4)
    s.finished(req, None)
    clock.advance(1.5)
    s.advance(clock.now())
    assert s.take(4) == []  # the second crash in a row: held 2 s
    s.trigger(wid, "seed")
    assert [r.trigger for r in s.take(4)] == ["manual"]


def test_a_suspended_run_blocks_its_workflow_until_its_reconciliation_is_due(
        store: Store, clock: FakeClock) -> None:
    wid, vid = deploy(store, "a", every=60, consumers=("handle",))
    publish(store, clock, wid, vid, "m1")
    run = runs.draft(wid, vid, clock.now(), S.MUTATING, kind=RunKind.CONSUMER, handler="handle")
    m = store.record_in_flight(run, None, MutationDraft(
        run_id=run.id, workflow_id=wid, attempt=1, connection="api", connector_type="http",
        tool="post", params={}, idempotency_key="k", description="POST x", can_reconcile=True),
        claim=EventClaim((Reservation("t", ("m1",)),), ("t",)))
    run.step(S.SUSPENDED, clock.now())
    store.suspend_for_reconcile(run, None, m.id, error={},
                                next_at=clock.now() + timedelta(seconds=30))
    s, seen = scheduler(store, clock)
    s.advance(clock.now())
    assert s.take(4) == []
    assert s.counters.skipped_ticks == 1
    assert seen.named("tick.skipped")[0]["because"] == f"run {run.id} (handle) is suspended"
    with pytest.raises(Conflict, match="nothing else of it runs"):
        s.trigger(wid, "seed")
    clock.advance(30)
    s.advance(clock.now())
    [req] = s.take(4)
    assert (req.trigger, req.run_id, req.handler) == ("reconcile", run.id, "handle")


def test_a_committed_consumer_that_went_to_sleep_wakes_at_its_backoff_timeout(
        store: Store, clock: FakeClock) -> None:
    from keepflow.model import EventStatus, Sleep

    wid, vid = deploy(store, "a", consumers=("handle",))
    s, seen = scheduler(store, clock)
    s.trigger(wid, "handle")
    [req] = s.take(4)
    facts = store.handler_facts(wid)[(wid, "handle")]
    assert facts.wake_reason == "manual trigger"
    run = runs.draft(wid, vid, clock.now(), S.COMMITTED, kind=RunKind.CONSUMER,
                     handler="handle")
    until = clock.now() + timedelta(seconds=90)
    store.commit_consumer_run(run, None, publishes=[], state=None, outcome=EventStatus.CONSUMED,
                              sleep=Sleep(until, 0))
    s.finished(req, done(req))
    assert seen.named("consumer.sleeping") == [
        {"workflow": "a", "handler": "handle", "until": until.isoformat()}]
    assert s.next_due() == until
    clock.advance(90)
    s.advance(clock.now())
    assert seen.named("consumer.woken")[0]["reason"] == "backoff timeout"
    assert store.handler_facts(wid)[(wid, "handle")].wake_reason == "backoff timeout"


# ---------------------------------------------------------------- leases (SPEC §13)


@dataclass
class Holder:
    store: Store
    owner: str


def test_a_host_takes_every_free_lease_and_no_other_host_can_while_it_renews(
        store: Store, clock: FakeClock) -> None:
    a_id, _ = deploy(store, "a")
    b_id, _ = deploy(store, "b")
    mine = Leases(Holder(store, "m1:1:x"), is_dead=lambda _: False)
    theirs = Leases(Holder(store, "m2:2:y"), is_dead=lambda _: False)
    assert mine.acquire_all() == {a_id, b_id}
    assert mine.acquire_all() == set()  # already held: nothing new
    assert theirs.acquire_all() == set()
    for _ in range(3):  # renewed inside the lifetime: never free
        clock.advance(LEASE_TTL.total_seconds() - 1)
        mine.renew()
        assert theirs.acquire_all() == set()
    assert mine.held() == {a_id, b_id}


def test_an_expired_lease_is_taken_over_and_the_old_holder_commits_nothing(
        store: Store, clock: FakeClock) -> None:
    wid, vid = deploy(store, "a")
    mine = Leases(Holder(store, "m1:1:x"), is_dead=lambda _: False)
    theirs = Leases(Holder(store, "m2:2:y"), is_dead=lambda _: False)
    mine.acquire_all()
    old = mine.fence(wid)
    assert old is not None
    clock.advance(LEASE_TTL.total_seconds() + 1)
    assert theirs.acquire_all() == {wid}
    new = theirs.fence(wid)
    assert new is not None
    assert new.token > old.token
    with pytest.raises(LeaseLost):
        store.checkpoint_run(runs.draft(wid, vid, clock.now(), S.RUNNING), old)
    assert store.run_list(wid) == []
    store.checkpoint_run(runs.draft(wid, vid, clock.now(), S.RUNNING), new)


def test_the_lease_of_a_dead_process_is_taken_at_once_and_a_release_frees_them(
        store: Store, clock: FakeClock) -> None:
    wid, _ = deploy(store, "a")
    Leases(Holder(store, "m1:1:x")).acquire_all()
    alive = Leases(Holder(store, "m2:2:y"), is_dead=lambda _: False)
    assert alive.acquire_all() == set()
    heir = Leases(Holder(store, "m3:3:z"), is_dead=lambda owner: owner == "m1:1:x")
    assert heir.acquire_all() == {wid}
    heir.release_all()
    assert heir.held() == set()
    assert alive.acquire_all() == {wid}
