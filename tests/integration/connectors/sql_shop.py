"""A small shop database shared by the sql connector tests (same DDL on SQLite and PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from keepflow.connectors.base import ConnectionConfig, ToolCall
from keepflow.connectors.secret import Secret
from keepflow.connectors.sql import SqlConnector


@dataclass
class SqlTarget:
    """A database to test against: its URL, a schema of its own (PostgreSQL), DDL helpers."""

    kind: str  # "sqlite" | "postgresql"
    url: str
    schema: str | None
    engine: sa.Engine

    def execute(self, *statements: str) -> None:
        with self.engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def settings(self, **extra: Any) -> dict[str, Any]:
        # A PostgreSQL URL may carry a password: like connections.toml's url_env, pass it as
        # a Secret (the connector refuses a literal URL with a password).
        url: Any = Secret(self.url, "TEST_DB_URL") if self.kind == "postgresql" else self.url
        out: dict[str, Any] = {"url": url}
        if self.schema:
            out["schema"] = self.schema
        out.update(extra)
        return out


DDL = (
    "CREATE TABLE invoices (message_id TEXT PRIMARY KEY, subject TEXT NOT NULL, "
    "amount NUMERIC, status TEXT DEFAULT 'new', data JSON)",
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, ref TEXT NOT NULL UNIQUE, note TEXT)",
    "CREATE TABLE logs (line TEXT)",
    "CREATE TABLE secrets (k TEXT PRIMARY KEY, v TEXT)",
    "INSERT INTO invoices (message_id, subject, amount) VALUES ('m-1', 'Invoice December', 10)",
    "INSERT INTO invoices (message_id, subject, amount) VALUES ('m-2', 'Invoice January', 20)",
    "INSERT INTO invoices (message_id, subject, amount) VALUES ('m-3', 'Invoice February', 30)",
    "INSERT INTO secrets (k, v) VALUES ('root', 'pw')",
)


def create_shop(target: SqlTarget) -> None:
    target.execute(*DDL)


def connector(target: SqlTarget, **settings: Any) -> SqlConnector:
    return SqlConnector(ConnectionConfig("shop", "sql", target.settings(**settings)))


def q(sql: str, timeout: float = 5.0, **params: Any) -> ToolCall:
    return ToolCall("query", {"sql": sql, "params": params}, timeout=timeout)


def m(tool: str, table: str, key: dict[str, Any], values: dict[str, Any] | None = None,
      idem: str = "wf1:run1:1", timeout: float = 5.0) -> ToolCall:
    params: dict[str, Any] = {"table": table, "key": key}
    if values is not None:
        params["values"] = values
    return ToolCall(tool, params, timeout=timeout, idempotency_key=idem)


def get(table: str, key: dict[str, Any]) -> ToolCall:
    return ToolCall("get", {"table": table, "key": key}, timeout=5.0)
