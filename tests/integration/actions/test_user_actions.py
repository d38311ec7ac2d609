"""A person's answers (SPEC §6 user actions, §12): each one's effect, its refusals, and its
audit record — on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from keepflow import service
from keepflow.errors import Conflict
from keepflow.model import RunStatus
from keepflow.policies import ApprovalPolicy, PolicyBook
from keepflow.runtime.host import Host
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

RECONCILABLE = RECONCILABLE_POST
BLIND = BLIND_POST
NEXT = "return { saw: mutation.status };"


def setup(host: Host, tmp_path: Path, mutate: str, ids: tuple[str, ...] = ("a",)) -> None:
    deploy_source(host, tmp_path, workflow_js(producers=seed_producer(list(ids)),
                                              consumers=consumer_js(mutate=mutate, next_=NEXT)))
    service.trigger(host, "wf", "seed")


def audit_actions(host: Host, run_id: str) -> list[dict]:
    return host.store.audit_entries("run", run_id)


def state(host: Host) -> object:
    return host.store.load_state(host.store.get_workflow("wf").id, "work")[1]


def indeterminate_run(host: Host, tmp_path: Path, sink: Sink, mutate: str = BLIND,
                      applied: bool = True) -> str:
    setup(host, tmp_path, mutate)
    sink.set_plan("apply_then_timeout" if applied else "timeout")
    if mutate == RECONCILABLE:
        sink.lookup_plan.extend(["unavailable_503"] * 20)
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.SUSPENDED
    return out.run_id


def test_didnt_happen_makes_a_new_attempt_under_the_same_run(host, tmp_path: Path, sink: Sink
                                                             ) -> None:
    run_id = indeterminate_run(host, tmp_path, sink, applied=False)
    assert service.list_workflows(host)[0]["status"] == "needs_action"
    out = service.resolve(host, run_id, "didnt_happen", actor="alice")
    assert out is not None
    assert out.status is RunStatus.COMMITTED
    muts = run_detail(host, run_id)["mutations"]
    assert [(m["attempt"], m["status"]) for m in muts] == [(1, "failed"), (2, "applied")]
    assert muts[0]["resolvedBy"] == "user:alice"
    assert muts[0]["error"]["code"] == "didnt_happen"
    assert len(sink.applied) == 1
    assert events_of(host)[0]["status"] == "consumed"
    assert service.list_workflows(host)[0]["status"] == "active"
    [entry] = audit_actions(host, run_id)
    assert entry["actor"] == "alice"
    assert entry["action"] == "run.didnt_happen"
    assert entry["before"] == {"status": "suspended", "suspendReason": "indeterminate",
                               "ledger": "indeterminate"}
    assert entry["after"]["ledger"] == "failed"
    assert "happens twice" in entry["after"]["effect"] or "twice" in entry["after"]["effect"]


def test_skip_runs_next_with_skipped_and_events_end_skipped(host, tmp_path: Path, sink: Sink
                                                            ) -> None:
    run_id = indeterminate_run(host, tmp_path, sink)
    out = service.resolve(host, run_id, "skip", actor="bob")
    assert out is not None
    assert out.status is RunStatus.COMMITTED
    assert state(host) == {"saw": "skipped"}
    assert events_of(host)[0]["status"] == "skipped"
    detail = run_detail(host, run_id)
    assert detail["mutations"][0]["status"] == "indeterminate"
    assert detail["mutations"][0]["resolvedBy"] == "user:bob (skipped)"
    assert detail["reservations"][0]["outcome"] == "skipped"
    assert [a["action"] for a in audit_actions(host, run_id)] == ["run.skip"]


def test_try_again_is_refused_when_the_connector_cannot_reconcile(host, tmp_path: Path,
                                                                  sink: Sink) -> None:
    run_id = indeterminate_run(host, tmp_path, sink, mutate=BLIND)
    with pytest.raises(Conflict, match="cannot be verified by its connector"):
        service.resolve(host, run_id, "try_again", actor="carol")
    assert run_detail(host, run_id)["status"] == "suspended"  # nothing changed
    assert audit_actions(host, run_id) == []


def test_try_again_resets_the_counter_and_reconciles(host, tmp_path: Path, sink: Sink,
                                                     clock) -> None:
    run_id = indeterminate_run(host, tmp_path, sink, mutate=RECONCILABLE)
    # exhaust the background reconciler: the policy allows 3 attempts in these tests
    sink.lookup_plan.clear()
    sink.lookup_plan.extend(["unavailable_503"] * 10)
    for _ in range(5):
        clock.advance(3600)
        service.drain(host)
    detail = run_detail(host, run_id)
    assert detail["mutations"][0]["status"] == "indeterminate"
    assert detail["suspendReason"] == "indeterminate"
    assert service.list_workflows(host)[0]["status"] == "needs_action"
    sink.lookup_plan.clear()  # the external system answers again
    out = service.resolve(host, run_id, "try_again", actor="dave")
    assert out is not None
    assert out.status is RunStatus.COMMITTED
    [m] = run_detail(host, run_id)["mutations"]
    assert m["status"] == "applied"
    assert m["reconcileAttempts"] == 1  # the counter started over
    assert len(sink.applied) == 1


def test_answers_are_refused_for_runs_that_are_not_waiting_for_them(host, tmp_path: Path,
                                                                    sink: Sink) -> None:
    setup(host, tmp_path, RECONCILABLE)
    done = service.trigger(host, "wf", "work")
    assert done.status is RunStatus.COMMITTED
    for answer in ("try_again", "didnt_happen", "skip"):
        with pytest.raises(Conflict):
            service.resolve(host, done.run_id, answer, actor="eve")  # type: ignore[arg-type]
    with pytest.raises(Conflict, match="only a failed run can be retried"):
        service.retry_run(host, done.run_id)
    with pytest.raises(Conflict, match="not waiting for an approval"):
        service.approve(host, done.run_id, True, actor="eve")
    assert audit_actions(host, done.run_id) == []
    assert run_detail(host, done.run_id)["status"] == "committed"


def test_retry_of_a_failed_run_is_audited(host, tmp_path: Path, sink: Sink) -> None:
    setup(host, tmp_path, RECONCILABLE)
    sink.set_plan("reject_400")
    failed = service.trigger(host, "wf", "work")
    assert failed.status is RunStatus.FAILED
    out = service.retry_run(host, failed.run_id, actor="frank")
    assert out is not None
    assert out.status is RunStatus.COMMITTED
    [entry] = audit_actions(host, failed.run_id)
    assert entry["action"] == "run.retry"
    assert entry["before"]["status"] == "failed"


def test_skip_of_a_failed_run_whose_mutation_never_happened(host, tmp_path: Path, sink: Sink
                                                            ) -> None:
    setup(host, tmp_path, RECONCILABLE)
    sink.set_plan("reject_400")
    failed = service.trigger(host, "wf", "work")
    out = service.resolve(host, failed.run_id, "skip", actor="gina")
    assert out is not None
    assert out.status is RunStatus.COMMITTED
    assert events_of(host)[0]["status"] == "skipped"
    assert sink.applied == []


def test_skip_of_a_failed_run_is_refused_when_the_mutation_happened(host, tmp_path: Path,
                                                                    sink: Sink) -> None:
    deploy_source(host, tmp_path, workflow_js(producers=seed_producer(["a"]), consumers=consumer_js(
        mutate=RECONCILABLE, next_='throw new Error("broken next");')))
    service.trigger(host, "wf", "seed")
    failed = service.trigger(host, "wf", "work")
    assert failed.status is RunStatus.FAILED
    with pytest.raises(Conflict, match="retry the run instead"):
        service.resolve(host, failed.run_id, "skip", actor="hal")
    assert events_of(host)[0]["reservedBy"] == failed.run_id


def test_skip_of_a_run_that_failed_in_prepare_is_refused_and_changes_nothing(
        host, tmp_path: Path) -> None:
    """It reserved nothing and declared no mutation, and `next` has no PrepareResult: there
    is nothing to skip. The run stays failed, its event pending, the answer unrecorded."""
    deploy_source(host, tmp_path, workflow_js(producers=seed_producer(["a"]), consumers=consumer_js(
        prepare='throw new Error("broken prepare");')))
    service.trigger(host, "wf", "seed")
    failed = service.trigger(host, "wf", "work")
    assert failed.status is RunStatus.FAILED
    with pytest.raises(Conflict, match=r"failed in prepare.*nothing to skip"):
        service.resolve(host, failed.run_id, "skip", actor="ivy")
    assert host.store.get_run(failed.run_id).status is RunStatus.FAILED
    assert events_of(host)[0]["status"] == "pending"
    assert [e["action"] for e in audit_actions(host, failed.run_id)] == []


@pytest.fixture
def approving_host(host: Host) -> Host:
    host.policies = PolicyBook(quick_policy().model_copy(
        update={"approvals": ApprovalPolicy(require=("api.post",))}))
    return host


def test_approval_suspends_before_anything_happens_then_approve_runs_it(
        approving_host: Host, tmp_path: Path, sink: Sink) -> None:
    host = approving_host
    setup(host, tmp_path, RECONCILABLE)
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.SUSPENDED
    detail = run_detail(host, out.run_id)
    assert detail["suspendReason"] == "awaiting_approval"
    assert detail["mutations"] == []  # nothing in flight, nothing sent
    assert sink.requests == []
    assert events_of(host)[0]["reservedBy"] == out.run_id
    [item] = service.inbox(host)
    assert item["kind"] == "approval"
    assert 'POST http://127.0.0.1' in item["title"]
    assert '"Item a"' in item["title"]
    assert [c["command"] for c in item["choices"]] == [f"keepflow approve {out.run_id}",
                                                       f"keepflow reject {out.run_id}"]
    done = service.approve(host, out.run_id, True, actor="ivy")
    assert done is not None
    assert done.status is RunStatus.COMMITTED
    assert len(sink.applied) == 1
    assert run_detail(host, out.run_id)["approval"]["by"] == "ivy"
    assert [a["action"] for a in audit_actions(host, out.run_id)] == ["run.approve"]


def test_reject_is_skip(approving_host: Host, tmp_path: Path, sink: Sink) -> None:
    host = approving_host
    setup(host, tmp_path, RECONCILABLE)
    out = service.trigger(host, "wf", "work")
    done = service.approve(host, out.run_id, False, actor="jo")
    assert done is not None
    assert done.status is RunStatus.COMMITTED
    assert state(host) == {"saw": "skipped"}
    assert events_of(host)[0]["status"] == "skipped"
    assert sink.requests == []
    with pytest.raises(Conflict, match="not waiting for an approval"):
        service.approve(host, out.run_id, True, actor="jo")  # answered already


def test_skipping_a_reserved_event_is_refused(host, tmp_path: Path, sink: Sink) -> None:
    run_id = indeterminate_run(host, tmp_path, sink)
    with pytest.raises(Conflict, match="reserved by run"):
        service.skip_event(host, "wf", "items", "a", actor="kim")
    assert host.store.audit_entries("event") == []
    assert run_detail(host, run_id)["status"] == "suspended"
