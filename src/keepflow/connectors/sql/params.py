"""Shape checks of ``sql`` tool params, without touching the database (SPEC §6: a malformed
call is rejected before its ledger row is written). Schema checks (does the table, the
column, the unique key exist?) need the database and happen in the call itself.

Scripts are untrusted, so names and text are checked here too: a table, column or parameter
name is at most :data:`MAX_NAME` characters with no NUL, and no string anywhere may hold a
lone UTF-16 surrogate (``"\\ud800"`` from JavaScript): neither database can store one, and the
drivers would fail with a raw ``UnicodeEncodeError`` instead of a typed error."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keepflow.connectors.sql.allow import shown
from keepflow.errors import PermanentError

PARAMS: dict[str, frozenset[str]] = {
    "query": frozenset({"sql", "params"}),
    "get": frozenset({"table", "key"}),
    "insert": frozenset({"table", "values", "key"}),
    "update": frozenset({"table", "values", "key"}),
    "upsert": frozenset({"table", "values", "key"}),
    "delete": frozenset({"table", "key"}),
}
_SCALAR = (str, int, float, bool)
#: Longest table, column or parameter name accepted (PostgreSQL keeps 63 bytes of a name).
MAX_NAME = 256


@dataclass(frozen=True)
class QueryParams:
    sql: str
    params: dict[str, Any]


@dataclass(frozen=True)
class RowParams:
    table: str
    key: dict[str, Any]
    values: dict[str, Any]


def parse(connection: str, tool: str, p: Any) -> QueryParams | RowParams:
    def bad(field: str, problem: str) -> PermanentError:
        field = shown(field)
        return PermanentError(f"{connection}.{tool}: params.{field}: {problem}", field=field)

    def name(field: str, value: str) -> None:
        problem = name_problem(value)
        if problem:
            raise bad(field, problem)

    def text(field: str, value: Any) -> None:
        problem = surrogate_problem(value)
        if problem:
            raise bad(field, problem)

    if not isinstance(p, Mapping):
        raise PermanentError(f"{connection}.{tool}: params must be an object")
    unknown = sorted(str(k) for k in set(p) - PARAMS[tool])
    if unknown:
        raise bad(unknown[0], f"unknown parameter; known: {sorted(PARAMS[tool])}")
    if tool == "query":
        sql, params = p.get("sql"), p.get("params", {})
        if not isinstance(sql, str) or not sql.strip():
            raise bad("sql", "is required and must be a string")
        if "\x00" in sql:
            raise bad("sql", "contains a NUL character")
        text("sql", sql)
        if not isinstance(params, Mapping):
            raise bad("params", "must be an object of :name -> value")
        for k, v in params.items():
            name(f"params.{k}", str(k))
            if v is not None and not isinstance(v, _SCALAR):
                raise bad(f"params.{k}", "must be a string, number, boolean or null")
            text(f"params.{k}", v)
        return QueryParams(sql, {str(k): v for k, v in params.items()})
    table, key, values = p.get("table"), p.get("key"), p.get("values", {})
    if not isinstance(table, str) or not table:
        raise bad("table", "is required and must be a string")
    name("table", table)
    if not isinstance(key, Mapping) or not key:
        raise bad("key", "is required: an object of unique-key column -> value")
    for k, v in key.items():
        name(f"key.{k}", str(k))
        if isinstance(v, float) or not isinstance(v, _SCALAR):
            raise bad(f"key.{k}", "must be a string, integer or boolean")
        text(f"key.{k}", v)
    if not isinstance(values, Mapping):
        raise bad("values", "must be an object of column -> value")
    for k, v in values.items():
        name(f"values.{k}", str(k))
        text(f"values.{k}", v)
    if tool == "update" and not values:
        raise bad("values", "must name at least one column to change")
    for k in set(values) & set(key):
        if values[k] != key[k]:
            raise bad(f"values.{k}", "would change the row's key")
    return RowParams(table, {str(k): v for k, v in key.items()},
                     {str(k): v for k, v in values.items()})


def name_problem(name: str) -> str | None:
    """What makes ``name`` unusable as a table, column or parameter name, if anything."""
    if not name:
        return "is empty"
    if len(name) > MAX_NAME:
        return f"is {len(name)} characters long; names have at most {MAX_NAME}"
    if "\x00" in name:
        return "contains a NUL character, which no table or column name can hold"
    return surrogate_problem(name)


def surrogate_problem(value: Any) -> str | None:
    """A lone surrogate anywhere in ``value`` (strings, and keys and items of JSON values)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return ("contains a lone UTF-16 surrogate (text that is not valid Unicode), "
                        "which the database cannot store")
        elif isinstance(v, Mapping):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return None
