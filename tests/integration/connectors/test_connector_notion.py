"""The notion connector against a fake of Notion's REST API on loopback
(tests/support/fake_notion.py, built from Notion's published reference): reads with
pagination and flattening, mutations and their reconcile, failure classes, bad input, hostile
answers — and workflows that create pages through the host (SPEC §6, §8, §9;
docs/connectors.md#notion)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keepflow import service
from keepflow.clock import FakeClock
from keepflow.connectors.base import ConnectionConfig, ReconcileOutcome, ToolCall
from keepflow.connectors.config import Connections
from keepflow.connectors.notion import MAX_RESPONSE_BYTES, NOTION_VERSION, NotionConnector
from keepflow.connectors.notion_values import TEXT_CHARS
from keepflow.connectors.notion_wire import proxy_for
from keepflow.connectors.registry import get_connector_class
from keepflow.connectors.secret import Secret
from keepflow.errors import (
    AuthError,
    ConfigError,
    ConnectorError,
    PermanentError,
    PermissionDenied,
    PreconditionError,
    TransientError,
    UncertainOutcome,
)
from keepflow.model import RunStatus
from keepflow.policies import PolicyBook
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from keepflow.storable import first_unstorable
from tests.support.fake_notion import FakeNotion, Request
from tests.support.workflows import (
    consumer_js,
    deploy_source,
    quick_policy,
    run_detail,
    seed_producer,
    workflow_js,
)

pytestmark = pytest.mark.integration

TOKEN = "good-token"
SCHEMA: dict[str, Any] = {
    "Name": "title", "Order id": "rich_text", "Amount": "number",
    "Kind": ("select", ["book", "game"]), "State": ("status", ["Open", "Done"]),
    "Tags": ("multi_select", ["red"]), "Due": "date", "Paid": "checkbox", "Link": "url",
    "Mail": "email", "Phone": "phone_number", "Owners": "people", "Parts": "relation",
    "Total": "formula", "Sum": "rollup", "Created": "created_time",
}
PAGES = "^/v1/pages$"


class SlowNotion(FakeNotion):
    """The fake, answering requests whose method and path match ``hang`` after ``seconds``
    (applied first): a server that does not answer within a call's deadline."""

    hang: tuple[str, str] | None = None
    seconds: float = 1.0

    def _dispatch(self, req: Request) -> Any:
        answer = super()._dispatch(req)
        if self.hang is not None and (req.method, req.path) == self.hang:
            self.hang = None
            time.sleep(self.seconds)
        return answer


@pytest.fixture(scope="module")
def _server() -> Iterator[SlowNotion]:
    """One fake for the module (stopping a server waits for its half-second poll)."""
    fake = SlowNotion()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def api(_server: SlowNotion) -> SlowNotion:
    _server.reset()
    _server.hang = None
    return _server


@pytest.fixture
def orders(api: FakeNotion) -> str:
    return api.add_database("Orders", SCHEMA)


_OPEN: list[NotionConnector] = []


@pytest.fixture(autouse=True)
def _close_connectors() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def make(api: FakeNotion, token: str = TOKEN, **settings: Any) -> NotionConnector:
    c = NotionConnector(ConnectionConfig("notes", "notion", {
        "token": Secret(token, "NOTION_TOKEN"), "base_url": api.url, **settings}))
    _OPEN.append(c)
    return c


@pytest.fixture
def notes(api: FakeNotion) -> NotionConnector:
    return make(api)


def tool(name: str, timeout: float = 5.0, key: str | None = None, **params: Any) -> ToolCall:
    return ToolCall(name, params, timeout=timeout, idempotency_key=key)


def run(c: NotionConnector, name: str, timeout: float = 5.0, **params: Any) -> Any:
    call = tool(name, timeout, "kf-test-1", **params)
    c.validate(call)
    return c.call(call)


def create_params(db: str, order: str = "o-1", **more: Any) -> dict[str, Any]:
    return {"database": db, "key_property": "Order id",
            "properties": {"Name": f"Order {order}", "Order id": order, **more}}


def sent(api: FakeNotion, method: str, pattern: str) -> int:
    return len(api.requests_to(method, pattern))


def storable(value: Any) -> None:
    assert first_unstorable(value) is None
    json.dumps(value, allow_nan=False)


# ------------------------------------------------------------------------------ declarations


def test_the_type_registers_with_complete_declarations() -> None:
    assert get_connector_class("notion") is NotionConnector
    specs = NotionConnector.tools
    assert set(specs) == {"query_database", "create_page", "update_page"}
    assert (specs["query_database"].kind.value, specs["query_database"].capability,
            specs["query_database"].scope) == ("read", "notion.read", ("database",))
    create = specs["create_page"]
    assert (create.kind.value, create.capability, create.risk.value, create.scope,
            create.reconcile) == ("mutate", "notion.write", "medium", ("database",), True)
    assert specs["update_page"].reconcile
    assert specs["update_page"].capability == "notion.write"
    for spec in specs.values():
        assert spec.description
        assert spec.params
        assert spec.result


