"""The http connector against a real loopback server: results, idempotency keys, statuses
(SPEC §6 idempotency, §8 classification)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from loopback_http_server import Behavior, LoopbackServer

from keepflow.connectors.base import ConnectionConfig, ToolCall
from keepflow.connectors.http import HttpConnector
from keepflow.connectors.http_classify import MAX_TEXT_CHARS
from keepflow.connectors.secret import Secret
from keepflow.errors import (
    AuthError,
    ConnectorError,
    PermanentError,
    PermissionDenied,
    PreconditionError,
    TransientError,
    UncertainOutcome,
)

pytestmark = pytest.mark.integration

TOKEN = "tok-5d1c-integration-secret"


@pytest.fixture
def api(http_server: LoopbackServer) -> Iterator[HttpConnector]:
    c = HttpConnector(ConnectionConfig("api", "http", {
        "base_url": http_server.url,
        "headers": {"Authorization": Secret(f"Bearer {TOKEN}", "API_TOKEN"),
                    "Accept": "application/json"},
    }))
    yield c
    c.close()


def mutation(tool: str = "post", key: str = "wf1:run1:1", timeout: float = 5.0,
             **params: Any) -> ToolCall:
    return ToolCall(tool, params, timeout=timeout, idempotency_key=key)


def read(tool: str = "get", timeout: float = 5.0, **params: Any) -> ToolCall:
    return ToolCall(tool, params, timeout=timeout)


def test_get_returns_status_headers_and_json(api: HttpConnector,
                                             http_server: LoopbackServer) -> None:
    http_server.behave("/things", Behavior(json={"items": [1, 2]},
                                           headers={"X-Total": "2", "Set-Cookie": "s=1"}))
    result = api.call(read(url="/things", query={"page": 2, "tag": ["a", "b"]}))
    assert result["status"] == 200
    assert result["json"] == {"items": [1, 2]}
    assert result["headers"]["x-total"] == "2"
    assert "set-cookie" not in result["headers"]
    assert "text" not in result
    (req,) = http_server.requests
    assert req.query == "page=2&tag=a&tag=b"
    assert req.idempotency_key is None  # reads carry no key
    assert req.headers["authorization"] == f"Bearer {TOKEN}"  # configured credential is sent


def test_head_and_text_results(api: HttpConnector, http_server: LoopbackServer) -> None:
    http_server.behave("/page", Behavior(text="<html>hi</html>"))
    assert api.call(read(url="/page"))["text"] == "<html>hi</html>"
    head = api.call(read("head", url="/page"))
    assert head["status"] == 200
    assert head["text"] == ""


def test_large_text_is_truncated(api: HttpConnector, http_server: LoopbackServer) -> None:
    http_server.behave("/big", Behavior(text="x" * (MAX_TEXT_CHARS + 10)))
    result = api.call(read(url="/big"))
    assert len(result["text"]) == MAX_TEXT_CHARS
    assert result["truncated"] is True


def test_mutation_sends_the_idempotency_key_and_it_is_stable(
    api: HttpConnector, http_server: LoopbackServer
) -> None:
    c = mutation(url="/orders", json={"sku": "A-1"}, key="wf1:run7:1")
    first = api.call(c)
    again = api.call(c)  # e.g. a transient retry of the same ledger attempt
    assert first["status"] == 201
    assert first["json"]["body"] == {"sku": "A-1"}
    assert again["json"] == first["json"]  # the server deduplicated by key
    keys = [r.idempotency_key for r in http_server.requests]
    assert keys == ["wf1:run7:1", "wf1:run7:1"]
    assert len(http_server.applied) == 1
    api.call(mutation("put", url="/orders/1", body="raw", key="wf1:run7:2"))
    api.call(mutation("patch", url="/orders/1", json=[1], key="wf1:run7:3"))
    api.call(mutation("delete", url="/orders/1", key="wf1:run7:4"))
    assert [r.method for r in http_server.requests[2:]] == ["PUT", "PATCH", "DELETE"]
    assert http_server.requests[2].body == b"raw"


@pytest.mark.parametrize(
    ("status", "error", "retry"),
    [
        (401, AuthError, False),
        (403, PermissionDenied, False),
        (404, PreconditionError, False),
        (410, PreconditionError, False),
        (400, PermanentError, False),
        (409, PermanentError, False),
        (422, PermanentError, False),
        (307, PermanentError, False),
        (408, TransientError, True),
        (429, TransientError, True),
        (503, TransientError, True),
        (500, UncertainOutcome, False),
        (502, UncertainOutcome, False),
        (504, UncertainOutcome, False),
        (501, PermanentError, False),
    ],
)
def test_mutation_status_classification(
    api: HttpConnector, http_server: LoopbackServer, status: int,
    error: type[ConnectorError], retry: bool,
) -> None:
    http_server.behave("/orders", Behavior(status=status, json={"error": "nope"},
                                           headers={"Retry-After": "7"}))
    with pytest.raises(ConnectorError) as info:
        api.call(mutation(url="/orders", json={}))
    assert type(info.value) is error
    assert info.value.details["status"] == status
    assert "nope" in info.value.details["body"]
    assert info.value.retryable is retry
    if error is TransientError:
        assert info.value.retry_after == 7.0  # type: ignore[attr-defined]


def test_retry_after_as_http_date(api: HttpConnector, http_server: LoopbackServer) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    http_server.behave("/orders", Behavior(status=429, headers={"Retry-After": when}))
    with pytest.raises(TransientError) as info:
        api.call(mutation(url="/orders", json={}))
    assert info.value.retry_after is not None
    assert 100 < info.value.retry_after <= 120


@pytest.mark.parametrize("status", [302, 303])
def test_post_redirect_get_is_success(api: HttpConnector, http_server: LoopbackServer,
                                      status: int) -> None:
    http_server.behave("/form", Behavior(status=status, headers={"Location": "/done"}))
    result = api.call(mutation(url="/form", json={}))
    assert result["status"] == status
    assert result["headers"]["location"] == "/done"
    assert len(http_server.requests) == 1  # not followed


@pytest.mark.parametrize("status", [400, 404, 409, 410, 422])
def test_reads_return_client_errors_as_data(api: HttpConnector, http_server: LoopbackServer,
                                            status: int) -> None:
    http_server.behave("/maybe", Behavior(status=status, json={"why": "x"}))
    result = api.call(read(url="/maybe"))
    assert result["status"] == status
    assert result["json"] == {"why": "x"}


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, AuthError), (403, PermissionDenied), (408, TransientError), (429, TransientError),
     (500, TransientError), (502, TransientError), (503, TransientError),
     (504, TransientError)],
)
def test_read_status_errors(api: HttpConnector, http_server: LoopbackServer, status: int,
                            error: type[ConnectorError]) -> None:
    http_server.behave("/r", Behavior(status=status))
    with pytest.raises(ConnectorError) as info:
        api.call(read(url="/r"))
    assert type(info.value) is error


def test_reads_follow_redirects_without_leaking_credentials_off_origin(
    http_server: LoopbackServer
) -> None:
    other = LoopbackServer()
    # The other server is on loopback too: it must be allowed explicitly
    # (docs/security.md#network-egress; tests/security/test_http_egress.py refuses it).
    api = HttpConnector(ConnectionConfig("api", "http", {
        "base_url": http_server.url, "allow": [other.url],
        "headers": {"Authorization": Secret(f"Bearer {TOKEN}", "API_TOKEN")},
    }))
    try:
        http_server.behave("/here", Behavior(status=302, headers={"Location": "/echo"}))
        assert api.call(read(url="/here"))["json"]["headers"]["authorization"] == "***"
        assert http_server.requests[-1].path == "/echo"
        assert http_server.requests[-1].headers["authorization"] == f"Bearer {TOKEN}"
        http_server.behave("/away", Behavior(status=302,
                                             headers={"Location": f"{other.url}/echo"}))
        result = api.call(read(url="/away"))
        assert result["status"] == 200
        assert "authorization" not in result["json"]["headers"]
        assert "authorization" not in other.requests[0].headers
    finally:
        api.close()
        other.close()


def test_secret_never_appears_in_errors_results_or_logs(
    api: HttpConnector, http_server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # A server that echoes the request's headers back, in an error and in a result.
    http_server.behave("/echo-error", Behavior(status=400, text=f"bad request; you sent "
                                                                f"Authorization: Bearer {TOKEN}"))
    with pytest.raises(PermanentError) as info:
        api.call(mutation(url="/echo-error", json={}))
    echoed = api.call(read(url="/echo"))
    assert echoed["json"]["headers"]["authorization"] == "***"  # redacted in results too
    texts = [str(info.value), repr(info.value), str(info.value.to_dict()), repr(api),
             repr(api.config), api.describe(mutation(url="/x")), caplog.text, str(echoed)]
    for text in texts:
        assert TOKEN not in text
    assert "400" in info.value.message


def test_timeout_param_is_capped_by_the_call_timeout(api: HttpConnector,
                                                     http_server: LoopbackServer) -> None:
    http_server.behave("/slow", Behavior(kind="apply_then_hang"))
    started = time.monotonic()
    with pytest.raises(TransientError):  # params ask for 60 s; the host allows 0.3 s
        api.call(ToolCall("get", {"url": "/slow", "timeout": 60}, timeout=0.3))
    assert time.monotonic() - started < 5


def test_secret_webhook_url_never_reaches_logs_or_errors(
    http_server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hook = f"{http_server.url}/services/T0/{TOKEN}"
    c = HttpConnector(ConnectionConfig("slack", "http", {"base_url": Secret(hook, "HOOK")}))
    try:
        ok = c.call(mutation(url="", json={"text": "hi"}))  # "" is the base_url itself
        assert http_server.requests[-1].path == f"/services/T0/{TOKEN}"  # the real URL...
        assert ok["json"]["path"] == "***"  # ...which is masked even where the server echoes it
        http_server.behave(f"/services/T0/{TOKEN}", Behavior(status=400, text="bad"))
        with pytest.raises(PermanentError) as info:
            c.call(mutation(url="", json={}))
        texts = [str(info.value), str(info.value.to_dict()), c.describe(mutation(url="")),
                 caplog.text, repr(c), str(ok)]
        assert "HTTP Request" in caplog.text  # httpx did log the requests, redacted
        for text in texts:
            assert TOKEN not in text  # ...and nothing shows it
    finally:
        c.close()


def test_configured_headers_win_over_script_headers(api: HttpConnector,
                                                    http_server: LoopbackServer) -> None:
    api.call(read(url="/echo", headers={"authorization": "Bearer forged", "X-Trace": "t-1"}))
    (req,) = http_server.requests
    assert [v for k, v in req.lines if k.lower() == "authorization"] == [f"Bearer {TOKEN}"]
    assert req.headers["x-trace"] == "t-1"
