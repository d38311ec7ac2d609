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
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

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
from keepflow.store.rows import sha256_json

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


def _host(home: Path, pool: SandboxPool, sink: RemoteSink | None = None) -> Host:
    conns = [ConnectionConfig("http", "http", {})]
    if sink is not None:
        conns.append(ConnectionConfig("api", "http", {"base_url": sink.url}))
    return Host(Settings(home=home), connections=Connections(conns), pool=pool)


def _deploy(host: Host, home: Path, name: str, source: str) -> str:
    path = home / f"{name}.js"
    path.write_text(source, encoding="utf-8")
    return service.deploy(host, path).workflow.id


# ----------------------------------------------------------------------------- latency


def bench_latency(pool: SandboxPool, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        host = _host(home, pool)
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
    return {"n": len(lat), "p50_ms": round(statistics.median(lat), 3),
            "p99_ms": round(lat[max(0, int(len(lat) * 0.99) - 1)], 3),
            "max_ms": round(lat[-1], 3), "target_p50_ms": 10}


# ----------------------------------------------------------------------------- idle


def _seed_idle_workflows(home: Path, pool: SandboxPool, count: int) -> None:
    """Deploy one validated script, then register ``count`` workflows with it in one
    transaction (a bench shortcut: deploying 10,000 times would measure validation)."""
    host = _host(home, pool)
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


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its children still running (sandbox workers)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def bench_idle(pool: SandboxPool, count: int, window: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        t0 = time.perf_counter()
        _seed_idle_workflows(home, pool, count)
        seeded = time.perf_counter() - t0
        env = {**os.environ, "KEEPFLOW_HOME": str(home)}
        env.pop("KEEPFLOW_DATABASE_URL", None)
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
            time.sleep(2)  # let start-up work settle
            cpu0, w0 = _cpu_seconds(proc.pid), time.perf_counter()
            time.sleep(window)
            cpu1, w1 = _cpu_seconds(proc.pid), time.perf_counter()
            runs = len(re.findall(r'"run.start"', log.read_text(errors="replace")))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return {"workflows": count, "seed_seconds": round(seeded, 1),
            "startup_seconds": round(startup, 2), "target_startup_seconds": 10,
            "window_seconds": window, "cpu_percent_of_one_core":
                round((cpu1 - cpu0) / (w1 - w0) * 100, 3),
            "target_cpu_percent": 1.0, "runs_during_window": runs}


# ----------------------------------------------------------------------------- throughput


class RemoteSink:
    """The loopback sink in its own process, so it does not share this process's CPU."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.sink"],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()

    def applied(self) -> int:
        return int(httpx.get(self.url + "/stats").json()["applied"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def _throughput(pool: SandboxPool, workflows: int, events: int, concurrency: int
                ) -> dict[str, Any]:
    sink = RemoteSink()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        host = _host(home, pool, sink)
        ids = [_deploy(host, home, f"busy-{i:03d}", script(f"busy-{i:03d}", "", POST))
               for i in range(workflows)]
        now = host.clock.now()
        with host.store.write() as conn:
            for wid in ids:
                drafts = [EventDraft("items", f"e{j}", f"Event {j}", p := {"j": j},
                                     sha256_json(p)) for j in range(events)]
                ev.publish_txn(conn, wid, None, drafts, now)
        loop = SchedulerLoop(host, concurrency=concurrency)
        total = workflows * events

        async def main() -> float:
            loop.start()
            t0 = time.perf_counter()
            task = asyncio.create_task(loop.run())
            while loop.scheduler.counters.finished < total:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - t0
            await loop.shutdown(5)
            task.cancel()
            return elapsed

        elapsed = asyncio.run(main())
        applied = sink.applied()
        host.close()
        host.connections.close()
    sink.stop()
    assert applied == total, (applied, total)
    return {"workflows": workflows, "runs": total, "seconds": round(elapsed, 2),
            "runs_per_second": round(total / elapsed, 1)}


def bench_throughput(pool: SandboxPool, quick: bool) -> dict[str, Any]:
    runs = 200 if quick else 800
    _throughput(pool, 8, 2, 8)  # warm-up: the sandbox pool grows to the run concurrency
    one = _throughput(pool, 1, runs, 8)
    many = _throughput(pool, 100, runs // 100, 8)
    return {"one_workflow": one, "hundred_workflows": many, "concurrency": 8,
            "cores": os.cpu_count(),
            "ratio_100_vs_1": round(many["runs_per_second"] / one["runs_per_second"], 2)}


def run(quick: bool = False) -> dict[str, Any]:
    with SandboxPool(size=8) as pool:
        out = {"latency": bench_latency(pool, 50 if quick else 300),
               "throughput": bench_throughput(pool, quick)}
        out["idle"] = bench_idle(pool, 1_000 if quick else 10_000, 10 if quick else 60)
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