def test_describe_names_the_call_without_secrets(notes: NotionConnector, orders: str) -> None:
    assert notes.describe(tool("create_page", **create_params(orders, "o-9"))) == (
        f"create a page in Notion database {orders} (Order id = o-9)")
    assert notes.describe(tool("query_database", database="nope")) == (
        "query Notion database (invalid database id)")
    assert TOKEN not in repr(notes)


# ------------------------------------------------------------------------------ reads


def test_a_query_flattens_every_property_type(api: FakeNotion, notes: NotionConnector,
                                              orders: str) -> None:
    page = api.add_page(orders, {
        "Name": "Dune", "Order id": "o-1", "Amount": 12.5, "Kind": "book", "State": "Open",
        "Tags": ["red", "blue"], "Due": "2024-03-01", "Paid": True,
        "Link": "https://x.example/a", "Mail": "a@x.example", "Phone": "+1 555"})
    owner, part = "0" * 8 + "-1111-2222-3333-" + "4" * 12, "a" * 32
    page["properties"]["Owners"]["people"] = [{"object": "user", "id": owner}]
    page["properties"]["Parts"]["relation"] = [{"id": part}]
    page["properties"]["Total"]["formula"] = {"type": "number", "number": 25}
    result = run(notes, "query_database", database=orders)
    [got] = result["pages"]
    assert result["next_cursor"] is None
    assert got["id"] == page["id"]
    assert got["url"] == page["url"]
    assert got["created_time"] == page["created_time"]
    assert got["last_edited_time"] == page["last_edited_time"]
    assert got["properties"] == {
        "Name": "Dune", "Order id": "o-1", "Amount": 12.5, "Kind": "book", "State": "Open",
        "Tags": ["red", "blue"], "Due": "2024-03-01", "Paid": True,
        "Link": "https://x.example/a", "Mail": "a@x.example", "Phone": "+1 555",
        "Owners": [owner], "Parts": ["aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"], "Total": 25,
        "Sum": "rollup", "Created": page["created_time"]}
    [req] = api.requests_to("POST", r"/v1/databases/.*/query")
    assert req.headers["notion-version"] == NOTION_VERSION
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert req.json == {"page_size": 100}
    storable(result)


def test_pagination_filter_and_sorts(api: FakeNotion, notes: NotionConnector,
                                     orders: str) -> None:
    for i in range(5):
        api.add_page(orders, {"Name": f"n{i}", "Order id": f"o-{i}", "Amount": i,
                              "Kind": "book" if i % 2 else "game"})
    seen: list[str] = []
    cursor = None
    while True:
        got = run(notes, "query_database", database=orders, limit=2, cursor=cursor,
                  sorts=[{"property": "Amount", "direction": "descending"}])
        assert len(got["pages"]) <= 2
        seen += [p["properties"]["Name"] for p in got["pages"]]
        cursor = got["next_cursor"]
        if cursor is None:
            break
    assert seen == ["n4", "n3", "n2", "n1", "n0"]
    bodies = [r.json for r in api.requests_to("POST", r"/v1/databases/.*/query")]
    assert [b.get("start_cursor") is not None for b in bodies] == [False, True, True]
    assert all(b["page_size"] == 2 for b in bodies)
    books = run(notes, "query_database", database=orders,
                filter={"property": "Kind", "select": {"equals": "book"}})
    assert sorted(p["properties"]["Name"] for p in books["pages"]) == ["n1", "n3"]


def test_a_database_that_is_not_shared_is_a_precondition(api: FakeNotion,
                                                         notes: NotionConnector) -> None:
    with pytest.raises(PreconditionError) as info:
        run(notes, "query_database", database="1" * 32)
    assert "not shared with the integration: share the database with it" in info.value.message
    assert "object_not_found" in info.value.message


def test_notion_validation_errors_are_permanent_with_notions_message(
        notes: NotionConnector, orders: str) -> None:
    with pytest.raises(PermanentError) as info:
        run(notes, "query_database", database=orders,
            filter={"property": "Nope", "select": {"equals": "x"}})
    assert type(info.value) is PermanentError
    assert "Could not find property with name or id: Nope" in info.value.message


# ------------------------------------------------------------------------------ mutations


