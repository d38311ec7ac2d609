"""Resource limits (docs/security.md#limits): bytes published per run, bytes stored per
workflow, the size of one turn of host calls, the shortest schedule — each refused with an
explained failure that loses nothing, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from keepflow import service
from keepflow.errors import ScriptInvalid
from keepflow.model import RunStatus
from keepflow.policies import LimitPolicy, PolicyBook
from keepflow.runtime.host import Host
from tests.support.sink import Sink
from tests.support.workflows import (
    consumer_js,
    deploy_source,
    events_of,
    quick_policy,
    run_detail,
    workflow_js,
)

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def _limits(host: Host, **limits: int) -> None:
    base = quick_policy()
    host.policies = PolicyBook(base.model_copy(
        update={"limits": base.limits.model_copy(update=limits)}))


def _stored(host: Host, workflow: str = "wf") -> int:
    from sqlalchemy import select

    from keepflow.store.schema import workflows

    with host.store.read() as conn:
        return int(conn.execute(select(workflows.c.stored_bytes)
                                .where(workflows.c.name == workflow)).scalar_one())


PUBLISH_N = """
    seed: async (ctx, state) => {
      const big = "p".repeat(100000);
      for (let i = 0; i < 8; i++)
        await ctx.publish("items", { messageId: "e" + i, title: "Event " + i, payload: { big } });
      return { n: (state?.n ?? 0) + 1 };
    },"""


def test_storage_is_charged_for_new_events_only(host: Host, tmp_path: Path) -> None:
    deploy_source(host, tmp_path, workflow_js(producers=PUBLISH_N, consumers=consumer_js()))
    assert _stored(host) == 0
    service.trigger(host, "wf", "seed")
    first = _stored(host)
    payload = len('{"big":"' + "p" * 100000 + '"}')
    assert 8 * payload < first < 8 * payload + 4096  # events + a small run record
    service.trigger(host, "wf", "seed")  # the same eight events again: deduplicated
    second = _stored(host)
    assert second - first < 1024  # only the run's own record (state), not the events


def test_a_run_past_the_storage_quota_commits_nothing_and_can_be_retried(
        host: Host, tmp_path: Path) -> None:
    _limits(host, workflow_storage_bytes=MIB // 2 + MIB // 2)  # 1 MiB: 8 × 100 KB fits once
    deploy_source(host, tmp_path, workflow_js(producers=PUBLISH_N + PUBLISH_N.replace(
        "seed:", "more:").replace('"e" + i', '"f" + i'), consumers=consumer_js()))
    assert service.trigger(host, "wf", "seed").status is RunStatus.COMMITTED
    before = _stored(host)
    out = service.trigger(host, "wf", "more")
    assert out.status is RunStatus.FAILED
    assert out.failure is not None
    assert out.failure["code"] == "quota_exceeded"
    assert "limits.workflow_storage_bytes" in out.failure["message"]
    assert "docs/security.md#limits" in out.failure["message"]
    assert {e["messageId"] for e in events_of(host)} == {f"e{i}" for i in range(8)}
    assert host.store.load_state(host.store.get_workflow("wf").id, "more") == (False, None)
    assert _stored(host) - before < 4096  # the failure record only
    assert host.store.get_workflow("wf").status.value == "needs_action"
    # The operator raises the quota; the person retries: now everything commits.
    _limits(host, workflow_storage_bytes=4 * MIB)
    again = service.retry_run(host, out.run_id)
    assert again is not None
    assert again.status is RunStatus.COMMITTED
    assert len(events_of(host)) == 16


def test_the_quota_on_a_consumer_commit_never_repeats_the_mutation(
        host: Host, tmp_path: Path, sink: Sink) -> None:
    """next's commit is refused after the mutation was applied: the run fails in next, the
    reserved event stays visible, and a retry re-runs next only (SPEC §5.5)."""
    seed = """
    seed: async (ctx, state) => {
      await ctx.publish("items", { messageId: "a", title: "Item a", payload: {} });
      return null;
    },"""
    mutate = 'await ctx.api.post({ url: "/orders", json: { id: "a" } });'
    next_ = """
      const big = "n".repeat(200000);
      for (let i = 0; i < 6; i++)
        await ctx.publish("out", { messageId: "o" + i, title: "Out " + i, payload: { big } });
      return null;"""
    _limits(host, workflow_storage_bytes=MIB)
    deploy_source(host, tmp_path, workflow_js(topics=("items", "out"), producers=seed,
                                              consumers=consumer_js(mutate=mutate, next_=next_)
                                              + consumer_js("sinkhole", topic="out")))
    service.trigger(host, "wf", "seed")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.FAILED
    assert out.failure is not None
    assert out.failure["code"] == "quota_exceeded"
    assert out.failure["phase"] == "next"
    assert len(sink.applied) == 1
    assert [m["status"] for m in run_detail(host, out.run_id)["mutations"]] == ["applied"]
    [item] = events_of(host, topic="items")
    assert (item["status"], item["reservedBy"]) == ("pending", out.run_id)
    _limits(host, workflow_storage_bytes=8 * MIB)
    again = service.retry_run(host, out.run_id)
    assert again is not None
    assert again.status is RunStatus.COMMITTED
    assert len(sink.applied) == 1  # never sent twice
    assert events_of(host, topic="items")[0]["status"] == "consumed"


def test_publish_bytes_per_run_counts_payload_title_and_id(host: Host, tmp_path: Path) -> None:
    _limits(host, publish_bytes_per_run=800_000)
    deploy_source(host, tmp_path, workflow_js(producers=PUBLISH_N, consumers=consumer_js()))
    out = service.trigger(host, "wf", "seed")
    assert out.status is RunStatus.FAILED
    assert out.failure is not None
    assert out.failure["code"] == "sandbox_limit"
    assert "limits.publish_bytes_per_run" in out.failure["message"]
    assert events_of(host) == []
    _limits(host, publish_bytes_per_run=900_000)  # 8 × ~100 KB fits
    assert service.trigger(host, "wf", "seed").status is RunStatus.COMMITTED


def test_the_minimum_interval_follows_the_policy(host: Host, tmp_path: Path) -> None:
    producer = """
    poll: { schedule: { interval: "10s" }, async handler(ctx, state) { return null; } },"""
    source = workflow_js(producers=producer, consumers=consumer_js())
    with pytest.raises(ScriptInvalid) as info:
        deploy_source(host, tmp_path, source)
    [finding] = [f for f in info.value.findings if f.rule == "schedule"]
    assert "interval 10s is shorter than the minimum of 30s" in finding.message
    assert finding.line is not None
    _limits(host, min_interval_seconds=10)
    assert deploy_source(host, tmp_path, source).status == "created"


def test_the_shipped_limits_are_the_documented_ones() -> None:
    limits = LimitPolicy()
    assert limits.publish_bytes_per_run == 4 * MIB
    assert limits.workflow_storage_bytes == 2 * 1024 * MIB
    assert limits.min_interval_seconds == 30
    assert limits.message_bytes == 8 * MIB
    docs = (Path(__file__).parents[2] / "docs" / "security.md").read_text(encoding="utf-8")
    for name in LimitPolicy.model_fields:
        if name != "mutations_per_day":  # not enforced yet: a permissions issue
            assert f"`limits.{name}`" in docs, name
