"""Hostile data from the outside world, and failures inside the host, stay contained
(docs/security.md#text-the-host-can-store, docs/operations.md#internal-errors).

A connector is outside code: a third party's plugin, or a built-in relaying a server's bytes.
Whatever it returns becomes storable JSON before the script or the store sees it; whatever it
raises that is not a typed error stops only that run, explained, and its workflow waits for a
person — the other workflows go on, and ``serve`` does not spin on the broken one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest

from keepflow import service
from keepflow.clock import FakeClock
from keepflow.connectors.base import (
    ConnectionConfig,
    Connector,
    RiskTier,
    ToolCall,
    ToolKind,
    ToolSpec,
)
from keepflow.connectors.config import Connections
from keepflow.connectors.registry import register_connector, unregister_connector
from keepflow.errors import PermanentError
from keepflow.model import RunKind, RunStatus, WorkflowStatus
from keepflow.policies import PolicyBook
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.scheduler.core import RunRequest, crash_backoff
from keepflow.scheduler.driver import Scheduler
from keepflow.settings import Settings
from tests.support.sink import Sink
from tests.support.workflows import deploy_source, quick_policy

pytestmark = pytest.mark.integration


class HostileConnector(Connector):
    """A plugin that misbehaves in every way a connector can, chosen by ``params.how``."""

    type_name: ClassVar[str] = "hostile"
    tools: ClassVar[Mapping[str, ToolSpec]] = {
        "fetch": ToolSpec("fetch", ToolKind.READ, "hostile.read", RiskTier.LOW, "a read"),
        "store": ToolSpec("store", ToolKind.MUTATE, "hostile.write", RiskTier.LOW, "a write",
                          reconcile_strategy="none: a test connector"),
    }
    applied: ClassVar[list[str | None]] = []

    def call(self, call: ToolCall) -> Any:
        if call.tool == "store":  # applied, and answers with far more than anyone needs
            HostileConnector.applied.append(call.idempotency_key)
            return {"echo": "e" * 6_000_000}
        how = call.params.get("how")
        if how == "crash":
            raise RuntimeError("plugin bug \ud800 with a lone surrogate in its message")
        if how == "typed_error_with_bad_text":
            raise PermanentError("server said \x00\ud83d nope", body="\udfff" * 3)
        if how == "garbage":
            return {"when": datetime(2026, 12, 2, tzinfo=UTC), "ratio": math.nan,
                    "inf": math.inf, 7: "int key", "raw": b"bytes", "tuple": (1, 2),
                    "text": "ok \ud800 \x00 end", "nested": [{"k\udc00": "v"}]}
        return {"plain": True}


@pytest.fixture
def hostile_host(store_url: str, tmp_path: Path, pool: SandboxPool, sink: Sink
                 ) -> Iterator[Host]:
    register_connector(HostileConnector)
    connections = Connections([
        ConnectionConfig("http", "http", {}),
        ConnectionConfig("api", "http", {"base_url": sink.url}),
        ConnectionConfig("evil", "hostile", {}),
    ])
    h = Host(Settings(home=tmp_path / "home", database_url=store_url), clock=FakeClock(),
             connections=connections, pool=pool, policies=PolicyBook(quick_policy()))
    yield h
    h.close()
    connections.close()
    unregister_connector("hostile")


def _workflow(name: str, how: str) -> str:
    return f"""
