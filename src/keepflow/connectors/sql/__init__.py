"""The ``sql`` connector: a user's own SQLite or PostgreSQL database (SPEC §9).

Tools: ``query`` (read: one SELECT, see :mod:`sql_guard`), ``get`` (read by id: one row by
unique key), and the mutations ``insert``, ``update``, ``upsert``, ``delete``, each naming its
row by a unique ``key`` and running in one transaction.

Why a unique key on every mutation: it makes every mutation verifiable (SPEC §6) by looking
the row up again, and it makes ``insert`` impossible to duplicate — an insert that finds its
key already present with the same values is the earlier attempt having happened, and returns
that row (``rowCount: 0, alreadyPresent: true``); a different row under that key is a unique
conflict (``PermanentError``). Reconcile strategies and their limits are in
``docs/connectors.md``.

Settings: ``url`` (``sqlite:////abs/path.db`` or ``postgresql+psycopg://…``; a URL with a
password belongs in ``url_env``), ``tables`` (allow-list, enforced on what the database will
touch: :mod:`sql_allow`), ``schema`` (PostgreSQL), ``max_rows`` (row cap of ``query``) and
``max_bytes`` (byte cap of every result, enforced while it is read: :mod:`sql_limits`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from keepflow.connectors.base import (
    ConnectionConfig,
    Connector,
    ReconcileOutcome,
    ReconcileResult,
    RiskTier,
    ToolCall,
    ToolKind,
    ToolSpec,
)
from keepflow.connectors.registry import register_connector
from keepflow.connectors.secret import Redactor, Secret, reveal, secret_values
from keepflow.connectors.setting_checks import reject_unknown
from keepflow.connectors.sql.allow import AllowList, shown
from keepflow.connectors.sql.allow_sqlite import guarded
from keepflow.connectors.sql.db import CONNECT_TIMEOUT, Database, normalize_url
from keepflow.connectors.sql.guard import check_select
from keepflow.connectors.sql.limits import (
    DEFAULT_MAX_BYTES,
    MAX_MAX_BYTES,
    MIN_MAX_BYTES,
    ResultLimits,
)
from keepflow.connectors.sql.params import QueryParams, RowParams, parse
from keepflow.connectors.sql.query import RESERVED_BINDS, QueryRunner
from keepflow.connectors.sql.reflect import Schema, TableInfo, bind, coerce, same_value
from keepflow.connectors.sql.row_reads import Fetched, RowReader
from keepflow.errors import ConfigError, ConnectorError, PermanentError, PreconditionError

DEFAULT_MAX_ROWS = 1000
_SETTINGS = frozenset({"url", "tables", "schema", "max_rows", "max_bytes"})


def _write(name: str, description: str, params: str) -> ToolSpec:
    return ToolSpec(name, ToolKind.MUTATE, "sql.write", RiskTier.MEDIUM, description,
                    ("table",), reconcile=True,
                    reconcile_doc="docs/connectors.md#sql-reconcile-strategies",
                    params=params, result="{rowCount, row}",
                    reconcile_strategy="look the row up by its unique key in a read "
                                       "transaction and compare it with the values written")


class SqlConnector(Connector):
    """Type ``sql``. See the module docstring and ``docs/connectors.md``."""

    type_name: ClassVar[str] = "sql"
    tools: ClassVar[Mapping[str, ToolSpec]] = {
        "query": ToolSpec("query", ToolKind.READ, "sql.read", RiskTier.LOW,
                          "Run one read-only SELECT with bound :name parameters", ("table",),
                          params="{sql, params?}",
                          result="{rows, rowCount, truncated?}"),
        "get": ToolSpec("get", ToolKind.READ_BY_ID, "sql.read", RiskTier.LOW,
                        "Fetch one row by a unique key", ("table",),
                        params="{table, key}", result="{row} (null when there is none)"),
        "insert": _write("insert", "Insert one row identified by a unique key",
                         "{table, values, key}"),
        "update": _write("update", "Update the row with a unique key",
                         "{table, key, values}"),
        "upsert": _write("upsert", "Insert or update the row with a unique key",
                         "{table, values, key}"),
        "delete": _write("delete", "Delete the row with a unique key", "{table, key}"),
    }

    def __init__(self, config: ConnectionConfig) -> None:
        super().__init__(config)
        self.validate_settings(config.settings)
        s = config.settings
        url = normalize_url(sa.make_url(reveal(s["url"])))
        self._redact = Redactor([*secret_values(s), *([url.password] if url.password else [])])
        limits = ResultLimits(self.name, int(s.get("max_bytes", DEFAULT_MAX_BYTES)),
                              int(s.get("max_rows", DEFAULT_MAX_ROWS)))
        self._db = Database(url, schema=s.get("schema"), redact=self._redact, limits=limits)
        self._sqlite = self._db.sqlite
        tables = s.get("tables")
        self._pg_schema: str | None = s.get("schema")
        self._allow = AllowList(self.name, frozenset(tables)) if tables is not None else None
        self._schema = Schema(schema=self._pg_schema, sqlite=self._sqlite,
                              connection=self.name, allow=self._allow)
        self._queries = QueryRunner(self._db, limits, self._allow, self._pg_schema)
        self._rows = RowReader(limits, self._sqlite)

    def __repr__(self) -> str:
        backend = "sqlite" if self._sqlite else "postgresql"
        return f"SqlConnector(name={self.name!r}, backend={backend})"

    # -- settings ----------------------------------------------------------------------------

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        reject_unknown("sql", settings, _SETTINGS)
        raw = settings.get("url")
        key = "url_env" if isinstance(raw, Secret) else "url"
        if not isinstance(raw, (str, Secret)):
            raise ConfigError("is required (a database URL, or url_env naming a variable)",
                              key="url")
        try:
            url = normalize_url(sa.make_url(reveal(raw)))
        except (sa_exc.ArgumentError, ValueError):
            raise ConfigError("is not a valid database URL", key=key) from None
        backend = url.get_backend_name()
        if backend == "sqlite":
            db = url.database or ""
            if url.drivername != "sqlite" or not PurePosixPath(db).is_absolute() or url.query:
                raise ConfigError("must be sqlite:////absolute/path/to/file.db", key=key)
            if settings.get("schema") is not None:
                raise ConfigError("only PostgreSQL connections have a schema", key="schema")
        elif backend == "postgresql":
            if url.drivername != "postgresql+psycopg":
                raise ConfigError("PostgreSQL URLs must use postgresql+psycopg://", key=key)
            if url.password and not isinstance(raw, Secret):
                raise ConfigError("contains a password: put the whole URL in an environment "
                                  "variable and name it with url_env", key="url")
        else:
            raise ConfigError("only sqlite and postgresql databases are supported", key=key)
        tables = settings.get("tables")
        if tables is not None and (not isinstance(tables, list) or not all(
                isinstance(t, str) and t for t in tables)):
            raise ConfigError("must be a list of table names", key="tables")
        if not isinstance(settings.get("schema", ""), str):
            raise ConfigError("must be a string", key="schema")
        rows = settings.get("max_rows", DEFAULT_MAX_ROWS)
        if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= 100_000:
            raise ConfigError("must be an integer between 1 and 100000", key="max_rows")
        size = settings.get("max_bytes", DEFAULT_MAX_BYTES)
        if isinstance(size, bool) or not isinstance(size, int) or not (
                MIN_MAX_BYTES <= size <= MAX_MAX_BYTES):
            raise ConfigError(f"must be an integer between {MIN_MAX_BYTES} and {MAX_MAX_BYTES} "
                              "(bytes of JSON a result may have; see "
                              "docs/connectors.md#sql-result-size)", key="max_bytes")

    # -- declarations ------------------------------------------------------------------------

    def describe(self, call: ToolCall) -> str:
        p = call.params
        if call.tool == "query":
            sql = " ".join(str(p.get("sql", "")).split())
            return self._redact.text(f"query {self.name}: {shown(sql, 120)}")
        key = p.get("key")
        where = ", ".join(f"{shown(str(k))} = {shown(json.dumps(v, default=str))}"
                          for k, v in list(key.items())[:10]) \
            if isinstance(key, Mapping) else "?"
        table = shown(str(p.get("table", "?")))
        return self._redact.text(f"{call.tool} {self.name}.{table} where {where}")

    def validate(self, call: ToolCall) -> None:
        self._parse(call)

    def _parse(self, call: ToolCall) -> QueryParams | RowParams:
        self.tool(call.tool)
        return parse(self.name, call.tool, call.params)

    # -- effects -----------------------------------------------------------------------------

    def call(self, call: ToolCall) -> Any:
        parsed = self._parse(call)
        what = self.describe(call)
        if isinstance(parsed, QueryParams):
            return self._query(what, call.timeout, parsed.sql, parsed.params)
        try:
            if call.tool == "get":
                with self._db.transaction(what, call.timeout, read_only=True) as conn:
                    info = self._table(conn, parsed)
                    with self._guard_rows(conn, info, write=False):
                        found = self._rows.read(conn, info, self._key_clause(info, parsed.key),
                                                what=what, marked=False)
                        return {"row": None if found is None else found.row}
            action: Callable[[sa.Connection, TableInfo, RowParams, str], dict[str, Any]] = (
                getattr(self, f"_{call.tool}"))
            with self._db.transaction(what, call.timeout, read_only=False) as conn:
                info = self._table(conn, parsed)
                with self._guard_rows(conn, info, write=True):
                    return action(conn, info, parsed, what)
        except ConnectorError:
            self._schema.forget(parsed.table)  # the table may have changed: reflect it again
            raise

    def reconcile(self, call: ToolCall) -> ReconcileResult:
        """Look the row up by its unique key (strategies: docs/connectors.md)."""
        try:
            row = self._parse(call)
            if not isinstance(row, RowParams):
                raise PermanentError(f"{self.name}.{call.tool} does not mutate")
            what = self.describe(call)
            with self._db.transaction(what, call.timeout, read_only=True) as conn:
                info = self._table(conn, row)
                where = self._key_clause(info, row.key)
                with self._guard_rows(conn, info, write=False):
                    if call.tool == "delete":
                        present = self._rows.exists(conn, info, where)
                        found: Fetched | None = None
                        differ: list[str] | None = None
                    else:
                        differ = self._differences(conn, info, row.key,
                                                   {**row.values, **row.key})
                        present = differ is not None
                        # The result of an applied mutation: markers, never a failure.
                        found = self._rows.read(conn, info, where, what=what, marked=True) \
                            if differ == [] else None
        except ConnectorError as exc:
            return ReconcileResult(ReconcileOutcome.RETRY, detail=exc.message)
        if call.tool == "delete":
            if not present:
                return ReconcileResult(ReconcileOutcome.APPLIED, {"rowCount": 1, "row": None},
                                       "the row is gone")
            return ReconcileResult(ReconcileOutcome.FAILED, None, "the row is still there")
        if not present:
            return ReconcileResult(ReconcileOutcome.FAILED, None, "no row has this key")
        if found is not None:
            return ReconcileResult(ReconcileOutcome.APPLIED, _result(1, found),
                                   "the row has the values the mutation wrote")
        detail = f"the row with this key differs in: {', '.join(differ or ['?'])}"
        if call.tool == "insert":  # someone else's row, or ours edited since: cannot tell
            return ReconcileResult(ReconcileOutcome.RETRY, None, detail)
        return ReconcileResult(ReconcileOutcome.FAILED, None, detail)

    def check(self) -> None:
        with self._db.transaction(f"check {self.name}", CONNECT_TIMEOUT, read_only=True) as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self._db.dispose()

    # -- tools -------------------------------------------------------------------------------

    def _query(self, what: str, timeout: float, sql: str, params: dict[str, Any]) -> Any:
        checked = check_select(sql, sqlite=self._sqlite)
        for name in sorted(checked.binds & RESERVED_BINDS):
            raise PermanentError(f"params.sql: the parameter name :{name} is reserved",
                                 field="sql")
        for name in sorted(checked.binds - set(params)):
            raise PermanentError(f"params.params.{name} is missing (used as :{name})",
                                 field=f"params.{name}")
        for name in sorted(set(params) - checked.binds):
            raise PermanentError(f"params.params.{name} is not used in the SQL",
                                 field=f"params.{name}")
        return self._queries.run(what, timeout, checked.sql, params)

    def _insert(self, conn: sa.Connection, info: TableInfo, row: RowParams,
                what: str) -> dict[str, Any]:
        where = self._key_clause(info, row.key)
        full = {**row.values, **row.key}
        if self._rows.exists(conn, info, where, lock=True):
            differ = self._differences(conn, info, row.key, full)
            if not differ:
                found = self._rows.read(conn, info, where, what=what, marked=True)
                assert found is not None  # the row is locked by this transaction
                return {**_result(0, found), "alreadyPresent": True}
            raise PermanentError(
                f"insert into '{info.table.name}': a different row with this key already "
                f"exists (unique conflict; it differs in: {', '.join(differ or [])})",
                conflict=True, columns=differ)
        conn.execute(sa.insert(info.table).values(self._assignments(info, full)))
        return self._written(conn, info, where, what)

    def _update(self, conn: sa.Connection, info: TableInfo, row: RowParams,
                what: str) -> dict[str, Any]:
        where = self._key_clause(info, row.key)
        if not self._rows.exists(conn, info, where, lock=True):
            raise PreconditionError(f"update '{info.table.name}': no row has this key",
                                    table=info.table.name)
        result = conn.execute(sa.update(info.table).where(*where)
                              .values(self._assignments(info, row.values)))
        return self._written(conn, info, where, what, count=result.rowcount)

    def _upsert(self, conn: sa.Connection, info: TableInfo, row: RowParams,
                what: str) -> dict[str, Any]:
        insert = sqlite_dialect.insert if self._sqlite else pg_dialect.insert
        stmt = insert(info.table).values(self._assignments(info, {**row.values, **row.key}))
        targets = [info.table.c[k] for k in row.key]
        values = {k: v for k, v in row.values.items() if k not in row.key}
        if values:
            assigned = {c.name: v for c, v in self._assignments(info, values).items()}
            conn.execute(stmt.on_conflict_do_update(index_elements=targets, set_=assigned))
        else:
            conn.execute(stmt.on_conflict_do_nothing(index_elements=targets))
        return self._written(conn, info, self._key_clause(info, row.key), what)

    def _delete(self, conn: sa.Connection, info: TableInfo, row: RowParams,
                what: str) -> dict[str, Any]:
        where = self._key_clause(info, row.key)
        existing = self._rows.read(conn, info, where, what=what, marked=True, lock=True)
        if existing is None:
            raise PreconditionError(f"delete in '{info.table.name}': no row has this key",
                                    table=info.table.name)
        conn.execute(sa.delete(info.table).where(*where))
        return _result(1, existing)

    def _written(self, conn: sa.Connection, info: TableInfo, where: list[Any], what: str,
                 count: int = 1) -> dict[str, Any]:
        """The result of a write that happened: the row as it is now, with markers for
        values too large to return (the write must not fail because of its result)."""
        found = self._rows.read(conn, info, where, what=what, marked=True)
        if found is None:  # e.g. a trigger of the database removed or re-keyed it
            return {"rowCount": count, "row": None}
        return _result(count, found)

    # -- allow-list (sql_allow) --------------------------------------------------------------

    @contextmanager
    def _guard_rows(self, conn: sa.Connection, info: TableInfo, *,
                    write: bool) -> Iterator[None]:
        """Row tools build their statements from the reflected table; on SQLite the
        authorizer holds them to it as well (reflection has already run)."""
        if self._allow is None or not self._sqlite:
            yield
            return
        with guarded(conn, self._allow, query=False,
                     write_table=info.table.name if write else None):
            yield

    # -- helpers -----------------------------------------------------------------------------

    def _table(self, conn: sa.Connection, row: RowParams) -> TableInfo:
        """The table, with the params' key and columns checked against it. A miss is checked
        once more against a fresh reflection (a column may have been added since)."""
        for fresh in (False, True):
            info = self._schema.table(conn, row.table)
            try:
                info.check_key(row.key)
                for name in row.values:
                    info.column(name, f"values.{name}")
            except PermanentError:
                if fresh:
                    raise
                self._schema.forget(row.table)
            else:
                return info
        raise AssertionError("unreachable")

    def _key_clause(self, info: TableInfo, key: Mapping[str, Any]) -> list[Any]:
        return [info.table.c[k] == bind(info.table.c[k], v, f"key.{k}") for k, v in key.items()]

    def _assignments(self, info: TableInfo, values: Mapping[str, Any]) -> dict[Any, Any]:
        return {info.table.c[k]: coerce(info.table.c[k], v, f"values.{k}")
                for k, v in values.items()}

    def _differences(self, conn: sa.Connection, info: TableInfo, key: Mapping[str, Any],
                     values: Mapping[str, Any]) -> list[str] | None:
        """Columns whose stored value differs from ``values``; ``None`` if there is no row."""
        names = list(values)
        checks = [same_value(info.table.c[n], values[n], f"values.{n}").label(f"c{i}")
                  for i, n in enumerate(names)] or [sa.literal(True).label("c")]
        found = conn.execute(sa.select(*checks).where(*self._key_clause(info, key))).first()
        if found is None:
            return None
        return [n for n, same in zip(names, found, strict=False) if not same]


def _result(count: int, found: Fetched) -> dict[str, Any]:
    out: dict[str, Any] = {"rowCount": count, "row": found.row}
    if found.truncated:  # values replaced by {"truncated": true, "bytes": n} markers
        out["truncated"] = True
    return out


register_connector(SqlConnector)
