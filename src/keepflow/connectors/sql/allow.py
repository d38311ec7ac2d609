"""The ``tables`` allow-list of a ``sql`` connection, and how a refusal reads (SPEC §9 scopes).

A connection with ``tables = [...]`` may only touch those tables. What the database will
touch is decided by the backend, so enforcement lives there:

* SQLite: an authorizer callback on the connection (:mod:`sql_allow_sqlite`) sees every
  table, column, function and pragma a statement uses while SQLite compiles it;
* PostgreSQL: the statement is parsed with PostgreSQL's own grammar (libpg_query) and every
  relation, function, type and operator in the tree is checked, names resolved the way the
  server resolves them (:mod:`sql_allow_pg`).

Both refuse *before* the statement runs, with one :class:`PermissionDenied` that names the one
thing refused and never any data. Without an allow-list nothing here runs: the database
user's own privileges are the boundary. docs/connectors.md#table-allow-list documents both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from keepflow.errors import PermissionDenied

DOCS = "docs/connectors.md#table-allow-list"
#: Longest name shown in a message; longer ones are cut (a script may send megabytes).
SHOWN_LIMIT = 80

_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def shown(text: str, limit: int = SHOWN_LIMIT) -> str:
    """``text`` safe to put in a message: control characters, NUL and lone surrogates
    escaped (a surrogate would make the message unencodable), cut to ``limit`` characters."""
    out = [ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text[:limit]]
    return "".join(out) + ("…" if len(text) > limit else "")


def sqlite_fold(name: str) -> str:
    """SQLite compares identifiers case-insensitively for ASCII letters only (``"É"`` and
    ``"é"`` are two tables), so the allow-list is matched the same way."""
    return name.translate(_ASCII_FOLD)


@dataclass(frozen=True)
class AllowList:
    """The tables a connection may touch. PostgreSQL names are matched exactly (as stored:
    unquoted names are folded to lower case by the server's parser); SQLite names ASCII
    case-insensitively, as SQLite itself does."""

    connection: str
    tables: frozenset[str]
    _folded: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_folded", frozenset(sqlite_fold(t) for t in self.tables))

    def allows_pg(self, name: str) -> bool:
        return name in self.tables

    def allows_sqlite(self, name: str) -> bool:
        return sqlite_fold(name) in self._folded

    # -- refusals (the message names one thing and says what to do) --------------------------

    def table_denied(self, name: str, via: str | None = None) -> PermissionDenied:
        """``via``: the view or CTE of the query through which the table would be read."""
        through = f" (read through '{shown(via)}')" if via else ""
        return PermissionDenied(
            f"connection '{self.connection}' does not allow table '{shown(name)}'{through}: "
            f"add it to `tables` of this connection in connections.toml if workflows may use "
            f"it (see {DOCS})", table=shown(name))

    def schema_denied(self, name: str) -> PermissionDenied:
        return PermissionDenied(
            f"connection '{self.connection}' has a `tables` allow-list, so queries cannot read "
            f"the database's catalog or schema ('{shown(name)}'); read only the allowed "
            f"tables (see {DOCS})", table=shown(name))

    def function_denied(self, name: str) -> PermissionDenied:
        return PermissionDenied(
            f"connection '{self.connection}' has a `tables` allow-list, and function "
            f"'{shown(name)}' is not one that query may call there (it could read data or "
            f"settings outside the allowed tables); the functions query may use are listed "
            f"in {DOCS}", function=shown(name))

    def syntax_denied(self, what: str) -> PermissionDenied:
        return PermissionDenied(
            f"connection '{self.connection}' has a `tables` allow-list, and query cannot use "
            f"{what} there (keepflow cannot check what it would read); rewrite the query "
            f"without it (see {DOCS})", syntax=what)
