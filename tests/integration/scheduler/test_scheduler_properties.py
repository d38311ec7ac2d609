"""Property: whatever the interleaving of ticks, triggers, publishes and run completions, no
workflow ever has two runs at once, and no event is lost (SPEC §7.1). Hypothesis drives the
real scheduler, store, sandbox and executor with a fake clock."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keepflow.clock import FakeClock
from keepflow.connectors.base import ConnectionConfig
from keepflow.connectors.config import Connections
from keepflow.policies import PolicyBook
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.scheduler.core import RunRequest
from keepflow.scheduler.dispatch import execute
from keepflow.scheduler.inline import InlineDriver
from keepflow.settings import Settings
from tests.support.workflows import consumer_js, deploy_source, events_of, quick_policy

pytestmark = pytest.mark.integration

WORKFLOWS = ("w0", "w1", "w2")
PRODUCERS = """
    tick: {
      schedule: { interval: "1m" },
      async handler(ctx, state) {
        const n = (state?.n ?? 0) + 1;
        await ctx.publish("items", { messageId: "t" + n, title: "Tick " + n });
        return { n };
      },
    },
    burst: async (ctx, state) => {
      const n = (state?.n ?? 0) + 1;
      for (const i of [1, 2, 3])
        await ctx.publish("items", { messageId: `b${n}-${i}`, title: `Burst ${n}.${i}` });
      return { n };
    },"""

actions = st.lists(st.one_of(
    st.tuples(st.just("take"), st.integers(1, 3)),
    st.tuples(st.just("finish"), st.integers(0, 5)),
    st.tuples(st.just("advance"), st.integers(1, 200)),
    st.tuples(st.just("trigger"), st.sampled_from(WORKFLOWS), st.sampled_from(
        ["tick", "burst", "work"])),
), min_size=5, max_size=40)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=actions)
def test_never_two_runs_of_a_workflow_at_once(pool: SandboxPool, steps: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        clock = FakeClock()
        connections = Connections([ConnectionConfig("http", "http", {})])
        host = Host(Settings(home=home / "home"), clock=clock, connections=connections,
                    pool=pool, policies=PolicyBook(quick_policy()))
        try:
            for name in WORKFLOWS:
                src = f"""
export default Keep.workflow({{
  name: "{name}", topics: {{ "items": {{}} }},
  producers: {{ {PRODUCERS} }},
  consumers: {{ {consumer_js()} }},
}});"""
                deploy_source(host, home, src, f"{name}.js")
            driver = InlineDriver(host)
            driver.start()
            sched = driver.scheduler
            outstanding: list[RunRequest] = []
            for step in steps:
                if step[0] == "take":
                    sched.advance(clock.now())
                    outstanding.extend(sched.take(step[1]))
                elif step[0] == "finish" and outstanding:
                    req = outstanding.pop(step[1] % len(outstanding))
                    sched.finished(req, execute(host, driver.leases.fence(req.workflow_id),
                                                req))
                elif step[0] == "advance":
                    clock.advance(step[1])
                    sched.advance(clock.now())
                elif step[0] == "trigger":
                    sched.trigger(host.store.get_workflow(step[1]).id, step[2])
                busy = [r.workflow_id for r in outstanding]
                assert len(busy) == len(set(busy)), "two runs of one workflow at once"
                for r in outstanding:
                    assert sched.slots[r.workflow_id].busy == r
            for req in outstanding:
                sched.finished(req, execute(host, driver.leases.fence(req.workflow_id), req))
            driver.run_until_idle()
            for name in WORKFLOWS:  # nothing lost: every published event was consumed
                assert all(e["status"] == "consumed" for e in events_of(host, name))
        finally:
            host.close()
            connections.close()
