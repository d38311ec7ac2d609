"""Engine creation and migrations: the only place that knows about dialect quirks.

SQLite (the embedded default, SPEC §13): WAL journal, ``synchronous=FULL`` so that an
acknowledged ``in_flight`` survives power loss, foreign keys on, a busy timeout, and every write
transaction opened with ``BEGIN IMMEDIATE`` so two processes never deadlock upgrading a read
lock. PostgreSQL: plain ``psycopg`` with a small pool.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import Connection
from sqlalchemy.pool import StaticPool

from keepflow.errors import ConfigError

MIGRATIONS = Path(__file__).parent / "migrations"

#: Execution option marking a read-only transaction (SQLite then uses a deferred BEGIN).
READ_ONLY = "keepflow_read_only"


def make_engine(url: str, *, echo: bool = False) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url, echo)
    return create_engine(url, echo=echo, pool_size=5, max_overflow=10, pool_pre_ping=True)


def _sqlite_engine(url: str, echo: bool) -> Engine:
    path = make_url(url).database or ""
    if path and path != ":memory:":
        folder = Path(path).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use {folder} for the store: {exc.strerror or exc} (check "
                              "KEEPFLOW_HOME: it must be a directory keepflow may write)"
                              ) from None
    connect_args = {"check_same_thread": False, "timeout": 60}
    if path and path != ":memory:":
        engine = create_engine(url, echo=echo, pool_size=5, max_overflow=10,
                               connect_args=connect_args)
    else:
        # In memory (``sqlite://``: unit tests): one database, so one shared connection.
        engine = create_engine(url, echo=echo, poolclass=StaticPool, connect_args=connect_args)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


#: Alembic keeps module-level state while it runs: stores opened by several threads of one
#: process at once migrate one after another.
_MIGRATING = threading.Lock()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (run on every start)."""
    cfg = alembic_config()
    with _MIGRATING, engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Two hosts starting at once must not both run the same migration.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
