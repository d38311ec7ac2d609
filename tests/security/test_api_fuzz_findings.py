"""What the API fuzz (test_api_fuzz.py) found, each pinned down on the real `keepflow serve`
of that fuzz (both stores): input that was answered with a 500 — or silently stored as
something else — is now a 422 naming its field, and the values at the edge still work."""

from __future__ import annotations

import json

import pytest

from tests.security.test_api_fuzz import ACCESS_TOKEN, World, world

__all__ = ["world"]  # the fixture used below

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
EVENTS = "/api/workflows/ops/topics/job/events"


@pytest.mark.parametrize("field", ["since", "until"])
@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                                   "0001-01-01T05:00:00+05:45"])
def test_a_time_outside_the_calendar_once_in_utc_is_a_422_naming_it(
        world: World, field: str, value: str) -> None:
    """It was a 500 ``store error: OverflowError: date value out of range``: the store turns
    the time into UTC, which is before year 1 or after 9999 (the page's filter too)."""
    res = world.session.get(world.url + EVENTS, params={field: value}, headers=AUTH)
    assert res.status_code == 422, res.text
    error = res.json()["error"]
    assert error["field"] == field
    assert "years 1 to 9999" in error["message"]
    assert value[:19] in error["message"]
    page = world.session.get(world.url + "/workflows/ops/topics/job", params={field: value},
                             headers=AUTH)
    assert page.status_code == 422, page.text[:300]
    for edge in ("0001-01-01T00:00:00+00:00", "0001-01-01T01:00:00+01:00",
                 "9999-12-31T23:59:59+00:00", "9999-12-31", "0001-01-01"):
        res = world.session.get(world.url + EVENTS, params={field: edge}, headers=AUTH)
        assert res.status_code == 200, (edge, res.text)
    assert world.internal_errors() is None


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1E+309", "123456789e999"])
def test_an_inbound_number_too_large_for_a_float_is_refused_not_changed(
        world: World, number: str) -> None:
    """It parsed to infinity: SQLite kept the payload with ``null`` in its place, PostgreSQL
    answered 500 (``Token "Infinity" is invalid``)."""
    token = world.inbound_token("ops")
    message_id = f"big-{number}"
    raw = f'{{"messageId": "{message_id}", "title": "Big", "payload": {{"n": [1, {number}]}}}}'
    res = world.session.post(world.url + EVENTS, data=raw.encode(), headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert res.status_code == 422, res.text
    error = res.json()["error"]
    assert error["field"] == "payload"
    assert number in error["message"]
    assert "send it as a string" in error["message"]
    assert world.session.get(f"{world.url}{EVENTS}/{message_id}",
                             headers=AUTH).status_code == 404  # nothing stored


def test_the_largest_float_is_still_an_inbound_number(world: World) -> None:
    token = world.inbound_token("ops")
    body = {"messageId": "max-float", "title": "Max", "payload": {"n": 1.7976931348623157e308}}
    res = world.session.post(world.url + EVENTS, data=json.dumps(body).encode(), headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert res.status_code in (200, 201), res.text
    shown = world.session.get(f"{world.url}{EVENTS}/max-float", headers=AUTH)
    assert shown.status_code == 200, shown.text
    # The same number (PostgreSQL's jsonb gives it back in integer notation).
    assert float(shown.json()["payload"]["n"]) == 1.7976931348623157e308
