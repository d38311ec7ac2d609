"""Shared fixtures: the store on SQLite *and* PostgreSQL from one switch.

PostgreSQL: ``KEEPFLOW_TEST_PG_URL`` (an admin URL, e.g. set by ``.ci/run``) or a throwaway
cluster started here. Outside CI, tests that need PostgreSQL skip with the reason when neither
is possible; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import postgres

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_db_counter = itertools.count()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (each tens of seconds: the crash and torture suites, the bench
    smoke run, the real ``keepflow serve``) run first, the rest in collection order after
    them. Under ``make test`` (``-n 2 --maxschedchunk 1``: each worker is handed one test at a
    time) the long ones are then spread over both workers at the start and the run ends with
    short tests on both, instead of one worker finishing a long test alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable sort


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    url = os.environ.get("KEEPFLOW_TEST_PG_URL")
    if url:
        yield url
        return
    try:
        cluster = postgres.start_cluster()
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI but could not be started: {exc}")
        pytest.skip(f"PostgreSQL not available here ({exc}); these tests run in CI")
    try:
        yield cluster.admin_url
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> str:
    """A database migrated once; each test copies it (fast, isolated)."""
    import sqlalchemy as sa

    from keepflow.store.database import make_engine, migrate

    name = f"kf_template_{os.getpid()}"  # one per test process (pytest-xdist workers)
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    engine = make_engine(_with_db(pg_admin_url, name))
    migrate(engine)
    engine.dispose()
    return name


def _with_db(admin_url: str, database: str) -> str:
    head, _, query = admin_url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{database}" + (f"?{query}" if query else "")


def new_pg_database(admin_url: str, template: str | None = None) -> str:
    import sqlalchemy as sa

    name = f"kf_test_{os.getpid()}_{next(_db_counter)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        conn.exec_driver_sql(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}"
                                                          if template else ""))
    admin.dispose()
    return _with_db(admin_url, name)


@pytest.fixture
def pg_url(pg_admin_url: str, pg_template: str) -> str:
    """A fresh, migrated PostgreSQL database for one test."""
    return new_pg_database(pg_admin_url, pg_template)


@pytest.fixture
def pg_empty_url(pg_admin_url: str) -> str:
    """A fresh, empty PostgreSQL database (for migration tests and user databases)."""
    return new_pg_database(pg_admin_url)


def _backend_url(request: pytest.FixtureRequest, tmp_path: Path, pg_fixture: str) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keepflow.db'}"
    url: str = request.getfixturevalue(pg_fixture)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store's URL, once per backend: the same tests run against both (SPEC §13)."""
    return _backend_url(request, tmp_path, "pg_url")


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty (unmigrated) database, once per backend."""
    return _backend_url(request, tmp_path, "pg_empty_url")
