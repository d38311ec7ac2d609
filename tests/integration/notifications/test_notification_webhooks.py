"""Notification webhooks to a real loopback server (SPEC §12): delivered once with an
idempotency key, retried with backoff, given up with the error kept; the serve loop's timer
and the CLI list."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from keepflow import service
from keepflow.cli import main as cli
from keepflow.clock import FakeClock
from keepflow.model import NotificationKind, WebhookStatus, WorkflowStatus
from keepflow.notifications import Notifier, deliver_webhooks, notification_view, sweep
from keepflow.policies import PolicyBook
from keepflow.runtime.host import Host
from keepflow.scheduler.loop import SchedulerLoop
from keepflow.store.store import Store
from tests.support.notify import REASON, hooked, open_now, workflow
from tests.support.sink import Sink

pytestmark = pytest.mark.integration


def test_webhook_delivered_once_with_the_idempotency_key(store: Store, clock: FakeClock,
                                                         sink: Sink) -> None:
    wf = workflow(store)
    policies = hooked(f"{sink.url}/hooks/notify")
    store.set_workflow_status(wf[0], WorkflowStatus.NEEDS_ACTION, REASON, "test")
    sweep(store, policies, clock.now())
    [n] = open_now(store)
    assert n.webhook_status is WebhookStatus.PENDING
    sent: list[httpx.Request] = []
    with httpx.Client(event_hooks={"request": [sent.append]}) as client:
        assert deliver_webhooks(store, policies, clock.now(), client) == 1
        clock.advance(3600)
        sweep(store, policies, clock.now())
        assert deliver_webhooks(store, policies, clock.now(), client) == 0
    assert sink.applied_keys() == [f"keepflow-notification-{n.id}"]
    assert sink.applied_bodies() == [{
        "id": n.id, "kind": "needs_action", "workflow": "wf", "title": "wf needs action",
        "body": REASON, "createdAt": n.created_at.isoformat(), "status": "open"}]
    assert sent[0].headers["content-type"] == "application/json"
    [done] = store.list_notifications()
    assert (done.webhook_status, done.webhook_attempts, done.webhook_error) == (
        WebhookStatus.DELIVERED, 1, None)


def test_webhook_retried_with_backoff_after_503(store: Store, clock: FakeClock, sink: Sink,
                                                client: httpx.Client) -> None:
    wf = workflow(store)
    policies = hooked(f"{sink.url}/hooks/notify")
    sink.set_plan("unavailable_503", "unavailable_503", "ok")
    store.set_workflow_status(wf[0], WorkflowStatus.NEEDS_ACTION, REASON, "test")
    sweep(store, policies, clock.now())
    start = clock.now()
    assert deliver_webhooks(store, policies, clock.now(), client) == 0
    [n] = open_now(store)
    assert (n.webhook_status, n.webhook_attempts) == (WebhookStatus.PENDING, 1)
    assert n.webhook_error == "HTTP 503 Service Unavailable"
    assert n.webhook_next_at == start + timedelta(seconds=5)
    clock.advance(4.9)
    assert deliver_webhooks(store, policies, clock.now(), client) == 0
    assert len(sink.requests) == 1  # not due yet: nothing sent
    clock.advance(0.1)
    deliver_webhooks(store, policies, clock.now(), client)
    assert open_now(store)[0].webhook_next_at == start + timedelta(seconds=5 + 10)
    clock.advance(10)
    assert deliver_webhooks(store, policies, clock.now(), client) == 1
    [n] = open_now(store)
    assert (n.webhook_status, n.webhook_attempts, n.webhook_error) == (
        WebhookStatus.DELIVERED, 3, None)
    assert [r[2] for r in sink.requests] == [f"keepflow-notification-{n.id}"] * 3
    assert len(sink.applied_keys()) == 1


def test_webhook_gives_up_after_max_attempts(store: Store, clock: FakeClock, sink: Sink,
                                             client: httpx.Client) -> None:
    wf = workflow(store)
    policies = hooked(f"{sink.url}/hooks/notify", webhook_max_attempts=2)
    sink.set_plan("unavailable_503", "error_500", "ok")
    store.set_workflow_status(wf[0], WorkflowStatus.NEEDS_ACTION, REASON, "test")
    sweep(store, policies, clock.now())
    for _ in range(4):
        deliver_webhooks(store, policies, clock.now(), client)
        clock.advance(3600)
    [n] = open_now(store)
    assert (n.webhook_status, n.webhook_attempts) == (WebhookStatus.FAILED, 2)
    assert n.webhook_error == "HTTP 500 Internal Server Error"
    assert n.webhook_next_at is None
    assert len(sink.requests) == 2
    assert sink.applied_keys() == []


def test_transport_errors_are_recorded_without_the_secret_url(
        store: Store, clock: FakeClock, client: httpx.Client,
        caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    policies = hooked(f"http://127.0.0.1:{port}/hooks/s3cret-token?sig=t0ps3cret")
    wf = workflow(store)
    store.set_workflow_status(wf[0], WorkflowStatus.NEEDS_ACTION, REASON, "test")
    sweep(store, policies, clock.now())
    with caplog.at_level(logging.DEBUG):
        deliver_webhooks(store, policies, clock.now(), client)
    [n] = open_now(store)
    assert n.webhook_error is not None
    assert n.webhook_error.startswith("ConnectError")
    for text in (n.webhook_error, caplog.text):
        assert "s3cret-token" not in text
        assert "t0ps3cret" not in text


def test_no_webhook_without_a_url(store: Store, clock: FakeClock, sink: Sink,
                                  client: httpx.Client) -> None:
    plain, hooked = workflow(store, "plain"), workflow(store, "hooked")
    policies = PolicyBook(overrides={
        "hooked": {"notifications": {"webhook_url": f"{sink.url}/hooks/notify"}}})
    for wf in (plain, hooked):
        store.set_workflow_status(wf[0], WorkflowStatus.NEEDS_ACTION, REASON, "test")
    sweep(store, policies, clock.now())
    status = {n.workflow: n.webhook_status for n in open_now(store)}
    assert status == {"plain": WebhookStatus.NONE, "hooked": WebhookStatus.PENDING}
    assert deliver_webhooks(store, policies, clock.now(), client) == 1
    assert [b["workflow"] for b in sink.applied_bodies()] == ["hooked"]


def test_a_problem_resolved_before_delivery_is_still_told(store: Store, clock: FakeClock,
                                                         sink: Sink,
                                                         client: httpx.Client) -> None:
    wf = workflow(store)
    policies = hooked(f"{sink.url}/hooks/notify")
    store.set_workflow_status(wf[0], WorkflowStatus.NEEDS_ACTION, REASON, "test")
    sweep(store, policies, clock.now())
    store.set_workflow_status(wf[0], WorkflowStatus.ACTIVE, None, "test")
    sweep(store, policies, clock.now())
    assert deliver_webhooks(store, policies, clock.now(), client) == 1
    assert sink.applied_bodies()[0]["status"] == "resolved"


def test_a_delivery_is_claimed_by_one_host(store: Store, clock: FakeClock) -> None:
    wf = workflow(store)
    store.open_notification(NotificationKind.NEEDS_ACTION, wf[0], "k", "t", "b", webhook=True)
    [n] = store.due_webhooks(clock.now(), 10)
    until = clock.now() + timedelta(seconds=60)
    assert store.claim_webhook(n.id, clock.now(), until)
    assert not store.claim_webhook(n.id, clock.now(), until)
    assert store.due_webhooks(clock.now(), 10) == []
    clock.advance(60)  # the claimer died: due again when the claim ends
    assert [d.id for d in store.due_webhooks(clock.now(), 10)] == [n.id]


# ------------------------------------------------------------------------ surfaces


def test_the_notifier_tells_a_new_problem_at_once(store: Store, clock: FakeClock,
                                                  sink: Sink) -> None:
    notifier = Notifier(store, hooked(f"{sink.url}/hooks/notify"), clock.now)
    notifier.deliver()  # nothing due: no HTTP client, no request
    assert notifier._client is None
    wf = workflow(store)
    store.set_workflow_status(wf[0], WorkflowStatus.NEEDS_ACTION, REASON, "test")
    notifier.sweep()  # opens it and delivers without waiting for the next delivery tick
    notifier.sweep()
    notifier.close()
    assert len(sink.applied_keys()) == 1


def test_the_serve_loop_runs_side_work_on_a_timer(host: Host) -> None:
    loop = SchedulerLoop(host)
    calls: list[int] = []

    def broken() -> None:
        raise RuntimeError("side work failed")

    loop.every(0.02, lambda: calls.append(1), "count")
    loop.every(0.02, broken, "broken")

    async def main() -> None:
        loop.start()
        task = asyncio.create_task(loop.run())
        await asyncio.sleep(0.3)
        await loop.shutdown(1.0)
        await task

    asyncio.run(main())
    assert len(calls) >= 3


def test_cli_lists_notifications_after_sweeping(store_url: str, store: Store,
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    wf = workflow(store)
    store.set_workflow_status(wf[0], WorkflowStatus.NEEDS_ACTION, REASON, "test")
    monkeypatch.setenv("KEEPFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KEEPFLOW_DATABASE_URL", store_url)
    (tmp_path / "home").mkdir()  # the home `keepflow init` made (the store is the database)
    res = CliRunner().invoke(cli, ["notifications", "--json"])
    assert res.exit_code == 0, res.output
    [item] = json.loads(res.output)
    assert set(item) == {"id", "kind", "workflow", "title", "body", "status", "createdAt",
                         "resolvedAt", "webhookStatus", "webhookAttempts", "webhookError"}
    assert (item["kind"], item["workflow"], item["status"]) == ("needs_action", "wf", "open")
    human = CliRunner().invoke(cli, ["notifications", "--all"])
    assert "wf needs action" in human.output
    assert notification_view(open_now(store)[0]) == item
    with Host(clock=FakeClock(), store=store, policies=PolicyBook()) as host:
        assert service.notifications(host, "resolved") == []
