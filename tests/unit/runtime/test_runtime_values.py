"""Pure validation of what scripts hand to the host (SPEC §3, §5.1)."""

from __future__ import annotations

import pytest

from keepflow.errors import InvalidResult
from keepflow.runtime import values

DECLARED = frozenset({"items", "done"})


def draft(event: object, topic: object = "items") -> values.EventDraft:
    return values.event_draft(topic, event, declared=DECLARED, payload_limit=1024)


def test_event_draft_accepts_a_good_event_and_trims_the_title() -> None:
    d = draft({"messageId": "a", "title": "  Item a ", "payload": {"x": 1}})
    assert (d.topic, d.message_id, d.title, d.payload) == ("items", "a", "Item a", {"x": 1})


def test_numeric_message_ids_become_strings() -> None:
    assert draft({"messageId": 42, "title": "t"}).message_id == "42"


def test_derived_message_id_is_stable_across_key_order() -> None:
    a = draft({"title": "t", "payload": {"a": 1, "b": 2}})
    b = draft({"title": "t", "payload": {"b": 2, "a": 1}})
    assert a.message_id == b.message_id
    assert a.message_id.startswith("sha256:")


@pytest.mark.parametrize(("event", "topic", "needle"), [
    ({"title": "t"}, "nope", "not declared"),
    ("not an object", "items", "must be an object"),
    ({"messageId": "a"}, "items", "`title` is required"),
    ({"messageId": True, "title": "t"}, "items", "must be a string"),
    ({"messageId": "", "title": "t"}, "items", "1 to 256"),
    ({"title": "t", "payload": "x" * 2000}, "items", "over the limit"),
    ({"title": "t", "body": 1}, "items", "unknown event field"),
])
def test_event_draft_rejections(event: object, topic: object, needle: str) -> None:
    with pytest.raises(InvalidResult, match=needle):
        draft(event, topic)


def test_prepare_result_merges_and_deduplicates_reservations() -> None:
    r = values.prepare_result(
        {"reservations": [{"topic": "items", "ids": ["a", "b"]}, {"topic": "items", "ids": ["a"]}],
         "data": {"k": 1}, "ui": {"summary": "s"}},
        subscribed=frozenset({"items"}), limit=10_000)
    assert [(x.topic, x.message_ids) for x in r.reservations] == [("items", ("a", "b"))]
    assert not r.empty
    assert r.to_json()["ui"] == {"summary": "s"}


def test_empty_ids_mean_nothing_to_do() -> None:
    r = values.prepare_result({"reservations": [{"topic": "items", "ids": []}], "data": None},
                              subscribed=frozenset({"items"}), limit=10_000)
    assert r.empty


@pytest.mark.parametrize(("value", "needle"), [
    (None, "prepare must return"),
    ({"reservations": {}}, "`reservations` is"),
    ({"reservations": [{"topic": "x", "ids": ["a"]}]}, "does not subscribe"),
    ({"reservations": [{"topic": "items", "ids": "a"}]}, "list of messageIds"),
    ({"reservations": [], "extra": 1}, "unknown field"),
    ({"reservations": [], "data": "x" * 20_000}, "PrepareResult is"),
])
def test_prepare_result_rejections(value: object, needle: str) -> None:
    with pytest.raises(InvalidResult, match=needle):
        values.prepare_result(value, subscribed=frozenset({"items"}), limit=10_000)
