"""The events list's title search on SQLite and PostgreSQL: the same events either way (ASCII
case ignored, ``%`` and ``_`` literal), also once PostgreSQL has seen a statement often enough
to consider a generic plan for it (the events list asks for plans made for its values)."""

from __future__ import annotations

import pytest

from keepflow.clock import FakeClock
from keepflow.model import EventDraft
from keepflow.store import events as ev
from keepflow.store.convert import sha256_json
from keepflow.store.queries import EventFilter
from keepflow.store.store import Store

pytestmark = pytest.mark.integration

TITLES = ["Order #1 from ACME", "order #2 from acme", "Refund 100% for Globex", "a_b", "aXb",
          "Ärger über Öl"]


@pytest.fixture
def store(store_url: str):
    s = Store(store_url, clock=FakeClock().now)
    yield s
    s.close()


@pytest.mark.parametrize(("text", "found"), [
    ("ORDER", ["order #2 from acme", "Order #1 from ACME"]),
    ("acme", ["order #2 from acme", "Order #1 from ACME"]),
    ("100%", ["Refund 100% for Globex"]),
    ("a_b", ["a_b"]),
    ("%", ["Refund 100% for Globex"]),
    ("Ärger", ["Ärger über Öl"]),
    ("nothing", []),
])
def test_title_search_finds_the_same_events_on_every_store(store: Store, text: str,
                                                           found: list[str]) -> None:
    wf = store.create_workflow("wf", "test")
    with store.write() as conn:
        ev.publish_txn(conn, wf.id, None, [
            EventDraft("t", f"m{i}", title, p := {"i": i}, sha256_json(p))
            for i, title in enumerate(TITLES)], store.clock())
    for _ in range(12):  # past psycopg's prepare threshold and PostgreSQL's custom-plan tries
        got, nxt = store.event_page(wf.id, EventFilter(topic="t", title=text), limit=50)
        assert [e.title for e in got] == found
        assert nxt is None
