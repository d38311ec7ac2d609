"""The benchmark pipeline on DBOS Transact (PyPI ``dbos``), for comparison with keepflow.

Per event: a ``@DBOS.workflow()`` ``process(event)`` calls one ``@DBOS.step()`` that POSTs the
event to the loopback sink with ``Idempotency-Key`` = the DBOS workflow id (so a step DBOS
re-executes after a crash is de-duplicated by the sink) and returns the sink's answer; the
workflow returns that answer, which DBOS records as the workflow output. Each event's workflow
id is derived from the event (chain and position, plus a per-run token), the usual DBOS way
to make "process this event" exactly-once.

The system database is DBOS's embedded SQLite by default (a fresh file in a temporary
directory each run), or PostgreSQL when ``--database-url`` is given (a fresh, uniquely named
DBOS schema each run, dropped afterwards). DBOS's defaults are otherwise kept (pool of 20
system-database connections, OTLP off); no conductor key is given, so nothing leaves
loopback, and DBOS 3.4.0 has no admin server to disable.

Measurement, mirroring keepflow's throughput bench:

* ``--workflows 1``: one chain; each workflow starts after the previous one returned.
* ``--workflows N`` (e.g. 100): N chains in parallel, driven by N plain threads, each calling
  ``process(event)`` for its events one after another. That is how a DBOS user would write
  "N independent ordered streams" with synchronous workflows: calling a workflow function
  runs it durably in the calling thread; ``DBOS.start_workflow`` handles would only add a
  hand-off to DBOS's executor pool and, waited on round by round, a barrier per round.

Per-run latency is start-to-result of one ``process`` call (in the parallel case it includes
waiting for a system-database connection or the SQLite write lock). A few workflows are run
first as warm-up and not counted. Afterwards the sink's ``applied`` count must have grown by
exactly the number of events, and one workflow is invoked again with an already used id to
check that DBOS returns the recorded output without POSTing again.

DBOS is a process-wide singleton, so each measurement runs in its own subprocess::

    python -m bench.peers.dbos_peer --workflows 100 --events 4 [--database-url URL]
        [--sink-url URL]

prints one JSON object on stdout (DBOS logs, at WARNING, go to stderr). ``run()`` launches it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
WARMUP_SEQUENTIAL = 5


def dbos_version() -> str:
    return metadata.version("dbos")


def system_database_kind(database_url: str | None) -> str:
    return "postgresql" if database_url else "sqlite"


def _clean_env() -> dict[str, str]:
    """The environment without DBOS's own variables (cloud mode, conductor, app version)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DBOS")}


# ----------------------------------------------------------------------------- parent side


def run(workflows: int, events_per_workflow: int, sink_url: str | None = None,
        database_url: str | None = None) -> dict[str, Any]:
    """Measure DBOS in a subprocess; start a sink of its own unless ``sink_url`` is given."""
    sink = None
    if sink_url is None:
        from bench.common import RemoteSink

        sink = RemoteSink()
        sink_url = sink.url
    argv = [sys.executable, "-m", "bench.peers.dbos_peer", "--workflows", str(workflows),
            "--events", str(events_per_workflow), "--sink-url", sink_url]
    if database_url:
        argv += ["--database-url", database_url]
    try:
        proc = subprocess.run(argv, cwd=REPO, env=_clean_env(), capture_output=True,
                              text=True, timeout=1800, check=False)
    finally:
        if sink is not None:
            sink.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"dbos peer failed ({proc.returncode}): {proc.stderr[-4000:]}")
    out: dict[str, Any] = json.loads(proc.stdout)
    out.update(peer="dbos", dbos_version=dbos_version(),
               system_database=system_database_kind(database_url))
    return out


# ----------------------------------------------------------------------------- subprocess side


def _define_program(client: httpx.Client, sink_url: str) -> Callable[[dict[str, Any]], Any]:
    """Register the DBOS workflow and step (before ``DBOS.launch()``); return the workflow."""
    from dbos import DBOS

    @DBOS.step(name="post_event")
    def post_event(event: dict[str, Any]) -> dict[str, Any]:
        key = DBOS.workflow_id
        assert key is not None
        resp = client.post(f"{sink_url}/orders", json=event, headers={"Idempotency-Key": key})
        resp.raise_for_status()
        return {"status": resp.status_code, "body": resp.json()}

    @DBOS.workflow(name="process")
    def process(event: dict[str, Any]) -> dict[str, Any]:
        return post_event(event)

    return process


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _applied(client: httpx.Client, sink_url: str) -> int:
    return int(client.get(f"{sink_url}/stats").json()["applied"])


