"""Store states for notification tests, built through the Store API (SPEC §12)."""

from __future__ import annotations

from typing import Any

from keepflow.clock import FakeClock
from keepflow.model import EventDraft, NotificationRecord, RunStatus
from keepflow.policies import NotificationPolicy, Policy, PolicyBook
from keepflow.store.convert import sha256_json
from keepflow.store.store import Store
from tests.support import runs

REASON = "read failed (auth): token expired — what to do: reconnect the connection, then resume"
DAY = 86_400.0


def workflow(store: Store, name: str = "wf") -> tuple[str, str]:
    wf = store.create_workflow(name, "test")
    v = store.add_version(wf.id, source="x", source_sha256="0" * 64, manifest={"format": 1},
                          findings=[], created_by="test")
    return wf.id, v.id


def run(store: Store, wf: tuple[str, str], clock: FakeClock, handler: str,
        status: RunStatus, message: str = "boom") -> None:
    failed = status is RunStatus.FAILED
    draft = runs.draft(wf[0], wf[1], clock.now(), status, handler=handler,
                       failure={"class": "logic", "message": message} if failed else None)
    if failed:
        store.fail_run(draft, None)
    elif status is RunStatus.COMMITTED:
        store.commit_producer_run(draft, None, [], None)
    else:
        store.checkpoint_run(draft, None)


def publish(store: Store, wf: tuple[str, str], clock: FakeClock, mid: str,
            topic: str = "items") -> None:
    draft = EventDraft(topic, mid, f"Invoice {mid}", {"n": mid}, sha256_json({"n": mid}))
    store.commit_producer_run(runs.draft(wf[0], wf[1], clock.now(), RunStatus.COMMITTED,
                                         handler="fetch"), None, [draft], None)


def open_now(store: Store) -> list[NotificationRecord]:
    return store.list_notifications(status="open")


def hooked(url: str, **settings: Any) -> PolicyBook:
    return PolicyBook(Policy(notifications=NotificationPolicy(webhook_url=url, **settings)))
