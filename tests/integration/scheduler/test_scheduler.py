"""The scheduler (SPEC §7) driven step by step with a fake clock: real store, real sandbox,
real executor; exact and fast, no sleeping."""

from __future__ import annotations

from pathlib import Path

import pytest

from keepflow import service
from keepflow.errors import Conflict
from keepflow.model import RunKind, RunStatus, WorkflowStatus
from keepflow.runtime.host import Host
from keepflow.scheduler.dispatch import execute
from keepflow.scheduler.inline import InlineDriver
from tests.support.workflows import consumer_js, deploy_source, events_of, workflow_js

pytestmark = pytest.mark.integration

COUNTER = """
    tick: {
      schedule: { interval: "1m" },
      async handler(ctx, state) {
        const n = (state?.n ?? 0) + 1;
        await ctx.publish("items", { messageId: "t" + n, title: "Tick " + n,
                                     payload: { go: true } });
        return { n };
      },
    },"""
# Reserves only events whose payload says go: anything else leaves the consumer asleep.
PICKY = """
      const evs = await ctx.peek("items", { limit: 10 });
      const e = evs.find((x) => x.payload && x.payload.go);
      if (!e) return { reservations: [], data: {} };
      return { reservations: [{ topic: "items", ids: [e.messageId] }], data: { event: e } };"""
PUBLISH_NOGO = """
    nogo: async (ctx, state) => {
      const n = (state?.n ?? 0) + 1;
      await ctx.publish("items", { messageId: "n" + n, title: "No-go " + n,
                                   payload: { go: false } });
      return { n };
    },
    go: async (ctx, state) => {
      const n = (state?.n ?? 0) + 1;
      await ctx.publish("items", { messageId: "g" + n, title: "Go " + n, payload: { go: true } });
      return { n };
    },"""


def driver(host: Host) -> InlineDriver:
    d = InlineDriver(host)
    d.start()
    return d


def handlers(done: list) -> list[str]:
    return [req.handler for req, _ in done]


def test_interval_producer_fires_on_time_and_consumers_follow(host, tmp_path: Path, clock
                                                              ) -> None:
    deploy_source(host, tmp_path, workflow_js(producers=COUNTER, consumers=consumer_js()))
    d = driver(host)
    # never fired: due at once; then the consumer takes the event
    assert handlers(d.run_until_idle()) == ["tick", "work"]
    assert d.scheduler.next_due() == clock.now().replace() + __import__("datetime").timedelta(
        minutes=1)
    clock.advance(59)
    assert d.run_until_idle() == []
    clock.advance(1)
    assert handlers(d.run_until_idle()) == ["tick", "work"]
    clock.advance(60 * 5)  # five ticks missed by the loop: they collapse into one
    assert handlers(d.run_until_idle()) == ["tick", "work"]
    assert [e["messageId"] for e in events_of(host)] == ["t3", "t2", "t1"]
    assert all(e["status"] == "consumed" for e in events_of(host))


def test_ticks_missed_while_the_host_was_down_collapse_into_one_run(host, tmp_path: Path,
                                                                    clock) -> None:
    deploy_source(host, tmp_path, workflow_js(producers=COUNTER, consumers=consumer_js()))
    d = driver(host)
    d.run_until_idle()
    d.stop()
    clock.advance(3600 * 3)  # the host is down for three hours: 180 ticks missed
    d2 = driver(host)
    assert handlers(d2.run_until_idle()) == ["tick", "work"]
    clock.advance(59)
    assert d2.run_until_idle() == []
    clock.advance(1)
    assert handlers(d2.run_until_idle()) == ["tick", "work"]


def test_a_tick_that_finds_the_workflow_busy_is_skipped_and_counted(host, tmp_path: Path,
                                                                    clock) -> None:
    deploy_source(host, tmp_path, workflow_js(producers=COUNTER, consumers=consumer_js()))
    d = driver(host)
    d.run_until_idle()
    clock.advance(60)
    sched = d.scheduler
    sched.advance(clock.now())
    [req] = sched.take(1)  # the tick's producer run starts…
    clock.advance(60)
    sched.advance(clock.now())  # …and is still running when the next tick comes
    assert sched.counters.skipped_ticks == 1
    sched.finished(req, execute(host, d.leases.fence(req.workflow_id), req))
    assert handlers(d.run_until_idle()) == ["work"]  # the skipped tick is not run later
    facts = host.store.handler_facts()[(req.workflow_id, "tick")]
    assert facts.skipped_ticks == 1
    assert facts.last_skipped_at == clock.now()
    st = service.status(host, "wf")["workflows"][0]
    assert st["producers"][0]["skippedTicks"] == 1


