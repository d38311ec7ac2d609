"""SQLite: the ``tables`` allow-list enforced by SQLite's authorizer (SPEC §9 scopes).

SQLite calls the authorizer while it *compiles* a statement, once for every table column it
will read (``SQLITE_READ``; a table read without naming a column, as in ``count(*)``, comes
with an empty column name), every function (``SQLITE_FUNCTION``), pragma, ATTACH and write.
The names it reports are the real ones from the schema, after quoting (``'t'``, ``[t]``,
backquotes), case, ``main.`` prefixes, CTE names and views have been resolved. So the decision
is made on what SQLite will actually touch, and a denial stops the statement before it runs.

What is allowed while a script's statement is compiled (only on a connection with a
``tables`` allow-list):

* reads of allow-listed tables (in ``main``), by any route: joins, subqueries, CTEs, views.
  Views are transparent: SQLite reports every table a view reads, so a view is readable
  exactly when the tables it reads are listed (listing a view does not widen the list:
  SQLite names the view or CTE responsible for a read in the same argument, so "read through
  an allowed view" cannot be told from "read by a CTE named like an allowed view");
* a table-level read (``count(*)`` style, empty column name) of a name that is no table,
  view or table-valued function of the database: that is a CTE of the statement itself,
  whose own reads are authorized one by one;
* the table-valued functions ``json_each`` and ``json_tree``, which only see their arguments
  (unless a real table has that name: then it is a table like any other);
* the built-in scalar, aggregate and window functions in :data:`SQLITE_FUNCTIONS`;
* nothing else: ``sqlite_master``/``sqlite_schema``/``sqlite_temp_*``/``sqlite_*`` tables,
  ``pragma_*`` and other table-valued functions (``dbstat`` …), PRAGMA, ATTACH, ``temp.`` and
  every write are denied.

Mutation tools build their statements from reflected tables; the authorizer is installed
around them too (reads of allowed tables, writes only to the one target table; whatever a
trigger of the database does is the database owner's design and is allowed). Reflection runs
before the authorizer is installed, so it can still read the schema.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from keepflow.connectors.sql.allow import AllowList, sqlite_fold
from keepflow.connectors.sql.classify import sqlite_missing_table
from keepflow.errors import PermissionDenied

OK, DENY, IGNORE = sqlite3.SQLITE_OK, sqlite3.SQLITE_DENY, sqlite3.SQLITE_IGNORE

#: Built-in SQLite functions a query may call on a connection with an allow-list: they see
#: only their arguments. Not here, among others: load_extension, fts3_tokenizer,
#: sqlite_compileoption_*, sqlite_offset, changes()/last_insert_rowid() (connection state).
SQLITE_FUNCTIONS = frozenset({
    # core scalar
    "abs", "char", "coalesce", "concat", "concat_ws", "format", "glob", "hex", "ifnull", "iif",
    "if", "instr", "length", "like", "likelihood", "likely", "lower", "ltrim", "max", "min",
    "nullif", "octet_length", "printf", "quote", "random", "randomblob", "replace", "round",
    "rtrim", "sign", "soundex", "substr", "substring", "trim", "typeof", "unhex", "unicode",
    "unistr", "unlikely", "upper", "zeroblob", "sqlite_version",
    # date and time
    "date", "time", "datetime", "julianday", "unixepoch", "strftime", "timediff",
    # aggregate
    "avg", "count", "group_concat", "string_agg", "sum", "total", "median", "percentile",
    "percentile_cont", "percentile_disc",
    # window
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value",
    # math (when SQLite is built with them)
    "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "ceiling", "cos",
    "cosh", "degrees", "exp", "floor", "ln", "log", "log10", "log2", "mod", "pi", "pow",
    "power", "radians", "sin", "sinh", "sqrt", "tan", "tanh", "trunc",
    # JSON
    "json", "jsonb", "json_array", "jsonb_array", "json_array_length", "json_error_position",
    "json_extract", "jsonb_extract", "->", "->>", "json_insert", "jsonb_insert", "json_object",
    "jsonb_object", "json_patch", "jsonb_patch", "json_pretty", "json_remove", "jsonb_remove",
    "json_replace", "jsonb_replace", "json_set", "jsonb_set", "json_type", "json_valid",
    "json_quote", "json_group_array", "jsonb_group_array", "json_group_object",
    "jsonb_group_object",
})
#: Table-valued functions that only read their arguments.
SQLITE_TABLE_FUNCTIONS = frozenset({"json_each", "json_tree"})
#: Table-valued function modules of common SQLite builds, for when ``pragma_module_list``
#: is not compiled in (used only to recognise them; every one of them is refused).
_KNOWN_MODULES = frozenset({
    "dbstat", "sqlite_dbpage", "sqlite_stmt", "fts3", "fts3tokenize", "fts4", "fts4aux",
    "fts5", "fts5vocab", "rtree", "rtree_i32", "geopoly", "generate_series", "carray",
    "zipfile", "sqlar", "completion", "sqlite_dbdata", "sqlite_dbptr", "bytecode",
    "tables_used", "json_each", "json_tree",
})
_WRITES = frozenset({sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE})


@dataclass(frozen=True)
class _Catalog:
    """What the names a statement may mention are, read (trusted, before the authorizer is
    installed) in the statement's own transaction: ASCII-folded table and view names, and
    the table-valued function modules of this SQLite."""

    tables: frozenset[str]
    views: frozenset[str]
    modules: frozenset[str]

    @classmethod
    def read(cls, conn: sa.Connection) -> _Catalog:
        rows = conn.exec_driver_sql(
            "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view')").all()
        try:
            modules = {str(r[0]) for r in conn.exec_driver_sql(
                "SELECT name FROM pragma_module_list").all()}
        except sa_exc.DBAPIError:
            modules = set()
        fold = [(str(kind), sqlite_fold(str(name))) for kind, name in rows]
        return cls(frozenset(n for k, n in fold if k == "table"),
                   frozenset(n for k, n in fold if k == "view"),
                   frozenset(sqlite_fold(m) for m in modules | _KNOWN_MODULES))


class _Authorizer:
    """One statement's authorizer; remembers the first thing it denied, for the message."""

    def __init__(self, allow: AllowList, catalog: _Catalog, *, query: bool,
                 write_table: str | None) -> None:
        self._allow = allow
        self._catalog = catalog
        self._query = query
        self._write = sqlite_fold(write_table) if write_table is not None else None
        self.denied: PermissionDenied | None = None

    def __call__(self, action: int, arg1: str | None, arg2: str | None, db: str | None,
                 source: str | None) -> int:
        try:
            return self._decide(action, arg1, arg2, db, source)
        except Exception:  # never let a bug here turn into "allowed"
            return self._deny(self._allow.syntax_denied("this statement"))

    def _decide(self, action: int, arg1: str | None, arg2: str | None, db: str | None,
                source: str | None) -> int:
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_RECURSIVE):
            return OK
        if not self._query and source is not None:
            return OK  # inside a trigger of the database: its owner's design
        if action == sqlite3.SQLITE_READ:
            return self._read(arg1 or "", arg2, db, source)
        if action == sqlite3.SQLITE_FUNCTION:
            name = arg2 or ""
            if name.lower() in SQLITE_FUNCTIONS:
                return OK
            return self._deny(self._allow.function_denied(name))
        if action in _WRITES:
            table = arg1 or ""
            if sqlite_fold(table) == self._write and db in (None, "main"):
                return OK
            if self._query and action == sqlite3.SQLITE_UPDATE and table == "sqlite_master":
                # SQLite announces this while setting up a table-valued function on first use;
                # IGNORE writes nothing, and the function itself is decided by its read.
                return IGNORE
            return self._deny(self._allow.table_denied(table))
        if action == sqlite3.SQLITE_PRAGMA:
            return self._deny(self._allow.syntax_denied(f"PRAGMA {arg1 or ''}".strip()))
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            return self._deny(self._allow.syntax_denied("ATTACH or DETACH"))
        return self._deny(self._allow.syntax_denied("this kind of statement"))

    def _read(self, table: str, column: str | None, db: str | None,
              source: str | None) -> int:
        folded = sqlite_fold(table)
        if self._query and folded == "sqlite_master" and column == "ROWID":
            return IGNORE  # the same table-valued-function setup; IGNORE reads NULL
        if db not in (None, "main") or folded.startswith("sqlite_"):
            return self._deny(self._allow.schema_denied(f"{db}.{table}" if db else table))
        if self._allow.allows_sqlite(table):
            return OK
        catalog = self._catalog
        if folded in catalog.views:
            return OK  # transparent: every table the view reads is authorized by itself
        if folded not in catalog.tables:
            if self._query and folded in SQLITE_TABLE_FUNCTIONS:
                return OK
            if folded.startswith("pragma_") or folded in catalog.modules:
                return self._deny(self._allow.schema_denied(table))
            if self._query and column == "":
                return OK  # a CTE of this statement (its body's reads are authorized)
        via = source if source is not None and sqlite_fold(source) != folded else None
        return self._deny(self._allow.table_denied(table, via))

    def _deny(self, error: PermissionDenied) -> int:
        if self.denied is None:
            self.denied = error
        return DENY


