"""Recovery from every durable point of SPEC §5.5, in-process.

A crash is simulated by raising a ``BaseException`` at a named fault point: a transaction in
progress rolls back exactly as if the process had died. A *new* Host then starts (recovery runs
on every start) and the external system's own record (the sink) is checked. The real SIGKILL
suite is ``tests/integration/test_crash.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keepflow import faults, service
from keepflow.model import RunDraft, RunKind, RunStatus
from keepflow.runtime.host import Host
from keepflow.runtime.recovery import recover
from tests.support import runs
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
NEXT = """
      await ctx.publish("done", { messageId: "done-" + prepared.data.event.messageId,
                                  title: "Done", payload: mutation });
      return { saw: mutation.status };"""


class Crash(BaseException):
    pass


@pytest.fixture
def crash_at(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    armed: list[str] = []

    def point(name: str) -> None:
        if name in armed:
            armed.remove(name)
            raise Crash(name)

    monkeypatch.setattr(faults, "point", point)
    return armed


def restart(host: Host) -> Host:
    """A new host on the same store, connections and sandbox: what a process restart gives."""
    return Host(host.settings, clock=host.clock, connections=host.connections, pool=host.pool,
                policies=host.policies)


def setup(host: Host, tmp_path: Path) -> None:
    src = workflow_js(topics=("items", "done"), producers=seed_producer(["a"]),
                      consumers=consumer_js(mutate=POST, next_=NEXT)
                      + consumer_js("fin", topic="done"))
    deploy_source(host, tmp_path, src)
    service.trigger(host, "wf", "seed")


def finish(host: Host) -> None:
    """Restart, recover, drain: then every event must be consumed and applied exactly once."""
    fresh = restart(host)
    try:
        service.drain(fresh)
        evs = {e["messageId"]: e["status"] for e in events_of(fresh)}
        assert evs == {"a": "consumed", "done-a": "consumed"}
    finally:
        fresh.close()


def test_producer_crash_before_commit_commits_nothing(host, tmp_path: Path, crash_at) -> None:
    setup(host, tmp_path)
    crash_at.append("producer.before_commit")
    deploy_source(host, tmp_path, workflow_js(
        topics=("items", "done"), producers=seed_producer(["a", "b"]),
        consumers=consumer_js(mutate=POST, next_=NEXT) + consumer_js("fin", topic="done")),
        "v2.js")
    with pytest.raises(Crash):
        service.trigger(host, "wf", "seed")
    assert [e["messageId"] for e in events_of(host)] == ["a"]
    fresh = restart(host)
    assert recover(fresh).resumed == []
    assert service.trigger(fresh, "wf", "seed").status is RunStatus.COMMITTED
    assert sorted(e["messageId"] for e in events_of(fresh)) == ["a", "b"]
    fresh.close()


def test_producer_crash_mid_commit_rolls_back(host, tmp_path: Path, crash_at) -> None:
    src = workflow_js(producers=seed_producer(["a", "b", "c"]), consumers=consumer_js())
    deploy_source(host, tmp_path, src)
    crash_at.append("producer_commit.mid_commit")
    with pytest.raises(Crash):
        service.trigger(host, "wf", "seed")
    assert events_of(host) == []
    assert host.store.load_state(host.store.get_workflow("wf").id, "seed") == (False, None)


def test_crash_before_in_flight_is_durable_reruns_from_scratch(
        host, tmp_path: Path, sink: Sink, crash_at) -> None:
    setup(host, tmp_path)
    crash_at.append("in_flight.mid_commit")
    with pytest.raises(Crash):
        service.trigger(host, "wf", "work")
    assert events_of(host, topic="items")[0]["reservedBy"] is None
    assert sink.requests == []
    finish(host)
    assert len(sink.applied) == 1


def test_crash_while_recording_a_permanent_failure_fails_without_resending(
        host, tmp_path: Path, sink: Sink, crash_at) -> None:
    setup(host, tmp_path)
    sink.set_plan("reject_400")
    crash_at.append("record_run.mid_commit")
    with pytest.raises(Crash):
        service.trigger(host, "wf", "work")
    [run] = host.store.unfinished_runs()
    fresh = restart(host)
    [out] = recover(fresh).resumed
    fresh.close()
    assert out.status is RunStatus.FAILED
    assert out.failure is not None
    assert out.failure["class"] == "logic"
    assert "400" in out.failure["message"]
    assert sum(1 for r in sink.requests if r[0] == "POST") == 1
    assert [m.status.value for m in host.store.mutations_of(run.id)] == ["failed"]


@pytest.mark.parametrize("applied", [True, False])
def test_crash_with_ledger_in_flight_reconciles_never_resends(
        host, tmp_path: Path, sink: Sink, crash_at, applied: bool) -> None:
    """SPEC §15 scenario 11: on restart the mutation is reconciled, never blindly re-sent."""
    setup(host, tmp_path)
    crash_at.append("mutation.after_call" if applied else "in_flight.after_commit")
    with pytest.raises(Crash):
        service.trigger(host, "wf", "work")
    [m] = host.store.mutations_of(host.store.unfinished_runs()[0].id)
    assert m.status.value == "in_flight"
    posts_before = sum(1 for r in sink.requests if r[0] == "POST")
    finish(host)
    run_id = m.run_id
    muts = run_detail(host, run_id)["mutations"]
    if applied:
        assert [x["status"] for x in muts] == ["applied"]
        assert muts[0]["resolvedBy"] == "reconcile"
        assert sum(1 for r in sink.requests if r[0] == "POST") == posts_before
    else:  # never sent: reconcile says failed, mutate re-executes as attempt 2
        assert [x["status"] for x in muts] == ["failed", "applied"]
    assert len(sink.applied) == 1


@pytest.mark.parametrize("point", ["settle_applied.after_commit", "next.before_commit",
                                   "consumer_commit.mid_commit"])
def test_crash_after_applied_runs_next_with_the_stored_result(
        host, tmp_path: Path, sink: Sink, crash_at, point: str) -> None:
    setup(host, tmp_path)
    crash_at.append(point)
    with pytest.raises(Crash):
        service.trigger(host, "wf", "work")
    [run] = host.store.unfinished_runs()
    assert run.status is RunStatus.MUTATED
    finish(host)
    assert len(sink.applied) == 1
    done = service.show_event(host, "wf", "done", "done-a")
    assert done["payload"]["status"] == "applied"
    assert done["payload"]["result"]["json"]["key"] == sink.applied[0].key


def test_crash_after_commit_leaves_nothing_to_do(host, tmp_path: Path, sink: Sink,
                                                 crash_at) -> None:
    setup(host, tmp_path)
    crash_at.append("consumer_commit.after_commit")
    with pytest.raises(Crash):
        service.trigger(host, "wf", "work")
    assert host.store.unfinished_runs() == []
    finish(host)
    assert len(sink.applied) == 1


def test_crash_after_a_definite_transient_failure_remutates(host, tmp_path: Path, sink: Sink,
                                                            crash_at) -> None:
    setup(host, tmp_path)
    sink.set_plan("unavailable_503", "ok")
    crash_at.append("settle_failed.after_commit")
    with pytest.raises(Crash):
        service.trigger(host, "wf", "work")
    finish(host)
    [run_id] = {k.rsplit("-", 2)[1] for k in sink.applied_keys()}
    assert [m["status"] for m in run_detail(host, run_id)["mutations"]] == ["failed", "applied"]


def _synthetic(host: Host, status: RunStatus, prepared: object,
               kind: RunKind = RunKind.CONSUMER, handler: str = "work") -> RunDraft:
    wf = host.store.get_workflow("wf")
    assert wf.current_version_id is not None
    return runs.draft(wf.id, wf.current_version_id, host.clock.now(), status, kind=kind,
                      handler=handler, run_id="01SYNTHETICRUN000000000000", prepared=prepared)


def test_durable_preparing_reruns_prepare(host, tmp_path: Path, sink: Sink) -> None:
    setup(host, tmp_path)
    host.store.checkpoint_run(_synthetic(host, RunStatus.PREPARING, None), None)
    finish(host)
    assert run_detail(host, "01SYNTHETICRUN000000000000")["status"] == "committed"
    assert len(sink.applied) == 1


def test_durable_prepared_without_ledger_runs_mutate(host, tmp_path: Path, sink: Sink) -> None:
    from keepflow.model import EventClaim, Reservation

    setup(host, tmp_path)
    prepared = {"reservations": [{"topic": "items", "ids": ["a"]}],
                "data": {"event": {"messageId": "a", "title": "Item a"}}}
    host.store.checkpoint_run(_synthetic(host, RunStatus.PREPARED, prepared), None,
                              claim=EventClaim((Reservation("items", ("a",)),), ("items",)))
    finish(host)
    detail = run_detail(host, "01SYNTHETICRUN000000000000")
    assert detail["status"] == "committed"
    assert [m["status"] for m in detail["mutations"]] == ["applied"]
    assert len(sink.applied) == 1


def test_suspended_needs_reconcile_stays_suspended_on_restart(host, tmp_path: Path,
                                                              sink: Sink) -> None:
    setup(host, tmp_path)
    sink.set_plan("apply_then_timeout")
    sink.lookup_plan.append("unavailable_503")
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.SUSPENDED
    fresh = restart(host)
    assert recover(fresh).resumed == []
    assert fresh.store.get_run(out.run_id).status is RunStatus.SUSPENDED
    fresh.close()
    # the background reconciler (resume with reconcile=True) settles it once the sink answers
    with host.lease(host.store.get_workflow("wf")) as fence:
        again = host.executor.resume(out.run_id, fence, reconcile=True)
    assert again.status is RunStatus.COMMITTED
    assert len(sink.applied) == 1


def test_durable_running_producer_is_discarded(host, tmp_path: Path) -> None:
    """SPEC §5.5: producer running → discard; nothing was committed; it runs again."""
    setup(host, tmp_path)
    run = _synthetic(host, RunStatus.RUNNING, None, kind=RunKind.PRODUCER, handler="seed")
    host.store.checkpoint_run(run, None)
    fresh = restart(host)
    [out] = recover(fresh).resumed
    assert out.status is RunStatus.FAILED
    assert out.failure is not None
    assert "nothing was committed" in out.failure["message"]
    assert service.list_workflows(fresh)[0]["status"] == "active"  # not the script's fault
    assert service.trigger(fresh, "wf", "seed").status is RunStatus.COMMITTED
    fresh.close()