def test_consumer_sleeps_and_wakes_on_publish_timeout_and_manual_trigger(
        host, tmp_path: Path, clock) -> None:
    """SPEC §7.3."""
    deploy_source(host, tmp_path, workflow_js(producers=PUBLISH_NOGO,
                                              consumers=consumer_js(prepare=PICKY)))
    d = driver(host)
    wid = host.store.get_workflow("wf").id
    d.scheduler.trigger(wid, "nogo")
    assert handlers(d.run_until_idle()) == ["nogo", "work"]  # empty reservations → asleep
    st = service.status(host, "wf")["workflows"][0]["consumers"][0]
    assert st["state"] == "sleeping"
    assert "a new event in items" in st["wake"]
    assert d.run_until_idle() == []  # the pending no-go event does not wake it
    # a new publish wakes it
    d.scheduler.trigger(wid, "go")
    assert handlers(d.run_until_idle()) == ["go", "work", "work"]  # g1, then asleep again
    # the backoff timeout (5 min) wakes it
    clock.advance(299)
    assert d.run_until_idle() == []
    clock.advance(1)
    assert handlers(d.run_until_idle()) == ["work"]
    assert host.store.handler_facts()[(wid, "work")].wake_reason == "backoff timeout"
    # a manual trigger wakes it
    d.scheduler.trigger(wid, "work")
    done = d.run_until_idle()
    assert [(r.handler, r.trigger) for r, _ in done] == [("work", "manual")]
    assert host.store.handler_facts()[(wid, "work")].wake_reason == "manual trigger"


def test_triggers_while_busy_are_queued_and_coalesce(host, tmp_path: Path) -> None:
    deploy_source(host, tmp_path, workflow_js(producers=PUBLISH_NOGO,
                                              consumers=consumer_js(prepare=PICKY)))
    d = driver(host)
    wid = host.store.get_workflow("wf").id
    sched = d.scheduler
    sched.trigger(wid, "go")
    [running] = sched.take(4)
    for _ in range(3):
        sched.trigger(wid, "nogo")
    assert sched.take(4) == []  # one run per workflow at a time
    sched.finished(running, execute(host, d.leases.fence(wid), running))
    done = d.run_until_idle()
    assert [(r.handler, r.trigger) for r, _ in done] == [
        ("work", "event"), ("nogo", "manual"), ("work", "event")]


def test_consumers_before_producers_oldest_pending_event_first(host, tmp_path: Path,
                                                               clock) -> None:
    src = workflow_js(topics=("a", "b"), producers=COUNTER.replace('"items"', '"a"'),
                      consumers=consumer_js("ca", topic="a") + consumer_js("cb", topic="b"))
    src = src.replace("producers: {", """producers: {
    seed: async (ctx) => {
      await ctx.publish("b", { messageId: "b1", title: "B1" });
      await ctx.publish("a", { messageId: "a1", title: "A1" });
      await ctx.publish("b", { messageId: "b2", title: "B2" });
    },""", 1)
    deploy_source(host, tmp_path, src)
    d = driver(host)
    d.run_until_idle()  # the tick and its consumer
    wid = host.store.get_workflow("wf").id
    d.scheduler.trigger(wid, "seed")
    d.step()
    clock.advance(60)  # the producer is due, but consumers come first
    done = d.run_until_idle()
    assert handlers(done) == ["cb", "ca", "cb", "tick", "ca"]


def test_paused_workflows_run_nothing_on_schedule_but_manual_triggers_work(
        host, tmp_path: Path, clock) -> None:
    deploy_source(host, tmp_path, workflow_js(producers=COUNTER, consumers=consumer_js()))
    service.set_status(host, "wf", WorkflowStatus.PAUSED, actor="tester")
    d = driver(host)
    assert d.run_until_idle() == []
    clock.advance(600)
    assert d.run_until_idle() == []
    assert d.scheduler.counters.skipped_ticks == 0  # paused is not busy
    wid = host.store.get_workflow("wf").id
    d.scheduler.trigger(wid, "tick")
    assert [(r.handler, r.trigger) for r, _ in d.run_until_idle()] == [("tick", "manual")]
    assert events_of(host)[0]["status"] == "pending"  # consumers do not run while paused
    service.set_status(host, "wf", WorkflowStatus.ACTIVE, actor="tester")
    d.scheduler.load({wid})
    assert handlers(d.run_until_idle()) == ["work", "tick", "work"]  # consumers first
    audit = host.store.audit_entries("workflow", wid)
    assert [a["action"] for a in audit][-2:] == ["workflow.paused", "workflow.active"]
    assert audit[-1]["before"]["status"] == "paused"


