"""Scheduler benchmarks (SPEC §7):

* ``latency``: publish → consumer-start on an idle host: a producer's commit returns, the loop
  notices the finished run, finds the consumer ready and dispatches it (p50, p99);
* ``idle``: a real ``keepflow serve`` process with 10,000 deployed workflows whose producers
  fire hourly: start-up time and CPU% (process + its workers) over a quiet window;
* ``throughput``: runs/s with 1 busy workflow vs 100 in parallel (each run: prepare → HTTP
  POST to a loopback sink → next → commit), and the ratio.

    python -m bench.scheduler [--quick]
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import RemoteSink, children, cpu_seconds, ratio, rss_mib, summary
from bench.runtime import seed_history
from keepflow import service
from keepflow.connectors.base import ConnectionConfig
from keepflow.connectors.config import Connections
from keepflow.model import EventDraft
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.scheduler.loop import SchedulerLoop
from keepflow.settings import Settings
from keepflow.store import events as ev
from keepflow.store import schedule as sched_rows
from keepflow.store import workflows as wfs
from keepflow.store.convert import sha256_json

#: Gives the URL of a new, empty store each time it is called (``None``: SQLite in the
#: benchmark's temporary home), so every measurement starts from nothing.
FreshStore = Callable[[], str | None]


def SQLITE() -> None:
    return None


#: Run threads of the loop (the ``serve`` default, ``KEEPFLOW_RUN_CONCURRENCY``).
CONCURRENCY = 8

CONSUMER = """
    work: Keep.consumer({
      subscribe: ["items"],
      async prepare(ctx) {
        const [e] = await ctx.peek("items", { limit: 1 });
        if (!e) return { reservations: [], data: {} };
        return { reservations: [{ topic: "items", ids: [e.messageId] }], data: e.payload };
      },
      async mutate(ctx, prepared) { %s },
      async next(ctx, prepared, mutation) { return null; },
    }),"""
POST = ('await ctx.api.post({ url: "/orders", json: prepared.data, '
        'reconcile: { url: "/records/{idempotencyKey}" } });')


def script(name: str, producers: str, mutate: str = "") -> str:
    return (f'export default Keep.workflow({{ name: "{name}", topics: {{ "items": {{}} }},\n'
            f"  producers: {{ {producers} }},\n  consumers: {{ {CONSUMER % mutate} }} }});\n")


def _host(home: Path, pool: SandboxPool, sink: RemoteSink | None = None,
          database_url: str | None = None) -> Host:
    conns = [ConnectionConfig("http", "http", {})]
    if sink is not None:
        conns.append(ConnectionConfig("api", "http", {"base_url": sink.url}))
    return Host(Settings(home=home, database_url=database_url), connections=Connections(conns),
                pool=pool)


def _deploy(host: Host, home: Path, name: str, source: str) -> str:
    path = home / f"{name}.js"
    path.write_text(source, encoding="utf-8")
    return service.deploy(host, path).workflow.id


# ----------------------------------------------------------------------------- latency


def bench_latency(pool: SandboxPool, n: int, fresh_db: FreshStore = SQLITE) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        host = _host(home, pool, database_url=fresh_db())
        emit = """emit: async (ctx, state) => { const n = (state?.n ?? 0) + 1;
          await ctx.publish("items", { messageId: "e" + n, title: "Event " + n });
          return { n }; },"""
        wid = _deploy(host, home, "lat", script("lat", emit))
        committed: list[float] = []
        started: list[float] = []
        original = host.store.commit_producer_run

        def timed_commit(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            committed.append(time.perf_counter())
            return out

        host.store.commit_producer_run = timed_commit  # type: ignore[method-assign]
        loop = SchedulerLoop(host, concurrency=4)

        def on_event(event: str, fields: dict[str, object]) -> None:
            if event == "run.start" and fields.get("handler") == "work":
                started.append(time.perf_counter())

        loop.scheduler.listeners.append(on_event)

        async def main() -> None:
            loop.start()
            task = asyncio.create_task(loop.run())
            for _ in range(n):
                await loop.trigger(wid, "emit")
                while len(started) < len(committed):
                    await asyncio.sleep(0.001)
                await asyncio.sleep(0.01)  # the consumer run finishes; the host is idle again
            await loop.shutdown(5)
            task.cancel()

        asyncio.run(main())
        host.close()
        host.connections.close()
    lat = sorted((s - c) * 1000 for c, s in zip(committed, started, strict=False))
    return {**summary(lat), "p99": round(lat[max(0, int(len(lat) * 0.99) - 1)], 3),
            "target_median_ms": 10}


# ----------------------------------------------------------------------------- idle


def _seed_idle_workflows(home: Path, pool: SandboxPool, count: int,
                         database_url: str | None = None) -> None:
    """Deploy one validated script, then register ``count`` workflows with it in one
    transaction (a bench shortcut: deploying 10,000 times would measure validation)."""
    host = _host(home, pool, database_url=database_url)
    hourly = """poll: { schedule: { interval: "1h" }, async handler(ctx, state) {
        await ctx.publish("items", { messageId: "x", title: "x" }); } },"""
    first = _deploy(host, home, "idle-00000", script("idle-00000", hourly))
    version = host.store.get_version(host.store.get_workflow(first).current_version_id or "")
    now = host.clock.now()
    rng = random.Random(7)
    with host.store.write() as conn:
        for i in range(1, count):
            wf = wfs.create_txn(conn, f"idle-{i:05d}", now)
            wfs.add_version_txn(conn, wf.id, source=version.source,
                                source_sha256=version.source_sha256, manifest=version.manifest,
                                findings=[], created_by="bench", bump="major", now=now)
        for wf in wfs.list_all(conn):  # each fired in the last 50 minutes: none due soon
            sched_rows.record_fire_txn(conn, wf.id, "poll",
                                       now - timedelta(seconds=rng.uniform(60, 3000)))
    host.close()
    host.connections.close()


def bench_idle(pool: SandboxPool, count: int, window: float, fresh_db: FreshStore = SQLITE,
               settle: float = 10.0) -> dict[str, Any]:
    """``keepflow serve`` over ``count`` idle workflows: start-up time, then, ``settle``
    seconds later (its start-up work done), memory and CPU over ``window`` seconds."""
    database_url = fresh_db()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        t0 = time.perf_counter()
        _seed_idle_workflows(home, pool, count, database_url)
        seeded = time.perf_counter() - t0
        env = {**os.environ, "KEEPFLOW_HOME": str(home)}
        env.pop("KEEPFLOW_DATABASE_URL", None)
        if database_url is not None:
            env["KEEPFLOW_DATABASE_URL"] = database_url
        log = home / "serve.log"
        with log.open("wb") as out:
            start = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "keepflow.cli", "serve", "--port",
                                     "0", "--log-format", "json"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=out)
        try:
            while '"event": "started"' not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.perf_counter() - start > 120:
                    raise RuntimeError(f"serve did not start: {log.read_text()[-2000:]}")
                time.sleep(0.05)
            startup = time.perf_counter() - start
            time.sleep(settle)  # start-up work (first scheduling pass, lease sweep) ends
            workers = children(proc.pid)
            rss = {"serve_mib": round(rss_mib(proc.pid), 1),
                   "sandbox_workers": len(workers),
                   "per_worker_mib": [round(rss_mib(w), 1) for w in workers]}
            cpu0, w0 = cpu_seconds(proc.pid), time.perf_counter()
            time.sleep(window)
            cpu1, w1 = cpu_seconds(proc.pid), time.perf_counter()
            runs = len(re.findall(r'"run.start"', log.read_text(errors="replace")))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return {"workflows": count, "seed_seconds": round(seeded, 1),
            "startup_seconds": round(startup, 2), "target_startup_seconds": 10,
            "window_seconds": window, "cpu_percent_of_one_core":
                round((cpu1 - cpu0) / (w1 - w0) * 100, 3),
            "target_cpu_percent": 1.0, "runs_during_window": runs, "rss": rss}


# ----------------------------------------------------------------------------- throughput


def _throughput(pool: SandboxPool, workflows: int, events: int, concurrency: int,
                fresh_db: FreshStore = SQLITE, history: int = 0) -> dict[str, Any]:
    sink = RemoteSink()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        host = _host(home, pool, sink, fresh_db())
        ids = [_deploy(host, home, f"busy-{i:03d}", script(f"busy-{i:03d}", "", POST))
               for i in range(workflows)]
        seeded = seed_history(host, ids[0], "items", history) if history else 0.0
        now = host.clock.now()
        with host.store.write() as conn:
            for wid in ids:
                drafts = [EventDraft("items", f"e{j}", f"Event {j}", p := {"j": j},
                                     sha256_json(p)) for j in range(events)]
                ev.publish_txn(conn, wid, None, drafts, now)
        loop = SchedulerLoop(host, concurrency=concurrency)
        total = workflows * events
        started: dict[object, float] = {}
        latencies: list[float] = []

        def on_event(event: str, fields: dict[str, object]) -> None:
            if event == "run.start":
                started[fields["workflow"]] = time.perf_counter()
            elif event == "run.end" and fields.get("status") == "committed":
                latencies.append((time.perf_counter() - started[fields["workflow"]]) * 1000)

        loop.scheduler.listeners.append(on_event)

        async def main() -> float:
            loop.start()
            t0 = time.perf_counter()
            task = asyncio.create_task(loop.run())
            while loop.scheduler.counters.finished < total:
                if time.perf_counter() - t0 > 600:
                    raise RuntimeError(f"throughput stalled at {loop.scheduler.counters.finished}"
                                       f" of {total} runs")
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - t0
            await loop.shutdown(5)
            task.cancel()
            return elapsed

        cpu0 = time.process_time()
        elapsed = asyncio.run(main())
        host_cpu = time.process_time() - cpu0
        applied = sink.applied()
        host.close()
        host.connections.close()
    sink.stop()
    assert applied == total, (applied, total)
    return {"workflows": workflows, "runs": total, "seconds": round(elapsed, 2),
            "runs_per_second": round(total / elapsed, 1), "run_latency": summary(latencies),
            "host_cpu_percent_of_one_core": round(host_cpu / elapsed * 100, 1),
            "history_events": history, "history_seed_seconds": round(seeded, 1)}


def bench_history(pool: SandboxPool, quick: bool, fresh_db: FreshStore = SQLITE
                  ) -> dict[str, Any]:
    """One busy workflow's throughput with 0 vs ``history`` consumed events already in its
    topic (goal ratio ≥ 0.9: every per-run query is an indexed lookup, none scans history)."""
    history = 5_000 if quick else 1_000_000
    runs = 60 if quick else 600
    empty = _throughput(pool, 1, runs, CONCURRENCY, fresh_db)
    full = _throughput(pool, 1, runs, CONCURRENCY, fresh_db, history=history)
    return {"empty": empty, "with_history": full, "history_events": history,
            "ratio": ratio(full["runs_per_second"], empty["runs_per_second"]), "goal": 0.9}


def bench_throughput(pool: SandboxPool, quick: bool, fresh_db: FreshStore = SQLITE,
                     concurrency: int = CONCURRENCY) -> dict[str, Any]:
    """runs/s with 1, 10 and 100 busy workflows (each run: prepare → HTTP POST → next →
    commit) and how it scales."""
    runs = 100 if quick else 1000
    _throughput(pool, 8, 2, concurrency, fresh_db)  # warm-up: the pool grows
    out: dict[str, Any] = {"concurrency": concurrency, "cores": os.cpu_count()}
    for n in (1, 10, 100):
        out[f"workflows_{n}"] = _throughput(pool, n, runs // n, concurrency, fresh_db)
    workers = [p for p in children(os.getpid())
               if b"keepflow.sandbox.worker" in Path(f"/proc/{p}/cmdline").read_bytes()]
    out["sandbox_worker_rss_mib"] = [round(rss_mib(p), 1) for p in workers]
    base = out["workflows_1"]["runs_per_second"]
    for n in (10, 100):
        out[f"ratio_{n}_vs_1"] = ratio(out[f"workflows_{n}"]["runs_per_second"], base)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """SQLite only; ``python -m bench`` runs these on every backend."""
    with SandboxPool(size=CONCURRENCY) as pool:
        out = {"latency": bench_latency(pool, 50 if quick else 300),
               "throughput": bench_throughput(pool, quick)}
        out["idle"] = bench_idle(pool, 1_000 if quick else 10_000, 10 if quick else 30)
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
