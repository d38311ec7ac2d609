"""Tables, columns and unique keys of a ``sql`` connection, from the database itself (SPEC §9).

Scripts name tables and columns as plain strings. They are never put into SQL text: each is
looked up in the schema reflected from the database (and the connection's optional
``tables`` allow-list), and statements are built from the reflected ``Table`` objects, which
SQLAlchemy quotes as identifiers. A name that is not in the schema never reaches the
database.

Mutations name the row they touch by ``key``. The key's columns must be exactly the primary
key or a (non-partial) unique constraint or unique index: that is what makes "look the row up
by key" a sound reconcile strategy (SPEC §6) and what makes an insert impossible to duplicate.
"""

from __future__ import annotations

import base64
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from keepflow.connectors.sql.allow import AllowList, shown
from keepflow.connectors.sql.limits import check_depth
from keepflow.errors import PermanentError, PreconditionError

JS_MAX_SAFE_INTEGER = 2**53 - 1


@dataclass(frozen=True)
class TableInfo:
    table: sa.Table
    #: The primary key and every unique constraint / full unique index, as column-name sets.
    unique_keys: tuple[frozenset[str], ...]

    def column(self, name: str, field: str) -> sa.Column[Any]:
        if name not in self.table.c:
            known = ", ".join(c.name for c in self.table.c)
            raise PermanentError(
                f"params.{shown(field)}: table '{self.table.name}' has no column "
                f"'{shown(name)}'; its columns are: {known}", field=shown(field))
        col: sa.Column[Any] = self.table.c[name]
        return col

    def check_key(self, key: Mapping[str, Any]) -> None:
        for name in key:
            self.column(name, f"key.{name}")
        if frozenset(key) not in self.unique_keys:
            keys = "; ".join("(" + ", ".join(sorted(k)) + ")" for k in self.unique_keys)
            given = ", ".join(shown(k) for k in sorted(key))
            raise PermanentError(
                f"params.key: ({given}) is not a unique key of table "
                f"'{self.table.name}'; use one of: {keys or 'none (the table has no unique key)'}",
                field="key")


class Schema:
    """Reflected tables of one connection, cached; a miss re-reflects (tables may be added)."""

    def __init__(self, *, schema: str | None, allow: AllowList | None, sqlite: bool,
                 connection: str) -> None:
        self._schema = schema
        self._allow = allow
        self._sqlite = sqlite
        self._connection = connection
        self._tables: dict[str, TableInfo] = {}
        self._lock = threading.Lock()

    def table(self, conn: sa.Connection, name: str) -> TableInfo:
        """The reflected table ``name``: an exact name from the allow-list (if there is one)
        and of the database's schema. Nothing about ``name`` reaches SQL text: an unknown
        name is refused here, a known one is quoted by SQLAlchemy."""
        if self._allow is not None and name not in self._allow.tables:
            raise self._allow.table_denied(name)
        with self._lock:
            info = self._tables.get(name)
        if info is not None:
            return info
        insp = sa.inspect(conn)
        if name not in insp.get_table_names(schema=self._schema):
            raise PreconditionError(
                f"connection '{self._connection}': table '{shown(name)}' does not exist",
                table=shown(name))
        metadata = sa.MetaData()
        if self._sqlite:
            sa.event.listen(metadata, "column_reflect", _sqlite_passthrough_types)
        table = sa.Table(name, metadata, autoload_with=conn, schema=self._schema)
        info = TableInfo(table, _unique_keys(insp, name, self._schema))
        with self._lock:
            self._tables[name] = info
        return info

    def forget(self, name: str) -> None:
        with self._lock:
            self._tables.pop(name, None)


def _unique_keys(insp: sa.Inspector, name: str, schema: str | None) -> tuple[frozenset[str], ...]:
    keys: list[frozenset[str]] = []
    pk = insp.get_pk_constraint(name, schema=schema).get("constrained_columns") or []
    if pk:
        keys.append(frozenset(pk))
    for uc in insp.get_unique_constraints(name, schema=schema):
        cols = uc.get("column_names") or []
        if cols:
            keys.append(frozenset(cols))
    for ix in insp.get_indexes(name, schema=schema):
        options = ix.get("dialect_options", {})
        partial = any(k.endswith("_where") and v is not None for k, v in options.items())
        names = ix.get("column_names") or []
        if ix.get("unique") and not partial and names and all(c is not None for c in names):
            keys.append(frozenset(c for c in names if c is not None))
    return tuple(dict.fromkeys(keys))


def _sqlite_passthrough_types(inspector: Any, table: Any, column_info: dict[str, Any]) -> None:
    """SQLite stores what it is given; SQLAlchemy's date and decimal processors would refuse
    ISO strings on the way in and choke on other programs' formats on the way out."""
    t = column_info["type"]
    if isinstance(t, (sa.Date, sa.DateTime, sa.Time)) or (
        isinstance(t, sa.Numeric) and not isinstance(t, sa.Float)
    ):
        column_info["type"] = sa.types.NullType()


def bind(column: sa.Column[Any], value: Any, field: str) -> sa.BindParameter[Any]:
    """A bound parameter for ``value`` typed like ``column`` (JSON values from a script)."""
    return sa.bindparam(None, coerce(column, value, field), type_=column.type)


def coerce(column: sa.Column[Any], value: Any, field: str) -> Any:
    t = column.type
    if isinstance(t, sa.JSON) or value is None:
        return value
    if isinstance(value, (dict, list)) and not isinstance(t, sa.ARRAY):
        raise PermanentError(f"params.{field}: column '{column.name}' is not a JSON column; "
                             "give a string or a number", field=field)
    if isinstance(t, sa.LargeBinary) and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise PermanentError(f"params.{field}: binary columns take base64 strings",
                                 field=field) from None
    return value


def same_value(column: sa.Column[Any], value: Any, field: str) -> sa.ColumnElement[bool]:
    """SQL that is true when the stored value equals ``value`` as the database would store it.

    Comparing in SQL lets the database apply the same casts it applied when writing (an ISO
    timestamp string vs a ``timestamptz``, ``'5'`` vs an INTEGER column in SQLite).
    """
    if isinstance(column.type, pg.JSON) and not isinstance(column.type, pg.JSONB):
        # PostgreSQL's json type has no equality operator: compare as jsonb.
        stored = sa.cast(column, pg.JSONB)
        given = sa.cast(sa.bindparam(None, value, type_=sa.JSON), pg.JSONB)
        return stored.is_not_distinct_from(given)
    return column.is_not_distinct_from(bind(column, value, field))


def to_json(value: Any) -> Any:
    """A database value as a JSON value scripts can use (documented in docs/connectors.md).

    Raises :class:`~keepflow.connectors.sql.limits.TooDeep` for a value nested more deeply
    than a result may be (checked first, without recursion)."""
    if isinstance(value, (Mapping, list, tuple)):
        check_depth(value)
    return _to_json(value)


def _to_json(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if abs(value) <= JS_MAX_SAFE_INTEGER else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return str(value)
