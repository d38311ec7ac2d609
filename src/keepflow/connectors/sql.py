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
touch: :mod:`sql_allow`), ``schema`` (PostgreSQL), and ``max_rows`` (row cap of ``query``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from keepflow.connectors.sql_allow import AllowList, shown
from keepflow.connectors.sql_allow_pg import check_query
from keepflow.connectors.sql_allow_sqlite import guarded
from keepflow.connectors.sql_db import CONNECT_TIMEOUT, Database, normalize_url
from keepflow.connectors.sql_guard import check_select
from keepflow.connectors.sql_params import QueryParams, RowParams, parse
from keepflow.connectors.sql_schema import (
    Schema,
    TableInfo,
    bind,
    coerce,
    row_json,
    same_value,
    to_json,
)
from keepflow.errors import ConfigError, ConnectorError, PermanentError, PreconditionError

DEFAULT_MAX_ROWS = 1000
_SETTINGS = frozenset({"url", "tables", "schema", "max_rows"})


def _write(name: str, description: str) -> ToolSpec:
    return ToolSpec(name, ToolKind.MUTATE, "sql.write", RiskTier.MEDIUM, description,
                    ("table",), reconcile=True)


class SqlConnector(Connector):
    """Type ``sql``. See the module docstring and ``docs/connectors.md``."""

    type_name: ClassVar[str] = "sql"
    tools: ClassVar[Mapping[str, ToolSpec]] = {
        "query": ToolSpec("query", ToolKind.READ, "sql.read", RiskTier.LOW,
                          "Run one read-only SELECT with bound :name parameters", ("table",)),
        "get": ToolSpec("get", ToolKind.READ_BY_ID, "sql.read", RiskTier.LOW,
                        "Fetch one row by a unique key", ("table",)),
        "insert": _write("insert", "Insert one row identified by a unique key"),
        "update": _write("update", "Update the row with a unique key"),
        "upsert": _write("upsert", "Insert or update the row with a unique key"),
        "delete": _write("delete", "Delete the row with a unique key"),
    }

    def __init__(self, config: ConnectionConfig) -> None:
        super().__init__(config)
        self.validate_settings(config.settings)
        s = config.settings
        url = normalize_url(sa.make_url(reveal(s["url"])))
        self._redact = Redactor([*secret_values(s), *([url.password] if url.password else [])])
        self._db = Database(url, schema=s.get("schema"), redact=self._redact)
        self._sqlite = self._db.sqlite
        self._max_rows = int(s.get("max_rows", DEFAULT_MAX_ROWS))
        tables = s.get("tables")
        self._pg_schema: str | None = s.get("schema")
        self._allow = AllowList(self.name, frozenset(tables)) if tables is not None else None
        self._schema = Schema(schema=self._pg_schema, sqlite=self._sqlite,
                              connection=self.name, allow=self._allow)

    def __repr__(self) -> str:
        backend = "sqlite" if self._sqlite else "postgresql"
        return f"SqlConnector(name={self.name!r}, backend={backend})"

    # -- settings ----------------------------------------------------------------------------

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        unknown = sorted(set(settings) - _SETTINGS)
        if unknown:
            raise ConfigError(f"unknown setting; sql takes {sorted(_SETTINGS)}", key=unknown[0])
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
                        return {"row": row_json(self._select(conn, info, parsed.key))}
            action: Callable[[sa.Connection, TableInfo, RowParams], dict[str, Any]] = getattr(
                self, f"_{call.tool}")
            with self._db.transaction(what, call.timeout, read_only=False) as conn:
                info = self._table(conn, parsed)
                with self._guard_rows(conn, info, write=True):
                    return action(conn, info, parsed)
        except ConnectorError:
            self._schema.forget(parsed.table)  # the table may have changed: reflect it again
            raise

    def reconcile(self, call: ToolCall) -> ReconcileResult:
        """Look the row up by its unique key (strategies: docs/connectors.md)."""
        try:
            row = self._parse(call)
            if not isinstance(row, RowParams):
                raise PermanentError(f"{self.name}.{call.tool} does not mutate")
            with self._db.transaction(self.describe(call), call.timeout, read_only=True) as conn:
                info = self._table(conn, row)
                with self._guard_rows(conn, info, write=False):
                    found = self._select(conn, info, row.key)
                    if call.tool == "delete":
                        differ: list[str] | None = None
                    else:
                        differ = self._differences(conn, info, row.key,
                                                   {**row.values, **row.key})
        except ConnectorError as exc:
            return ReconcileResult(ReconcileOutcome.RETRY, detail=exc.message)
        if call.tool == "delete":
            if found is None:
                return ReconcileResult(ReconcileOutcome.APPLIED, {"rowCount": 1, "row": None},
                                       "the row is gone")
            return ReconcileResult(ReconcileOutcome.FAILED, None, "the row is still there")
        if found is None:
            return ReconcileResult(ReconcileOutcome.FAILED, None, "no row has this key")
        if not differ:
            return ReconcileResult(ReconcileOutcome.APPLIED,
                                   {"rowCount": 1, "row": row_json(found)},
                                   "the row has the values the mutation wrote")
        detail = f"the row with this key differs in: {', '.join(differ)}"
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
        if "kf_limit" in checked.binds:
            raise PermanentError("params.sql: the parameter name :kf_limit is reserved",
                                 field="sql")
        for name in sorted(checked.binds - set(params)):
            raise PermanentError(f"params.params.{name} is missing (used as :{name})",
                                 field=f"params.{name}")
        for name in sorted(set(params) - checked.binds):
            raise PermanentError(f"params.params.{name} is not used in the SQL",
                                 field=f"params.{name}")
        # One statement with a bound parameter; the server applies the row cap.
        # checked.sql is the script's own statement, validated above; values are bound.
        stmt = sa.text(f"SELECT * FROM ({checked.sql}\n) AS kf_q LIMIT :kf_limit")  # noqa: S608
        args = {**params, "kf_limit": self._max_rows + 1}
        with self._db.transaction(what, timeout, read_only=True) as conn:
            keys, raw = self._run_query(conn, stmt, args)
        names = _unique(keys)
        rows = [dict(zip(names, (to_json(v) for v in r), strict=True)) for r in raw]
        out: dict[str, Any] = {"rows": rows[: self._max_rows]}
        out["rowCount"] = len(out["rows"])
        if len(rows) > self._max_rows:
            out["truncated"] = True
        return out

    def _insert(self, conn: sa.Connection, info: TableInfo, row: RowParams) -> dict[str, Any]:
        existing = self._select(conn, info, row.key, lock=True)
        full = {**row.values, **row.key}
        if existing is not None:
            differ = self._differences(conn, info, row.key, full)
            if not differ:
                return {"rowCount": 0, "row": row_json(existing), "alreadyPresent": True}
            raise PermanentError(
                f"insert into '{info.table.name}': a different row with this key already "
                f"exists (unique conflict; it differs in: {', '.join(differ or [])})",
                conflict=True, columns=differ)
        conn.execute(sa.insert(info.table).values(self._assignments(info, full)))
        return {"rowCount": 1, "row": row_json(self._select(conn, info, row.key))}

    def _update(self, conn: sa.Connection, info: TableInfo, row: RowParams) -> dict[str, Any]:
        if self._select(conn, info, row.key, lock=True) is None:
            raise PreconditionError(f"update '{info.table.name}': no row has this key",
                                    table=info.table.name)
        result = conn.execute(sa.update(info.table).where(*self._key_clause(info, row.key))
                              .values(self._assignments(info, row.values)))
        return {"rowCount": result.rowcount,
                "row": row_json(self._select(conn, info, row.key))}

    def _upsert(self, conn: sa.Connection, info: TableInfo, row: RowParams) -> dict[str, Any]:
        insert = sqlite_dialect.insert if self._sqlite else pg_dialect.insert
        stmt = insert(info.table).values(self._assignments(info, {**row.values, **row.key}))
        targets = [info.table.c[k] for k in row.key]
        values = {k: v for k, v in row.values.items() if k not in row.key}
        if values:
            assigned = {c.name: v for c, v in self._assignments(info, values).items()}
            conn.execute(stmt.on_conflict_do_update(index_elements=targets, set_=assigned))
        else:
            conn.execute(stmt.on_conflict_do_nothing(index_elements=targets))
        return {"rowCount": 1, "row": row_json(self._select(conn, info, row.key))}

    def _delete(self, conn: sa.Connection, info: TableInfo, row: RowParams) -> dict[str, Any]:
        existing = self._select(conn, info, row.key, lock=True)
        if existing is None:
            raise PreconditionError(f"delete in '{info.table.name}': no row has this key",
                                    table=info.table.name)
        conn.execute(sa.delete(info.table).where(*self._key_clause(info, row.key)))
        return {"rowCount": 1, "row": row_json(existing)}

    # -- allow-list (sql_allow) --------------------------------------------------------------

    def _run_query(self, conn: sa.Connection, stmt: sa.TextClause,
                   args: dict[str, Any]) -> tuple[list[str], Sequence[Sequence[Any]]]:
        """Run the script's statement; with an allow-list, only after the backend's check
        says it touches nothing else (SQLite: the authorizer, while SQLite compiles it;
        PostgreSQL: the parse tree of exactly the text that is then sent)."""
        if self._allow is None:  # the database user's own privileges are the boundary
            result = conn.execute(stmt, args)
            return list(result.keys()), result.all()
        if self._sqlite:
            with guarded(conn, self._allow, query=True):
                result = conn.execute(stmt, args)
                return list(result.keys()), result.all()
        sql = stmt.compile(dialect=conn.dialect).string
        check_query(conn, sql, self._allow, self._pg_schema)
        result = conn.exec_driver_sql(sql, args)
        return list(result.keys()), result.all()

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

    def _select(self, conn: sa.Connection, info: TableInfo, key: Mapping[str, Any], *,
                lock: bool = False) -> sa.Row[Any] | None:
        q = sa.select(info.table).where(*self._key_clause(info, key))
        if lock and not self._sqlite:  # SQLite: BEGIN IMMEDIATE already holds the write lock
            q = q.with_for_update()
        return conn.execute(q).first()

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


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}:{seen[n] - 1}")
    return out


register_connector(SqlConnector)
