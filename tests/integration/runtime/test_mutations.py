"""The mutation ledger and immediate reconciliation (SPEC §6, §15 scenarios 7–10)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from keepflow import service
from keepflow.clock import FakeClock
from keepflow.connectors.base import ConnectionConfig
from keepflow.connectors.config import Connections
from keepflow.model import RunStatus
from keepflow.policies import PolicyBook
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from tests.support.sink import Sink
from tests.support.workflows import (
    BLIND_POST,
    RECONCILABLE_POST,
    consumer_js,
    deploy_source,
    events_of,
    quick_policy,
    run_detail,
    seed_producer,
    workflow_js,
)

pytestmark = pytest.mark.integration

POST_RECONCILE = RECONCILABLE_POST
POST_PLAIN = BLIND_POST
NEXT = "return { saw: mutation.status, result: mutation.result ?? null };"


def setup(host, tmp_path: Path, mutate: str = POST_RECONCILE, next_: str = NEXT) -> None:
    deploy_source(host, tmp_path, workflow_js(producers=seed_producer(["a"]),
                                              consumers=consumer_js(mutate=mutate, next_=next_)))
    service.trigger(host, "wf", "seed")


def state(host) -> object:
    return host.store.load_state(host.store.get_workflow("wf").id, "work")[1]


def test_idempotency_key_is_sent_and_ledger_records_applied(host, tmp_path: Path, sink: Sink
                                                            ) -> None:
    setup(host, tmp_path)
    out = service.trigger(host, "wf", "work")
    [m] = run_detail(host, out.run_id)["mutations"]
    assert m["status"] == "applied"
    assert m["idempotencyKey"] == f"kf-{host.store.get_workflow('wf').id}-{out.run_id}-1"
    assert sink.applied_keys() == [m["idempotencyKey"]]
    assert m["description"].startswith("POST http://127.0.0.1")
    assert state(host)["saw"] == "applied"


def test_sql_insert_mutation_through_the_sql_connector(host, tmp_path: Path, target_db: str
                                                       ) -> None:
    mutate = """await ctx.db.insert({ table: "rows", values: { k: prepared.data.event.messageId,
                                     v: prepared.data.event.title },
                                     key: { k: prepared.data.event.messageId } });"""
    setup(host, tmp_path, mutate=mutate)
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.COMMITTED
    with sqlite3.connect(target_db.split("///", 1)[1]) as db:
        assert db.execute("SELECT k, v FROM rows").fetchall() == [("a", "Item a")]


def test_definite_400_fails_logic_and_keeps_reservation(host, tmp_path: Path, sink: Sink) -> None:
    """SPEC §15 scenario 8."""
    setup(host, tmp_path)
    sink.set_plan("reject_400")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.FAILED
    assert out.failure is not None
    assert out.failure["class"] == "logic"
    assert "400" in out.failure["message"]
    detail = run_detail(host, out.run_id)
    assert [m["status"] for m in detail["mutations"]] == ["failed"]
    ev = events_of(host)[0]
    assert ev["status"] == "pending"
    assert ev["reservedBy"] == out.run_id
    assert sink.applied == []
    assert service.drain(host).runs == []  # nothing is duplicated behind the person's back


def test_definite_403_fails_as_permission(host, tmp_path: Path, sink: Sink) -> None:
    setup(host, tmp_path)
    sink.set_plan("reject_403")
    out = service.trigger(host, "wf", "work")
    assert out.failure is not None
    assert out.failure["class"] == "permission"
    assert service.list_workflows(host)[0]["status"] == "needs_action"


def test_transient_503_remutates_with_backoff_then_applies(host, tmp_path: Path, sink: Sink,
                                                           clock) -> None:
    """SPEC §6 step 3: a definite transient failure re-executes mutate after backoff."""
    setup(host, tmp_path)
    sink.set_plan("unavailable_503", "ok")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.COMMITTED
    muts = run_detail(host, out.run_id)["mutations"]
    assert [(m["attempt"], m["status"]) for m in muts] == [(1, "failed"), (2, "applied")]
    assert sink.applied_keys() == [muts[1]["idempotencyKey"]]
    assert clock.slept  # backed off before re-executing mutate


def test_transient_failures_exhaust_the_retry_policy_and_escalate(host, tmp_path: Path,
                                                                  sink: Sink) -> None:
    """SPEC §15 scenario 9 (policy max_attempts = 3 in these tests)."""
    setup(host, tmp_path)
    sink.set_plan("unavailable_503", "unavailable_503", "unavailable_503", "ok")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.FAILED
    assert out.failure is not None
    assert out.failure["class"] == "transient"
    assert "503" in out.failure["message"]
    assert len(run_detail(host, out.run_id)["mutations"]) == 3
    assert sink.applied == []
    wf = service.list_workflows(host)[0]
    assert wf["status"] == "needs_action"


@pytest.fixture
def loopback_host(store_url: str, tmp_path: Path, pool: SandboxPool, clock: FakeClock
                  ) -> Iterator[Host]:
    """A host whose `http` connection may reach 127.0.0.1:9 (nothing listens there).

    Loopback is refused unless a connection allows it (docs/security.md#network-egress).
    """
    connections = Connections([
        ConnectionConfig("http", "http", {"allow": ["http://127.0.0.1:9"]})])
    h = Host(Settings(home=tmp_path / "home", database_url=store_url), clock=clock,
             connections=connections, pool=pool, policies=PolicyBook(quick_policy()))
    yield h
    h.close()
    connections.close()


def test_connection_refused_on_a_read_is_retried_then_escalated(loopback_host: Host,
                                                                tmp_path: Path) -> None:
    host = loopback_host
    src = workflow_js(producers="""
    poll: async (ctx) => { await ctx.http.get({ url: "http://127.0.0.1:9/nothing" }); },""",
                      consumers=consumer_js())
    deploy_source(host, tmp_path, src)
    out = service.trigger(host, "wf", "poll")
    assert out.status is RunStatus.FAILED
    assert out.failure is not None
    assert out.failure["class"] == "transient"
    detail = run_detail(host, out.run_id)
    assert len([c for c in detail["toolCalls"] if not c["ok"]]) == 3
    assert sum("failed transiently" in lg["message"] for lg in detail["logs"]) == 2


def test_timeout_after_send_reconciles_applied(host, tmp_path: Path, sink: Sink) -> None:
    """SPEC §15 scenario 10: reconcile → applied; next runs with the reconciled result."""
    setup(host, tmp_path)
    sink.set_plan("apply_then_timeout")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.COMMITTED
    [m] = run_detail(host, out.run_id)["mutations"]
    assert m["status"] == "applied"
    assert m["resolvedBy"] == "reconcile"
    assert m["reconcileAttempts"] == 1
    assert len(sink.applied) == 1
    assert state(host)["result"]["json"]["key"] == m["idempotencyKey"]


def test_timeout_after_send_reconciles_failed_and_remutates(host, tmp_path: Path, sink: Sink
                                                            ) -> None:
    setup(host, tmp_path)
    sink.set_plan("timeout", "ok")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.COMMITTED
    muts = run_detail(host, out.run_id)["mutations"]
    assert [m["status"] for m in muts] == ["failed", "applied"]
    assert muts[0]["resolvedBy"] == "reconcile"
    assert sink.applied_keys() == [muts[1]["idempotencyKey"]]


def test_timeout_after_send_reconcile_unsure_suspends_needs_reconcile(host, tmp_path: Path,
                                                                      sink: Sink) -> None:
    setup(host, tmp_path)
    sink.set_plan("apply_then_timeout")
    sink.lookup_plan.append("unavailable_503")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.SUSPENDED
    detail = run_detail(host, out.run_id)
    assert detail["suspendReason"] == "needs_reconcile"
    assert [m["status"] for m in detail["mutations"]] == ["needs_reconcile"]
    assert service.list_workflows(host)[0]["status"] == "active"  # the host will resolve it


def test_timeout_without_reconcile_is_indeterminate_and_needs_action(host, tmp_path: Path,
                                                                     sink: Sink) -> None:
    setup(host, tmp_path, mutate=POST_PLAIN)
    sink.set_plan("apply_then_timeout")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.SUSPENDED
    detail = run_detail(host, out.run_id)
    assert detail["suspendReason"] == "indeterminate"
    [m] = detail["mutations"]
    assert m["status"] == "indeterminate"
    assert m["canReconcile"] is False
    wf = service.list_workflows(host)[0]
    assert wf["status"] == "needs_action"
    reason = wf["statusReason"]
    assert 'POST http://127.0.0.1' in reason
    assert '"Item a"' in reason
    assert "cannot verify" in reason
    assert events_of(host)[0]["reservedBy"] == out.run_id


def test_ambiguous_500_is_uncertain_and_reconciled(host, tmp_path: Path, sink: Sink) -> None:
    setup(host, tmp_path)
    sink.set_plan("apply_then_500")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.COMMITTED
    assert len(sink.applied) == 1
    assert run_detail(host, out.run_id)["mutations"][0]["resolvedBy"] == "reconcile"


def test_next_failure_is_retried_with_the_stored_result_never_remutating(
        host, tmp_path: Path, sink: Sink) -> None:
    """SPEC §15 scenario 7."""
    setup(host, tmp_path, next_='throw new Error("next is broken");')
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.FAILED
    assert out.failure is not None
    assert out.failure["phase"] == "next"
    detail = run_detail(host, out.run_id)
    stored = detail["mutationResult"]
    assert stored["status"] == "applied"
    assert events_of(host)[0]["reservedBy"] == out.run_id
    # a fixed version is deployed; the retry runs next with the same stored result
    setup_src = workflow_js(producers=seed_producer(["a"]),
                            consumers=consumer_js(mutate=POST_RECONCILE, next_=NEXT))
    deploy_source(host, tmp_path, setup_src, "fixed.js")
    again = service.retry_run(host, out.run_id)
    assert again.status is RunStatus.COMMITTED
    assert len(sink.applied) == 1  # never re-mutated
    assert state(host) == {"saw": "applied", "result": stored["result"]}
    assert events_of(host)[0]["status"] == "consumed"
    transitions = [t["to"] for t in run_detail(host, out.run_id)["transitions"]]
    assert transitions[-3:] == ["failed", "emitting", "committed"]


def test_retrying_a_definitely_failed_mutation_makes_a_new_attempt(host, tmp_path: Path,
                                                                   sink: Sink) -> None:
    setup(host, tmp_path)
    sink.set_plan("reject_400", "ok")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.FAILED
    again = service.retry_run(host, out.run_id)
    assert again.status is RunStatus.COMMITTED
    muts = run_detail(host, out.run_id)["mutations"]
    assert [(m["attempt"], m["status"]) for m in muts] == [(1, "failed"), (2, "applied")]
    assert len(sink.applied) == 1
