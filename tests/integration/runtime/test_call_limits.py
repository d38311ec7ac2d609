"""The host's limits on calls to a connection, through real runs (SPEC §9;
docs/connectors.md#call-limits): a rate limit spaces calls, a service's 429 + Retry-After
backs off without failing the run — for reads and for a mutation — and holds the other calls
of the connection too."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from keepflow import service
from keepflow.clock import FakeClock
from keepflow.connectors.base import ConnectionConfig
from keepflow.connectors.config import Connections
from keepflow.connectors.limits import CallLimits
from keepflow.model import RunStatus
from keepflow.policies import PolicyBook
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from tests.support.fake_api import FakeApi, Request
from tests.support.workflows import (
    consumer_js,
    deploy_source,
    quick_policy,
    run_detail,
    seed_producer,
    workflow_js,
)

pytestmark = pytest.mark.integration

AUTH = '{ Authorization: "Bearer good-token" }'


class Orders(FakeApi):
    def __post_init__(self) -> None:
        self.created: list[Any] = []
        self.route("GET", r"/ping", lambda req, m: (200, {}, {"ok": True}))
        self.route("POST", r"/orders", self._create)

    def _create(self, req: Request, m: Any) -> tuple[int, dict[str, str], Any]:
        self.created.append(req.json)
        return 201, {}, {"id": len(self.created)}


@pytest.fixture
def api() -> Iterator[Orders]:
    a = Orders().start()
    yield a
    a.stop()


@contextmanager
def make_host(store_url: str, tmp_path: Path, pool: SandboxPool, clock: FakeClock,
              api: Orders, limits: CallLimits | None = None) -> Iterator[Host]:
    connections = Connections([ConnectionConfig(
        "api", "http", {"base_url": api.url, "allow": [api.url]}, limits)])
    with connections, Host(Settings(home=tmp_path / "home", database_url=store_url),
                           clock=clock, connections=connections, pool=pool,
                           policies=PolicyBook(quick_policy())) as host:
        yield host


PINGS = f"""
    pings: async (ctx, state) => {{
      for (let i = 0; i < 4; i++)
        await ctx.api.get({{ url: "/ping", headers: {AUTH} }});
      return {{ n: (state?.n ?? 0) + 1 }};
    }},"""


def test_a_rate_limit_spaces_the_calls_of_a_run(store_url: str, tmp_path: Path,
                                                pool: SandboxPool, clock: FakeClock,
                                                api: Orders) -> None:
    with make_host(store_url, tmp_path, pool, clock, api, CallLimits(rate=2.0, burst=1)) as host:
        deploy_source(host, tmp_path, workflow_js(topics=(), producers=PINGS))
        out = service.trigger(host, "wf", "pings")
        assert out.status is RunStatus.COMMITTED, out.failure
    assert len(api.requests_to("GET", "/ping")) == 4
    # One call went straight through, each of the other three waited for its token.
    assert clock.slept == [pytest.approx(0.5)] * 3


def test_a_429_on_a_read_backs_off_and_the_run_commits(store_url: str, tmp_path: Path,
                                                       pool: SandboxPool, clock: FakeClock,
                                                       api: Orders) -> None:
    api.fault("rate_limit", retry_after=7, methods=("GET",))
    with make_host(store_url, tmp_path, pool, clock, api) as host:
        deploy_source(host, tmp_path, workflow_js(topics=(), producers=PINGS))
        out = service.trigger(host, "wf", "pings")
        assert out.status is RunStatus.COMMITTED, out.failure
        logs = " ".join(line["message"] for line in run_detail(host, out.run_id)["logs"])
    assert len(api.requests_to("GET", "/ping")) == 5  # the refused one, then four
    assert any(s >= 7 for s in clock.slept), clock.slept  # the service's Retry-After was kept
    assert "failed transiently" in logs


def test_a_429_on_a_mutation_backs_off_and_the_run_commits_once(
        store_url: str, tmp_path: Path, pool: SandboxPool, clock: FakeClock,
        api: Orders) -> None:
    api.fault("rate_limit", retry_after=5)
    mutate = f"""await ctx.api.post({{ url: "/orders", headers: {AUTH},
                                       json: {{ id: prepared.data.event.messageId }} }});"""
    with make_host(store_url, tmp_path, pool, clock, api) as host:
        deploy_source(host, tmp_path, workflow_js(producers=seed_producer(["a"]),
                                                  consumers=consumer_js(mutate=mutate)))
        assert service.trigger(host, "wf", "seed").status is RunStatus.COMMITTED
        out = service.trigger(host, "wf", "work")
        assert out.status is RunStatus.COMMITTED, out.failure
        muts = run_detail(host, out.run_id)["mutations"]
    assert [m["status"] for m in muts] == ["failed", "applied"]
    assert api.created == [{"id": "a"}]
    assert any(s >= 5 for s in clock.slept), clock.slept


def test_a_retry_after_holds_the_next_run_of_the_connection_too(
        store_url: str, tmp_path: Path, pool: SandboxPool, clock: FakeClock,
        api: Orders) -> None:
    """The service asked to wait: the next run's first call waits, instead of being refused
    again (the whole connection backs off, not only the call that was refused)."""
    with make_host(store_url, tmp_path, pool, clock, api) as host:
        deploy_source(host, tmp_path, workflow_js(topics=(), producers=PINGS))
        host.connections.throttle("api").back_off(clock, 4.0)
        out = service.trigger(host, "wf", "pings")
        assert out.status is RunStatus.COMMITTED, out.failure
    assert clock.slept[0] == pytest.approx(4.0)
    assert len(api.requests_to("GET", "/ping")) == 4  # none refused
