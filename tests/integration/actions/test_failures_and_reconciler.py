"""Every failure class end to end (SPEC §8) and the background reconciler (SPEC §6 step 5):
what the run records, where the workflow ends up, and what the inbox asks."""

from __future__ import annotations

from pathlib import Path

import pytest

from keepflow import service
from keepflow.model import RunStatus
from keepflow.runtime.host import Host
from keepflow.scheduler.inline import InlineDriver
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


def setup(host: Host, tmp_path: Path, mutate: str = POST, prepare: str | None = None) -> None:
    deploy_source(host, tmp_path, workflow_js(producers=seed_producer(["a"]), consumers=(
        consumer_js(mutate=mutate, prepare=prepare))))
    service.trigger(host, "wf", "seed")


@pytest.mark.parametrize(("plan", "cls", "todo"), [
    ("reject_401", "auth", "reconnect"),
    ("reject_403", "permission", "approve the permission"),
    ("reject_404", "precondition", "missing resource"),
    ("reject_400", "logic", "the script has a bug"),
])
def test_connector_failures_are_classified_and_routed(host, tmp_path: Path, sink: Sink,
                                                      plan: str, cls: str, todo: str) -> None:
    setup(host, tmp_path)
    sink.set_plan(plan)
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.FAILED
    detail = run_detail(host, out.run_id)
    f = detail["failure"]
    assert (f["class"], f["phase"], f["handler"]) == (cls, "mutate", "work")
    assert f["versionId"] == host.store.get_workflow("wf").current_version_id
    assert f["inputs"]["prepared"]["reservations"] == [{"topic": "items", "ids": ["a"]}]
    assert [c["tool"] for c in detail["toolCalls"] if c["target"] == "tool"] == ["post"]
    wf = service.list_workflows(host)[0]
    assert wf["status"] == "needs_action"
    assert todo in wf["statusReason"]
    [item] = service.inbox(host)
    assert '"Item a"' in item["title"]
    if cls == "auth":  # refused credentials: reconnect the connection, then it retries
        assert (item["kind"], item["connection"]) == ("reconnect", "api")
        assert item["title"].startswith("Reconnect api: its credentials were refused")
        assert item["choices"][0]["command"] == "keepflow connection secret api <setting>"
        assert item["choices"][1]["command"] == f"keepflow retry {out.run_id}"
        return
    assert item["kind"] == "failed_run"
    assert f"({cls})" in item["title"]
    assert todo in item["check"]
    assert item["choices"][0]["command"] == f"keepflow retry {out.run_id}"
    assert service.drain(host).runs == []  # needs action: nothing runs on its own


@pytest.mark.parametrize(("path", "cls"), [("/auth-required", "auth"),
                                           ("/forbidden", "permission")])
def test_a_read_refused_by_the_external_system_is_never_retried(host, tmp_path: Path,
                                                                 path: str, cls: str) -> None:
    deploy_source(host, tmp_path, workflow_js(producers=f"""
    poll: async (ctx) => {{ await ctx.api.get({{ url: "{path}" }}); }},""",
                                              consumers=consumer_js()))
    out = service.trigger(host, "wf", "poll")
    assert out.status is RunStatus.FAILED
    detail = run_detail(host, out.run_id)
    assert detail["failure"]["class"] == cls
    assert len(detail["toolCalls"]) == 1  # no retries for auth / permission
    assert service.list_workflows(host)[0]["status"] == "needs_action"


@pytest.mark.parametrize(("mutate", "code"), [
    ('throw new RangeError("bad amount");', "script_error"),
    ("for (;;) {}", "sandbox_limit"),
    ("const big = []; for (;;) big.push('x'.repeat(1000000));", "sandbox_limit"),
])
def test_script_and_sandbox_failures_are_logic(host, tmp_path: Path, sink: Sink, mutate: str,
                                               code: str) -> None:
    setup(host, tmp_path, mutate=mutate)
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.FAILED
    f = run_detail(host, out.run_id)["failure"]
    assert (f["class"], f["code"]) == ("logic", code)
    if code == "script_error":
        assert "RangeError" in f["message"]
        assert f["stack"]
    assert sink.requests == []
    assert service.list_workflows(host)[0]["status"] == "needs_action"


