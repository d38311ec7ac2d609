"""Fixtures for integration tests: a real store (SQLite and PostgreSQL), the real sandbox, a
real HTTP sink and a real SQL target database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keepflow.clock import FakeClock
from keepflow.connectors.base import ConnectionConfig
from keepflow.connectors.config import Connections
from keepflow.policies import PolicyBook
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from tests.support.sink import Sink
from tests.support.workflows import quick_policy


@pytest.fixture(scope="session")
def pool() -> Iterator[SandboxPool]:
    with SandboxPool(size=2) as p:
        yield p


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink(hang_seconds=2.0).start()
    yield s
    s.stop()


@pytest.fixture
def target_db(tmp_path: Path) -> str:
    """The user's own database that the `db` connection writes to."""
    import sqlite3

    path = tmp_path / "target.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE rows (k TEXT PRIMARY KEY, v TEXT)")
    return f"sqlite:///{path}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def host(store_url: str, tmp_path: Path, pool: SandboxPool, sink: Sink, target_db: str,
         clock: FakeClock) -> Iterator[Host]:
    connections = Connections([
        ConnectionConfig("http", "http", {}),
        ConnectionConfig("api", "http", {"base_url": sink.url}),
        ConnectionConfig("db", "sql", {"url": target_db}),
    ])
    settings = Settings(home=tmp_path / "home", database_url=store_url)
    h = Host(settings, clock=clock, connections=connections, pool=pool,
             policies=PolicyBook(quick_policy()))
    yield h
    h.close()
    connections.close()


