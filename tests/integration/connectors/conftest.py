"""Fixtures for connector integration tests: a real loopback HTTP server and real databases.

``sql_target_url`` runs a test against SQLite (a file in ``tmp_path``) and PostgreSQL. The
PostgreSQL URL comes from the shared fixtures of ``tests/conftest.py`` (``pg_empty_url``, else
``pg_url``); without them the PostgreSQL variant is skipped with a reason saying so.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from loopback_http_server import LoopbackServer
from sql_shop import SqlTarget
from sqlalchemy.pool import NullPool


@pytest.fixture
def http_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_target_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shop.db'}"
    # A user's database is an empty one: prefer the shared `pg_empty_url`, fall back to
    # `pg_url` (a fresh store database; the tests work in a schema of their own either way).
    for name in ("pg_empty_url", "pg_url"):
        try:
            return str(request.getfixturevalue(name))
        except pytest.FixtureLookupError:
            continue
    pytest.skip("PostgreSQL variant: the shared `pg_url` fixture (tests/conftest.py) "
                "does not exist yet")


@pytest.fixture
def sql_target(sql_target_url: str) -> Iterator[SqlTarget]:
    url = sa.make_url(sql_target_url)
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, poolclass=NullPool)
        with engine.begin() as conn:  # creates the file
            conn.exec_driver_sql("PRAGMA journal_mode = WAL")
        yield SqlTarget("sqlite", sql_target_url, None, engine)
        engine.dispose()
        return
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    schema = f"kf_conn_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url, poolclass=NullPool)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    engine = sa.create_engine(url, poolclass=NullPool,
                              connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield SqlTarget("postgresql", url.render_as_string(hide_password=False), schema, engine)
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()