def test_background_reconciler_applies_after_backoff_and_next_runs(host, tmp_path: Path,
                                                                   sink: Sink, clock) -> None:
    setup(host, tmp_path)
    sink.set_plan("apply_then_timeout")
    sink.lookup_plan.extend(["unavailable_503", "unavailable_503"])
    driver = InlineDriver(host)
    driver.start()
    [(req, out)] = driver.run_until_idle()
    assert out.status is RunStatus.SUSPENDED
    [m] = run_detail(host, out.run_id)["mutations"]
    assert (m["status"], m["reconcileAttempts"]) == ("needs_reconcile", 1)
    clock.advance(59)  # policy: first background attempt after 60 s
    assert driver.run_until_idle() == []
    clock.advance(1)
    [(req, again)] = driver.run_until_idle()  # the sink still answers 503
    assert req.trigger == "reconcile"
    assert again.status is RunStatus.SUSPENDED
    assert run_detail(host, out.run_id)["mutations"][0]["reconcileAttempts"] == 2
    driver.stop()
    # a restart keeps the schedule: the next attempt is due 120 s after the previous one
    driver = InlineDriver(host)
    driver.start()
    clock.advance(119)
    assert driver.run_until_idle() == []
    clock.advance(1)
    done = driver.run_until_idle()
    assert [o.status for _, o in done] == [RunStatus.COMMITTED]
    [m] = run_detail(host, out.run_id)["mutations"]
    assert (m["status"], m["resolvedBy"]) == ("applied", "reconcile")
    assert events_of(host)[0]["status"] == "consumed"
    assert len(sink.applied) == 1


def test_background_reconciler_says_failed_and_mutate_runs_again(host, tmp_path: Path,
                                                                 sink: Sink, clock) -> None:
    setup(host, tmp_path)
    sink.set_plan("timeout", "ok")  # the first call never took effect
    sink.lookup_plan.append("unavailable_503")
    driver = InlineDriver(host)
    driver.start()
    [(_, out)] = driver.run_until_idle()
    assert out.status is RunStatus.SUSPENDED
    clock.advance(60)
    [(_, done)] = driver.run_until_idle()
    assert done.status is RunStatus.COMMITTED
    muts = run_detail(host, out.run_id)["mutations"]
    assert [m["status"] for m in muts] == ["failed", "applied"]
    assert len(sink.applied) == 1


def test_reconciler_gives_up_into_indeterminate_and_asks_the_person(host, tmp_path: Path,
                                                                    sink: Sink, clock) -> None:
    setup(host, tmp_path)
    sink.set_plan("apply_then_timeout")
    sink.lookup_plan.extend(["unavailable_503"] * 10)
    driver = InlineDriver(host)
    driver.start()
    [(_, out)] = driver.run_until_idle()
    for _ in range(4):
        clock.advance(600)
        driver.run_until_idle()
    detail = run_detail(host, out.run_id)
    assert detail["suspendReason"] == "indeterminate"
    assert detail["mutations"][0]["status"] == "indeterminate"
    assert detail["mutations"][0]["reconcileAttempts"] == 3  # policy max_attempts
    wf = service.list_workflows(host)[0]
    assert wf["status"] == "needs_action"
    assert "could not verify it after 3 attempt(s)" in wf["statusReason"]
    [item] = service.inbox(host)
    assert item["kind"] == "unknown_outcome"
    assert item["title"].startswith("Did POST http://127.0.0.1")
    assert '"Item a"' in item["title"]
    assert "idempotency key kf-" in item["check"]
    assert [c["answer"] for c in item["choices"]] == ["try_again", "didnt_happen", "skip"]
    assert "twice" in item["choices"][1]["warning"]


def test_a_hanging_reconcile_call_is_bounded_by_its_timeout(host, tmp_path: Path, sink: Sink
                                                            ) -> None:
    setup(host, tmp_path)
    sink.set_plan("apply_then_timeout")
    sink.lookup_plan.append("hang")  # the lookup never answers (reconcile timeout: 0.5 s)
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.SUSPENDED
    [m] = run_detail(host, out.run_id)["mutations"]
    assert m["status"] == "needs_reconcile"


def test_logic_failures_are_offered_to_the_repair_hook_first(host, tmp_path: Path) -> None:
    """SPEC §8: logic → Maintainer repair when it takes it (a hook until the Maintainer
    exists), else the person; other classes never reach the hook."""
    offered = []

    def repair(failure, run) -> bool:
        offered.append((failure.failure_class.value, run.handler))
        return True

    host.repair_hook = repair
    setup(host, tmp_path, mutate='throw new Error("bug");')
    out = service.trigger(host, "wf", "work")
    assert out.status is RunStatus.FAILED
    assert offered == [("logic", "work")]
    assert service.list_workflows(host)[0]["status"] == "active"  # being repaired
