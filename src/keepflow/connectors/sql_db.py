"""Engines and transactions of one ``sql`` connection (SPEC §6, §8).

Every database interaction of the connector goes through :meth:`Database.transaction`, the
one place where a deadline is set, read-only mode is enforced, and SQLAlchemy errors are
translated (:mod:`sql_errors`) together with the one fact that decides definite vs uncertain:
whether the failure happened during COMMIT.

SQLite: writes open with ``mode=rw`` (a missing file is an error, never silently created) and
``BEGIN IMMEDIATE``, so a mutation's key lookup and its write hold the write lock together;
reads open with ``mode=ro`` and ``PRAGMA query_only``. A progress handler interrupts any
statement that runs past the call's deadline. PostgreSQL: ``SET LOCAL statement_timeout`` and
``lock_timeout``, ``SET TRANSACTION READ ONLY`` for reads, and ``search_path`` for ``schema``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import NullPool

from keepflow.connectors.secret import Redactor
from keepflow.connectors.sql_errors import translate
from keepflow.errors import ConnectorError

CONNECT_TIMEOUT = 10


def normalize_url(url: sa.URL) -> sa.URL:
    """``postgresql://`` means psycopg 3, the only PostgreSQL driver keepflow ships."""
    if url.drivername == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    return url


class Database:
    def __init__(self, url: sa.URL, *, schema: str | None, redact: Redactor) -> None:
        self.sqlite = url.get_backend_name() == "sqlite"
        self._schema = schema
        self._redact = redact
        if self.sqlite:
            assert url.database
            self._write = _sqlite_engine(url.database, read_only=False)
            self._read = _sqlite_engine(url.database, read_only=True)
        else:
            self._write = self._read = sa.create_engine(
                url, hide_parameters=True, pool_pre_ping=True,
                connect_args={"connect_timeout": CONNECT_TIMEOUT,
                              "application_name": "keepflow"})

    @contextmanager
    def transaction(self, what: str, timeout: float, *,
                    read_only: bool) -> Iterator[sa.Connection]:
        """One transaction with a deadline; every database error leaves here translated."""
        def fail(exc: BaseException, committing: bool = False) -> ConnectorError:
            return translate(exc, what=what, sqlite=self.sqlite, committing=committing,
                             read_only=read_only, redact=self._redact)

        engine = self._read if read_only else self._write
        try:
            conn = engine.connect().execution_options(keepflow_timeout=timeout)
        except sa_exc.SQLAlchemyError as exc:
            raise fail(exc) from None
        try:
            try:
                if self.sqlite:
                    _sqlite_deadline(conn, timeout)
                trans = conn.begin()
                self._prepare(conn, timeout, read_only)
            except sa_exc.SQLAlchemyError as exc:
                raise fail(exc) from None
            try:
                yield conn
            except sa_exc.SQLAlchemyError as exc:
                _rollback(trans)
                raise fail(exc) from None
            except BaseException:
                _rollback(trans)
                raise
            try:
                trans.commit()
            except sa_exc.SQLAlchemyError as exc:
                raise fail(exc, committing=not read_only) from None
        finally:
            with suppress(sa_exc.SQLAlchemyError):
                conn.close()

    def dispose(self) -> None:
        self._write.dispose()
        self._read.dispose()

    def _prepare(self, conn: sa.Connection, timeout: float, read_only: bool) -> None:
        if self.sqlite:
            return  # BEGIN and busy_timeout are issued by the engine's "begin" hook
        ms = max(1, int(timeout * 1000))
        if read_only:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
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


def _rollback(trans: sa.RootTransaction) -> None:
    with suppress(sa_exc.SQLAlchemyError):
        trans.rollback()
