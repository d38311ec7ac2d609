"""The google_sheets connector against a fake Sheets API v4 on loopback (SPEC §8, §9;
docs/connectors.md#google_sheets): header mapping and paging, RAW appends and updates, their
reconcile by key, Google's errors as failure classes, refused params and hostile answers —
and, through the host on both stores, an append per event that commits exactly once after a
dropped answer, a lost request, a rate limit and a refused (then rotated) token."""

from __future__ import annotations

import json
import socket
import threading
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
from keepflow.connectors.config import Connections, parse_connections
from keepflow.connectors.google_sheets import SETTLE_SECONDS, GoogleSheetsConnector
from keepflow.connectors.google_sheets_params import CELL_CHARS
from keepflow.connectors.registry import get_connector_class
from keepflow.connectors.secret import Secret
from keepflow.errors import (
    AuthError,
    ConfigError,
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
from tests.support.fake_google_sheets import FakeSheets, google_error
from tests.support.workflows import (
    consumer_js,
    deploy_source,
    quick_policy,
    run_detail,
    seed_producer,
    workflow_js,
)

pytestmark = pytest.mark.integration

SID = "1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms"
HEADER = ["Order id", "Item", "Qty", "Paid"]
ORDERS = [HEADER, ["A-1", "Tea", 2, True], ["A-2", "Cake", 1.5, False],
          ["A-3", "Jam", 3, True], ["A-4", "Bread", 1, False], ["A-5", "Milk", 4, True]]


@pytest.fixture
def api() -> Iterator[FakeSheets]:
    fake = FakeSheets()
    fake.add(SID, {"Orders": ORDERS, "It's a tab": [["Name"], ["x"]]})
    fake.start()
    yield fake
    fake.stop()


_OPEN: list[GoogleSheetsConnector] = []


@pytest.fixture(autouse=True)
def _close_connectors() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def make(api: FakeSheets, token: str = "good-token", **settings: Any) -> GoogleSheetsConnector:
    c = GoogleSheetsConnector(ConnectionConfig("sheets", "google_sheets", {
        "token": Secret(token, "SHEETS_TOKEN"), "base_url": api.url, **settings}))
    _OPEN.append(c)
    return c


@pytest.fixture
def sheets(api: FakeSheets) -> GoogleSheetsConnector:
    return make(api)


def tc(tool: str, timeout: float = 5.0, **params: Any) -> ToolCall:
    return ToolCall(tool, params, timeout=timeout,
                    idempotency_key="kf-1-1-1" if tool != "read_rows" else None)


def read(c: GoogleSheetsConnector, **params: Any) -> Any:
    return c.call(tc("read_rows", spreadsheet=SID, sheet="Orders", **params))


def append(c: GoogleSheetsConnector, values: Any, key_column: str = "Order id",
           sheet: str = "Orders", **params: Any) -> Any:
    return c.call(tc("append_row", spreadsheet=SID, sheet=sheet, values=values,
                     key_column=key_column, **params))


def sent_ranges(api: FakeSheets) -> list[str]:
    from urllib.parse import unquote
    return [unquote(r.path.split("/values/", 1)[1]) for r in api.requests
            if "/values/" in r.path]


# -- declarations and settings ---------------------------------------------------------------


def test_it_is_registered_with_its_declarations() -> None:
    assert get_connector_class("google_sheets") is GoogleSheetsConnector
    tools = {n: (s.kind.value, s.capability, s.risk.value, s.scope, s.reconcile)
             for n, s in GoogleSheetsConnector.tools.items()}
    assert tools == {
        "read_rows": ("read", "sheets.read", "low", ("spreadsheet",), False),
        "append_row": ("mutate", "sheets.write", "medium", ("spreadsheet",), True),
        "update_row": ("mutate", "sheets.write", "medium", ("spreadsheet",), True),
    }
    for spec in GoogleSheetsConnector.tools.values():
        assert spec.params
        assert spec.result
        assert spec.description
        if spec.reconcile:
            assert spec.reconcile_doc == "docs/connectors.md#google_sheets"
            assert spec.reconcile_strategy
    assert GoogleSheetsConnector.default_limits.rate == 0.5


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({}, "token_secret"),
        ({"token": "plain-text"}, "token"),
        ({"token": Secret("has space", "T")}, "token"),
        ({"token": Secret("t0k", "T"), "base_url": "ftp://x"}, "base_url"),
        ({"token": Secret("t0k", "T"), "base_url": "http://sheets.example.com"}, "base_url"),
        ({"token": Secret("t0k", "T"), "base_url": "https://u:p@x.example"}, "base_url"),
        ({"token": Secret("t0k", "T"), "base_url": "https://x.example/?q=1"}, "base_url"),
        ({"token": Secret("t0k", "T"), "base_url": 5}, "base_url"),
        ({"token": Secret("t0k", "T"), "spreadsheets": []}, "spreadsheets"),
        ({"token": Secret("t0k", "T"), "spreadsheets": ["ok", "../x"]}, "spreadsheets"),
        ({"token": Secret("t0k", "T"), "spreadsheets": "one"}, "spreadsheets"),
        ({"token": Secret("t0k", "T"), "sheet": "Orders"}, "sheet"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        GoogleSheetsConnector.validate_settings(settings)
    assert info.value.details["key"] == key
    assert "t0k" not in info.value.message


def test_the_token_comes_from_the_environment_never_the_file() -> None:
    doc = {"connections": {"sheets": {"type": "google_sheets", "token_env": "SHEETS_TOKEN",
                                      "spreadsheets": [SID]}}}
    [config] = [c for c in parse_connections(doc, source="connections.toml",
                                             environ={"SHEETS_TOKEN": "ya29.abc"})
                if c.name == "sheets"]
    assert isinstance(config.settings["token"], Secret)
    assert "ya29" not in repr(config)
    doc["connections"]["sheets"] = {"type": "google_sheets", "token": "ya29.abc"}
    with pytest.raises(ConfigError) as info:
        parse_connections(doc, source="connections.toml")
    assert "token_secret" in info.value.message
    assert "ya29" not in info.value.message


# -- read_rows -------------------------------------------------------------------------------


def test_read_rows_names_values_by_the_header_and_pages_by_offset(
        sheets: GoogleSheetsConnector, api: FakeSheets) -> None:
    first = read(sheets, limit=2)
    assert first == {
        "columns": HEADER,
        "rows": [{"row": 2, "values": {"Order id": "A-1", "Item": "Tea", "Qty": 2,
                                       "Paid": True}},
                 {"row": 3, "values": {"Order id": "A-2", "Item": "Cake", "Qty": 1.5,
                                       "Paid": False}}],
        "next_offset": 2}
    second = read(sheets, limit=2, offset=first["next_offset"])
    assert [r["row"] for r in second["rows"]] == [4, 5]
    assert second["next_offset"] == 4
    last = read(sheets, limit=2, offset=4)
    assert [r["values"]["Order id"] for r in last["rows"]] == ["A-5"]
    assert "next_offset" not in last
    # The first page reads header and rows at once; a later one the header, then its rows.
    assert sent_ranges(api) == ["'Orders'!1:4", "'Orders'!1:1", "'Orders'!4:6",
                                "'Orders'!1:1", "'Orders'!6:8"]
    get = api.requests[0]
    assert get.arg("valueRenderOption") == "UNFORMATTED_VALUE"
    assert get.arg("dateTimeRenderOption") == "FORMATTED_STRING"
    assert get.headers["authorization"] == "Bearer good-token"


def test_read_rows_leaves_out_empty_cells_and_rows_and_names_unnamed_columns(
        api: FakeSheets) -> None:
    api.add("book2", {"T": [["id", "", "id", "note"], ["1", "x", "y", ""], [], ["", "", "", ""],
                            ["3", "", "", "n"]]})
    out = make(api).call(tc("read_rows", spreadsheet="book2", sheet="T"))
    assert out["columns"] == ["id", "B", "id (C)", "note"]
    assert out["rows"] == [{"row": 2, "values": {"id": "1", "B": "x", "id (C)": "y"}},
                           {"row": 5, "values": {"id": "3", "note": "n"}}]


def test_read_rows_by_column_letters_and_a_column_span(sheets: GoogleSheetsConnector,
                                                       api: FakeSheets) -> None:
    raw = read(sheets, header_row=0, limit=2)
    assert raw["columns"] == ["A", "B", "C", "D"]
    assert raw["rows"][0] == {"row": 1, "values": dict(zip("ABCD", HEADER, strict=True))}
    span = read(sheets, range="B:C", limit=1)
    assert span["columns"] == ["Item", "Qty"]
    assert span["rows"] == [{"row": 2, "values": {"Item": "Tea", "Qty": 2}}]
    assert sent_ranges(api)[-1] == "'Orders'!B1:C3"


def test_a_range_past_the_grid_is_cut_to_it(api: FakeSheets) -> None:
    """Google may refuse a range reaching past the tab's grid ("exceeds grid limits. Max
    rows: 4, max columns: 3"): the range is cut to the grid it names and asked again."""
    api.add("small", {"T": [["k", "v", "w"], ["a", 1, 2], ["b", 3, 4]]}, grid=(4, 3))
    c = make(api)
    out = c.call(tc("read_rows", spreadsheet="small", sheet="T", range="B:F"))
    assert out == {"columns": ["v", "w"], "rows": [{"row": 2, "values": {"v": 1, "w": 2}},
                                                   {"row": 3, "values": {"v": 3, "w": 4}}]}
    past = c.call(tc("read_rows", spreadsheet="small", sheet="T", offset=10))
    assert past == {"columns": ["k", "v", "w"], "rows": []}
    assert sent_ranges(api) == ["'T'!B1:F102", "'T'!B1:C4", "'T'!1:1", "'T'!12:112"]
    assert c.call(tc("update_row", spreadsheet="small", sheet="T", key_column="k", key="b",
                     values={"w": 5}))["row"] == 3


def test_a_header_row_that_is_empty_says_what_to_do(sheets: GoogleSheetsConnector) -> None:
    with pytest.raises(PreconditionError, match="header_row: 0"):
        read(sheets, header_row=50)


def test_tab_names_are_quoted_and_a1_injection_stays_a_tab_name(
        sheets: GoogleSheetsConnector, api: FakeSheets) -> None:
    out = sheets.call(tc("read_rows", spreadsheet=SID, sheet="It's a tab"))
    assert out["rows"] == [{"row": 2, "values": {"Name": "x"}}]
    assert sent_ranges(api) == ["'It''s a tab'!1:102"]  # the header, 100 rows and one more
    for trick in ("Orders'!A1:Z;x", "Orders'!A1", "Orders!A1:B2", "'Orders'"):
        with pytest.raises(PreconditionError, match="no such tab"):
            sheets.call(tc("read_rows", spreadsheet=SID, sheet=trick))
    assert sent_ranges(api)[1] == "'Orders''!A1:Z;x'!1:102"
    with pytest.raises(PreconditionError, match="no such tab"):
        append(sheets, {"Order id": "Z"}, sheet="Orders'!A1")
    assert api.tab(SID, "Orders") == ORDERS
    api.add("quirky", {"Orders'!A1": [["k"], ["v"]]})
    out = sheets.call(tc("read_rows", spreadsheet="quirky", sheet="Orders'!A1"))
    assert out["rows"] == [{"row": 2, "values": {"k": "v"}}]


# -- append_row ------------------------------------------------------------------------------


def test_append_row_puts_values_under_their_columns_raw(sheets: GoogleSheetsConnector,
                                                        api: FakeSheets) -> None:
    out = append(sheets, {"Qty": 7, "Order id": "A-6", "Item": "=IMPORTXML(\"x\")"})
    assert out == {"row": 7, "updated_range": "Orders!A7:C7"}
    assert api.tab(SID, "Orders")[6] == ["A-6", "=IMPORTXML(\"x\")", 7]
    [post] = api.requests_to("POST", r".*:append")
    assert post.arg("valueInputOption") == "RAW"
    assert post.arg("insertDataOption") == "INSERT_ROWS"
    assert post.json["values"] == [["A-6", "=IMPORTXML(\"x\")", 7]]
    assert sent_ranges(api) == ["'Orders'!1:1", "'Orders'!A1:append"]


def test_append_row_with_a_list_keys_by_column_letter(api: FakeSheets) -> None:
    c = make(api)
    out = c.call(tc("append_row", spreadsheet=SID, sheet="It's a tab", values=["y", None, 3],
                    key_column="A", header_row=0))
    assert out == {"row": 3, "updated_range": "'It''s a tab'!A3:C3"}
    assert api.tab(SID, "It's a tab")[2] == ["y", "", 3]
    result = c.reconcile(tc("append_row", spreadsheet=SID, sheet="It's a tab",
                            values=["y", None, 3], key_column="A", header_row=0))
    assert (result.outcome, result.result) == (ReconcileOutcome.APPLIED, out)


def test_append_row_to_a_column_the_tab_does_not_have_sends_nothing(
        sheets: GoogleSheetsConnector, api: FakeSheets) -> None:
    with pytest.raises(PreconditionError, match=r"no column 'Colour'.*'Order id', 'Item'"):
        append(sheets, {"Order id": "A-9", "Colour": "red"})
    assert api.requests_to("POST", ".*") == []


def test_an_append_whose_answer_was_lost_reconciles_applied(sheets: GoogleSheetsConnector,
                                                            api: FakeSheets) -> None:
    api.fault("apply_then_drop")
    values = {"Order id": "A-7", "Item": "Soup"}
    with pytest.raises(UncertainOutcome):
        append(sheets, values)
    result = sheets.reconcile(tc("append_row", spreadsheet=SID, sheet="Orders", values=values,
                                 key_column="Order id"))
    assert result.outcome is ReconcileOutcome.APPLIED
    assert result.result == {"row": 7, "updated_range": "Orders!A7:B7"}
    assert [r[0] for r in api.tab(SID, "Orders")].count("A-7") == 1


def test_an_append_that_never_arrived_reconciles_failed(sheets: GoogleSheetsConnector,
                                                        api: FakeSheets) -> None:
    api.fault("drop")
    call = tc("append_row", spreadsheet=SID, sheet="Orders", values={"Order id": "A-8"},
              key_column="Order id")
    with pytest.raises(UncertainOutcome):
        sheets.call(call)
    result = sheets.reconcile(call)
    assert result.outcome is ReconcileOutcome.FAILED
    assert "Order id = 'A-8'" in result.detail
    assert api.tab(SID, "Orders") == ORDERS


def test_a_key_found_twice_reconciles_applied_to_the_last_with_a_note(
        api: FakeSheets) -> None:
    api.add("dups", {"T": [["k", "v"], ["x", 1], ["y", 2], ["x", 3]]})
    result = make(api).reconcile(tc("append_row", spreadsheet="dups", sheet="T",
                                    values={"k": "x", "v": 3}, key_column="k"))
    assert (result.outcome, result.result) == (ReconcileOutcome.APPLIED,
                                               {"row": 4, "updated_range": "T!A4:B4"})
    assert "2 rows" in result.detail
    assert "rows 2, 4" in result.detail


def test_keys_compare_as_the_sheet_shows_them(api: FakeSheets) -> None:
    api.add("nums", {"T": [["k"], [1001], [True]]})
    c = make(api)
    for key, row in (("1001", 2), (1001.0, 2), (True, 3)):
        result = c.reconcile(tc("append_row", spreadsheet="nums", sheet="T",
                                values={"k": key}, key_column="k"))
        assert result.result["row"] == row


def test_reconcile_says_retry_when_it_cannot_look(sheets: GoogleSheetsConnector,
                                                  api: FakeSheets) -> None:
    api.fault("status", status=503, methods=("GET",),
              body=google_error(503, "UNAVAILABLE", "The service is currently unavailable."))
    result = sheets.reconcile(tc("append_row", spreadsheet=SID, sheet="Orders",
                                 values={"Order id": "A-1"}, key_column="Order id"))
    assert result.outcome is ReconcileOutcome.RETRY
    assert "503" in result.detail


# -- update_row ------------------------------------------------------------------------------


def test_update_row_sets_only_the_named_cells(sheets: GoogleSheetsConnector,
                                              api: FakeSheets) -> None:
    call = tc("update_row", spreadsheet=SID, sheet="Orders", key_column="Order id", key="A-3",
              values={"Paid": False, "Item": "Marmalade"})
    out = sheets.call(call)
    assert out == {"row": 4, "updated_range": "Orders!B4:D4"}
    assert api.tab(SID, "Orders")[3] == ["A-3", "Marmalade", 3, False]
    [put] = api.requests_to("PUT", ".*")
    assert put.arg("valueInputOption") == "RAW"
    assert put.json["values"] == [["Marmalade", None, False]]  # None: Qty is left alone
    assert sheets.reconcile(call).result == out
    assert sheets.reconcile(call).outcome is ReconcileOutcome.APPLIED
    again = sheets.call(call)  # the same values twice: the same sheet
    assert again == out
    assert api.tab(SID, "Orders")[3] == ["A-3", "Marmalade", 3, False]


def test_update_row_null_clears_a_cell(sheets: GoogleSheetsConnector, api: FakeSheets) -> None:
    call = tc("update_row", spreadsheet=SID, sheet="Orders", key_column="Order id", key="A-1",
              values={"Qty": None})
    sheets.call(call)
    assert api.tab(SID, "Orders")[1] == ["A-1", "Tea", "", True]
    assert sheets.reconcile(call).outcome is ReconcileOutcome.APPLIED


def test_a_missing_row_counts_as_not_appended_only_once_google_is_done(
        sheets: GoogleSheetsConnector, api: FakeSheets) -> None:
    """Google may still be adding a row it got: until the call's timeout and the settle
    time have passed since the host recorded the attempt, "not found" means "ask again"."""
    call = tc("append_row", spreadsheet=SID, sheet="Orders", values={"Order id": "A-9"},
              key_column="Order id")
    now = datetime.now(UTC)
    recent = replace(call, attempted_at=now - timedelta(seconds=1))
    assert sheets.reconcile(recent).outcome is ReconcileOutcome.RETRY
    old = replace(call, attempted_at=now - timedelta(seconds=call.timeout + SETTLE_SECONDS + 1))
    assert sheets.reconcile(old).outcome is ReconcileOutcome.FAILED


def test_an_update_that_did_not_land_reconciles_failed(sheets: GoogleSheetsConnector,
                                                       api: FakeSheets) -> None:
    api.fault("drop")
    call = tc("update_row", spreadsheet=SID, sheet="Orders", key_column="Order id", key="A-2",
              values={"Qty": 9})
    with pytest.raises(UncertainOutcome):
        sheets.call(call)
    result = sheets.reconcile(call)
    assert result.outcome is ReconcileOutcome.FAILED
    assert "column C" in result.detail
    api.fault("apply_then_drop")
    with pytest.raises(UncertainOutcome):
        sheets.call(call)
    assert sheets.reconcile(call).outcome is ReconcileOutcome.APPLIED


def test_update_row_needs_exactly_one_row_with_the_key(api: FakeSheets) -> None:
    api.add("dups", {"T": [["k", "v"], ["x", 1], ["x", 2]]})
    c = make(api)
    with pytest.raises(PreconditionError, match="no row of tab 'Orders' has Order id = 'A-99'"):
        c.call(tc("update_row", spreadsheet=SID, sheet="Orders", key_column="Order id",
                  key="A-99", values={"Qty": 1}))
    with pytest.raises(PreconditionError, match=r"2 rows .*\(rows 2, 3\)"):
        c.call(tc("update_row", spreadsheet="dups", sheet="T", key_column="k", key="x",
                  values={"v": 5}))
    with pytest.raises(PreconditionError, match="no column 'Order'"):
        c.call(tc("update_row", spreadsheet=SID, sheet="Orders", key_column="Order",
                  key="A-1", values={"Qty": 1}))
    assert api.requests_to("PUT", ".*") == []


# -- failures --------------------------------------------------------------------------------

ERRORS = [
    (401, google_error(401, "UNAUTHENTICATED", "Request had invalid authentication "
                       "credentials."), {}, AuthError),
    (403, google_error(403, "PERMISSION_DENIED", "Request had insufficient authentication "
                       "scopes.", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"), {}, AuthError),
    (403, google_error(403, "PERMISSION_DENIED", "The caller does not have permission"), {},
     PermissionDenied),
    (404, google_error(404, "NOT_FOUND", "Requested entity was not found."), {},
     PreconditionError),
    (400, google_error(400, "INVALID_ARGUMENT", "Unable to parse range: 'Nope'!1:1"), {},
     PreconditionError),
    (400, google_error(400, "INVALID_ARGUMENT", "Invalid values[0][0]: struct_value"), {},
     PermanentError),
    (429, google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded"), {"Retry-After": "7"},
     TransientError),
    (500, google_error(500, "INTERNAL", "Internal error encountered."), {}, TransientError),
    (503, b"<html>Service Unavailable</html>", {"Content-Type": "text/html"}, TransientError),
]


@pytest.mark.parametrize(("status", "body", "headers", "error"), ERRORS)
def test_google_errors_on_a_read_have_their_class(sheets: GoogleSheetsConnector,
                                                  api: FakeSheets, status: int, body: Any,
                                                  headers: dict[str, str], error: type) -> None:
    api.fault("status", status=status, body=body, headers=headers, methods=("GET",))
    with pytest.raises(error) as info:
        read(sheets)
    assert type(info.value) is error
    assert str(status) in info.value.message
    if status == 429:
        assert info.value.retry_after == 7


@pytest.mark.parametrize(("status", "error"), [(400, PermanentError), (403, PermissionDenied),
                                               (429, TransientError), (500, UncertainOutcome),
                                               (502, UncertainOutcome), (501, PermanentError)])
def test_google_errors_on_an_append_have_their_class(sheets: GoogleSheetsConnector,
                                                     api: FakeSheets, status: int,
                                                     error: type) -> None:
    api.fault("status", status=status, body=google_error(status, "X", "no"))
    with pytest.raises(error) as info:
        append(sheets, {"Order id": "A-9"})
    assert type(info.value) is error


def test_a_rate_limit_without_retry_after_waits_a_minute(sheets: GoogleSheetsConnector,
                                                         api: FakeSheets) -> None:
    api.fault("rate_limit", retry_after=None)
    with pytest.raises(TransientError) as info:
        append(sheets, {"Order id": "A-9"})
    assert info.value.retry_after == 60
    assert "quota" in info.value.message


def test_a_refused_token_asks_to_reconnect_and_is_never_shown(api: FakeSheets) -> None:
    api.narrow_tokens.add("ya29.narrow-scope-token")  # a token without the Sheets scope
    for token, said in (("ya29.expired-token-value", "expired"),
                        ("ya29.narrow-scope-token", "Sheets scope")):
        with pytest.raises(AuthError) as info:
            read(make(api, token=token))
        message = json.dumps(info.value.to_dict())
        assert said in message
        assert "keepflow connection secret sheets token" in message
        assert token not in message


def test_a_spreadsheet_not_shared_and_one_not_listed(api: FakeSheets) -> None:
    api.add("other", {"T": [["k"]]})
    api.private.add("other")
    with pytest.raises(PermissionDenied, match="share it"):
        make(api).call(tc("read_rows", spreadsheet="other", sheet="T"))
    listed = make(api, spreadsheets=[SID])
    before = len(api.requests)
    with pytest.raises(PermissionDenied, match="spreadsheets list"):
        listed.call(tc("read_rows", spreadsheet="other", sheet="T"))
    assert len(api.requests) == before
    assert read(listed, limit=1)["rows"][0]["row"] == 2


def test_the_call_timeout_bounds_a_server_that_never_answers() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []

    def hold() -> None:  # accept, read nothing, answer nothing
        for _ in range(3):
            held.append(listener.accept()[0])

    threading.Thread(target=hold, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    c = GoogleSheetsConnector(ConnectionConfig("sheets", "google_sheets", {
        "token": Secret("good-token", "T"), "base_url": url}))
    try:
        t0 = time.monotonic()
        with pytest.raises(TransientError):
            c.call(tc("read_rows", timeout=0.3, spreadsheet=SID, sheet="Orders"))
        with pytest.raises(UncertainOutcome):
            c.call(tc("append_row", timeout=0.3, spreadsheet=SID, sheet="Orders",
                      values=["x"], key_column="A", header_row=0))
        assert time.monotonic() - t0 < 3
    finally:
        c.close()
        listener.close()
        for s in held:
            s.close()


def test_check_opens_each_listed_spreadsheet_or_proves_the_token(api: FakeSheets) -> None:
    make(api).check()  # no list: a spreadsheet that cannot exist answers 404
    assert api.requests[-1].path == "/v4/spreadsheets/keepflow-token-check"
    make(api, spreadsheets=[SID]).check()
    assert api.requests[-1].arg("fields") == "spreadsheetId,properties.title"
    with pytest.raises(PreconditionError):
        make(api, spreadsheets=[SID, "gone"]).check()
    with pytest.raises(AuthError):
        make(api, token="expired").check()


def test_describe_says_what_and_where(sheets: GoogleSheetsConnector) -> None:
    assert sheets.describe(tc("append_row", spreadsheet=SID, sheet="Orders")) == \
        f"append a row to tab 'Orders' of spreadsheet {SID}"
    assert sheets.describe(tc("update_row", spreadsheet=SID, sheet="O\x1b[31m",
                              key_column="Order id", key="A-1")) == \
        f"update the row with Order id = 'A-1' in tab 'O[31m' of spreadsheet {SID}"


# -- refused params --------------------------------------------------------------------------

BASE = {"spreadsheet": SID, "sheet": "Orders"}


@pytest.mark.parametrize(
    ("tool", "params", "field"),
    [
        ("append_row", {"values": {"Order id": "A-9"}}, "key_column"),
        ("append_row", {"values": {"Item": "x"}, "key_column": "Order id"}, "key_column"),
        ("append_row", {"values": {"Order id": "  "}, "key_column": "Order id"}, "key_column"),
        ("append_row", {"values": ["", "x"], "key_column": "A"}, "values"),
        ("append_row", {"values": ["x"], "key_column": "B"}, "key_column"),
        ("append_row", {"values": ["x"], "key_column": "a"}, "key_column"),
        ("append_row", {"values": [], "key_column": "A"}, "values"),
        ("append_row", {"values": {"Order id": "x", "Qty": float("nan")},
                        "key_column": "Order id"}, "values"),
        ("append_row", {"values": {"Order id": "x", "Qty": 2 ** 60},
                        "key_column": "Order id"}, "values"),
        ("append_row", {"values": {"Order id": "x", "Item": {"a": 1}},
                        "key_column": "Order id"}, "values"),
        ("append_row", {"values": {"Order id": "x" * (CELL_CHARS + 1)},
                        "key_column": "Order id"}, "values"),
        ("append_row", {"values": {"Order id": "x\ud800"}, "key_column": "Order id"},
         "values"),
        ("append_row", {"values": "A-9", "key_column": "Order id"}, "values"),
        ("append_row", {"values": {"Order id": "x"}, "key_column": "Order id",
                        "header_row": 0}, "header_row"),
        ("append_row", {"values": {"Order id": "x"}, "key_column": "Order id",
                        "idempotency": "k"}, "idempotency"),
        ("update_row", {"key_column": "Order id", "values": {"Qty": 1}}, "key"),
        ("update_row", {"key_column": "Order id", "key": "A-1", "values": {}}, "values"),
        ("update_row", {"key_column": "Order id", "key": "A-1",
                        "values": {"Order id": "A-2"}}, "values"),
        ("update_row", {"key": "A-1", "values": {"Qty": 1}}, "key_column"),
        ("update_row", {"key_column": "Order id", "key": ["A-1"], "values": {"Qty": 1}},
         "key"),
        ("read_rows", {"limit": 0}, "limit"),
        ("read_rows", {"limit": 1001}, "limit"),
        ("read_rows", {"limit": True}, "limit"),
        ("read_rows", {"offset": -1}, "offset"),
        ("read_rows", {"header_row": -1}, "header_row"),
        ("read_rows", {"range": "A1:B"}, "range"),
        ("read_rows", {"range": "C:A"}, "range"),
        ("read_rows", {"range": "'x'!A:B"}, "range"),
        ("read_rows", {"sheet": ""}, "sheet"),
        ("read_rows", {"sheet": "Orders\n"}, "sheet"),
        ("read_rows", {"sheet": "x" * 101}, "sheet"),
        ("read_rows", {"sheet": 5}, "sheet"),
        ("read_rows", {"spreadsheet": "../other"}, "spreadsheet"),
        ("read_rows", {"spreadsheet": f"{SID}/values/x"}, "spreadsheet"),
        ("read_rows", {"spreadsheet": f"{SID}?fields=x"}, "spreadsheet"),
        ("read_rows", {"spreadsheet": None}, "spreadsheet"),
    ],
)
def test_bad_params_are_refused_before_anything_is_sent(
        sheets: GoogleSheetsConnector, api: FakeSheets, tool: str, params: dict[str, Any],
        field: str) -> None:
    call = tc(tool, **{**BASE, **params})
    with pytest.raises(PermanentError) as info:
        sheets.validate(call)
    assert info.value.details["field"] == field
    assert f"params.{field}" in info.value.message
    with pytest.raises(PermanentError):
        sheets.call(call)
    assert api.requests == []


# -- hostile answers -------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"values": NaN}',
                                  b'{"values": "rows"}', b'{"values": [1, 2]}', b""])
def test_a_malformed_answer_to_a_read_is_transient(sheets: GoogleSheetsConnector,
                                                   api: FakeSheets, body: bytes) -> None:
    api.fault("status", status=200, body=body, methods=("GET",))
    with pytest.raises(TransientError):
        read(sheets)


@pytest.mark.parametrize("body", [b"<html>ok</html>", {"updates": {}},
                                  {"updates": {"updatedRange": "Orders!A0:B0"}},
                                  {"updates": {"updatedRange": ["x"]}}])
def test_a_malformed_answer_to_an_append_is_uncertain_and_reconciles(
        sheets: GoogleSheetsConnector, api: FakeSheets, body: Any) -> None:
    api.fault("apply_then_status", status=200, body=body)
    call = tc("append_row", spreadsheet=SID, sheet="Orders", values={"Order id": "A-10"},
              key_column="Order id")
    with pytest.raises(UncertainOutcome):
        sheets.call(call)
    assert sheets.reconcile(call).result == {"row": 7, "updated_range": "Orders!A7"}


def test_an_oversized_answer_is_refused_with_advice(sheets: GoogleSheetsConnector,
                                                    api: FakeSheets) -> None:
    api.fault("status", status=200, methods=("GET",),
              body={"values": [["x" * 1000] * 10] * 300})
    with pytest.raises(PermanentError, match="fewer rows"):
        read(sheets)


def test_cells_are_cleaned_and_bounded(api: FakeSheets) -> None:
    api.add("dirty", {"T": [["id\x00", "na\u202eme", "big"],
                            ["a\x1b[2Jb", "line1\nline2\ttab", "y" * (CELL_CHARS + 500)],
                            [10 ** 400, {"a": 1}, ["n"]],
                            ["good-token here", "", ""]]})
    out = make(api).call(tc("read_rows", spreadsheet="dirty", sheet="T"))
    assert out["columns"] == ["id", "name", "big"]
    first, last = out["rows"]  # row 3 holds nothing a cell can: it is left out
    assert first["values"]["id"] == "a[2Jb"
    assert first["values"]["name"] == "line1\nline2\ttab"
    assert len(first["values"]["big"]) == CELL_CHARS
    assert last == {"row": 4, "values": {"id": "*** here"}}  # the token is masked


def test_an_error_body_is_quoted_bounded_and_redacted(sheets: GoogleSheetsConnector,
                                                      api: FakeSheets) -> None:
    api.fault("status", status=403, methods=("GET",), body=google_error(
        403, "PERMISSION_DENIED", "Bearer good-token \x1b[31m" + "z" * 5000))
    with pytest.raises(PermissionDenied) as info:
        read(sheets)
    assert "good-token" not in info.value.message
    assert "\x1b" not in info.value.message
    assert len(info.value.message) < 1000


# -- through the host ------------------------------------------------------------------------

APPEND = f"""await ctx.sheets.append_row({{ spreadsheet: "{SID}", sheet: "Orders",
    key_column: "Order id",
    values: {{ "Order id": prepared.data.event.messageId,
              "Item": prepared.data.event.title }} }});"""
NEXT = "return { saw: mutation.status, result: mutation.result ?? null };"


def _deploy(host: Host, tmp_path: Path, ids: list[str]) -> None:
    deploy_source(host, tmp_path, workflow_js(
        producers=seed_producer(ids), consumers=consumer_js(mutate=APPEND, next_=NEXT)))
    assert service.trigger(host, "wf", "seed").status is RunStatus.COMMITTED


def _keys(api: FakeSheets) -> list[Any]:
    return [r[0] for r in api.tab(SID, "Orders")[len(ORDERS):]]


@pytest.fixture
def sheets_host(store_url: str, tmp_path: Path, pool: SandboxPool, clock: FakeClock,
                api: FakeSheets) -> Iterator[Host]:
    connections = Connections([ConnectionConfig("sheets", "google_sheets", {
        "token": Secret("good-token", "SHEETS_TOKEN"), "base_url": api.url})])
    h = Host(Settings(home=tmp_path / "home", database_url=store_url), clock=clock,
             connections=connections, pool=pool, policies=PolicyBook(quick_policy()))
    yield h
    h.close()
    connections.close()


def test_a_workflow_appends_one_row_per_event(sheets_host: Host, api: FakeSheets,
                                              tmp_path: Path) -> None:
    _deploy(sheets_host, tmp_path, ["B-1", "B-2"])
    report = service.drain(sheets_host)
    assert [r.status for r in report.runs] == [RunStatus.COMMITTED] * 2
    assert _keys(api) == ["B-1", "B-2"]
    [m] = run_detail(sheets_host, report.runs[0].run_id)["mutations"]
    assert (m["status"], m["resolvedBy"]) == ("applied", "host")
    assert m["result"] == {"row": 7, "updated_range": "Orders!A7:B7"}
    assert m["description"] == f"append a row to tab 'Orders' of spreadsheet {SID}"
    assert service.drain(sheets_host).runs == []


def test_a_lost_answer_is_reconciled_and_the_row_is_there_once(
        sheets_host: Host, api: FakeSheets, tmp_path: Path) -> None:
    _deploy(sheets_host, tmp_path, ["B-1"])
    api.fault("apply_then_drop")
    out = service.trigger(sheets_host, "wf", "work")
    assert out.status is RunStatus.COMMITTED, out.failure
    [m] = run_detail(sheets_host, out.run_id)["mutations"]
    assert (m["status"], m["resolvedBy"]) == ("applied", "reconcile")
    assert m["result"] == {"row": 7, "updated_range": "Orders!A7:B7"}
    assert _keys(api) == ["B-1"]


def test_a_request_lost_before_it_arrived_is_appended_once(
        sheets_host: Host, api: FakeSheets, tmp_path: Path) -> None:
    _deploy(sheets_host, tmp_path, ["B-1"])
    api.fault("drop")
    out = service.trigger(sheets_host, "wf", "work")
    assert out.status is RunStatus.COMMITTED, out.failure
    muts = run_detail(sheets_host, out.run_id)["mutations"]
    assert [(m["status"], m["resolvedBy"]) for m in muts] == [("failed", "reconcile"),
                                                             ("applied", "host")]
    assert _keys(api) == ["B-1"]


def test_a_rate_limit_backs_off_and_commits(sheets_host: Host, api: FakeSheets,
                                            tmp_path: Path, clock: FakeClock) -> None:
    _deploy(sheets_host, tmp_path, ["B-1"])
    api.fault("rate_limit", retry_after=3)
    out = service.trigger(sheets_host, "wf", "work")
    assert out.status is RunStatus.COMMITTED, out.failure
    muts = run_detail(sheets_host, out.run_id)["mutations"]
    assert [(m["attempt"], m["status"]) for m in muts] == [(1, "failed"), (2, "applied")]
    assert clock.slept
    assert max(clock.slept) >= 3
    assert _keys(api) == ["B-1"]


def test_a_refused_token_asks_to_reconnect_and_the_run_continues(
        store_url: str, tmp_path: Path, pool: SandboxPool, clock: FakeClock,
        api: FakeSheets) -> None:
    (tmp_path / "home").mkdir()
    host = Host(Settings(home=tmp_path / "home", database_url=store_url), clock=clock,
                pool=pool, policies=PolicyBook(quick_policy()))
    try:
        service.connection_add(host, "sheets", "google_sheets", {"base_url": api.url},
                               {"token": "bad"})
        _deploy(host, tmp_path, ["B-1"])
        failed = service.trigger(host, "wf", "work")
        assert failed.status is RunStatus.FAILED
        assert failed.failure is not None
        assert failed.failure["class"] == "auth"
        [item] = service.inbox(host)
        assert (item["kind"], item["connection"]) == ("reconnect", "sheets")
        assert _keys(api) == []
        # The store notices a rotated secret by its time: let the fake clock move on.
        clock.advance(1)
        done = service.connection_secret(host, "sheets", "token", "good-token")
        assert done["retried"] == [item["run"]]
        detail = run_detail(host, item["run"])
        assert detail["status"] == "committed", json.dumps(detail, default=str)[:3000]
        assert _keys(api) == ["B-1"]
        assert service.inbox(host) == []
    finally:
        host.close()