def _drive(process: Callable[[dict[str, Any]], Any], token: str, label: str, chains: int,
           events: int) -> tuple[float, list[float]]:
    """Run ``chains`` threads, each processing ``events`` events in order; return the wall
    time and every workflow's start-to-result latency in milliseconds."""
    from dbos import SetWorkflowID

    latencies: list[list[float]] = [[] for _ in range(chains)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(chains + 1)

    def chain(c: int) -> None:
        if chains > 1:
            barrier.wait()  # every thread exists before the clock starts
        try:
            for j in range(events):
                event = {"chain": c, "seq": j, "title": f"Event {j}"}
                t0 = time.perf_counter()
                with SetWorkflowID(f"{token}-{label}-c{c:03d}-e{j:05d}"):
                    out = process(event)
                latencies[c].append((time.perf_counter() - t0) * 1000)
                assert out["status"] == 201, out
        except BaseException as exc:
            errors.append(exc)
            raise

    if chains == 1:  # the sequential case runs in the main thread: no hand-off at all
        t0 = time.perf_counter()
        chain(0)
        return time.perf_counter() - t0, latencies[0]
    threads = [threading.Thread(target=chain, args=(c,), name=f"chain-{c}")
               for c in range(chains)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} chain(s) failed") from errors[0]
    return elapsed, [x for per in latencies for x in per]


def measure(workflows: int, events_per_workflow: int, sink_url: str,
            database_url: str | None) -> dict[str, Any]:
    from dbos import DBOS, DBOSConfig, SetWorkflowID

    token = uuid.uuid4().hex[:8]
    limit = workflows + 8
    client = httpx.Client(timeout=30, trust_env=False,
                          limits=httpx.Limits(max_connections=limit,
                                              max_keepalive_connections=limit))
    process = _define_program(client, sink_url)
    schema = f"dbos_bench_{token}"
    with tempfile.TemporaryDirectory(prefix="dbos-peer-") as tmp:
        config: DBOSConfig = {"name": "keepflow-bench-dbos", "log_level": "WARNING",
                              "enable_otlp": False}
        if database_url:
            config["system_database_url"] = database_url
            config["dbos_system_schema"] = schema
        else:
            config["system_database_url"] = f"sqlite:///{Path(tmp) / 'dbos_system.sqlite'}"
        DBOS(config=config)
        DBOS.launch()
        try:
            # Warm-up: a few sequential workflows, then one round at the measured width (the
            # connection pools fill up), none of them counted.
            _drive(process, token, "warm", 1, WARMUP_SEQUENTIAL)
            warm = WARMUP_SEQUENTIAL
            if workflows > 1:
                _drive(process, token, "warmpar", workflows, 1)
                warm += workflows
            before = _applied(client, sink_url)
            elapsed, lat = _drive(process, token, "run", workflows, events_per_workflow)
            applied = _applied(client, sink_url) - before
            total = workflows * events_per_workflow
            assert applied == total, (applied, total)
            assert len(lat) == total, (len(lat), total)
            # Invoking an already completed workflow id returns its recorded output; the
            # step is not executed again, so the sink sees nothing new.
            with SetWorkflowID(f"{token}-run-c000-e00000"):
                again = process({"chain": 0, "seq": 0, "title": "Event 0"})
            replay_ok = (_applied(client, sink_url) - before == total
                         and again["status"] == 201)
        finally:
            DBOS.destroy(destroy_registry=True)
            client.close()
    if database_url:
        _drop_schema(database_url, schema)
    lat.sort()
    return {"workflows": workflows, "events_per_workflow": events_per_workflow,
            "runs": total, "seconds": round(elapsed, 3),
            "runs_per_second": round(total / elapsed, 1),
            "p50_ms": round(statistics.median(lat), 3),
            "p95_ms": round(_percentile(lat, 0.95), 3),
            "min_ms": round(lat[0], 3), "max_ms": round(lat[-1], 3),
            "applied": applied, "exactly_once": applied == total,
            "replay_deduplicated": replay_ok, "warmup_runs": warm,
            "driver": "sequential calls" if workflows == 1
            else f"{workflows} threads, each calling process() in order",
            "peer": "dbos", "dbos_version": dbos_version(),
            "system_database": system_database_kind(database_url)}


def _drop_schema(database_url: str, schema: str) -> None:
    import sqlalchemy as sa

    url = sa.make_url(database_url).set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.dbos_peer",
                                     description="The benchmark pipeline on DBOS Transact.")
    parser.add_argument("--workflows", type=int, default=1, help="parallel chains")
    parser.add_argument("--events", type=int, default=200, help="events per chain")
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL system database (default: embedded SQLite)")
    parser.add_argument("--sink-url", default=None,
                        help="a running sink (default: start one for this run)")
    args = parser.parse_args(argv)
    for key in [k for k in os.environ if k.startswith("DBOS")]:
        del os.environ[key]  # before dbos is imported: no cloud mode, no conductor
    sink = None
    sink_url = args.sink_url
    if sink_url is None:
        from bench.common import RemoteSink

        sink = RemoteSink()
        sink_url = sink.url
    try:
        out = measure(args.workflows, args.events, sink_url, args.database_url)
    finally:
        if sink is not None:
            sink.stop()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