def test_create_page_builds_notion_values_from_plain_ones(api: FakeNotion,
                                                          notes: NotionConnector,
                                                          orders: str) -> None:
    long_title = "é" * 4500 + "🙂" * 1500  # 7,500 UTF-16 units (an emoji is two)
    result = run(notes, "create_page", **create_params(
        orders, "o-7", Name=long_title, Amount=3, Kind="new kind", State="Done",
        Tags=["red", "green"], Due={"start": "2024-05-01T10:00:00Z", "end": "2024-05-02"},
        Paid=False, Link=None, Mail="m@x.example", Phone="+44"),
        children=["First paragraph", "x" * 2500])
    [page] = api.pages_in(orders)
    assert result == {"id": page["id"], "url": page["url"]}
    assert FakeNotion.plain(page, "Name") == long_title
    pieces = [p["text"]["content"] for p in page["properties"]["Name"]["title"]]
    assert [len(p.encode("utf-16-le")) // 2 for p in pieces] == [2000, 2000, 2000, 1500]
    assert [FakeNotion.plain(page, k) for k in ("Order id", "Amount", "Kind", "State", "Tags",
                                                 "Paid", "Link", "Mail", "Phone")] == [
        "o-7", 3, "new kind", "Done", ["red", "green"], False, None, "m@x.example", "+44"]
    assert page["properties"]["Due"]["date"]["start"] == "2024-05-01T10:00:00.000+00:00"
    blocks = api.children[page["id"]]
    assert [len(b["paragraph"]["rich_text"]) for b in blocks] == [1, 2]
    paths = [(r.method, r.path) for r in api.requests]
    assert paths == [("GET", f"/v1/databases/{orders}"),
                     ("POST", f"/v1/databases/{orders}/query"), ("POST", "/v1/pages")]
    key_query = api.requests[1].json
    assert key_query["filter"] == {"property": "Order id", "rich_text": {"equals": "o-7"}}
    run(notes, "create_page", **create_params(orders, "o-8"))
    assert sent(api, "GET", r"/v1/databases/.*") == 1  # the schema is reused for a while


def test_create_page_with_a_key_that_exists_creates_nothing(api: FakeNotion,
                                                            notes: NotionConnector,
                                                            orders: str) -> None:
    there = api.add_page(orders, {"Name": "old", "Order id": "o-1"})
    result = run(notes, "create_page", **create_params(orders, "o-1"))
    assert result == {"id": there["id"], "url": there["url"]}
    assert sent(api, "POST", PAGES) == 0
    assert len(api.pages_in(orders)) == 1


def test_apply_then_drop_is_uncertain_and_reconcile_finds_the_page(
        api: FakeNotion, notes: NotionConnector, orders: str) -> None:
    api.fault("apply_then_drop", path=PAGES)
    call = tool("create_page", key="kf-1", **create_params(orders, "o-1"))
    with pytest.raises(UncertainOutcome):
        notes.call(call)
    [page] = api.pages_in(orders)
    answer = notes.reconcile(call)
    assert answer.outcome is ReconcileOutcome.APPLIED
    assert answer.result == {"id": page["id"], "url": page["url"]}
    assert "Order id = o-1" in answer.detail
    assert len(api.pages_in(orders)) == 1


def test_drop_reconciles_as_not_applied_after_the_query_lag_then_creates_once(
        api: FakeNotion, notes: NotionConnector, orders: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(NotionConnector, "query_lag_seconds", 0.3)
    api.fault("drop", path=PAGES)
    call = tool("create_page", key="kf-2", **create_params(orders, "o-2"))
    with pytest.raises(UncertainOutcome):
        notes.call(call)
    assert api.pages_in(orders) == []
    first = notes.reconcile(call)
    assert first.outcome is ReconcileOutcome.RETRY  # a new page may not show in a query yet
    assert "not show a page created a moment ago" in first.detail
    time.sleep(0.35)
    assert notes.reconcile(call).outcome is ReconcileOutcome.FAILED
    notes.call(call)  # the host mutates again
    assert [FakeNotion.plain(p, "Order id") for p in api.pages_in(orders)] == ["o-2"]


def test_the_query_lag_counts_from_when_the_host_recorded_the_attempt(
        api: FakeNotion, notes: NotionConnector, orders: str) -> None:
    call = tool("create_page", key="kf-at", **create_params(orders, "o-at"))
    recent = replace(call, attempted_at=datetime.now(UTC) - timedelta(seconds=1))
    assert notes.reconcile(recent).outcome is ReconcileOutcome.RETRY  # may not show yet
    old = replace(call, attempted_at=datetime.now(UTC) - timedelta(
        seconds=call.timeout + NotionConnector.query_lag_seconds + 1))
    assert notes.reconcile(old).outcome is ReconcileOutcome.FAILED  # it would show by now


def test_reconcile_answers_retry_when_notion_fails(api: FakeNotion, notes: NotionConnector,
                                                   orders: str) -> None:
    call = tool("create_page", key="kf-3", **create_params(orders, "o-3"))
    api.fault("status", status=503, methods=("POST",), path="query$",
              body={"object": "error", "status": 503, "code": "service_unavailable",
                    "message": "Notion is unavailable."})
    answer = notes.reconcile(call)
    assert answer.outcome is ReconcileOutcome.RETRY
    assert "service_unavailable" in answer.detail
    assert make(api, token="revoked").reconcile(call).outcome is ReconcileOutcome.RETRY


def test_update_page_sets_values_and_reconciles_by_comparing(
        api: FakeNotion, notes: NotionConnector, orders: str) -> None:
    page = api.add_page(orders, {"Name": "x", "Order id": "o-1", "Amount": 1})
    props = {"Amount": 2, "Due": "2024-06-01T12:00:00+02:00", "Tags": ["red"], "Paid": True,
             "Order id": "o-1 (paid)", "Link": None}
    result = run(notes, "update_page", page=page["id"].replace("-", ""), properties=props)
    [now] = api.pages_in(orders)
    assert result == {"id": page["id"], "url": page["url"],
                      "last_edited_time": now["last_edited_time"]}
    assert FakeNotion.plain(now, "Amount") == 2
    call = tool("update_page", key="kf-4", page=page["id"], properties=props)
    applied = notes.reconcile(call)  # Notion echoes the date-time in UTC: still the same time
    assert (applied.outcome, applied.result) == (ReconcileOutcome.APPLIED, result)
    run(notes, "update_page", page=page["id"], properties={"Amount": 5})  # someone else
    failed = notes.reconcile(call)
    assert failed.outcome is ReconcileOutcome.FAILED
    assert "Amount" in failed.detail
    gone = tool("update_page", page="9" * 32, properties={"Amount": 1})
    assert notes.reconcile(gone).outcome is ReconcileOutcome.FAILED


def test_update_page_lost_answers_are_reconciled(api: FakeNotion, notes: NotionConnector,
                                                 orders: str) -> None:
    page = api.add_page(orders, {"Name": "x", "Order id": "o-1", "Amount": 1})
    call = tool("update_page", key="kf-5", page=page["id"], properties={"Amount": 9})
    api.fault("apply_then_drop", methods=("PATCH",))
    with pytest.raises(UncertainOutcome):
        notes.call(call)
    assert notes.reconcile(call).outcome is ReconcileOutcome.APPLIED
    call = tool("update_page", key="kf-6", page=page["id"], properties={"Amount": 10})
    api.fault("drop", methods=("PATCH",))
    with pytest.raises(UncertainOutcome):
        notes.call(call)
    assert notes.reconcile(call).outcome is ReconcileOutcome.FAILED
    notes.call(call)
    assert FakeNotion.plain(api.pages_in(orders)[0], "Amount") == 10


# ------------------------------------------------------------------------------ failures


def test_a_refused_token_is_an_auth_error(api: FakeNotion, orders: str) -> None:
    bad = make(api, token="revoked-token")
    with pytest.raises(AuthError) as info:
        run(bad, "query_database", database=orders)
    message = info.value.message
    assert "keepflow connection secret notes token" in message
    assert "unauthorized" in message
    assert "revoked-token" not in json.dumps(info.value.to_dict())
    with pytest.raises(AuthError):
        bad.check()
    with pytest.raises(AuthError):
        run(bad, "create_page", **create_params(orders))
    assert sent(api, "POST", PAGES) == 0


def test_check_reads_the_bot_user_and_each_allowed_database(api: FakeNotion,
                                                            orders: str) -> None:
    make(api).check()
    make(api, databases=[orders.replace("-", "").upper()]).check()
    assert [r.path for r in api.requests] == ["/v1/users/me", "/v1/users/me",
                                              f"/v1/databases/{orders}"]
    with pytest.raises(PreconditionError):
        make(api, databases=[orders, "2" * 32]).check()


def test_a_rate_limit_is_transient_with_retry_after(api: FakeNotion, notes: NotionConnector,
                                                    orders: str) -> None:
    api.fault("rate_limit", retry_after=7, methods=("POST",), path="query$")
    with pytest.raises(TransientError) as info:
        run(notes, "query_database", database=orders)
    assert info.value.retry_after == 7
    assert "rate_limited" in info.value.message
    api.fault("rate_limit", retry_after=3, path=PAGES)
    with pytest.raises(TransientError) as info:
        run(notes, "create_page", **create_params(orders))
    assert info.value.retry_after == 3
    assert api.pages_in(orders) == []


def _error(status: int, code: str) -> dict[str, Any]:
    return {"object": "error", "status": status, "code": code, "message": f"said {code}"}


@pytest.mark.parametrize(("status", "body", "read", "mutation"), [
    (403, _error(403, "restricted_resource"), PermissionDenied, PermissionDenied),
    (404, _error(404, "object_not_found"), PreconditionError, PreconditionError),
    (400, _error(400, "validation_error"), PermanentError, PermanentError),
    (400, _error(400, "invalid_json"), PermanentError, PermanentError),
    (400, _error(400, "missing_version"), PermanentError, PermanentError),
    (409, _error(409, "conflict_error"), TransientError, TransientError),
    (500, _error(500, "internal_server_error"), TransientError, UncertainOutcome),
    (503, _error(503, "service_unavailable"), TransientError, UncertainOutcome),
    (502, b"<html>Bad gateway</html>", TransientError, UncertainOutcome),
    (504, _error(504, "gateway_timeout"), TransientError, UncertainOutcome),
])
def test_statuses_are_classified(api: FakeNotion, notes: NotionConnector, orders: str,
                                 status: int, body: Any, read: type, mutation: type) -> None:
    api.fault("status", status=status, body=body, methods=("POST",), path="query$")
    with pytest.raises(ConnectorError) as info:
        run(notes, "query_database", database=orders)
    assert type(info.value) is read
    api.fault("status", status=status, body=body, path=PAGES)
    with pytest.raises(ConnectorError) as info:
        run(notes, "create_page", **create_params(orders, f"o-{status}"))
    assert type(info.value) is mutation
    assert info.value.details["status"] == status
    if isinstance(body, dict):
        assert f"said {body['code']}" in info.value.message


def test_connection_refused_is_transient_and_not_sent(orders: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = NotionConnector(ConnectionConfig("notes", "notion", {
        "token": Secret(TOKEN, "T"), "base_url": f"http://127.0.0.1:{port}"}))
    _OPEN.append(c)
    for name, params in (("query_database", {"database": orders}),
                         ("create_page", create_params(orders))):
        with pytest.raises(TransientError) as info:
            run(c, name, **params)
        assert info.value.details.get("sent") is False


def test_the_call_deadline_ends_a_request_that_gets_no_answer(api: SlowNotion,
                                                              notes: NotionConnector,
                                                              orders: str) -> None:
    api.hang = ("POST", "/v1/pages")
    call = tool("create_page", timeout=0.4, key="kf-7", **create_params(orders, "o-1"))
    t0 = time.monotonic()
    with pytest.raises(UncertainOutcome) as info:
        notes.call(call)
    assert time.monotonic() - t0 < 0.9
    assert "0.4 s" in info.value.message
    later = replace(call, timeout=5.0)  # the fake answers again once its pause is over
    assert notes.reconcile(later).outcome is ReconcileOutcome.APPLIED  # it was applied
    api.hang = ("POST", f"/v1/databases/{orders}/query")
    with pytest.raises(TransientError):
        run(notes, "query_database", timeout=0.4, database=orders)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("name", "params", "field"), [
    ("query_database", {"database": "orders"}, "database"),
    ("query_database", {"database": "1" * 32, "limit": 0}, "limit"),
    ("query_database", {"database": "1" * 32, "limit": 101}, "limit"),
    ("query_database", {"database": "1" * 32, "cursor": "a b"}, "cursor"),
    ("query_database", {"database": "1" * 32, "filter": "Kind = book"}, "filter"),
    ("query_database", {"database": "1" * 32, "sorts": {"property": "x"}}, "sorts"),
    ("query_database", {"database": "1" * 32, "page_size": 5}, "page_size"),
    ("create_page", {"database": "1" * 32, "properties": {"Name": "x"}}, "key_property"),
    ("create_page", {"database": "1" * 32, "properties": {"Name": "x"},
                     "key_property": "Order id"}, "key_property"),
    ("create_page", {"database": "1" * 32, "properties": {"Order id": " "},
                     "key_property": "Order id"}, "properties.Order id"),
    ("create_page", {"database": "1" * 32, "properties": {"Order id": None},
                     "key_property": "Order id"}, "properties.Order id"),
    ("create_page", {"database": "1" * 32, "properties": {}, "key_property": "x"},
     "properties"),
    ("create_page", {**create_params("1" * 32), "children": "text"}, "children"),
    ("create_page", create_params("1" * 32, Name="nul\x00"), "properties.Name"),
    ("create_page", create_params("1" * 32, Name="lone \ud800"), "properties.Name"),
    ("create_page", create_params("1" * 32, Amount=float("nan")), "properties.Amount"),
    ("create_page", create_params("1" * 32, Tags=[1, 2]), "properties.Tags[0]"),
    ("update_page", {"page": "../x", "properties": {"Amount": 1}}, "page"),
    ("update_page", {"page": "1" * 32, "properties": []}, "properties"),
])
def test_malformed_params_are_refused_before_anything_is_sent(
        api: FakeNotion, notes: NotionConnector, name: str, params: dict[str, Any],
        field: str) -> None:
    with pytest.raises(PermanentError) as info:
        notes.validate(tool(name, **params))
    assert info.value.details["field"] == field
    assert f"params.{field}" in info.value.message
    assert api.requests == []


@pytest.mark.parametrize(("values", "field", "says"), [
    ({"Colour": "red"}, "properties.Colour", "no such property; its properties are: Amount"),
    ({"Amount": "12"}, "properties.Amount", "is a number property"),
    ({"Paid": "yes"}, "properties.Paid", "is a checkbox property"),
    ({"Kind": "a,b"}, "properties.Kind", "cannot contain commas"),
    ({"Tags": "red"}, "properties.Tags", "is a multi_select property"),
    ({"Due": "next monday"}, "properties.Due", "is not an ISO 8601 date"),
    ({"Name": 5}, "properties.Name", "is a title property"),
    ({"Total": 3}, "properties.Total", "formula property, which this connector cannot set"),
    ({"Mail": "x" * 201}, "properties.Mail", "Notion's limit for email"),
])
def test_values_that_do_not_fit_the_schema_are_refused_before_writing(
        api: FakeNotion, notes: NotionConnector, orders: str, values: dict[str, Any],
        field: str, says: str) -> None:
    with pytest.raises(PermanentError) as info:
        run(notes, "create_page", **create_params(orders, **values))
    assert info.value.details["field"] == field
    assert says in info.value.message
    page = api.add_page(orders, {"Name": "x", "Order id": "o-1"})
    with pytest.raises(PermanentError) as info:
        run(notes, "update_page", page=page["id"], properties=values)
    assert info.value.details["field"] == field
    assert sent(api, "POST", PAGES) == 0
    assert sent(api, "PATCH", r"/v1/pages/.*") == 0


def test_a_key_property_must_be_filterable_by_equals(api: FakeNotion, notes: NotionConnector,
                                                     orders: str) -> None:
    with pytest.raises(PermanentError) as info:
        run(notes, "create_page", database=orders, key_property="Due",
            properties={"Due": "2024-01-01"})
    assert "'Due' is a date property; a key_property is one of" in info.value.message
    assert sent(api, "POST", PAGES) == 0


def test_the_databases_allow_list_is_enforced(api: FakeNotion, orders: str) -> None:
    other = api.add_database("Other", {"Name": "title", "Order id": "rich_text"})
    page = api.add_page(other, {"Name": "x", "Order id": "o-1"})
    c = make(api, databases=[orders])
    with pytest.raises(PermissionDenied) as info:
        c.validate(tool("query_database", database=other))
    assert info.value.details["field"] == "database"
    assert api.requests == []
    with pytest.raises(PermissionDenied):
        run(c, "update_page", page=page["id"], properties={"Name": "y"})
    assert sent(api, "PATCH", r"/v1/pages/.*") == 0
    assert run(c, "query_database", database=orders)["pages"] == []


@pytest.mark.parametrize(("settings", "key"), [
    ({"token": Secret(TOKEN, "T"), "colour": "red"}, "colour"),
    ({}, "token_secret"),
    ({"token": "plain-in-the-file"}, "token"),
    ({"token": Secret("has space", "T")}, "token"),
    ({"token": Secret(TOKEN, "T"), "base_url": "ftp://api.notion.com"}, "base_url"),
    ({"token": Secret(TOKEN, "T"), "base_url": "https://u:p@api.notion.com"}, "base_url"),
    ({"token": Secret(TOKEN, "T"), "base_url": "http://api.notion.com"}, "base_url"),
    ({"token": Secret(TOKEN, "T"), "base_url": "https://api.notion.com:99999"}, "base_url"),
    ({"token": Secret(TOKEN, "T"), "base_url": "https://api.notion.com/?x=1"}, "base_url"),
    ({"token": Secret(TOKEN, "T"), "databases": []}, "databases"),
    ({"token": Secret(TOKEN, "T"), "databases": ["Orders"]}, "databases"),
])
def test_settings_are_checked(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        NotionConnector.validate_settings(settings)
    assert info.value.details["key"] == key
    assert "has space" not in info.value.message


def test_proxies_come_from_the_environment_as_urllib_reads_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "localhost")
    assert proxy_for("https://api.notion.com") == "http://proxy.example:3128"
    assert proxy_for("https://localhost:8443") is None
    monkeypatch.setenv("HTTPS_PROXY", "socks5://proxy.example:1080")
    assert proxy_for("https://api.notion.com") is None  # not an http(s) proxy: direct


# ------------------------------------------------------------------------------ hostile answers


def test_hostile_property_values_are_cleaned_and_bounded(api: FakeNotion,
                                                         notes: NotionConnector,
                                                         orders: str) -> None:
    huge = "word " * 200_000  # 1 MB of rich text
    page = api.add_raw_page(orders, {
        "Name": {"id": "title", "type": "title",
                 "title": [{"plain_text": "a\x00b\x1b[31mc\u202ed\ud800e\x7f"}]},
        "Notes": {"type": "rich_text", "rich_text": [{"plain_text": huge}] * 3},
        "Weird": {"type": "\u202eevil type"}, "Future": {"type": "button", "button": {}},
        "Amount": {"type": "number", "number": "12"}, "Big": {"type": "number",
                                                          "number": 10 ** 400},
        "Kind": {"type": "select", "select": "book"}, "Tags": {"type": "multi_select",
                                                              "multi_select": [{"x": 1}, 7]},
        "Link": {"type": "url", "url": "javascript:alert(1)\x00"}, "Bare": "not an object",
        "Owners": {"type": "people", "people": [{"id": "not-an-id"}]},
        "ke\x00y\u202e": {"type": "checkbox", "checkbox": "yes"},
        "Token": {"type": "rich_text", "rich_text": [{"plain_text": f"echo {TOKEN}"}]}})
    page["url"] = "javascript:alert(1)"
    result = run(notes, "query_database", database=orders)
    [got] = result["pages"]
    props = got["properties"]
    assert props["Name"] == "ab[31mcde"  # NUL, ESC, DEL, the override and the surrogate went
    assert TEXT_CHARS - 5 <= len(props["Notes"]) <= TEXT_CHARS
    assert props["Notes"].startswith("word word")
    assert props["Weird"] == "unknown"
    assert props["Future"] == "button"  # a type this connector does not know: its name
    assert props["Amount"] is None
    assert props["Kind"] is None
    assert props["Bare"] is None
    assert props["Big"] is None
    assert props["Tags"] == []
    assert props["Owners"] == []
    assert props["key"] is None
    assert "javascript" in props["Link"]  # a url value is text, cleaned
    assert got["url"] is None  # the page's own link must be http(s)
    assert TOKEN not in json.dumps(result)
    storable(result)


@pytest.mark.parametrize(("body", "why"), [
    (b"{not json", "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ({"object": "list", "results": "nope", "has_more": False}, "no results list"),
    ({"object": "list", "results": [{"object": "page", "properties": {}}], "has_more": False},
     "a page without an id"),
    ({"object": "list", "results": [], "has_more": True, "next_cursor": "a\nb"},
     "next_cursor"),
    (["a", "list"], "not a JSON object"),
])
def test_malformed_answers_are_transient_for_reads_and_uncertain_for_mutations(
        api: FakeNotion, notes: NotionConnector, orders: str, body: Any, why: str) -> None:
    api.fault("status", status=200, body=body, methods=("POST",), path="query$")
    with pytest.raises(TransientError) as info:
        run(notes, "query_database", database=orders)
    assert why in info.value.message
    if why == "next_cursor":
        return
    api.fault("status", status=200, body=body, path=PAGES)
    with pytest.raises(UncertainOutcome):
        run(notes, "create_page", **create_params(orders, "o-m"))


def test_a_huge_answer_is_never_read_whole(api: FakeNotion, notes: NotionConnector,
                                           orders: str) -> None:
    api.fault("status", status=200, body=b" " * (MAX_RESPONSE_BYTES + 1), methods=("POST",),
              path="query$")
    with pytest.raises(PermanentError) as info:
        run(notes, "query_database", database=orders)
    assert "lower limit" in info.value.message
    api.fault("status", status=200, body=b" " * (MAX_RESPONSE_BYTES + 1), path=PAGES)
    with pytest.raises(UncertainOutcome):
        run(notes, "create_page", **create_params(orders))


def test_a_compressed_answer_is_refused(api: FakeNotion, notes: NotionConnector,
                                        orders: str) -> None:
    api.fault("status", status=200, body=b"\x1f\x8b\x08", methods=("POST",), path="query$",
              headers={"Content-Encoding": "gzip"})
    with pytest.raises(TransientError) as info:
        run(notes, "query_database", database=orders)
    assert "compressed" in info.value.message
    assert all(r.headers.get("accept-encoding") == "identity" for r in api.requests)


def test_error_messages_are_inert_short_and_redacted(api: FakeNotion, notes: NotionConnector,
                                                     orders: str) -> None:
    message = f"bad \x1b[2J {TOKEN} " + "x" * 5000
    api.fault("status", status=400, methods=("POST",), path="query$",
              body={"object": "error", "status": 400, "code": "validation_error",
                    "message": message})
    with pytest.raises(PermanentError) as info:
        run(notes, "query_database", database=orders)
    text = info.value.message
    assert TOKEN not in text
    assert "\x1b" not in text
    assert len(text) < 600


# ------------------------------------------------------------------------------ through the host

CREATE = """await ctx.notes.create_page({{ database: "{db}", key_property: "Order id",
      properties: {{ "Name": prepared.data.event.title,
                     "Order id": prepared.data.event.messageId }},
      children: ["Created by keepflow"] }});"""
NEXT = "return { page: mutation.result?.id ?? null, status: mutation.status };"


@pytest.fixture
def notion_host(store_url: str, tmp_path: Path, pool: SandboxPool, clock: FakeClock,
                api: FakeNotion) -> Iterator[Host]:
    connections = Connections([ConnectionConfig("notes", "notion", {
        "token": Secret(TOKEN, "NOTION_TOKEN"), "base_url": api.url})])
    h = Host(Settings(home=tmp_path / "home", database_url=store_url), clock=clock,
             connections=connections, pool=pool, policies=PolicyBook(quick_policy()))
    yield h
    h.close()
    connections.close()


def deploy_orders(host: Host, tmp_path: Path, db: str, ids: list[str]) -> None:
    deploy_source(host, tmp_path, workflow_js(
        producers=seed_producer(ids),
        consumers=consumer_js(mutate=CREATE.format(db=db), next_=NEXT)))
    service.trigger(host, "wf", "seed")


def state(host: Host) -> Any:
    return host.store.load_state(host.store.get_workflow("wf").id, "work")[1]


def test_a_workflow_creates_one_page_per_event(notion_host: Host, tmp_path: Path,
                                               api: FakeNotion, orders: str) -> None:
    deploy_orders(notion_host, tmp_path, orders, ["a", "b"])
    report = service.drain(notion_host)
    assert [r.status for r in report.runs] == [RunStatus.COMMITTED] * 2
    pages = api.pages_in(orders)
    assert sorted(FakeNotion.plain(p, "Order id") for p in pages) == ["a", "b"]
    ledger = service.ledger(notion_host, "wf")["mutations"]
    assert sorted((m["status"], m["resolvedBy"]) for m in ledger) == [("applied", "host")] * 2
    assert all(m["description"].startswith(f"create a page in Notion database {orders}")
               for m in ledger)
    assert state(notion_host)["page"] in {p["id"] for p in pages}
    assert service.drain(notion_host).runs == []


def test_a_lost_answer_is_reconciled_by_the_host(notion_host: Host, tmp_path: Path,
                                                 api: FakeNotion, orders: str) -> None:
    deploy_orders(notion_host, tmp_path, orders, ["a"])
    api.fault("apply_then_drop", path=PAGES)
    out = service.trigger(notion_host, "wf", "work")
    assert out.status is RunStatus.COMMITTED
    [m] = run_detail(notion_host, out.run_id)["mutations"]
    assert (m["status"], m["resolvedBy"], m["reconcileAttempts"]) == ("applied",
                                                                      "reconcile", 1)
    [page] = api.pages_in(orders)
    assert state(notion_host) == {"page": page["id"], "status": "applied"}


def test_a_request_lost_before_notion_got_it_is_created_once(
        notion_host: Host, tmp_path: Path, api: FakeNotion, orders: str, clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    deploy_orders(notion_host, tmp_path, orders, ["a"])
    api.fault("drop", path=PAGES)
    # The lag is counted from the attempt's time on the host's clock (here a fake clock in
    # the past), so "not yet" is modelled by a lag longer than that.
    monkeypatch.setattr(NotionConnector, "query_lag_seconds", 1e9)
    out = service.trigger(notion_host, "wf", "work")
    assert out.status is RunStatus.SUSPENDED  # nothing found yet: asked again later
    detail = run_detail(notion_host, out.run_id)
    assert detail["suspendReason"] == "needs_reconcile"
    monkeypatch.setattr(NotionConnector, "query_lag_seconds", 0.0)  # the lag has passed
    clock.advance(3600)
    report = service.drain(notion_host)
    assert [r.status for r in report.runs] == [RunStatus.COMMITTED]
    muts = run_detail(notion_host, out.run_id)["mutations"]
    assert [(x["status"], x["resolvedBy"]) for x in muts] == [("failed", "reconcile"),
                                                             ("applied", "host")]
    assert [FakeNotion.plain(p, "Order id") for p in api.pages_in(orders)] == ["a"]
    assert sent(api, "POST", PAGES) == 2


def test_a_rate_limit_backs_off_and_commits(notion_host: Host, tmp_path: Path,
                                            api: FakeNotion, orders: str,
                                            clock: FakeClock) -> None:
    deploy_orders(notion_host, tmp_path, orders, ["a"])
    api.fault("rate_limit", retry_after=20, path=PAGES)
    out = service.trigger(notion_host, "wf", "work")
    assert out.status is RunStatus.COMMITTED
    muts = run_detail(notion_host, out.run_id)["mutations"]
    assert [(m["attempt"], m["status"]) for m in muts] == [(1, "failed"), (2, "applied")]
    assert sum(clock.slept) >= 20  # waited as long as Notion asked
    assert len(api.pages_in(orders)) == 1


def test_refused_token_asks_to_reconnect_and_the_run_continues_after_rotation(
        store_url: str, tmp_path: Path, pool: SandboxPool, clock: FakeClock,
        api: FakeNotion, orders: str) -> None:
    (tmp_path / "home").mkdir()
    h = Host(Settings(home=tmp_path / "home", database_url=store_url), clock=clock,
             pool=pool, policies=PolicyBook(quick_policy()))
    try:
        service.connection_add(h, "notes", "notion", {"base_url": api.url}, {"token": "bad"})
        deploy_orders(h, tmp_path, orders, ["a"])
        failed = service.trigger(h, "wf", "work")
        assert failed.status is RunStatus.FAILED
        assert failed.failure is not None
        assert failed.failure["class"] == "auth"
        [item] = service.inbox(h)
        assert (item["kind"], item["connection"], item["run"]) == ("reconnect", "notes",
                                                                   failed.run_id)
        assert api.pages_in(orders) == []
        # A person reconnects later (the store's credentials marker is its latest update
        # time: on a clock that stands still a rotation would not be seen).
        clock.advance(60)
        done = service.connection_secret(h, "notes", "token", TOKEN)
        assert done["retried"] == [failed.run_id]
        assert run_detail(h, failed.run_id)["status"] == "committed"
        assert [FakeNotion.plain(p, "Order id") for p in api.pages_in(orders)] == ["a"]
        assert service.inbox(h) == []
        tokens = {r.token for r in api.requests}
        assert tokens == {"bad", TOKEN}
    finally:
        h.close()


def test_the_token_is_never_in_what_the_host_keeps(notion_host: Host, tmp_path: Path,
                                                   orders: str) -> None:
    deploy_orders(notion_host, tmp_path, orders, ["a"])
    out = service.trigger(notion_host, "wf", "work")
    assert TOKEN not in json.dumps(run_detail(notion_host, out.run_id), default=str)
