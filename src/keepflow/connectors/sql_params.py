"""Shape checks of ``sql`` tool params, without touching the database (SPEC §6: a malformed
call is rejected before its ledger row is written). Schema checks (does the table, the
column, the unique key exist?) need the database and happen in the call itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
        return PermanentError(f"{connection}.{tool}: params.{field}: {problem}", field=field)

    if not isinstance(p, Mapping):
        raise PermanentError(f"{connection}.{tool}: params must be an object")
    unknown = sorted(set(p) - PARAMS[tool])
    if unknown:
        raise bad(unknown[0], f"unknown parameter; known: {sorted(PARAMS[tool])}")
    if tool == "query":
        sql, params = p.get("sql"), p.get("params", {})
        if not isinstance(sql, str) or not sql.strip():
            raise bad("sql", "is required and must be a string")
        if not isinstance(params, Mapping):
            raise bad("params", "must be an object of :name -> value")
        for k, v in params.items():
            if v is not None and not isinstance(v, _SCALAR):
                raise bad(f"params.{k}", "must be a string, number, boolean or null")
        return QueryParams(sql, {str(k): v for k, v in params.items()})
    table, key, values = p.get("table"), p.get("key"), p.get("values", {})
    if not isinstance(table, str) or not table:
        raise bad("table", "is required and must be a string")
    if not isinstance(key, Mapping) or not key:
        raise bad("key", "is required: an object of unique-key column -> value")
    for k, v in key.items():
        if isinstance(v, float) or not isinstance(v, _SCALAR):
            raise bad(f"key.{k}", "must be a string, integer or boolean")
    if not isinstance(values, Mapping):
        raise bad("values", "must be an object of column -> value")
    if tool == "update" and not values:
        raise bad("values", "must name at least one column to change")
    for k in set(values) & set(key):
        if values[k] != key[k]:
            raise bad(f"values.{k}", "would change the row's key")
    return RowParams(table, {str(k): v for k, v in key.items()},
                     {str(k): v for k, v in values.items()})
