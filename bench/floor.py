"""The physical floor, measured in the same run as the benchmarks it judges.

* ``fsync``: write 4 KiB + ``fsync`` on the store's filesystem, per second;
* ``sqlite_commit``: single-row INSERT commits with the embedded store's settings (WAL,
  ``synchronous=FULL``), straight through ``sqlite3`` (no keepflow, no SQLAlchemy);
* ``postgresql_commit``: the same through ``psycopg`` on the durable benchmark cluster;
* ``bare_sandbox``: a fresh context + a trivial script + one call, through the worker pool;
* ``sink_round_trip``: one HTTP POST with an idempotency key to the loopback sink (own
  process), keep-alive connection.

The floor of one consumer run is ``commits × commit + invocations × bare + sink round trip``:
what a run would cost if keepflow added nothing of its own.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.common import RemoteSink, summary
from keepflow.sandbox.api import Invocation
from keepflow.sandbox.pool import SandboxPool

BARE_SCRIPT = """
export default Keep.workflow({ name: "bare", topics: {}, consumers: {},
  producers: { p: async (ctx, state) => ({ n: 0 }) } });
"""


def _timed(fn: Any, n: int, warm: int = 10) -> list[float]:
    for _ in range(warm):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def fsync(directory: Path, n: int) -> dict[str, Any]:
    path = directory / "fsync.bin"
    block = os.urandom(4096)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        def once() -> None:
            os.pwrite(fd, block, 0)
            os.fsync(fd)
        samples = _timed(once, n)
    finally:
        os.close(fd)
        path.unlink()
    out = summary(samples)
    out["per_second"] = round(1000 / out["median"])
    return out


def sqlite_commit(directory: Path, n: int) -> dict[str, Any]:
    path = directory / "floor.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    try:
        def once() -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t (v) VALUES (?)", ("x" * 100,))
            db.execute("COMMIT")
        samples = _timed(once, n)
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    out = summary(samples)
    out["per_second"] = round(1000 / out["median"])
    return out


def postgresql_commit(url: str, n: int) -> dict[str, Any]:
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as db:
        db.execute("CREATE TABLE floor_t (id BIGSERIAL PRIMARY KEY, v TEXT)")

        def once() -> None:
            with db.transaction():
                db.execute("INSERT INTO floor_t (v) VALUES (%s)", ("x" * 100,))
        samples = _timed(once, n)
        db.execute("DROP TABLE floor_t")
    out = summary(samples)
    out["per_second"] = round(1000 / out["median"])
    return out


def bare_sandbox(pool: SandboxPool, n: int) -> dict[str, Any]:
    inv = Invocation(source=BARE_SCRIPT, handler=("producers", "p"))
    return summary(_timed(lambda: pool.invoke(inv, lambda call: None), n, warm=20))


def sink_round_trip(sink: RemoteSink, n: int) -> dict[str, Any]:
    with httpx.Client(base_url=sink.url) as client:
        def once() -> None:
            res = client.post("/floor", json={"id": 1},
                              headers={"Idempotency-Key": uuid.uuid4().hex})
            assert res.status_code < 300, res.text
        return summary(_timed(once, n))


def run(directory: Path, pool: SandboxPool, sink: RemoteSink, pg_url: str | None,
        quick: bool) -> dict[str, Any]:
    n = 50 if quick else 400
    out = {
        "fsync": fsync(directory, n),
        "sqlite_commit": sqlite_commit(directory, n),
        "bare_sandbox": bare_sandbox(pool, n),
        "sink_round_trip": sink_round_trip(sink, n),
        "filesystem": str(directory),
    }
    if pg_url is not None:
        out["postgresql_commit"] = postgresql_commit(pg_url, n)
    return out


def consumer_run_floor(floor: dict[str, Any], backend: str, commits: float,
                       invocations: int) -> dict[str, Any]:
    """The floor of one consumer run on ``backend`` and how it adds up."""
    commit = floor["sqlite_commit" if backend == "sqlite" else "postgresql_commit"]["median"]
    bare = floor["bare_sandbox"]["median"]
    sink = floor["sink_round_trip"]["median"]
    total = commits * commit + invocations * bare + sink
    return {"commits": commits, "commit_ms": commit, "invocations": invocations,
            "bare_sandbox_ms": bare, "sink_round_trip_ms": sink, "floor_ms": round(total, 3)}
