"""Consumers: prepare → mutate → next (SPEC §5), on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from keepflow import service
from keepflow.errors import Conflict
from keepflow.model import RunStatus
from tests.support.sink import Sink
from tests.support.workflows import (
    RECONCILABLE_POST,
    consumer_js,
    deploy_source,
    events_of,
    run_detail,
    seed_producer,
    workflow_js,
)

pytestmark = pytest.mark.integration

POST = RECONCILABLE_POST
NEXT_PUBLISH = """
      if (mutation.status === "applied")
        await ctx.publish("done", { messageId: "done-" + prepared.data.event.messageId,
                                    title: "Done " + prepared.data.event.title,
                                    payload: mutation.result });
      return { last: prepared.data.event.messageId, status: mutation.status };"""


def two_stage(mutate: str = POST, next_: str = NEXT_PUBLISH) -> str:
    return workflow_js(topics=("items", "done"), producers=seed_producer(["a", "b"]),
                       consumers=consumer_js(mutate=mutate, next_=next_)
                       + consumer_js("sinkdone", topic="done"))


def test_happy_path_applied_then_next_commits_atomically(host, tmp_path: Path, sink: Sink
                                                         ) -> None:
    deploy_source(host, tmp_path, two_stage())
    service.trigger(host, "wf", "seed")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.COMMITTED
    assert len(sink.applied) == 1
    detail = run_detail(host, out.run_id)
    assert [t["to"] for t in detail["transitions"]] == [
        "preparing", "prepared", "mutating", "mutated", "emitting", "committed"]
    [m] = detail["mutations"]
    assert m["status"] == "applied"
    assert m["idempotencyKey"] == sink.applied[0].key
    assert detail["mutationResult"]["status"] == "applied"
    assert detail["reservations"] == [
        {"topic": "items", "messageId": "a", "title": "Item a", "attempt": 1,
         "outcome": "consumed"}]
    assert [e["messageId"] for e in detail["published"]] == ["done-a"]
    evs = {e["messageId"]: e for e in events_of(host)}
    assert evs["a"]["status"] == "consumed"
    assert evs["a"]["reservedBy"] is None
    assert evs["b"]["status"] == "pending"
    assert evs["done-a"]["status"] == "pending"
    wid = host.store.get_workflow("wf").id
    assert host.store.load_state(wid, "work") == (True, {"last": "a", "status": "applied"})
    shown = service.show_event(host, "wf", "items", "a")
    assert shown["reservations"][0]["runId"] == out.run_id
    assert shown["reservations"][0]["runStatus"] == "committed"
    assert [h["status"] for h in shown["history"]] == ["pending", "pending", "consumed"]


def test_drain_runs_consumers_until_none_is_ready(host, tmp_path: Path, sink: Sink) -> None:
    deploy_source(host, tmp_path, two_stage())
    service.trigger(host, "wf", "seed")
    report = service.drain(host)
    assert [r.status for r in report.runs] == [RunStatus.COMMITTED] * 4
    # oldest pending event first (SPEC §7.1): a, b on items, then done-a, done-b
    assert [r.handler for r in report.runs] == ["work", "work", "sinkdone", "sinkdone"]
    assert all(e["status"] == "consumed" for e in events_of(host))
    assert len(sink.applied) == 2
    assert service.drain(host).runs == []


def test_empty_reservations_skip_mutate_call_next_and_sleep(host, tmp_path: Path) -> None:
    """SPEC §15 scenario 5."""
    more = """
    more: async (ctx) => { await ctx.publish("items", { messageId: "c", title: "Item c" }); },"""
    src = workflow_js(producers=seed_producer(["a"]) + more, consumers=consumer_js(
        prepare='return { reservations: [], data: { why: "nothing" } };',
        mutate='throw new Error("mutate must not run");',
        next_='return { saw: mutation.status, data: prepared.data };'))
    deploy_source(host, tmp_path, src)
    service.trigger(host, "wf", "seed")
    report = service.drain(host)
    assert len(report.runs) == 1
    out = report.runs[0]
    assert out.status is RunStatus.COMMITTED
    detail = run_detail(host, out.run_id)
    assert [t["to"] for t in detail["transitions"]] == [
        "preparing", "prepared", "emitting", "committed"]
    assert detail["mutations"] == []
    wid = host.store.get_workflow("wf").id
    assert host.store.load_state(wid, "work") == (
        True, {"saw": "none", "data": {"why": "nothing"}})
    assert events_of(host)[0]["status"] == "pending"
    # asleep: draining again runs nothing although the event is pending
    assert service.drain(host).runs == []
    # a new publish to the subscribed topic wakes it
    service.trigger(host, "wf", "more")
    assert len(service.drain(host).runs) == 1


def test_sleeping_consumer_wakes_after_backoff_timeout(host, tmp_path: Path, clock) -> None:
    src = workflow_js(producers=seed_producer(["a"]), consumers=consumer_js(
        prepare="return { reservations: [], data: {} };"))
    deploy_source(host, tmp_path, src)
    service.trigger(host, "wf", "seed")
    assert len(service.drain(host).runs) == 1
    assert service.drain(host).runs == []
    clock.advance(301)  # policy consumer.backoff_timeout_seconds = 300
    assert len(service.drain(host).runs) == 1


def test_manual_trigger_runs_a_sleeping_consumer(host, tmp_path: Path) -> None:
    src = workflow_js(producers=seed_producer(["a"]), consumers=consumer_js(
        prepare="return { reservations: [], data: {} };"))
    deploy_source(host, tmp_path, src)
    service.trigger(host, "wf", "seed")
    service.drain(host)
    assert service.trigger(host, "wf", "work").status is RunStatus.COMMITTED


def test_mutate_without_mutation_call_gives_none_and_consumes(host, tmp_path: Path) -> None:
    """SPEC §15 scenario 6."""
    src = workflow_js(producers=seed_producer(["a"]), consumers=consumer_js(
        mutate="const x = 1 + 1;", next_="return { saw: mutation.status };"))
    deploy_source(host, tmp_path, src)
    service.trigger(host, "wf", "seed")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.COMMITTED
    assert events_of(host)[0]["status"] == "consumed"
    wid = host.store.get_workflow("wf").id
    assert host.store.load_state(wid, "work") == (True, {"saw": "none"})
    detail = run_detail(host, out.run_id)
    assert detail["mutations"] == []
    assert [t["to"] for t in detail["transitions"]][-3:] == ["mutated", "emitting", "committed"]


def test_next_returning_undefined_keeps_state(host, tmp_path: Path) -> None:
    src = workflow_js(producers=seed_producer(["a", "b"]), consumers=consumer_js(
        mutate="", next_="if (prepared.data.event.messageId === 'a') return { first: true };"))
    deploy_source(host, tmp_path, src)
    service.trigger(host, "wf", "seed")
    service.drain(host)
    wid = host.store.get_workflow("wf").id
    assert host.store.load_state(wid, "work") == (True, {"first": True})


def test_prepare_throws_nothing_reserved_nothing_external(host, tmp_path: Path, sink: Sink
                                                          ) -> None:
    """SPEC §15 scenario 3."""
    src = workflow_js(producers=seed_producer(["a"]), consumers=consumer_js(
        prepare='await ctx.peek("items", { limit: 5 }); throw new TypeError("bad prepare");',
        mutate=POST))
    deploy_source(host, tmp_path, src)
    service.trigger(host, "wf", "seed")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.FAILED
    assert out.failure is not None
    assert out.failure["class"] == "logic"
    assert out.failure["phase"] == "prepare"
    assert "TypeError" in out.failure["message"]
    assert "bad prepare" in out.failure["message"]
    ev = events_of(host)[0]
    assert ev["status"] == "pending"
    assert ev["reservedBy"] is None
    assert sink.requests == []
    wf = service.list_workflows(host)[0]
    assert wf["status"] == "needs_action"
    assert "work failed (logic)" in wf["statusReason"]


@pytest.mark.parametrize(("prepare", "needle"), [
    ('return { reservations: [{ topic: "items", ids: ["gone"] }], data: {} };',
     "no such event exists"),
    ('return { reservations: [{ topic: "done", ids: ["a"] }], data: {} };',
     "does not subscribe"),
    ('return { reservations: [{ topic: "items", ids: ["a"] }], data: {} };',
     "already consumed"),
    ("return { reservations: 5 };", "`reservations` is"),
    ("return 42;", "prepare must return"),
])
def test_invalid_reservations_are_logic_failures_naming_event_and_rule(
        host, tmp_path: Path, prepare: str, needle: str) -> None:
    """SPEC §15 scenario 4."""
    src = workflow_js(topics=("items", "done"), producers=seed_producer(["a"]),
                      consumers=consumer_js(mutate="") + consumer_js("other", topic="done"))
    deploy_source(host, tmp_path, src)
    service.trigger(host, "wf", "seed")
    if "already consumed" in needle:
        assert service.trigger(host, "wf", "work").status is RunStatus.COMMITTED
    deploy_source(host, tmp_path, src.replace("const evs = await", "if (true) { " + prepare
                                              + " }\n      const evs = await", 1), "v2.js")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.FAILED
    assert out.failure is not None
    assert out.failure["class"] == "logic"
    assert needle in out.failure["message"]
    assert all(e["reservedBy"] is None for e in events_of(host))


def test_reserving_an_event_held_by_a_failed_run_is_refused(host, tmp_path: Path,
                                                            sink: Sink) -> None:
    src = workflow_js(producers=seed_producer(["a"]), consumers=consumer_js(mutate=POST))
    deploy_source(host, tmp_path, src)
    service.trigger(host, "wf", "seed")
    sink.set_plan("reject_400")
    failed = service.trigger(host, "wf", "work")
    assert failed.status is RunStatus.FAILED
    forced = src.replace("const evs = await", 'return { reservations: [{ topic: "items", '
                                               'ids: ["a"] }], data: {} };\n const evs = await')
    deploy_source(host, tmp_path, forced, "v2.js")
    out = service.trigger(host, "wf", "work")
    assert out.failure is not None
    assert f"reserved by run {failed.run_id}" in out.failure["message"]


def test_one_active_run_per_workflow_other_workflows_keep_running(host, tmp_path: Path,
                                                                  sink: Sink) -> None:
    """SPEC §15 scenario 15: a suspended run blocks its workflow only."""
    deploy_source(host, tmp_path, workflow_js(producers=seed_producer(["a", "b"]),
                                              consumers=consumer_js(mutate=POST)))
    other = workflow_js(name="other", producers=seed_producer(["x"]),
                        consumers=consumer_js(mutate=POST))
    deploy_source(host, tmp_path, other, "other.js")
    service.trigger(host, "wf", "seed")
    service.trigger(host, "other", "seed")
    sink.set_plan("apply_then_timeout")
    sink.lookup_plan.append("unavailable_503")  # reconcile cannot tell yet → needs_reconcile
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.SUSPENDED
    with pytest.raises(Conflict, match="unfinished run"):
        service.trigger(host, "wf", "seed")
    report = service.drain(host)
    assert "wf" in report.blocked
    assert [r.handler for r in report.runs] == ["work"]
    assert events_of(host, "other")[0]["status"] == "consumed"


def test_skip_pending_event_and_refuse_skipping_reserved(host, tmp_path: Path, sink: Sink
                                                         ) -> None:
    """SPEC §15 scenario 16."""
    deploy_source(host, tmp_path, workflow_js(producers=seed_producer(["a", "b"]),
                                              consumers=consumer_js(mutate=POST)))
    service.trigger(host, "wf", "seed")
    wid = host.store.get_workflow("wf").id
    skipped = host.store.skip_event(wid, "items", "a", "tester")
    assert skipped.status.value == "skipped"
    sink.set_plan("reject_400")
    failed = service.trigger(host, "wf", "work")  # reserves b, fails, keeps the reservation
    assert run_detail(host, failed.run_id)["reservations"][0]["messageId"] == "b"
    with pytest.raises(Conflict, match="reserved by run"):
        host.store.skip_event(wid, "items", "b", "tester")
    with pytest.raises(Conflict, match="already skipped"):
        host.store.skip_event(wid, "items", "a", "tester")
    audit = host.store.audit_entries("event")
    assert [a["action"] for a in audit] == ["event.skip"]
    assert audit[0]["before"] == {"status": "pending"}
    assert audit[0]["after"] == {"status": "skipped"}
    # no run will ever reserve the skipped event
    assert all(e["messageId"] != "a" for e in
               (r for r in run_detail(host, failed.run_id)["reservations"]))


def test_a_workflow_leased_by_another_host_is_not_run_here(host, tmp_path: Path) -> None:
    """SPEC §13: one host runs a workflow at a time; the others leave it alone."""
    deploy_source(host, tmp_path, workflow_js(producers=seed_producer(["a"]),
                                              consumers=consumer_js()))
    service.trigger(host, "wf", "seed")
    wid = host.store.get_workflow("wf").id
    assert host.store.acquire_lease(wid, "another-machine:4242:abcd") is not None
    report = service.drain(host)
    assert report.runs == []
    assert "another keepflow process" in report.blocked["wf"]
    with pytest.raises(Conflict, match="another keepflow process"):
        service.trigger(host, "wf", "work")
    assert events_of(host)[0]["status"] == "pending"
