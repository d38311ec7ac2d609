"""Pure parts of notification webhooks: the backoff schedule and the payload shape."""

from __future__ import annotations

from datetime import UTC, datetime

from keepflow.model import NotificationKind, NotificationRecord, WebhookStatus
from keepflow.notifications import _redactor, backoff, payload


def test_backoff_starts_at_5s_doubles_and_is_capped_at_10_minutes() -> None:
    assert [backoff(n) for n in range(1, 10)] == [5, 10, 20, 40, 80, 160, 320, 600, 600]


def test_payload_has_exactly_the_documented_fields() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    rec = NotificationRecord(
        id=7, kind=NotificationKind.STALE_EVENTS, workflow_id="01W", workflow="mail",
        key="inbox", title="t", body="b", status="open", created_at=at, resolved_at=None,
        webhook_status=WebhookStatus.PENDING, webhook_attempts=0, webhook_next_at=at,
        webhook_error=None)
    assert payload(rec) == {"id": 7, "kind": "stale_events", "workflow": "mail", "title": "t",
                            "body": "b", "createdAt": "2026-01-02T03:04:05+00:00",
                            "status": "open"}


def test_the_webhook_url_path_and_query_are_masked() -> None:
    redact = _redactor("https://hooks.example.com/services/T0/B0/XyZ-secret?token=abc123")
    text = redact.text("POST https://hooks.example.com/services/T0/B0/XyZ-secret?token=abc123"
                       " failed; path /services/T0/B0/XyZ-secret; token=abc123")
    assert "XyZ-secret" not in text
    assert "abc123" not in text
