"""Producers (SPEC §4) and publishing (SPEC §3), on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from keepflow import service
from keepflow.model import RunStatus
from tests.support.workflows import (
    consumer_js,
    deploy_source,
    events_of,
    run_detail,
    seed_producer,
    workflow_js,
)

pytestmark = pytest.mark.integration


def test_producer_publishes_and_saves_state_in_one_commit(host, tmp_path: Path) -> None:
    deploy_source(host, tmp_path, workflow_js(producers=seed_producer(["a", "b"]),
                                              consumers=consumer_js()))
    out = service.trigger(host, "wf", "seed")
    assert out.status is RunStatus.COMMITTED
    evs = events_of(host)
    assert sorted(e["messageId"] for e in evs) == ["a", "b"]
    assert all(e["status"] == "pending" and e["createdBy"] == out.run_id for e in evs)
    assert host.store.load_state(host.store.get_workflow("wf").id, "seed") == (True, {"runs": 1})
    detail = run_detail(host, out.run_id)
    assert [t["to"] for t in detail["transitions"]] == ["running", "committed"]


def test_republishing_same_message_id_is_a_noop_noted_on_the_run(host, tmp_path: Path) -> None:
    """SPEC §15 scenario 1."""
    deploy_source(host, tmp_path, workflow_js(producers=seed_producer(["a"]),
                                              consumers=consumer_js()))
    first = service.trigger(host, "wf", "seed")
    before = events_of(host)
    second = service.trigger(host, "wf", "seed")
    assert second.status is RunStatus.COMMITTED
    after = events_of(host)
    assert len(after) == 1
    assert after[0]["status"] == before[0]["status"] == "pending"
    assert after[0]["createdBy"] == first.run_id
    logs = run_detail(host, second.run_id)["logs"]
    assert any("items/a already exists" in lg["message"] for lg in logs)


def test_differing_payload_keeps_the_original_and_warns(host, tmp_path: Path) -> None:
    src = workflow_js(producers="""
    seed: async (ctx, state) => {
      await ctx.publish("items", { messageId: "x", title: "X", payload: { n: state?.n ?? 0 } });
      return { n: (state?.n ?? 0) + 1 };
    },""", consumers=consumer_js())
    deploy_source(host, tmp_path, src)
    service.trigger(host, "wf", "seed")
    second = service.trigger(host, "wf", "seed")
    shown = service.show_event(host, "wf", "items", "x")
    assert shown["payload"] == {"n": 0}
    logs = run_detail(host, second.run_id)["logs"]
    assert any(lg["level"] == "warn" and "payload differs" in lg["message"] for lg in logs)


def test_producer_that_throws_after_publishing_commits_nothing(host, tmp_path: Path) -> None:
    """SPEC §15 scenario 2: none of the three events exists, its state is unchanged."""
    src = workflow_js(producers="""
    seed: async (ctx, state) => {
      if (state?.boom) {
        for (const id of ["p", "q", "r"])
          await ctx.publish("items", { messageId: id, title: "Item " + id, payload: {} });
        throw new Error("exploded after publishing");
      }
      return { boom: true };
    },""", consumers=consumer_js())
    deploy_source(host, tmp_path, src)
    assert service.trigger(host, "wf", "seed").status is RunStatus.COMMITTED
    out = service.trigger(host, "wf", "seed")
    assert out.status is RunStatus.FAILED
    assert out.failure is not None
    assert out.failure["class"] == "logic"
    assert "exploded after publishing" in out.failure["message"]
    assert events_of(host) == []
    wid = host.store.get_workflow("wf").id
    assert host.store.load_state(wid, "seed") == (True, {"boom": True})


def test_message_id_derived_from_payload_when_omitted(host, tmp_path: Path) -> None:
    src = workflow_js(producers="""
    seed: async (ctx) => {
      await ctx.publish("items", { title: "No id", payload: { b: 2, a: 1 } });
      await ctx.publish("items", { title: "No id again", payload: { a: 1, b: 2 } });
    },""", consumers=consumer_js())
    deploy_source(host, tmp_path, src)
    out = service.trigger(host, "wf", "seed")
    assert out.status is RunStatus.COMMITTED
    evs = events_of(host)
    assert len(evs) == 1  # same canonical payload → same derived messageId
    assert evs[0]["messageId"].startswith("sha256:")


@pytest.mark.parametrize(("event", "needle"), [
    ('{ messageId: "a", payload: {} }', "`title` is required"),
    ('{ messageId: "a", title: "   ", payload: {} }', "`title` is required"),
    ('{ messageId: "a", title: "x".repeat(201), payload: {} }', "at most 200"),
    ('{ messageId: "m".repeat(257), title: "t", payload: {} }', "1 to 256 characters"),
    ('{ messageId: {}, title: "t" }', "must be a string"),
    ('{ messageId: "a", title: "t", payload: {}, extra: 1 }', "unknown event field"),
])
def test_bad_titles_and_message_ids_fail_the_run_as_logic(host, tmp_path: Path, event: str,
                                                          needle: str) -> None:
    src = workflow_js(producers=f"""
    seed: async (ctx) => {{ await ctx.publish("items", {event}); }},""", consumers=consumer_js())
    deploy_source(host, tmp_path, src)
    out = service.trigger(host, "wf", "seed")
    assert out.status is RunStatus.FAILED
    assert out.failure is not None
    assert out.failure["class"] == "logic"
    assert needle in out.failure["message"]
    assert events_of(host) == []


def test_publish_to_undeclared_topic_fails(host, tmp_path: Path) -> None:
    src = workflow_js(producers="""
    seed: async (ctx) => { const t = "nope"; await ctx.publish(t, { title: "x" }); },""",
                      consumers=consumer_js())
    deploy_source(host, tmp_path, src)
    out = service.trigger(host, "wf", "seed")
    assert out.failure is not None
    assert "not declared" in out.failure["message"]


def test_oversized_payload_and_state_fail_as_logic(host, tmp_path: Path) -> None:
    src = workflow_js(producers="""
    big: async (ctx) => {
      await ctx.publish("items", { messageId: "a", title: "big", payload: "x".repeat(300000) });
    },
    bigstate: async (ctx) => ({ blob: "y".repeat(300000) }),""", consumers=consumer_js())
    deploy_source(host, tmp_path, src)
    out = service.trigger(host, "wf", "big")
    assert out.failure is not None
    assert "payload of event 'big'" in out.failure["message"]
    out2 = service.trigger(host, "wf", "bigstate")
    assert out2.failure is not None
    assert "state returned by bigstate" in out2.failure["message"]
    assert host.store.load_state(host.store.get_workflow("wf").id, "bigstate") == (False, None)
