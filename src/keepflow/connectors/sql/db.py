"""Engines and transactions of one ``sql`` connection (SPEC §6, §8).

Every database interaction of the connector goes through :meth:`Database.transaction`, the
one place where a deadline is set, read-only mode is enforced, and SQLAlchemy errors are
translated (:mod:`sql_errors`) together with the one fact that decides definite vs uncertain:
whether the failure happened during COMMIT.

SQLite: writes open with ``mode=rw`` (a missing file is an error, never silently created) and
``BEGIN IMMEDIATE``, so a mutation's key lookup and its write hold the write lock together;
reads open with ``mode=ro`` and ``PRAGMA query_only``. A progress handler interrupts any
statement that runs past the call's deadline. PostgreSQL: ``SET LOCAL statement_timeout`` and
``lock_timeout``, ``SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY`` for reads
(one snapshot for every statement of a read), and ``search_path`` for ``schema``.

Nothing a call does to its database session may reach another call (a script's ``query`` is
untrusted, and the pooled PostgreSQL sessions are shared by every workflow using the
connection): read transactions always end with ROLLBACK, which also reverts every setting a
query changed with ``set_config`` (``search_path``, ``role`` …); a PostgreSQL session returned
to the pool is reset with ``DISCARD ALL`` (session settings, advisory locks, prepared
statements, temporary tables, LISTEN), or thrown away if that fails. SQLite opens a new
connection for every transaction, so nothing survives one there.

Every exception leaves :meth:`Database.transaction` typed: SQLAlchemy's through
:mod:`sql_errors`, anything else (a driver's JSON decoder giving up on a deeply nested value,
say) as :class:`PermanentError` before COMMIT (nothing was written) or
:class:`UncertainOutcome` during it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import NullPool

from keepflow.connectors.secret import Redactor
from keepflow.connectors.sql.allow import shown
from keepflow.connectors.sql.classify import translate
from keepflow.connectors.sql.limits import ResultLimits, too_deep
from keepflow.errors import ConnectorError, PermanentError, UncertainOutcome

CONNECT_TIMEOUT = 10
#: SQLite's own default (and largest) length of a string or blob; used where keepflow sets
#: no per-value limit (mutations must be able to read and rewrite whatever rows hold).
SQLITE_MAX_LENGTH = 1_000_000_000
_VALUE_LIMIT = "keepflow_value_limit"


def normalize_url(url: sa.URL) -> sa.URL:
    """``postgresql://`` means psycopg 3, the only PostgreSQL driver keepflow ships."""
    if url.drivername == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    return url