export default Keep.workflow({{
  name: "{name}",
  topics: {{ "items": {{}} }},
  producers: {{
    seed: async (ctx, state) => {{
      const r = await ctx.evil.fetch({{ how: "{how}" }});
      await ctx.publish("items", {{ messageId: "a", title: "From the plugin", payload: r }});
      return {{ n: 1 }};
    }},
  }},
  consumers: {{
    work: Keep.consumer({{
      subscribe: ["items"],
      async prepare(ctx) {{
        const [e] = await ctx.peek("items", {{ limit: 1 }});
        if (!e) return {{ reservations: [], data: {{}} }};
        return {{ reservations: [{{ topic: "items", ids: [e.messageId] }}], data: {{}} }};
      }},
      async mutate(ctx, prepared) {{ await ctx.api.post({{ url: "/{name}", json: {{}} }}); }},
      async next(ctx, prepared, mutation) {{ return null; }},
    }}),
  }},
}});
"""


def test_a_plugin_that_crashes_stops_only_its_run_explained(
        hostile_host: Host, tmp_path: Path, sink: Sink) -> None:
    host = hostile_host
    deploy_source(host, tmp_path, _workflow("broken", "crash"), name="broken.js")
    deploy_source(host, tmp_path, _workflow("healthy", "plain"), name="healthy.js")
    out = service.trigger(host, "broken", "seed")
    assert out.status is RunStatus.FAILED
    assert out.failure is not None
    assert out.failure["code"] == "host_error"
    assert "RuntimeError: plugin bug \\ud800" in out.failure["message"]
    assert "docs/operations.md#internal-errors" in out.failure["message"]
    wf = host.store.get_workflow("broken")
    assert wf.status is WorkflowStatus.NEEDS_ACTION
    assert "internal error" in (wf.status_reason or "")
    assert service.list_events(host, "broken") == []  # nothing of the run was committed

    service.trigger(host, "healthy", "seed")
    report = service.drain(host)  # all workflows: the broken one does not stop the others
    assert [(o.handler, o.status) for o in report.runs] == [("work", RunStatus.COMMITTED)]
    assert [p for _, p, _ in sink.requests] == ["/healthy"]
    assert "needs_action" in report.blocked["broken"]
    service.show_run(host, out.run_id)  # readable


def test_a_plugins_garbage_result_is_made_storable_and_noted(
        hostile_host: Host, tmp_path: Path) -> None:
    host = hostile_host
    deploy_source(host, tmp_path, _workflow("garbage", "garbage"))
    out = service.trigger(host, "garbage", "seed")
    assert out.status is RunStatus.COMMITTED, out.failure
    [event] = service.list_events(host, "garbage")
    payload = service.show_event(host, "garbage", "items", event["messageId"])["payload"]
    assert payload["text"] == "ok \ufffd \ufffd end"
    assert payload["nested"] == [{"k\ufffd": "v"}]
    assert payload["ratio"] == "nan"
    assert payload["inf"] == "inf"
    assert payload["7"] == "int key"
    assert payload["when"].startswith("2026-12-02")
    assert payload["tuple"] == [1, 2]
    logs = [lg["message"] for lg in service.show_run(host, out.run_id)["logs"]]
    assert any("replaced by U+FFFD" in m and "written out as text" in m for m in logs), logs


def test_a_typed_error_with_unstorable_text_keeps_its_class(
        hostile_host: Host, tmp_path: Path) -> None:
    host = hostile_host
    deploy_source(host, tmp_path, _workflow("typed", "typed_error_with_bad_text"))
    out = service.trigger(host, "typed", "seed")
    assert out.status is RunStatus.FAILED
    assert out.failure is not None
    assert out.failure["code"] == "permanent"
    assert out.failure["message"] == "server said \ufffd\ufffd nope"
    detail = service.show_run(host, out.run_id)
    assert detail["failure"]["details"]["body"] == "\ufffd" * 3
    [call] = detail["toolCalls"]
    assert call["error"]["message"] == "server said \ufffd\ufffd nope"


def test_a_crashing_workflow_is_held_back_with_growing_backoff(host: Host, tmp_path: Path,
                                                               clock: FakeClock) -> None:
    """SPEC §7: a run that crashed inside the host (no outcome) must not start again at once."""
    deploy_source(host, tmp_path, _ticker())
    service.trigger(host, "ticker", "seed")
    scheduler = Scheduler(host.store, clock.now)
    scheduler.load()
    [first] = scheduler.take(4)
    assert first.handler == "c"
    for crashes in (1, 2, 3, 4):
        scheduler.finished(first, None)  # crashed
        assert scheduler.take(4) == []  # held back...
        clock.advance(crash_backoff(crashes) - 0.5)
        scheduler.advance(clock.now())
        assert scheduler.take(4) == []
        clock.advance(0.5)  # ...until its backoff is over
        scheduler.advance(clock.now())
        [first] = scheduler.take(4)
    assert [crash_backoff(n) for n in (1, 2, 3, 10, 20)] == [1, 2, 4, 300, 300]
    scheduler.finished(first, None)
    wf = host.store.get_workflow("ticker")
    scheduler.trigger(wf.id, "seed")  # a person's trigger still goes through
    [manual] = scheduler.take(4)
    assert manual.trigger == "manual"


def test_a_finished_run_clears_the_backoff(host: Host, tmp_path: Path, clock: FakeClock) -> None:
    deploy_source(host, tmp_path, _ticker())
    service.trigger(host, "ticker", "seed")
    scheduler = Scheduler(host.store, clock.now)
    scheduler.load()
    [req] = scheduler.take(4)
    scheduler.finished(req, None)
    clock.advance(1)
    scheduler.advance(clock.now())
    [req] = scheduler.take(4)
    outcome = service.trigger(host, "ticker", "seed")  # a real, committed run
    scheduler.finished(RunRequest(req.workflow_id, req.workflow_name, "seed", RunKind.PRODUCER,
                                  "manual"), outcome)
    slot = scheduler.slots[req.workflow_id]
    assert slot.crashes == 0
    assert slot.held_until is None


def _ticker() -> str:
    """A workflow whose consumer stays ready: its pending event is never reserved."""
    return """
export default Keep.workflow({
  name: "ticker",
  topics: { "t": {} },
  producers: {
    seed: async (ctx, state) => {
      await ctx.publish("t", { messageId: "x", title: "X", payload: {} });
      return null;
    },
  },
  consumers: {
    c: Keep.consumer({
      subscribe: ["t"],
      async prepare(ctx) { return { reservations: [], data: {} }; },
      async mutate(ctx, prepared) {},
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
"""


def test_a_huge_mutation_result_is_kept_as_a_marker_and_next_runs(
        hostile_host: Host, tmp_path: Path) -> None:
    """It happened, so the run must go on: the result is cut to a marker (it could not even
    be handed to next), noted on the run, and the mutation is never repeated."""
    host = hostile_host
    HostileConnector.applied.clear()
    source = _workflow("huge", "plain").replace(
        'await ctx.api.post({ url: "/huge", json: {} });', "await ctx.evil.store({});").replace(
        "async next(ctx, prepared, mutation) { return null; }",
        "async next(ctx, prepared, mutation) { return { got: mutation.result }; }")
    deploy_source(host, tmp_path, source)
    service.trigger(host, "huge", "seed")
    out = service.trigger(host, "huge", "work")
    assert out.status is RunStatus.COMMITTED, out.failure
    assert len(HostileConnector.applied) == 1
    detail = service.show_run(host, out.run_id)
    [m] = detail["mutations"]
    assert m["status"] == "applied"
    assert m["result"]["truncated"] is True
    assert m["result"]["bytes"] > 6_000_000
    assert host.store.load_state(host.store.get_workflow("huge").id, "work")[1] == {
        "got": m["result"]}
    assert any("half of limits.message_bytes" in lg["message"] for lg in detail["logs"])
