"""The scheduler's decisions (SPEC §7) as pure functions: plain records and an instant in, a
typed decision out. No store, no threads, no sleeping (``keepflow.scheduler.core``; the loop's
own small decisions live in ``loop``, ``leases`` and ``dispatch``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from keepflow.errors import Cancelled, Conflict, LeaseLost, NotFound, PermanentError
from keepflow.model import RunKind, RunStatus, WorkflowRecord, WorkflowStatus
from keepflow.runtime.outcome import RunOutcome
from keepflow.scheduler import core
from keepflow.scheduler.core import (
    CRASH_BACKOFF_MAX_SECONDS,
    Due,
    RunRequest,
    Slot,
    after_run,
    check_trigger,
    choose_run,
    crash_backoff,
    decide_tick,
    load_slot,
    reconcile_dues,
    sleeping_until,
    unfinished_block,
)
from keepflow.scheduler.dispatch import Route, route
from keepflow.scheduler.leases import RENEW_SECONDS, newly_held, renewal_due, stale_owners
from keepflow.scheduler.loop import MAX_SLEEP_SECONDS, stop_log, wait_seconds
from keepflow.workflow import ConsumerSpec, ProducerSpec, Schedule, WorkflowManifest

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
EVERY_5M = Schedule("interval", interval_seconds=300)
NINE_AM_BERLIN = Schedule("cron", cron="0 9 * * *", tz="Europe/Berlin")
MANIFEST = WorkflowManifest(
    name="wf", topics=("t",),
    producers={"poll": ProducerSpec(EVERY_5M), "daily": ProducerSpec(NINE_AM_BERLIN),
               "seed": ProducerSpec(None)},
    consumers={"handle": ConsumerSpec(("t",)), "other": ConsumerSpec(("t",))})


@dataclass(frozen=True)
class Facts:
    last_fired_at: datetime | None = None
    sleep_until: datetime | None = None


def workflow(status: WorkflowStatus = WorkflowStatus.ACTIVE, wid: str = "w1") -> WorkflowRecord:
    return WorkflowRecord(id=wid, name="wf", status=status, status_reason=None,
                          current_version_id="v", created_at=NOW, updated_at=NOW)


def slot(status: WorkflowStatus = WorkflowStatus.ACTIVE, **fields: object) -> Slot:
    s = Slot("w1", "wf", status, MANIFEST, dirty=False)
    for k, v in fields.items():
        setattr(s, k, v)
    return s


def request(handler: str = "handle", kind: RunKind = RunKind.CONSUMER,
            trigger: core.Trigger = "event") -> RunRequest:
    return RunRequest("w1", "wf", handler, kind, trigger)


def outcome(status: RunStatus, kind: RunKind = RunKind.CONSUMER) -> RunOutcome:
    return RunOutcome("r1", "handle", kind, status)


def dues_of(dues: list[Due], kind: str) -> dict[str, datetime]:
    return {d.handler: d.at for d in dues if d.kind == kind}


# ---------------------------------------------------------------- start-up and due producers


def test_at_first_start_an_interval_producer_is_due_now_a_cron_one_at_its_next_time() -> None:
    s, dues = load_slot(workflow(), MANIFEST, None, {}, None, NOW)
    assert dues_of(dues, "tick") == {
        "poll": NOW,  # a new automation shows it works
        "daily": datetime(2026, 3, 3, 8, 0, tzinfo=UTC),  # 09:00 in Berlin (CET) tomorrow
    }
    assert "seed" not in dues_of(dues, "tick")  # manual only
    assert (s.generation, s.blocked, s.resume, s.dirty) == (0, None, None, True)


def test_an_interval_stays_anchored_on_its_last_fire() -> None:
    facts = {("w1", "poll"): Facts(last_fired_at=NOW - timedelta(seconds=100))}
    _, dues = load_slot(workflow(), MANIFEST, None, facts, None, NOW)
    assert dues_of(dues, "tick")["poll"] == NOW + timedelta(seconds=200)


def test_ticks_missed_while_the_host_was_down_collapse_into_one_now() -> None:
    facts = {("w1", "poll"): Facts(last_fired_at=NOW - timedelta(hours=5)),
             ("w1", "daily"): Facts(last_fired_at=NOW - timedelta(days=3))}
    _, dues = load_slot(workflow(), MANIFEST, None, facts, None, NOW)
    assert dues_of(dues, "tick") == {"poll": NOW, "daily": NOW}


def test_a_sleeping_consumer_gets_a_wake_up_only_while_it_still_sleeps() -> None:
    facts = {("w1", "handle"): Facts(sleep_until=NOW + timedelta(seconds=30)),
             ("w1", "other"): Facts(sleep_until=NOW)}  # its backoff is already over
    _, dues = load_slot(workflow(), MANIFEST, None, facts, None, NOW)
    assert dues_of(dues, "wake") == {"handle": NOW + timedelta(seconds=30)}
    assert sleeping_until(None, NOW) is None
    assert sleeping_until(Facts(sleep_until=NOW + timedelta(seconds=1)), NOW) == \
        NOW + timedelta(seconds=1)


@pytest.mark.parametrize(("status", "blocked", "resume"), [
    ("suspended", "run r9 (handle) is suspended", None),
    ("mutating", None, ("r9", "handle")),
    ("emitting", None, ("r9", "handle")),
])
def test_an_unfinished_run_blocks_the_workflow_or_is_carried_on(
        status: str, blocked: str | None, resume: tuple[str, str] | None) -> None:
    assert unfinished_block(("r9", "handle", status)) == (blocked, resume)
    s, _ = load_slot(workflow(), MANIFEST, ("r9", "handle", status), {}, None, NOW)
    assert (s.blocked, s.resume) == (blocked, resume)
    assert unfinished_block(None) == (None, None)


def test_a_reload_keeps_what_only_the_scheduler_knows_and_bumps_the_generation() -> None:
    busy = request()
    old = slot(generation=3, busy=busy, manual={"seed": None}, crashes=2,
               held_until=NOW + timedelta(seconds=4),
               due_producers={"poll": NOW - timedelta(seconds=1)})
    s, dues = load_slot(workflow(WorkflowStatus.PAUSED), MANIFEST, ("r9", "handle", "suspended"),
                        {}, old, NOW)
    assert (s.generation, s.status, s.busy, s.crashes) == (4, WorkflowStatus.PAUSED, busy, 2)
    assert (s.manual, s.due_producers) == ({"seed": None}, {"poll": NOW - timedelta(seconds=1)})
    assert s.blocked is None  # the unfinished run in the store is the one this slot runs
    assert dues[0] == Due(NOW + timedelta(seconds=4), "retry")  # the backoff still ends
    s.manual.clear()
    assert old.manual == {"seed": None}  # the old slot is not touched


def test_a_workflow_without_a_deployed_version_has_nothing_due() -> None:
    s, dues = load_slot(workflow(), None, None, {}, None, NOW)
    assert dues == []
    assert s.manifest is None


def test_pending_reconciliations_of_the_loaded_workflows_are_due_at_their_time() -> None:
    later = NOW + timedelta(seconds=40)
    pending = [("w1", "r1", "handle", later), ("w1", "r2", "other", None),
               ("w2", "r3", "handle", NOW)]
    assert reconcile_dues(pending, ["w1"], NOW) == [
        ("w1", Due(later, "reconcile", "handle", "r1")),
        ("w1", Due(NOW, "reconcile", "other", "r2")),  # no time recorded: due now
    ]


# ---------------------------------------------------------------- ticks


def test_a_tick_of_an_idle_active_workflow_is_due_and_the_next_is_scheduled() -> None:
    d = decide_tick(slot(), "poll", NOW, NOW)
    assert (d.action, d.next_at) == ("due", NOW + timedelta(seconds=300))


def test_a_tick_processed_late_does_not_burst_into_catch_up_ticks() -> None:
    d = decide_tick(slot(), "poll", NOW, NOW + timedelta(seconds=1000))
    assert (d.action, d.next_at) == ("due", NOW + timedelta(seconds=1200))


def test_a_cron_tick_is_followed_by_the_next_wall_clock_time() -> None:
    nine = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    d = decide_tick(slot(), "daily", nine, nine)
    assert d.next_at == datetime(2026, 3, 4, 8, 0, tzinfo=UTC)


def test_a_tick_that_finds_the_workflow_busy_or_blocked_is_skipped_with_the_reason() -> None:
    busy = decide_tick(slot(busy=request("handle")), "poll", NOW, NOW)
    assert (busy.action, busy.because) == ("skip", "handle is running")
    blocked = decide_tick(slot(blocked="run r9 (handle) is suspended"), "poll", NOW, NOW)
    assert (blocked.action, blocked.because) == ("skip", "run r9 (handle) is suspended")
    assert blocked.next_at == NOW + timedelta(seconds=300)


@pytest.mark.parametrize("status", [WorkflowStatus.PAUSED, WorkflowStatus.NEEDS_ACTION,
                                    WorkflowStatus.DISABLED])
def test_a_tick_of_a_workflow_that_is_not_active_is_ignored_not_counted(
        status: WorkflowStatus) -> None:
    d = decide_tick(slot(status, busy=request()), "poll", NOW, NOW)
    assert (d.action, d.next_at) == ("ignore", NOW + timedelta(seconds=300))


# ---------------------------------------------------------------- what runs next


def test_consumers_run_before_producers_and_the_oldest_pending_event_first() -> None:
    s = slot(dirty=True, due_producers={"poll": NOW})
    assert choose_run(s) == core.RunChoice(ask_ready=True)  # it must look first
    choice = choose_run(s, ["other", "handle"])
    assert choice.request == RunRequest("w1", "wf", "other", RunKind.CONSUMER, "event")


def test_with_no_consumer_ready_the_earliest_due_producer_runs_and_the_slot_is_clean() -> None:
    s = slot(dirty=True, due_producers={"poll": NOW, "daily": NOW - timedelta(seconds=5)})
    choice = choose_run(s, [])
    assert choice.request == RunRequest("w1", "wf", "daily", RunKind.PRODUCER, "schedule",
                                        fired_at=NOW - timedelta(seconds=5))
    assert choice.no_consumer_ready
    assert choose_run(slot(dirty=True), []) == core.RunChoice(no_consumer_ready=True)


def test_a_clean_slot_does_not_ask_the_store_again() -> None:
    assert choose_run(slot(dirty=False)) == core.RunChoice()


def test_the_order_within_a_workflow() -> None:
    """Carry on an unfinished run, then a due reconciliation, then manual consumer triggers,
    then ready consumers, then manual producer triggers, then due producers."""
    s = slot(dirty=True, resume=("r1", "handle"), reconcile_due={"r2": "other"},
             manual={"seed": None, "other": None}, due_producers={"poll": NOW})
    order: list[tuple[str, str]] = []
    for _ in range(6):
        choice = choose_run(s, ["handle"] if s.dirty else None)
        assert choice.request is not None
        r = choice.request
        order.append((r.trigger, r.handler))
        # what the driver does with a choice
        if r.trigger == "resume":
            s.resume = None
        elif r.trigger == "reconcile":
            del s.reconcile_due[r.run_id or ""]
        elif r.trigger == "manual":
            del s.manual[r.handler]
        elif r.trigger == "event":
            s.dirty = False
        else:
            del s.due_producers[r.handler]
    assert order == [("resume", "handle"), ("reconcile", "other"), ("manual", "other"),
                     ("event", "handle"), ("manual", "seed"), ("schedule", "poll")]
    assert choose_run(s) == core.RunChoice()


def test_a_manual_consumer_trigger_records_why_the_consumer_woke() -> None:
    choice = choose_run(slot(manual={"handle": None}))
    assert choice.request == RunRequest("w1", "wf", "handle", RunKind.CONSUMER, "manual")
    assert choice.wake_reason == "manual trigger"


def test_queued_triggers_of_handlers_a_new_version_dropped_are_dropped() -> None:
    choice = choose_run(slot(manual={"gone": None, "seed": None}))
    assert choice.request is not None
    assert (choice.request.handler, choice.dropped) == ("seed", ("gone",))
    assert choose_run(slot(manual={"gone": None})) == core.RunChoice(dropped=("gone",))


def test_a_blocked_workflow_runs_nothing_but_its_own_unfinished_run() -> None:
    s = slot(blocked="run r9 (handle) is suspended", dirty=True, manual={"seed": None},
             due_producers={"poll": NOW})
    assert choose_run(s, ["handle"]) == core.RunChoice()
    s.reconcile_due = {"r9": "handle"}
    assert choose_run(s).request == RunRequest("w1", "wf", "handle", RunKind.CONSUMER,
                                               "reconcile", run_id="r9")


@pytest.mark.parametrize("status", [WorkflowStatus.PAUSED, WorkflowStatus.NEEDS_ACTION])
def test_a_workflow_that_is_not_active_runs_only_manual_triggers(status: WorkflowStatus) -> None:
    s = slot(status, dirty=True, due_producers={"poll": NOW})
    assert choose_run(s) == core.RunChoice()
    s.manual = {"seed": None}
    assert choose_run(s).request == RunRequest("w1", "wf", "seed", RunKind.PRODUCER, "manual")


def test_after_a_crash_only_a_persons_trigger_runs() -> None:
    held = slot(held_until=NOW + timedelta(seconds=2), dirty=True, resume=("r1", "handle"),
                due_producers={"poll": NOW})
    assert not held.has_work()
    assert choose_run(held, ["handle"]) == core.RunChoice()
    held.manual = {"handle": None}
    assert held.has_work()
    assert choose_run(held).request == RunRequest("w1", "wf", "handle", RunKind.CONSUMER,
                                                  "manual")


# ---------------------------------------------------------------- when runs end: backoff


def test_the_crash_backoff_doubles_up_to_five_minutes() -> None:
    assert [crash_backoff(n) for n in (1, 2, 3, 4, 9, 10, 50, 10_000)] == [
        1, 2, 4, 8, 256, 300, 300, 300]
    assert CRASH_BACKOFF_MAX_SECONDS == 300


def test_each_crash_in_a_row_holds_the_workflow_back_longer() -> None:
    s = slot()
    holds = []
    for _ in range(4):
        end = after_run(s, request(), None, NOW)
        s.crashes = end.crashes
        assert (end.refresh, end.check_sleep, end.status) == (True, False, "error")
        assert end.hold_until is not None
        holds.append((end.hold_until - NOW).total_seconds())
    assert holds == [1, 2, 4, 8]


def test_a_run_that_ends_with_an_outcome_resets_the_crash_count() -> None:
    end = after_run(slot(crashes=5), request(), outcome(RunStatus.COMMITTED), NOW)
    assert (end.crashes, end.hold_until, end.status) == (0, None, "committed")


@pytest.mark.parametrize(("status", "kind", "refresh", "check_sleep"), [
    (RunStatus.COMMITTED, RunKind.CONSUMER, False, True),
    (RunStatus.COMMITTED, RunKind.PRODUCER, False, False),
    (RunStatus.FAILED, RunKind.CONSUMER, True, False),
    (RunStatus.SUSPENDED, RunKind.CONSUMER, True, False),
])
def test_what_a_run_end_makes_the_driver_look_at(status: RunStatus, kind: RunKind,
                                                 refresh: bool, check_sleep: bool) -> None:
    end = after_run(slot(), request(kind=kind), outcome(status, kind), NOW)
    assert (end.refresh, end.check_sleep, end.status) == (refresh, check_sleep, status.value)


# ---------------------------------------------------------------- manual triggers


def test_a_trigger_is_refused_with_the_reason() -> None:
    with pytest.raises(NotFound, match="w9 has no deployed version"):
        check_trigger(None, "w9", "seed")
    with pytest.raises(NotFound, match=r"no handler 'nope' \(handlers: daily, handle, other"):
        check_trigger(slot(), "w1", "nope")
    with pytest.raises(Conflict, match="is disabled; resume it first"):
        check_trigger(slot(WorkflowStatus.DISABLED), "w1", "seed")
    with pytest.raises(Conflict, match="unfinished run r9"):
        check_trigger(slot(blocked="run r9 (handle) is suspended"), "w1", "seed")


def test_a_busy_or_paused_workflow_may_be_triggered() -> None:
    check_trigger(slot(busy=request()), "w1", "seed")
    check_trigger(slot(WorkflowStatus.PAUSED), "w1", "handle")


# ---------------------------------------------------------------- the loop's own decisions


@pytest.mark.parametrize(("req", "where"), [
    (RunRequest("w", "wf", "h", RunKind.CONSUMER, "reconcile", run_id="r"), Route.RECONCILE),
    (RunRequest("w", "wf", "h", RunKind.CONSUMER, "resume", run_id="r"), Route.RESUME),
    (RunRequest("w", "wf", "p", RunKind.PRODUCER, "schedule", NOW), Route.PRODUCER),
    (RunRequest("w", "wf", "p", RunKind.PRODUCER, "manual"), Route.PRODUCER),
    (RunRequest("w", "wf", "h", RunKind.CONSUMER, "event"), Route.CONSUMER),
])
def test_what_is_dispatched_where(req: RunRequest, where: Route) -> None:
    assert route(req) is where


def test_the_loop_sleeps_until_the_next_due_time_or_its_side_work_never_too_long() -> None:
    assert wait_seconds(30.0, None, NOW) == MAX_SLEEP_SECONDS
    assert wait_seconds(0.5, None, NOW) == 0.5
    assert wait_seconds(30.0, NOW + timedelta(seconds=2), NOW) == 2.0
    assert wait_seconds(30.0, NOW - timedelta(seconds=2), NOW) == 0.0  # overdue: at once
    assert wait_seconds(-1.0, None, NOW) == 0.0


def test_leases_are_renewed_once_per_period_well_inside_their_lifetime() -> None:
    from keepflow.model import LEASE_TTL

    assert renewal_due(10.0, 70.0) == (False, 70.0)
    assert renewal_due(70.0, 70.0) == (True, 70.0 + RENEW_SECONDS)
    assert LEASE_TTL.total_seconds() >= RENEW_SECONDS * 3


def test_leases_of_dead_processes_are_taken_and_new_ones_reported() -> None:
    assert stale_owners(["a:1:x", "b:2:y", "a:3:z"], lambda o: o.startswith("a:")) == [
        "a:1:x", "a:3:z"]
    from keepflow.model import Fence

    fences = {w: Fence(w, "me", 1) for w in ("w1", "w2", "w3")}
    assert newly_held({"w1", "w9"}, fences) == {"w2", "w3"}


@pytest.mark.parametrize(("exc", "level", "start"), [
    (LeaseLost("gone"), logging.WARNING, "lost the lease of wf; another host runs it now"),
    (Cancelled("stop"), logging.WARNING, "run of wf.handle stopped: stop"),
    (PermanentError("no"), logging.WARNING, "run of wf.handle stopped: no"),
    (ZeroDivisionError("boom"), logging.ERROR, "run of wf.handle crashed in the host: "
                                               "ZeroDivisionError('boom')"),
])
def test_how_a_run_without_an_outcome_is_logged(exc: BaseException, level: int,
                                                 start: str) -> None:
    got_level, message, args = stop_log(request(), exc)
    assert (got_level, message % args) == (level, start)
