"""Notifications (SPEC §12) on SQLite and PostgreSQL: derived by sweeps from the store's state,
one per problem however often swept, resolved when the problem goes away."""

from __future__ import annotations

import threading

import pytest

from keepflow.clock import FakeClock
from keepflow.model import (
    EventClaim,
    NotificationKind,
    Reservation,
    RunKind,
    RunStatus,
    WebhookStatus,
    WorkflowStatus,
)
from keepflow.notifications import sweep
from keepflow.policies import NotificationPolicy, Policy, PolicyBook
from keepflow.store.store import Store
from tests.support import runs
from tests.support.notify import DAY, REASON, open_now, publish, run, workflow

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------------ needs action


def test_one_notification_per_problem_however_many_sweeps(store: Store,
                                                          clock: FakeClock) -> None:
    wf = workflow(store)
    store.set_workflow_status(wf[0], WorkflowStatus.NEEDS_ACTION, REASON, "test")
    reports = [sweep(store, PolicyBook(), clock.now()) for _ in range(3)]
    assert [len(r.opened) for r in reports] == [1, 0, 0]
    [n] = open_now(store)
    assert (n.kind, n.workflow, n.title, n.body) == (
        NotificationKind.NEEDS_ACTION, "wf", "wf needs action", REASON)
    assert n.webhook_status is WebhookStatus.NONE


def test_resolved_when_the_problem_goes_away_and_new_when_it_comes_back(
        store: Store, clock: FakeClock) -> None:
    wf = workflow(store)
    policies = PolicyBook()
    store.set_workflow_status(wf[0], WorkflowStatus.NEEDS_ACTION, REASON, "test")
    sweep(store, policies, clock.now())
    first = open_now(store)[0]
    clock.advance(60)
    store.set_workflow_status(wf[0], WorkflowStatus.ACTIVE, None, "test")
    assert sweep(store, policies, clock.now()).resolved == 1
    assert open_now(store) == []
    [old] = store.list_notifications()
    assert old.status == "resolved"
    assert old.resolved_at == clock.now()
    store.set_workflow_status(wf[0], WorkflowStatus.NEEDS_ACTION, REASON, "test")
    sweep(store, policies, clock.now())
    [again] = open_now(store)
    assert again.id != first.id
    assert again.key == first.key


def test_a_new_reason_replaces_the_notification(store: Store, clock: FakeClock) -> None:
    wf = workflow(store)
    store.set_workflow_status(wf[0], WorkflowStatus.NEEDS_ACTION, REASON, "test")
    sweep(store, PolicyBook(), clock.now())
    store.set_workflow_status(wf[0], WorkflowStatus.NEEDS_ACTION, "approve permission Y",
                              "test")
    report = sweep(store, PolicyBook(), clock.now())
    assert report.resolved == 1
    assert len(report.opened) == 1
    assert [n.body for n in open_now(store)] == ["approve permission Y"]


def test_opening_is_race_safe(store: Store, clock: FakeClock) -> None:
    wf = workflow(store)
    results: list[bool] = []
    start = threading.Barrier(8)

    def open_one() -> None:
        start.wait()
        results.append(store.open_notification(NotificationKind.NEEDS_ACTION, wf[0], "k",
                                               "t", "b", webhook=False))

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert len(open_now(store)) == 1


def test_disabled_workflows_are_not_notified(store: Store, clock: FakeClock) -> None:
    wf = workflow(store)
    store.set_workflow_status(wf[0], WorkflowStatus.NEEDS_ACTION, REASON, "test")
    sweep(store, PolicyBook(), clock.now())
    store.set_workflow_status(wf[0], WorkflowStatus.DISABLED, "off", "test")
    sweep(store, PolicyBook(), clock.now())
    assert open_now(store) == []


# ------------------------------------------------------------------------ stale events


