"""What docs/api.md and docs/operations.md promise is what the code does: every route of
`keepflow serve` is documented, and the start-up table of producers matches the scheduler."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from keepflow.scheduler.timing import first_due
from keepflow.web.app import create_app
from keepflow.workflow import Schedule

DOCS = Path(__file__).resolve().parents[2] / "docs"


async def _nothing() -> None:
    return None


def test_every_api_route_is_documented() -> None:
    none: Any = None  # the routes are only registered here, never called
    app = create_app(none, none, token=None, lifespan_hooks=(_nothing, _nothing))
    routes = {(method.upper(), path) for path, item in app.openapi()["paths"].items()
              for method in item}
    assert routes, "no routes found"
    documented = set(re.findall(r"^### `(GET|POST|PUT|PATCH|DELETE) ([^`\[?]+)",
                                (DOCS / "api.md").read_text(encoding="utf-8"), re.M))
    assert routes == documented


def test_the_documented_start_up_of_producers_is_the_schedulers() -> None:
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    assert "### Producers at start-up" in text
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    every = Schedule("interval", interval_seconds=300)
    # "never fired: fires at once"
    assert first_due(every, None, now) == now
    # "fired before: last fire + interval"
    assert first_due(every, now - timedelta(seconds=60), now) == now + timedelta(seconds=240)
    # "already past: at once, missed ticks collapse into one run"
    assert first_due(every, now - timedelta(days=3), now) == now
    daily = Schedule("cron", cron="0 9 * * *", tz="UTC")
    # "cron, never fired: at the next matching time"
    assert first_due(daily, None, now) == datetime(2026, 3, 2, 9, tzinfo=UTC)
    # "cron, missed: one run at once"
    assert first_due(daily, now - timedelta(days=2), now) == now
