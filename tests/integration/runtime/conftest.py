"""Fixtures for executor tests: a real store (SQLite and PostgreSQL), the real sandbox, a real
HTTP sink and a real SQL target database."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.sink import Sink

from keepflow import service
from keepflow.clock import FakeClock
from keepflow.connectors.base import ConnectionConfig
from keepflow.connectors.config import Connections
from keepflow.policies import Policy, PolicyBook, RetryPolicy, TimeoutPolicy
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings

pytestmark = pytest.mark.integration


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


def test_policy() -> Policy:
    return Policy(
        retry=RetryPolicy(max_attempts=3, base_seconds=0.01, jitter=0),
        timeouts=TimeoutPolicy(tool_call_seconds=0.5, reconcile_call_seconds=0.5,
                               handler_cpu_seconds=1.0, handler_wall_seconds=10),
    )


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
             policies=PolicyBook(test_policy()))
    yield h
    h.close()
    connections.close()


def deploy_source(host: Host, tmp_path: Path, source: str, name: str = "wf.js"
                  ) -> service.DeployResult:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return service.deploy(host, path)


def workflow_js(*, name: str = "wf", topics: tuple[str, ...] = ("items",),
                producers: str = "", consumers: str = "") -> str:
    topic_decl = ", ".join(f'"{t}": {{}}' for t in topics)
    return f"""
export default Keep.workflow({{
  name: "{name}",
  topics: {{ {topic_decl} }},
  producers: {{ {producers} }},
  consumers: {{ {consumers} }},
}});
"""


def consumer_js(name: str = "work", *, topic: str = "items", prepare: str | None = None,
                mutate: str = "", next_: str = "return null;") -> str:
    prepare = prepare or f"""
      const evs = await ctx.peek("{topic}", {{ limit: 1 }});
      if (!evs.length) return {{ reservations: [], data: {{}} }};
      return {{ reservations: [{{ topic: "{topic}", ids: [evs[0].messageId] }}],
               data: {{ event: evs[0] }} }};"""
    return f"""
    {name}: Keep.consumer({{
      subscribe: ["{topic}"],
      async prepare(ctx, state) {{ {prepare} }},
      async mutate(ctx, prepared) {{ {mutate} }},
      async next(ctx, prepared, mutation) {{ {next_} }},
    }}),"""


def seed_producer(ids: list[str], topic: str = "items") -> str:
    """A producer publishing fixed events (manual trigger)."""
    evs = ", ".join(f'{{ messageId: "{i}", title: "Item {i}", payload: {{ id: "{i}" }} }}'
                    for i in ids)
    return f"""
    seed: async (ctx, state) => {{
      for (const e of [{evs}]) await ctx.publish("{topic}", e);
      return {{ runs: (state?.runs ?? 0) + 1 }};
    }},"""


def events_of(host: Host, wf: str = "wf", topic: str | None = None) -> list[dict[str, Any]]:
    return service.list_events(host, wf, topic)


def run_detail(host: Host, run_id: str) -> dict[str, Any]:
    return service.show_run(host, run_id)
