"""``GET /metrics`` (docs/operations.md#metrics) over an in-memory store with known runs, events
and mutations: the exact samples, the run histogram fed by the scheduler's ``run.end`` events,
and the same guard as every other route. No server, no worker processes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from keepflow.clock import FakeClock
from keepflow.connectors.config import Connections
from keepflow.model import (
    EventClaim,
    EventDraft,
    LedgerStatus,
    MutationDraft,
    Reservation,
    RunKind,
    RunStatus,
    Settle,
)
from keepflow.policies import PolicyBook
from keepflow.runtime.host import Host
from keepflow.runtime.outcome import RunOutcome
from keepflow.scheduler.loop import SchedulerLoop
from keepflow.settings import Settings
from keepflow.store.convert import sha256_json
from keepflow.store.store import Store
from keepflow.web.app import create_app
from keepflow.web.metrics import HostCollector
from keepflow.workflow import ConsumerSpec, ProducerSpec, WorkflowManifest
from tests.support import runs

S = RunStatus
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def deploy(store: Store, name: str, topic: str) -> tuple[str, str]:
    manifest = WorkflowManifest(name=name, topics=(topic,), producers={"seed": ProducerSpec(None)},
                                consumers={"handle": ConsumerSpec((topic,))})
    wf = store.create_workflow(name, "test")
    v = store.add_version(wf.id, source="x", source_sha256="0" * 64,
                          manifest=manifest.to_dict(), findings=[], created_by="test")
    return wf.id, v.id


def publish(store: Store, clock: FakeClock, wid: str, vid: str, topic: str,
            *message_ids: str) -> None:
    drafts = [EventDraft(topic, m, f"Item {m}", 1, sha256_json(1)) for m in message_ids]
    store.commit_producer_run(runs.draft(wid, vid, clock.now(), S.COMMITTED, handler="seed"),
                              None, drafts, None)


def mutation(run_id: str, wid: str, key: str) -> MutationDraft:
    return MutationDraft(run_id=run_id, workflow_id=wid, attempt=1, connection="api",
                         connector_type="http", tool="post", params={}, idempotency_key=key,
                         description="POST /orders", can_reconcile=True)


@dataclass
class World:
    store: Store
    clock: FakeClock
    host: Host
    alpha: tuple[str, str]
    beta: tuple[str, str]


@pytest.fixture
def world(store: Store, clock: FakeClock, tmp_path: Path) -> Iterator[World]:
    """alpha: a committed producer run (publishing t/m1..m3), a failed producer run and a
    consumer run suspended on a mutation whose outcome is unknown (one reconcile attempt).
    beta: two committed producer runs (u/u1, u/u2; u2 then skipped by a person) and a consumer
    run whose mutation applied."""
    alpha = deploy(store, "alpha", "t")
    beta = deploy(store, "beta", "u")
    wid, vid = alpha
    publish(store, clock, wid, vid, "t", "m1", "m2", "m3")
    failed = runs.draft(wid, vid, clock.now(), S.FAILED, handler="seed",
                        failure={"class": "logic", "phase": "producer", "message": "boom"})
    store.fail_run(failed, None)
    run = runs.draft(wid, vid, clock.now(), S.MUTATING, kind=RunKind.CONSUMER, handler="handle")
    m = store.record_in_flight(run, None, mutation(run.id, wid, "k1"),
                               claim=EventClaim((Reservation("t", ("m1",)),), ("t",)))
    run.step(S.SUSPENDED, clock.now())
    store.suspend_for_reconcile(run, None, m.id, error={"message": "timed out"},
                                next_at=clock.now() + timedelta(seconds=30))

    wid, vid = beta
    publish(store, clock, wid, vid, "u", "u1")
    publish(store, clock, wid, vid, "u", "u2")
    store.skip_event(wid, "u", "u2", "test")
    run = runs.draft(wid, vid, clock.now(), S.MUTATING, kind=RunKind.CONSUMER, handler="handle")
    m = store.record_in_flight(run, None, mutation(run.id, wid, "k2"),
                               claim=EventClaim((Reservation("u", ("u1",)),), ("u",)))
    run.step(S.MUTATED, clock.now())
    store.settle_mutation(run, None, Settle(m.id, LedgerStatus.APPLIED, result={"ok": True}))

    host = Host(Settings(home=tmp_path), clock=clock, store=store, connections=Connections(),
                policies=PolicyBook())
    yield World(store, clock, host, alpha, beta)
    host.close()


def samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def of(found: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (n, labels), value in found.items() if n == name}


def labels(**kv: str) -> frozenset[tuple[str, str]]:
    return frozenset(kv.items())


def scrape(host: Host, loop: SchedulerLoop) -> Samples:
    registry = CollectorRegistry()
    registry.register(HostCollector(host, loop))
    return samples(generate_latest(registry).decode())


def test_the_collector_counts_what_the_store_holds(world: World) -> None:
    found = scrape(world.host, SchedulerLoop(world.host, concurrency=1))
    assert of(found, "keepflow_runs") == {
        labels(workflow="alpha", status="committed"): 1,
        labels(workflow="alpha", status="failed"): 1,
        labels(workflow="alpha", status="suspended"): 1,
        labels(workflow="beta", status="committed"): 2,
        labels(workflow="beta", status="mutated"): 1,
    }
    # m1 is reserved by the suspended run: still pending. u1 is reserved too; u2 was skipped.
    assert of(found, "keepflow_events_pending") == {
        labels(workflow="alpha", topic="t"): 3,
        labels(workflow="beta", topic="u"): 1,
    }
    assert of(found, "keepflow_mutations") == {
        labels(workflow="alpha", status="needs_reconcile"): 1,
        labels(workflow="beta", status="applied"): 1,
    }
    assert of(found, "keepflow_reconcile_attempts") == {
        labels(workflow="alpha"): 1, labels(workflow="beta"): 0}
    # The failed producer run and the suspended consumer run each ask a person.
    assert of(found, "keepflow_inbox_items") == {labels(): 2}
    # No run started the sandbox: nothing is running and the scrape did not start it.
    assert of(found, "keepflow_sandbox_workers") == {labels(): 0}
    assert of(found, "keepflow_sandbox_pool_size") == {labels(): 2}
    assert of(found, "keepflow_runs_in_progress") == {labels(): 0}


def test_the_store_answers_the_counts_in_one_snapshot(world: World) -> None:
    snap = world.store.metrics_snapshot()
    assert snap.runs[("beta", "committed")] == 2
    assert snap.pending_events == {("alpha", "t"): 3, ("beta", "u"): 1}
    needs = snap.mutations[("alpha", "needs_reconcile")]
    assert (needs.count, needs.reconcile_attempts) == (1, 1)
    with pytest.raises(AttributeError):
        snap.runs = {}  # type: ignore[misc]  # frozen


@dataclass
class StartedPool:
    size: int
    pids: list[int]

    def worker_pids(self) -> list[int]:
        return self.pids


def test_a_started_sandbox_pool_is_counted(world: World) -> None:
    pool: Any = StartedPool(3, [101, 102])
    host = Host(Settings(home=world.host.settings.home), clock=world.clock, store=world.store,
                connections=Connections(), policies=PolicyBook(), pool=pool)
    found = scrape(host, SchedulerLoop(host, concurrency=1))
    assert of(found, "keepflow_sandbox_workers") == {labels(): 2}
    assert of(found, "keepflow_sandbox_pool_size") == {labels(): 3}


async def _nothing() -> None:
    return None


def test_the_route_counts_and_times_the_runs_this_server_finishes(world: World) -> None:
    loop = SchedulerLoop(world.host, concurrency=4)
    app = create_app(world.host, loop, token="s3cret", lifespan_hooks=(_nothing, _nothing),
                     ui=False)
    auth = {"Authorization": "Bearer s3cret"}
    scheduler = loop.scheduler

    async def session() -> tuple[httpx.Response, int]:
        transport = httpx.ASGITransport(app=app)
        async with (app.router.lifespan_context(app),
                    httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client):
            assert (await client.get("/metrics")).status_code == 401  # the guard of every route
            wid, _ = deploy(world.store, "gamma", "v")  # no run yet: free to trigger
            scheduler.load({wid})  # alpha and beta have runs of their own to carry on
            scheduler.trigger(wid, "seed")
            [req] = scheduler.take(4)
            during = samples((await client.get("/metrics", headers=auth)).text)
            assert of(during, "keepflow_runs_in_progress") == {labels(): 1}
            world.clock.advance(2.5)
            scheduler.finished(req, RunOutcome("r1", "seed", RunKind.PRODUCER, S.COMMITTED))
            scheduler.trigger(wid, "handle")
            [req] = scheduler.take(4)
            world.clock.advance(0.2)
            scheduler.finished(req, RunOutcome("r2", "handle", RunKind.CONSUMER, S.FAILED))
            scheduler.trigger(wid, "seed")
            [req] = scheduler.take(4)
            scheduler.finished(req, None)  # crashed inside the host
            schema = (await client.get("/api/openapi.json", headers=auth)).json()
            assert "/metrics" not in schema["paths"]
            res = await client.get("/metrics", headers=auth)
            listening = len(scheduler.listeners)
        return res, listening

    res, listening = asyncio.run(session())
    assert listening == 1
    assert scheduler.listeners == []  # the app's listener goes when it stops
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(res.text)
    producer = labels(workflow="gamma", kind="producer", status="committed")
    consumer = labels(workflow="gamma", kind="consumer", status="failed")
    crashed = labels(workflow="gamma", kind="producer", status="error")
    assert of(found, "keepflow_runs_finished_total") == {producer: 1, consumer: 1, crashed: 1}
    assert of(found, "keepflow_run_duration_seconds_count") == {
        producer: 1, consumer: 1, crashed: 1}
    assert of(found, "keepflow_run_duration_seconds_sum") == {
        producer: 2.5, consumer: pytest.approx(0.2), crashed: 0}
    buckets = of(found, "keepflow_run_duration_seconds_bucket")
    assert buckets[producer | {("le", "1.0")}] == 0
    assert buckets[producer | {("le", "2.5")}] == 1
    assert buckets[consumer | {("le", "0.25")}] == 1
    assert of(found, "keepflow_runs_in_progress") == {labels(): 0}
    assert of(found, "keepflow_runs")[labels(workflow="beta", status="committed")] == 2


def test_apps_never_share_the_process_wide_registry(world: World) -> None:
    for _ in range(2):  # a second app registering the same names must not clash
        create_app(world.host, SchedulerLoop(world.host), token=None,
                   lifespan_hooks=(_nothing, _nothing), ui=False)
    assert not [m.name for m in REGISTRY.collect() if m.name.startswith("keepflow_")]
