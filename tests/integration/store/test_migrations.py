"""Migrations produce exactly the schema that ``store/schema.py`` describes, on both backends."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from keepflow.store.engine import make_engine, migrate
from keepflow.store.schema import metadata

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
