"""Offline checks of the built-in connectors: params validation, describe, declarations,
Retry-After parsing and secret handling (SPEC §6: malformed calls fail before in_flight)."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from keepflow.connectors.base import ConnectionConfig, RiskTier, ToolCall, ToolKind
from keepflow.connectors.http import HttpConnector
from keepflow.connectors.http_classify import parse_retry_after
from keepflow.connectors.secret import MASK, Redactor, Secret, reveal, secret_values
from keepflow.connectors.sql import SqlConnector
from keepflow.errors import PermanentError

TOKEN = "tok-0b5e-super-secret-value"


@pytest.fixture
def api() -> Iterator[HttpConnector]:
    c = HttpConnector(ConnectionConfig("api", "http", {
        "base_url": "http://127.0.0.1:9000/v1",
        "headers": {"Authorization": Secret(f"Bearer {TOKEN}", "API_TOKEN")},
    }))
    yield c
    c.close()


@pytest.fixture
def plain() -> Iterator[HttpConnector]:
    c = HttpConnector(ConnectionConfig("http", "http", {}))
    yield c
    c.close()


def call(tool: str, **params: Any) -> ToolCall:
    return ToolCall(tool, params, timeout=5.0, idempotency_key="wf1:run1:1")


def test_http_declarations() -> None:
    spec = HttpConnector.tools["post"]
    assert (spec.kind, spec.capability, spec.risk, spec.scope, spec.reconcile) == (
        ToolKind.MUTATE, "http.write", RiskTier.MEDIUM, ("host",), True)
    assert HttpConnector.tools["get"].kind is ToolKind.READ
    assert {t for t, s in HttpConnector.tools.items() if s.kind is ToolKind.MUTATE} == {
        "post", "put", "patch", "delete"}


@pytest.mark.parametrize(
    ("tool", "params", "field"),
    [
        ("post", {}, "url"),
        ("post", {"url": 5}, "url"),
        ("post", {"url": "/x", "json": {}, "body": "x"}, "json"),
        ("post", {"url": "/x", "body": {"a": 1}}, "body"),
        ("post", {"url": "/x", "headers": {"X-A": 1}}, "headers.X-A"),
        ("post", {"url": "/x", "headers": {"Idempotency-Key": "mine"}}, "headers.Idempotency-Key"),
        ("post", {"url": "/x", "headers": "x"}, "headers"),
        ("post", {"url": "/x", "reconcile": {"url": "/r", "method": "POST"}}, "reconcile.method"),
        ("post", {"url": "/x", "reconcile": {"method": "GET"}}, "reconcile"),
        ("post", {"url": "/x", "reconcile": "/r"}, "reconcile"),
        ("post", {"url": "/x", "reconcile": {"url": "/r", "extra": 1}}, "reconcile.extra"),
        ("post", {"url": "/x", "reconcile": {"url": "https://evil.test/r"}}, "reconcile.url"),
        ("get", {"url": "/x", "reconcile": {"url": "/r"}}, "reconcile"),
        ("get", {"url": "/x", "json": {}}, "json"),
        ("post", {"url": "/x", "timeout": 0}, "timeout"),
        ("post", {"url": "/x", "timeout": True}, "timeout"),
        ("post", {"url": "/x", "query": {"a": {"b": 1}}}, "query.a"),
        ("post", {"url": "/x", "bogus": 1}, "bogus"),
        ("post", {"url": "ftp://127.0.0.1:9000/x"}, "url"),
        ("post", {"url": "http://other.test/x"}, "url"),
        ("post", {"url": "http://u:p@127.0.0.1:9000/x"}, "url"),
        ("post", {"url": "//127.0.0.1:9000/x"}, "url"),
        ("post", {"url": "../admin"}, "url"),
    ],
)
def test_http_validate_rejects_malformed_params(
    api: HttpConnector, tool: str, params: dict[str, Any], field: str
) -> None:
    with pytest.raises(PermanentError) as info:
        api.validate(call(tool, **params))
    assert field in info.value.message
    assert info.value.details["field"] == field


def test_http_relative_url_needs_base(plain: HttpConnector) -> None:
    with pytest.raises(PermanentError, match="absolute"):
        plain.validate(call("get", url="/x"))
    plain.validate(call("get", url="https://example.test/x?y=1"))


def test_http_describe_and_can_reconcile(api: HttpConnector, plain: HttpConnector) -> None:
    c = call("post", url="/orders?token=abc", json={"a": 1})
    assert api.describe(c) == "POST http://127.0.0.1:9000/v1/orders"
    assert plain.describe(call("delete", url="https://h.test:8443/o/1?sig=x")) == \
        "DELETE https://h.test:8443/o/1"
    assert not api.can_reconcile(c)
    assert api.can_reconcile(call("post", url="/o", reconcile={"url": "/o/{idempotencyKey}"}))
    assert not api.can_reconcile(call("get", url="/o"))


def test_http_secret_base_url_is_not_shown() -> None:
    hook = "https://hooks.example.test/services/T0/B0/" + TOKEN
    c = HttpConnector(ConnectionConfig("slack", "http", {"base_url": Secret(hook, "HOOK")}))
    try:
        text = c.describe(call("post", url="", json={}))
        assert TOKEN not in text
        assert text.startswith("POST https://hooks.example.test")
        with pytest.raises(PermanentError) as info:
            c.validate(call("post", url="https://elsewhere.test/x"))
        assert TOKEN not in info.value.message
        assert TOKEN not in repr(c)
        assert TOKEN not in repr(c.config)
    finally:
        c.close()


def test_retry_after_parsing() -> None:
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120", now=now) == 120.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True),
                             now=now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True),
                             now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None


def test_secret_wrapper_never_prints_its_value() -> None:
    s = Secret(TOKEN, "API_TOKEN")
    for text in (repr(s), str(s), f"{s}", f"{s!r}"):
        assert TOKEN not in text
    assert "API_TOKEN" in repr(s)
    assert reveal(s) == TOKEN
    assert reveal("x") == "x"
    assert secret_values({"a": s, "b": {"c": [Secret("zz-secret", "Z")]}}) == [TOKEN, "zz-secret"]
    with pytest.raises(TypeError):
        pickle.dumps(s)
    r = Redactor([TOKEN, "ab"])
    assert r.text(f"echo Bearer {TOKEN}!") == f"echo Bearer {MASK}!"
    assert r.text("ab stays") == "ab stays"  # too short to mask
    assert r.deep({"h": [TOKEN], TOKEN: 1}) == {"h": [MASK], MASK: 1}


def sql(tmp_path: Path) -> SqlConnector:
    return SqlConnector(ConnectionConfig("shop", "sql", {"url": f"sqlite:///{tmp_path}/s.db"}))


@pytest.mark.parametrize(
    ("tool", "params", "field"),
    [
        ("query", {}, "sql"),
        ("query", {"sql": "SELECT 1", "params": []}, "params"),
        ("query", {"sql": "SELECT 1", "params": {"a": [1]}}, "params.a"),
        ("get", {"key": {"id": 1}}, "table"),
        ("get", {"table": "t"}, "key"),
        ("get", {"table": "t", "key": {}}, "key"),
        ("get", {"table": "t", "key": {"id": None}}, "key.id"),
        ("get", {"table": "t", "key": {"id": 1.5}}, "key.id"),
        ("get", {"table": "t", "key": {"id": 1}, "values": {}}, "values"),
        ("insert", {"table": "t", "key": {"id": 1}, "values": []}, "values"),
        ("update", {"table": "t", "key": {"id": 1}}, "values"),
        ("update", {"table": "t", "key": {"id": 1}, "values": {"id": 2}}, "values.id"),
        ("delete", {"table": "t", "key": {"id": 1}, "values": {"a": 1}}, "values"),
    ],
)
def test_sql_validate_rejects_malformed_params(
    tmp_path: Path, tool: str, params: dict[str, Any], field: str
) -> None:
    c = sql(tmp_path)
    try:
        with pytest.raises(PermanentError) as info:
            c.validate(call(tool, **params))
        assert info.value.details["field"] == field
    finally:
        c.close()


def test_sql_declarations_and_describe(tmp_path: Path) -> None:
    spec = SqlConnector.tools["insert"]
    assert (spec.kind, spec.capability, spec.risk, spec.scope, spec.reconcile) == (
        ToolKind.MUTATE, "sql.write", RiskTier.MEDIUM, ("table",), True)
    assert SqlConnector.tools["get"].kind is ToolKind.READ_BY_ID
    assert SqlConnector.tools["query"].kind is ToolKind.READ
    c = sql(tmp_path)
    try:
        assert c.describe(call("insert", table="invoices", key={"message_id": "m-1"},
                               values={"subject": "x"})) == \
            'insert shop.invoices where message_id = "m-1"'
        assert c.describe(call("query", sql="SELECT *\n  FROM invoices")) == \
            "query shop: SELECT * FROM invoices"
        assert c.can_reconcile(call("delete", table="t", key={"id": 1}))
    finally:
        c.close()
