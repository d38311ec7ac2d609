"""Migrations produce exactly the schema that ``store/schema.py`` describes, on both backends."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from keepflow.store.database import make_engine, migrate
from keepflow.store.schema import metadata
from keepflow.store.store import Store

pytestmark = pytest.mark.integration


def test_migrations_match_the_table_definitions(empty_store_url: str) -> None:
    engine = make_engine(empty_store_url)
    migrate(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, metadata)
    engine.dispose()
    assert diff == []


def test_migrating_twice_is_a_no_op_and_sqlite_is_durable(empty_store_url: str) -> None:
    engine = make_engine(empty_store_url)
    migrate(engine)
    migrate(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"workflows", "script_versions", "events", "reservations", "handler_state", "runs",
            "run_transitions", "mutations", "tool_calls", "run_logs", "audit_log",
            "event_history"} <= tables
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_stores_opened_by_several_threads_at_once_all_migrate(tmp_path: Path) -> None:
    """Alembic keeps module-level state while it runs; opening stores concurrently in one
    process (a benchmark running several worlds side by side) must not break it."""
    errors: list[BaseException] = []

    def open_store(i: int) -> None:
        try:
            Store(f"sqlite:///{tmp_path}/s{i}.db").close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i in range(6):
        assert "events" in inspect(make_engine(f"sqlite:///{tmp_path}/s{i}.db")).get_table_names()