@contextmanager
def guarded(conn: sa.Connection, allow: AllowList, *, query: bool,
            write_table: str | None = None) -> Iterator[None]:
    """Run the block with the authorizer installed on ``conn``'s SQLite connection.

    ``query``: a script's statement. Otherwise the row tools' statements, built by keepflow:
    reads of allowed tables, writes only to ``write_table`` (``None`` for reads), anything a
    trigger does. A statement the authorizer refused becomes the :class:`PermissionDenied`
    it recorded. For a query, a missing table outside the list is refused the same way as an
    existing one, so a script cannot probe which tables exist.
    """
    raw = conn.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    authorizer = _Authorizer(allow, _Catalog.read(conn), query=query, write_table=write_table)
    # Installing an authorizer expires every statement SQLite has prepared on the connection,
    # so a cached statement is compiled (and authorized) again before it runs.
    raw.set_authorizer(authorizer)
    try:
        yield
    except sa_exc.DBAPIError as exc:
        if authorizer.denied is not None:
            raise authorizer.denied from None
        missing = sqlite_missing_table(exc) if query else None
        if missing is not None and not allow.allows_sqlite(missing.rpartition(".")[2]):
            raise allow.table_denied(missing) from None
        raise
    finally:
        with suppress(sqlite3.Error):  # a closed connection has no authorizer to clear
            raw.set_authorizer(None)