def test_stale_events_exactly_at_the_threshold(store: Store, clock: FakeClock) -> None:
    wf = workflow(store)
    policies = PolicyBook()  # stale_event_days = 7
    publish(store, wf, clock, "1")
    clock.advance(3600)
    publish(store, wf, clock, "2")
    publish(store, wf, clock, "3", topic="other")
    clock.advance(7 * DAY - 3600)
    sweep(store, policies, clock.now())
    assert open_now(store) == []  # exactly 7 days is not older than 7 days
    clock.advance(1)
    sweep(store, policies, clock.now())
    [n] = open_now(store)
    assert (n.kind, n.key) == (NotificationKind.STALE_EVENTS, "items")
    assert "1 pending event(s)" in n.body
    assert '"Invoice 1"' in n.body
    clock.advance(3600)  # now both events of "items" and the one of "other" are stale
    sweep(store, policies, clock.now())
    assert sorted(n.key for n in open_now(store)) == ["items", "other"]  # still one per topic
    for mid in ("1", "2"):
        store.skip_event(wf[0], "items", mid, "test")
    assert sweep(store, policies, clock.now()).resolved == 1
    assert [n.key for n in open_now(store)] == ["other"]


def test_stale_threshold_is_per_workflow_and_ignores_reserved_events(
        store: Store, clock: FakeClock) -> None:
    quick, slow = workflow(store, "quick"), workflow(store, "slow")
    policies = PolicyBook(overrides={"quick": {"consumer": {"stale_event_days": 1}}})
    publish(store, quick, clock, "q")
    publish(store, slow, clock, "s")
    publish(store, slow, clock, "r", topic="held")
    store.checkpoint_run(
        runs.draft(slow[0], slow[1], clock.now(), RunStatus.PREPARED, kind=RunKind.CONSUMER,
                   handler="c"),
        None, claim=EventClaim((Reservation("held", ("r",)),), ("held",)))
    clock.advance(2 * DAY)
    sweep(store, policies, clock.now())
    assert [(n.workflow, n.key) for n in open_now(store)] == [("quick", "items")]
    clock.advance(6 * DAY)
    sweep(store, policies, clock.now())
    assert sorted((n.workflow, n.key) for n in open_now(store)) == [("quick", "items"),
                                                                 ("slow", "items")]


def test_the_stale_query_uses_the_ready_index_on_sqlite(store: Store, clock: FakeClock
                                                        ) -> None:
    if store.dialect != "sqlite":
        pytest.skip("SQLite plans without statistics; PostgreSQL has them")
    from keepflow.store.notification_records import stale_query

    with store.read() as conn:
        compiled = stale_query(clock.now(), ["a", "b"]).compile(
            conn, compile_kwargs={"render_postcompile": True})
        params = tuple(str(compiled.params[k]) for k in compiled.positiontup or ())
        plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + str(compiled), params))
    assert "ix_events_ready" in plan, plan
    assert "ix_events_reserved_by" not in plan, plan


# ------------------------------------------------------------------------ repeated failures


def test_repeated_failures_count_only_consecutive_failures_of_one_handler(
        store: Store, clock: FakeClock) -> None:
    wf = workflow(store)
    policies = PolicyBook()  # consecutive_failures = 3
    for handler, status in [("h", RunStatus.FAILED), ("h", RunStatus.COMMITTED),
                            ("h", RunStatus.FAILED), ("g", RunStatus.FAILED),
                            ("h", RunStatus.FAILED), ("g", RunStatus.COMMITTED)]:
        run(store, wf, clock, handler, status)
    sweep(store, policies, clock.now())
    assert open_now(store) == []  # h: 2 in a row (a commit broke the streak), g: last committed
    run(store, wf, clock, "g", RunStatus.FAILED)
    run(store, wf, clock, "h", RunStatus.FAILED, "boom 3")
    for _ in range(2):
        sweep(store, policies, clock.now())
    [n] = open_now(store)
    assert (n.kind, n.key) == (NotificationKind.REPEATED_FAILURES, "h")
    assert "h failed 3 time(s) in a row" in n.title
    assert "logic: boom 3" in n.body
    run(store, wf, clock, "h", RunStatus.RUNNING)  # in progress: not yet an answer
    sweep(store, policies, clock.now())
    assert len(open_now(store)) == 1
    run(store, wf, clock, "h", RunStatus.COMMITTED)
    assert sweep(store, policies, clock.now()).resolved == 1
    assert open_now(store) == []


def test_repeated_failures_threshold_is_a_policy(store: Store, clock: FakeClock) -> None:
    wf = workflow(store)
    policies = PolicyBook(Policy(notifications=NotificationPolicy(consecutive_failures=1)))
    run(store, wf, clock, "h", RunStatus.FAILED)
    sweep(store, policies, clock.now())
    assert [n.key for n in open_now(store)] == ["h"]