class Database:
    def __init__(self, url: sa.URL, *, schema: str | None, redact: Redactor,
                 limits: ResultLimits | None = None) -> None:
        self.sqlite = url.get_backend_name() == "sqlite"
        self._schema = schema
        self._redact = redact
        self._limits = limits
        if self.sqlite:
            assert url.database
            self._write = _sqlite_engine(url.database, read_only=False)
            self._read = _sqlite_engine(url.database, read_only=True)
        else:
            # reset_on_return=None: _pg_reset rolls back itself, then discards the session.
            # prepare_threshold=None: no server-side prepared statements of psycopg's own,
            # which DISCARD ALL would drop behind its back ("_pg3_0 does not exist").
            self._write = self._read = sa.create_engine(
                url, hide_parameters=True, pool_pre_ping=True, pool_reset_on_return=None,
                connect_args={"connect_timeout": CONNECT_TIMEOUT,
                              "application_name": "keepflow", "prepare_threshold": None})
            sa.event.listen(self._write, "reset", _pg_reset)

    @contextmanager
    def transaction(self, what: str, timeout: float, *, read_only: bool,
                    value_limit: int | None = None) -> Iterator[sa.Connection]:
        """One transaction with a deadline; every error leaves here typed.

        ``value_limit`` (SQLite): the longest string or blob SQLite may build or read in this
        transaction (``SQLITE_LIMIT_LENGTH``); ``None`` leaves SQLite's own maximum. A read
        ends with ROLLBACK, a write with COMMIT."""
        conn: sa.Connection | None = None

        def fail(exc: BaseException, committing: bool = False) -> ConnectorError:
            limit = conn.info.get(_VALUE_LIMIT) if conn is not None and self.sqlite else None
            return translate(exc, what=what, sqlite=self.sqlite, committing=committing,
                             read_only=read_only, redact=self._redact, limits=self._limits,
                             value_limit=limit)

        engine = self._read if read_only else self._write
        try:
            conn = engine.connect().execution_options(keepflow_timeout=timeout)
        except sa_exc.SQLAlchemyError as exc:
            raise fail(exc) from None
        except Exception as exc:  # a driver failing in its own way: nothing was sent
            raise self._unexpected(what, exc) from None
        try:
            try:
                if self.sqlite:
                    _sqlite_deadline(conn, timeout)
                    self.limit_values(conn, value_limit)
                trans = conn.begin()
                self._prepare(conn, timeout, read_only)
            except sa_exc.SQLAlchemyError as exc:
                raise fail(exc) from None
            except Exception as exc:
                raise self._unexpected(what, exc) from None
            try:
                yield conn
            except sa_exc.SQLAlchemyError as exc:
                _rollback(trans)
                raise fail(exc) from None
            except ConnectorError:
                _rollback(trans)
                raise
            except Exception as exc:  # SPEC §8: before COMMIT, rolled back, nothing written
                _rollback(trans)
                raise self._unexpected(what, exc) from None
            except BaseException:
                _rollback(trans)
                raise
            try:
                if read_only:
                    # SPEC §9 / docs/connectors.md#sql-sessions: whatever the statement changed
                    # in the session (set_config, even session-level) is reverted with it.
                    trans.rollback()
                else:
                    trans.commit()
            except sa_exc.SQLAlchemyError as exc:
                raise fail(exc, committing=not read_only) from None
            except Exception as exc:
                if read_only:
                    raise self._unexpected(what, exc) from None
                raise UncertainOutcome(
                    f"{what}: COMMIT failed unexpectedly ({type(exc).__name__}); the change "
                    "may or may not have been committed") from None
        finally:
            with suppress(sa_exc.SQLAlchemyError):
                conn.close()

    def limit_values(self, conn: sa.Connection, limit: int | None) -> None:
        """SQLite: refuse (``SQLITE_TOOBIG``) any string or blob longer than ``limit`` bytes
        that the rest of this transaction would build or read; ``None``: SQLite's maximum."""
        raw = conn.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        value = SQLITE_MAX_LENGTH if limit is None else max(1, min(limit, SQLITE_MAX_LENGTH))
        raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, value)
        conn.info[_VALUE_LIMIT] = None if limit is None else value

    def _unexpected(self, what: str, exc: Exception) -> PermanentError:
        if isinstance(exc, RecursionError):  # e.g. psycopg decoding a deeply nested jsonb
            return too_deep(what)
        if isinstance(exc, MemoryError):
            return PermanentError(f"{what}: the result is too large to load; nothing was "
                                  "written. Ask for less data at a time")
        return PermanentError(
            f"{what}: the database driver failed unexpectedly ({type(exc).__name__}: "
            f"{shown(self._redact.text(str(exc)[:1200]), 300)}); nothing was written",
            error_type=type(exc).__name__)

    def dispose(self) -> None:
        self._write.dispose()
        self._read.dispose()

    def _prepare(self, conn: sa.Connection, timeout: float, read_only: bool) -> None:
        if self.sqlite:
            return  # BEGIN and busy_timeout are issued by the engine's "begin" hook
        ms = max(1, int(timeout * 1000))
        if read_only:  # one snapshot for every statement of the read (sql_rows, sql_query)
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.exec_driver_sql("SET LOCAL standard_conforming_strings = on")
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
        if self._schema:
            path = conn.dialect.identifier_preparer.quote_identifier(self._schema)
            conn.execute(sa.text("SELECT set_config('search_path', :p, true)"), {"p": path})


def _sqlite_engine(path: str, *, read_only: bool) -> sa.Engine:
    uri = f"file:{quote(path)}?mode={'ro' if read_only else 'rw'}"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        if read_only:
            conn.execute("PRAGMA query_only = 1")
        return conn

    # NullPool: opening a SQLite file is cheap, and no per-call state outlives a call.
    engine = sa.create_engine("sqlite://", creator=connect, poolclass=NullPool,
                              hide_parameters=True)

    def begin(conn: sa.Connection) -> None:
        ms = max(1, int(float(conn.get_execution_options().get("keepflow_timeout", 5)) * 1000))
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {ms}")
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    sa.event.listen(engine, "begin", begin)
    return engine


def _sqlite_deadline(conn: sa.Connection, timeout: float) -> None:
    """Interrupt a statement that runs past the call's deadline (raises SQLITE_INTERRUPT)."""
    raw = conn.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    deadline = time.monotonic() + timeout
    raw.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)


def _pg_reset(dbapi_conn: Any, record: Any, state: Any) -> None:
    """Pool "reset" of a PostgreSQL session returning to the pool: roll back, then
    ``DISCARD ALL`` (settings, role, advisory locks, prepared statements, temporary tables,
    cursors, LISTEN). An exception here makes the pool throw the session away instead of
    reusing it."""
    if state.terminate_only:
        return
    dbapi_conn.rollback()
    dbapi_conn.autocommit = True  # DISCARD ALL cannot run inside a transaction block
    try:
        dbapi_conn.execute("DISCARD ALL")
    finally:
        dbapi_conn.autocommit = False


def _rollback(trans: sa.RootTransaction) -> None:
    with suppress(sa_exc.SQLAlchemyError):
        trans.rollback()
