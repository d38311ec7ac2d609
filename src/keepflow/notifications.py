"""Notifications (SPEC §12): a workflow needs action, events went stale, a handler keeps
failing — in-app, plus a webhook when the workflow's policy names one (SPEC §10).

They are *derived*, not raised by hooks: :func:`sweep` compares what the current state says is
wrong with the open notifications and opens or resolves the difference. Nothing can be missed
by a crash between "the problem happened" and "someone was told", a problem gives exactly one
open notification however often it is swept (the store's partial unique index decides), and a
notification resolves by itself when its problem goes away.

Webhooks are delivered at least once, each with ``Idempotency-Key:
keepflow-notification-<id>`` so a receiver can drop repeats; failures back off exponentially
(5 s, ×2, at most 10 min) up to ``webhook_max_attempts``. The URL often carries a token, so it
never appears in a log or a recorded error.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx

from keepflow.connectors.http_settings import RedactingLogFilter
from keepflow.connectors.http_transport import DeadlineTransport, deadline_in
from keepflow.connectors.secret import Redactor
from keepflow.model import NotificationKind, NotificationRecord, WorkflowStatus
from keepflow.policies import Policy, PolicyBook
from keepflow.store.store import Store

log = logging.getLogger("keepflow.notifications")

SWEEP_SECONDS = 30.0
DELIVER_SECONDS = 5.0
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_FACTOR = 2.0
BACKOFF_MAX_SECONDS = 600.0
BATCH = 20  # deliveries per call: a slow receiver cannot hold the loop's side thread long
CLAIM_MARGIN_SECONDS = 5.0

Key = tuple[NotificationKind, str, str]  # (kind, workflow id, key)


@dataclass
class SweepReport:
    opened: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, workflow, title)
    resolved: int = 0


def _needs_action(name: str, reason: str | None) -> tuple[str, str, str]:
    text = reason or "the workflow needs action (no reason was recorded)"
    return hashlib.sha256(text.encode()).hexdigest()[:16], f"{name} needs action", text


def sweep(store: Store, policies: PolicyBook, now: datetime) -> SweepReport:
    """Open a notification for each current problem, resolve those whose problem is gone.

    A handful of indexed queries and, only when something changed, one short write each.
    Disabled workflows are switched off on purpose: nothing about them is notified.
    """
    live = [w for w in store.list_workflows() if w.status is not WorkflowStatus.DISABLED]
    names = {w.id: w.name for w in live}
    policy: dict[str, Policy] = {w.id: policies.for_workflow(w.name) for w in live}
    wanted: dict[Key, tuple[str, str]] = {}
    for w in live:
        if w.status is WorkflowStatus.NEEDS_ACTION:
            key, title, body = _needs_action(w.name, w.status_reason)
            wanted[(NotificationKind.NEEDS_ACTION, w.id, key)] = (title, body)
    days = {wid: p.consumer.stale_event_days for wid, p in policy.items()}
    for s in store.stale_topics({wid: now - timedelta(days=d) for wid, d in days.items()}):
        wanted[(NotificationKind.STALE_EVENTS, s.workflow_id, s.topic)] = (
            f"{names[s.workflow_id]}: events in '{s.topic}' are waiting",
            f"{s.count} pending event(s) in topic '{s.topic}' have waited more than "
            f"{days[s.workflow_id]:g} days for a consumer; the oldest is \"{s.oldest_title}\" "
            f"(since {s.oldest_created_at.isoformat(timespec='seconds')}). Fix or resume the "
            f"workflow so its consumer takes them, or skip them (`keepflow event skip "
            f"{names[s.workflow_id]} {s.topic} MESSAGE_ID`).")
    opened = {(n.kind, n.workflow_id, n.key)
              for n in store.list_notifications(status="open", limit=None)}
    threshold = {wid: p.notifications.consecutive_failures for wid, p in policy.items()}
    for f in store.failing_handlers(threshold):
        key3 = (NotificationKind.REPEATED_FAILURES, f.workflow_id, f.handler)
        # Opened at the threshold; stays open until the handler's newest run is not failed.
        if f.streak >= threshold[f.workflow_id] or key3 in opened:
            name, n = names[f.workflow_id], threshold[f.workflow_id]
            wanted[key3] = (
                f"{name}: {f.handler} failed {n} time(s) in a row",
                f"The last {n} finished run(s) of {f.handler} failed; the last one with "
                f"{f.failure.get('class', 'an unknown class')}: "
                f"{f.failure.get('message', 'no message')}. See `keepflow runs {name}`.")
    return _apply(store, policy, names, wanted, opened)


def _apply(store: Store, policy: dict[str, Policy], names: dict[str, str],
           wanted: dict[Key, tuple[str, str]], opened: set[Key]) -> SweepReport:
    report = SweepReport()
    keep: dict[tuple[NotificationKind, str], set[str]] = {}
    for kind, wid, key in wanted:
        keep.setdefault((kind, wid), set()).add(key)
    open_keys: dict[tuple[NotificationKind, str], set[str]] = {}
    for kind, wid, key in opened:
        open_keys.setdefault((kind, wid), set()).add(key)
    for (kind, wid), keys in sorted(open_keys.items()):
        still = keep.get((kind, wid), set())
        if keys - still:
            report.resolved += store.resolve_notifications(kind, wid, still)
    for (kind, wid, key), (title, body) in wanted.items():
        if (kind, wid, key) in opened:
            continue
        webhook = policy[wid].notifications.webhook_url is not None
        if store.open_notification(kind, wid, key, title, body, webhook):
            report.opened.append((kind.value, names[wid], title))
    return report


# ---------------------------------------------------------------------------- webhooks


def backoff(attempt: int) -> float:
    """Seconds before the next attempt after failed attempt number ``attempt`` (1-based)."""
    return float(min(BACKOFF_BASE_SECONDS * BACKOFF_FACTOR ** (attempt - 1),
                     BACKOFF_MAX_SECONDS))


def payload(rec: NotificationRecord) -> dict[str, Any]:
    """The webhook body (documented in ``docs/operations.md``): fields may be added only."""
    return {"id": rec.id, "kind": rec.kind.value, "workflow": rec.workflow,
            "title": rec.title, "body": rec.body,
            "createdAt": rec.created_at.isoformat(), "status": rec.status}


def deliver_webhooks(store: Store, policies: PolicyBook, now: datetime,
                     client: httpx.Client) -> int:
    """POST each due notification to its workflow's webhook; returns how many were delivered.

    Each is claimed first (so two hosts sharing a database do not post it at the same
    moment) for as long as this batch can take; a host that dies mid-delivery leaves it due
    again when the claim ends.
    """
    delivered = 0
    budget = 0.0
    for rec in store.due_webhooks(now, BATCH):
        settings = policies.for_workflow(rec.workflow).notifications
        budget += settings.webhook_timeout_seconds + CLAIM_MARGIN_SECONDS
        if not store.claim_webhook(rec.id, now, now + timedelta(seconds=budget)):
            continue
        url = settings.webhook_url
        error = (_post(client, url, rec, settings.webhook_timeout_seconds) if url else
                 "the workflow's policy no longer names a webhook_url")
        if error is None:
            store.record_webhook_attempt(rec.id, True, None, None, False)
            delivered += 1
            continue
        attempt = rec.webhook_attempts + 1
        give_up = url is None or attempt >= settings.webhook_max_attempts
        next_at = None if give_up else now + timedelta(seconds=backoff(attempt))
        store.record_webhook_attempt(rec.id, False, error, next_at, give_up)
        log.warning("notification webhook failed", extra={"fields": {
            "notification": rec.id, "attempt": attempt, "error": error,
            "next": next_at.isoformat() if next_at else "gave up"}})
    return delivered


def _redactor(url: str) -> Redactor:
    """The URL, its path and query are secret (a webhook URL is usually its own token)."""
    secrets = [url]
    try:
        parsed = httpx.URL(url)
        secrets += [parsed.path, parsed.query.decode(errors="replace"), parsed.password or ""]
    except httpx.InvalidURL:
        pass
    return Redactor([s for s in secrets if s and s != "/"])


def _post(client: httpx.Client, url: str, rec: NotificationRecord, timeout: float
          ) -> str | None:
    """One attempt; None when the receiver answered 2xx, else what went wrong (no secrets).

    Only the status matters, so the answer's body is never read (a receiver cannot send a
    decompression bomb or trickle a body forever), and the whole attempt — connecting, the
    request, the status line — ends by ``webhook_timeout_seconds`` when ``client`` was made
    by :func:`webhook_client` (docs/operations.md#notifications).
    """
    redact = _redactor(url)
    masking = RedactingLogFilter(redact)  # httpx logs request URLs
    logging.getLogger("httpx").addFilter(masking)
    try:
        with deadline_in(timeout), client.stream(
                "POST", url, json=payload(rec), timeout=timeout, headers={
                    "Content-Type": "application/json", "Accept-Encoding": "identity",
                    "Idempotency-Key": f"keepflow-notification-{rec.id}"}) as res:
            status, reason = res.status_code, res.reason_phrase
    except (httpx.HTTPError, httpx.InvalidURL, UnicodeError, ValueError) as exc:
        # UnicodeError: a host name in IDNA form that does not decode ("xn--…").
        return redact.text(f"{type(exc).__name__}: {exc}")[:500]
    finally:
        logging.getLogger("httpx").removeFilter(masking)
    if 200 <= status < 300:
        return None
    return redact.text(f"HTTP {status} {reason[:200]}".strip())


def webhook_client() -> httpx.Client:
    """The HTTP client for webhooks: no environment proxies, no redirects, and every
    attempt bounded by its deadline (:class:`~keepflow.connectors.http_transport.
    DeadlineTransport`)."""
    return httpx.Client(transport=DeadlineTransport(), trust_env=False,
                        follow_redirects=False)


# ---------------------------------------------------------------------------- surfaces


def notification_view(rec: NotificationRecord) -> dict[str, Any]:
    """The JSON shape of ``keepflow notifications --json`` (docs/cli.md)."""
    return {
        "id": rec.id, "kind": rec.kind.value, "workflow": rec.workflow, "title": rec.title,
        "body": rec.body, "status": rec.status, "createdAt": rec.created_at.isoformat(),
        "resolvedAt": rec.resolved_at.isoformat() if rec.resolved_at else None,
        "webhookStatus": rec.webhook_status.value, "webhookAttempts": rec.webhook_attempts,
        "webhookError": rec.webhook_error,
    }


class Notifier:
    """The serve loop's notification work: :meth:`sweep` every :data:`SWEEP_SECONDS`,
    :meth:`deliver` every :data:`DELIVER_SECONDS` (an HTTP client only once one is due)."""

    def __init__(self, store: Store, policies: PolicyBook, clock: Callable[[], datetime]
                 ) -> None:
        self.store = store
        self.policies = policies
        self.clock = clock
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()  # sweep and delivery run in different side threads

    def sweep(self) -> None:
        report = sweep(self.store, self.policies, self.clock())
        for kind, workflow, title in report.opened:
            log.info("notification", extra={"fields": {"kind": kind, "workflow": workflow,
                                                       "title": title}})
        if report.opened:  # tell at once, not at the next delivery tick (claims stop doubles)
            self.deliver()

    def deliver(self) -> None:
        now = self.clock()
        if not self.store.due_webhooks(now, 1):
            return
        with self._lock:
            if self._client is None:
                self._client = webhook_client()
            client = self._client
        deliver_webhooks(self.store, self.policies, now, client)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