def test_disabled_workflows_refuse_manual_triggers(host, tmp_path: Path) -> None:
    deploy_source(host, tmp_path, workflow_js(producers=COUNTER, consumers=consumer_js()))
    service.set_status(host, "wf", WorkflowStatus.DISABLED, actor="tester")
    d = driver(host)
    with pytest.raises(Conflict, match="disabled"):
        d.scheduler.trigger(host.store.get_workflow("wf").id, "tick")
    with pytest.raises(Conflict, match="disabled"):
        service.trigger(host, "wf", "tick")


def test_a_deploy_takes_effect_between_runs(host, tmp_path: Path, clock) -> None:
    deploy_source(host, tmp_path, workflow_js(producers=COUNTER, consumers=consumer_js()))
    d = driver(host)
    d.run_until_idle()
    deploy_source(host, tmp_path, workflow_js(
        producers=COUNTER.replace('"1m"', '"10m"'), consumers=consumer_js()), "v2.js")
    d.scheduler.load({host.store.get_workflow("wf").id})
    clock.advance(60)
    assert d.run_until_idle() == []  # the old 1m schedule is gone
    clock.advance(540)
    done = d.run_until_idle()
    assert handlers(done) == ["tick", "work"]
    assert {out.run_id for _, out in done}
    versions = {host.store.get_run(out.run_id).version_id for _, out in done}
    assert versions == {host.store.get_workflow("wf").current_version_id}


def test_a_busy_workflow_does_not_starve_the_others(host, tmp_path: Path) -> None:
    many = ", ".join(f'"m{i}"' for i in range(30))
    deploy_source(host, tmp_path, workflow_js(name="busy", producers=f"""
    seed: async (ctx) => {{ for (const id of [{many}]) await ctx.publish("items",
                              {{ messageId: id, title: id }}); }},""", consumers=consumer_js()),
                  "busy.js")
    deploy_source(host, tmp_path, workflow_js(name="quiet", producers="""
    seed: async (ctx) => { await ctx.publish("items", { messageId: "q", title: "q" }); },""",
                                              consumers=consumer_js()), "quiet.js")
    d = InlineDriver(host, concurrency=1)
    d.start()
    busy, quiet = host.store.get_workflow("busy").id, host.store.get_workflow("quiet").id
    d.scheduler.trigger(busy, "seed")
    d.step()
    d.scheduler.trigger(quiet, "seed")
    order = [req.workflow_name for req, _ in d.run_until_idle()[:4]]
    assert order.index("quiet") <= 2  # served within a round, not after busy's 30 events


def test_a_suspended_run_blocks_its_workflow_only(host, tmp_path: Path, sink) -> None:
    post = 'await ctx.api.post({ url: "/x", json: {} });'  # no reconcile: indeterminate
    deploy_source(host, tmp_path, workflow_js(producers=COUNTER, consumers=consumer_js(
        mutate=post)))
    deploy_source(host, tmp_path, workflow_js(name="other", producers=COUNTER,
                                              consumers=consumer_js()), "other.js")
    sink.set_plan("apply_then_timeout")
    d = driver(host)
    done = d.run_until_idle()
    outcomes = {(r.workflow_name, r.handler): o.status for r, o in done}
    assert outcomes[("wf", "work")] is RunStatus.SUSPENDED
    assert outcomes[("other", "work")] is RunStatus.COMMITTED
    wid = host.store.get_workflow("wf").id
    with pytest.raises(Conflict, match="unfinished"):
        d.scheduler.trigger(wid, "tick")
    assert all(r.kind is RunKind.PRODUCER or r.workflow_name == "other"
               for r, _ in d.run_until_idle())


def test_cron_producer_in_berlin_fires_once_across_the_autumn_change(host, tmp_path: Path,
                                                                     clock) -> None:
    """Through the scheduler: `30 2 * * *` Europe/Berlin fires once on 2026-10-25."""
    from datetime import UTC, datetime

    clock.advance((datetime(2026, 10, 24, 12, tzinfo=UTC) - clock.now()).total_seconds())
    cron = COUNTER.replace('{ interval: "1m" }', '{ cron: "30 2 * * *", tz: "Europe/Berlin" }')
    deploy_source(host, tmp_path, workflow_js(producers=cron, consumers=consumer_js()))
    d = driver(host)
    fired = []
    for _ in range(48 * 4):  # two days in 15-minute steps
        clock.advance(900)
        for req, _ in d.run_until_idle():
            if req.handler == "tick":
                fired.append(clock.now())
    assert fired == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # 02:30 CEST, once
                     datetime(2026, 10, 26, 1, 30, tzinfo=UTC)]  # 02:30 CET
