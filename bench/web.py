"""Web surface benchmarks (SPEC §12), against a real ``keepflow serve`` over loopback HTTP:

* ``events_list``: one workflow whose topic holds 100,000 events (5 % pending, the rest
  consumed or skipped, order / refund / invoice titles over 30 days), seeded in bulk through
  the store, then the JSON route ``GET /api/workflows/{name}/topics/{topic}/events`` and the
  page ``GET /workflows/{name}/topics/{topic}``: first page, a page ~200 pages deep (reached by
  following ``next``), a status filter, a title search matching few and many events
  (p50 / p95 / p99 over ≥ 200 sequential requests each; target p95 < 150 ms). The workflow is
  paused, so the server does nothing else while it answers.
* ``inbound``: ``POST /api/workflows/{name}/topics/{topic}/events`` with the workflow's inbound
  token, one event at a time, each waited for: from sending the request to the consumer run's
  ``createdAt`` (the run row, microsecond timestamps; the JSON log's ``at`` has only second
  precision, its ``run.end`` line names the run), and the POST's own latency.

    python -m bench.web [--quick] [--backends sqlite,postgresql] [--output FILE]

``python -m bench`` runs these on every backend too (``--no-web`` skips them).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from string import Template
from typing import Any

import httpx
import sqlalchemy as sa

from bench.common import BACKENDS, backends, store_label, summary, temp_home
from bench.scheduler import FreshStore
from keepflow import service
from keepflow.model import EventStatus, WorkflowStatus
from keepflow.runtime.host import Host
from keepflow.settings import Settings
from keepflow.store.convert import sha256_json
from keepflow.store.schema import event_history, events

#: Target of the events list, API and page alike (p95 per request, this machine).
TARGET_P95_MS = 150.0
PAGE = 50  # events per page: the page's own size, and ?limit= on the API
DEEP = 200  # pages followed by `next` to reach the deep page


def _taking_script(workflow: str, topic: str, consumer: str) -> str:
    """A workflow whose one consumer takes one event of ``topic`` a run and mutates nothing."""
    return Template("""
export default Keep.workflow({
  name: "$workflow",
  topics: { "$topic": {} },
  consumers: {
    $consumer: Keep.consumer({
      subscribe: ["$topic"],
      async prepare(ctx) {
        const [e] = await ctx.peek("$topic", { limit: 1 });
        if (!e) return { reservations: [] };
        return { reservations: [{ topic: "$topic", ids: [e.messageId] }], data: e.payload };
      },
      async mutate(ctx, prepared) {},
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
""").substitute(workflow=workflow, topic=topic, consumer=consumer)


SHOP = _taking_script("shop", "orders", "fulfil")
INBOUND = _taking_script("inbound", "order", "take")

CUSTOMERS = ("ACME Corp", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries",
             "Wayne Enterprises", "Wonka Industries", "Soylent", "Cyberdyne", "Tyrell Corp",
             "Vandelay Industries", "Dunder Mifflin", "Pied Piper", "Gringotts", "Oscorp",
             "Monsters Inc", "Aperture Science", "Black Mesa", "Massive Dynamic")
#: A customer with a handful of events in the whole topic: the title search that matches few.
RARE = "Zanzibar Spice Traders"
#: How the server is started (``--serve-command`` runs another one, e.g. a patched serve for a
#: before / after); ``serve --port 0 --log-format json`` is appended.
SERVE: tuple[str, ...] = (sys.executable, "-m", "keepflow.cli")


def _summary(samples: Sequence[float]) -> dict[str, Any]:
    """median (= p50), p95, p99, min, max in ms."""
    out = summary(samples)
    s = sorted(samples)
    if s:
        out["p99"] = round(s[max(0, math.ceil(len(s) * 0.99) - 1)], 3)
    return out


# ----------------------------------------------------------------------------- the server


class Serve:
    """``keepflow serve --port 0 --log-format json`` on a home and store, in its own process;
    its structured log goes to a file the benchmark reads."""

    def __init__(self, home: Path, database_url: str | None,
                 command: Sequence[str] = SERVE) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPFLOW_")}
        env["KEEPFLOW_HOME"] = str(home)
        if database_url is not None:
            env["KEEPFLOW_DATABASE_URL"] = database_url
        self.log = home / "serve.log"
        with self.log.open("wb") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [*command, "serve", "--port", "0", "--log-format", "json"], env=env,
                stdout=subprocess.DEVNULL, stderr=out)
        self._seen = 0
        deadline = time.monotonic() + 120
        while True:
            text = self.log.read_text(errors="replace")
            if "listening on " in text:
                self.url = text.split("listening on ", 1)[1].split()[0]
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"serve did not start: {text[-2000:]}")
            time.sleep(0.02)

    def new_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written since the last call."""
        with self.log.open("rb") as f:
            f.seek(self._seen)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._seen += end
        out = []
        for line in data[:end].splitlines():
            if line.startswith(b"{"):
                out.append(json.loads(line))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def serving(home: Path, database_url: str | None, command: Sequence[str] = SERVE
            ) -> Iterator[tuple[Serve, httpx.Client]]:
    server = Serve(home, database_url, command)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield server, client
    finally:
        server.stop()


def _deploy(home: Path, database_url: str | None, name: str, source: str) -> Host:
    """A host on the store with ``source`` deployed (validation needs one sandbox worker)."""
    host = Host(Settings(home=home, database_url=database_url, sandbox_workers=1))
    path = home / f"{name}.js"
    path.write_text(source, encoding="utf-8")
    service.deploy(host, path)
    return host


# ----------------------------------------------------------------------------- seeding


def seed_topic(host: Host, workflow_id: str, topic: str, count: int, seed: int = 42
               ) -> dict[str, Any]:
    """``count`` events in ``topic`` in one transaction: 5 % pending (anywhere in the topic,
    so the old ones are stale), 92 % consumed, 3 % skipped, created over the last 30 days in
    append order; a history row per status each went through. Returns what the searches
    need (how many titles each search text matches) and the seconds it took."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    now = host.clock.now()
    start = now - timedelta(days=30)
    step = timedelta(days=30) / max(1, count)
    rare = set(rng.sample(range(count), min(count, 12)))
    rows: list[dict[str, Any]] = []
    statuses = {"pending": 0, "consumed": 0, "skipped": 0}
    matches = {"order": 0, RARE.lower(): 0}
    for i in range(count):
        customer = RARE if i in rare else CUSTOMERS[min(int(rng.paretovariate(1.2)) - 1,
                                                        len(CUSTOMERS) - 1)]
        kind = rng.random()
        amount = round(rng.lognormvariate(4, 1), 2)
        n = 100_000 + i
        if kind < 0.7:
            title = f"Order #{n} from {customer}: {rng.randint(1, 9)} items, {amount} EUR"
        elif kind < 0.9:
            title = f"Refund R-{n} for {customer} ({amount} EUR)"
        else:
            title = f"Invoice INV-{n} to {customer}, due in {rng.choice((14, 30, 60))} days"
        for text in matches:
            matches[text] += text in title.lower()
        r = rng.random()
        status = "pending" if r < 0.05 else ("consumed" if r < 0.97 else "skipped")
        statuses[status] += 1
        at = start + step * i
        payload = {"id": n, "customer": customer, "amount": amount,
                   "lines": [{"sku": f"SKU-{rng.randint(1000, 9999)}", "qty": rng.randint(1, 5)}
                             for _ in range(rng.randint(1, 3))]}
        rows.append({"workflow_id": workflow_id, "topic": topic, "message_id": f"ord-{n}",
                     "title": title, "payload": payload, "payload_sha256": sha256_json(payload),
                     "status": status, "attempt": 1, "created_by": None, "created_at": at,
                     "updated_at": at if status == "pending" else at + timedelta(seconds=2)})
    with host.store.write() as conn:
        for i in range(0, len(rows), 5_000):
            conn.execute(sa.insert(events), rows[i:i + 5_000])
        mine = (events.c.workflow_id == workflow_id) & (events.c.topic == topic)
        conn.execute(sa.insert(event_history).from_select(
            ["event_id", "at", "status", "run_id", "note"],
            sa.select(events.c.id, events.c.created_at, sa.literal(EventStatus.PENDING.value),
                      sa.null(), sa.literal("published")).where(mine)))
        conn.execute(sa.insert(event_history).from_select(
            ["event_id", "at", "status", "run_id", "note"],
            sa.select(events.c.id, events.c.updated_at, events.c.status, sa.null(),
                      events.c.status).where(mine, events.c.status != "pending")))
    if host.store.engine.dialect.name == "postgresql":
        with host.store.engine.connect() as conn:
            conn.execute(sa.text("ANALYZE"))
            conn.commit()
    return {"events": count, "statuses": statuses, "title_matches": matches,
            "seed_seconds": round(time.perf_counter() - t0, 1)}


# ----------------------------------------------------------------------------- events list


def _timed(client: httpx.Client, path: str, params: dict[str, Any], n: int, warmup: int = 10
           ) -> tuple[dict[str, Any], httpx.Response]:
    """``n`` sequential GETs (after ``warmup`` untimed ones): their latency summary."""
    samples: list[float] = []
    res = None
    for i in range(warmup + n):
        t0 = time.perf_counter()
        res = client.get(path, params=params)
        ms = (time.perf_counter() - t0) * 1000
        if res.status_code != 200:
            raise RuntimeError(f"GET {path} {params}: {res.status_code} {res.text[:500]}")
        if i >= warmup:
            samples.append(ms)
    assert res is not None
    return _summary(samples) | {"bytes": len(res.content)}, res


def bench_events_list(count: int, requests: int, database_url: str | None,
                      deep: int = DEEP, warmup: int = 10, serve: Sequence[str] = SERVE
                      ) -> dict[str, Any]:
    with temp_home() as tmp:
        home = Path(tmp)
        host = _deploy(home, database_url, "shop", SHOP)
        wf = host.store.get_workflow("shop")
        service.set_status(host, "shop", WorkflowStatus.PAUSED, actor="bench",
                           reason="the benchmark's backlog stays as seeded")
        seeded = seed_topic(host, wf.id, "orders", count)
        host.close()
        api = "/api/workflows/shop/topics/orders/events"
        page = "/workflows/shop/topics/orders"
        out: dict[str, Any] = {"seed": seeded, "page_size": PAGE, "warmup": warmup,
                               "target_p95_ms": TARGET_P95_MS}
        with serving(home, database_url, serve) as (_, client):
            timings: dict[str, Any] = {}
            # The deep cursor: follow `next` from the first page, timing each step.
            walk: list[float] = []
            after: str | None = None
            for _ in range(deep):
                t0 = time.perf_counter()
                res = client.get(api, params={"limit": PAGE} | ({"after": after} if after else {}))
                walk.append((time.perf_counter() - t0) * 1000)
                res.raise_for_status()
                nxt = res.json()["next"]
                if nxt is None:  # a topic shorter than `deep` pages: the last page instead
                    break
                after = nxt
            timings["api_walk_next"] = _summary(walk)
            few, many = RARE, "order"
            cases: dict[str, tuple[str, dict[str, Any]]] = {
                "api_health": ("/api/health", {}),  # what any answer costs: the floor
                "api_first": (api, {"limit": PAGE}),
                "api_deep": (api, {"limit": PAGE, "after": after}),
                "api_status_consumed": (api, {"limit": PAGE, "status": "consumed"}),
                "api_title_few": (api, {"limit": PAGE, "title": few}),
                "api_title_many": (api, {"limit": PAGE, "title": many}),
                "page_first": (page, {}),
                "page_deep": (page, {"after": after}),
                "page_status_consumed": (page, {"status": "consumed"}),
                "page_title_few": (page, {"title": few}),
            }
            for key, (path, params) in cases.items():
                timings[key], res = _timed(client, path, params, requests, warmup)
                if path == api:
                    got = res.json()["events"]
                    timings[key]["events"] = len(got)
            out["deep_pages"] = len(walk)
            out["deep_offset"] = len(walk) * PAGE  # events before the deep page
            out["timings"] = timings
    worst = max(v["p95"] for k, v in timings.items() if k not in ("api_walk_next", "api_health"))
    out["worst_p95_ms"] = worst
    out["target_met"] = worst < TARGET_P95_MS
    return out


# ----------------------------------------------------------------------------- inbound


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).astimezone(UTC).timestamp()


def bench_inbound(n: int, database_url: str | None, warmup: int = 5,
                  serve: Sequence[str] = SERVE) -> dict[str, Any]:
    """``n`` inbound events, one at a time: each POST, then the consumer run it started."""
    with temp_home() as tmp:
        home = Path(tmp)
        _deploy(home, database_url, "inbound", INBOUND).close()
        with serving(home, database_url, serve) as (server, client):
            made = client.post("/api/workflows/inbound/inbound-token",
                               headers={"X-Keepflow-Request": "1"})
            made.raise_for_status()
            auth = {"Authorization": f"Bearer {made.json()['token']}"}
            post_ms: list[float] = []
            to_start: list[float] = []
            answered_to_start: list[float] = []
            server.new_lines()
            for i in range(warmup + n):
                body = {"messageId": f"in-{i}", "title": f"Inbound order #{i}",
                        "payload": {"n": i, "customer": CUSTOMERS[i % len(CUSTOMERS)]}}
                sent = time.time()
                t0 = time.perf_counter()
                res = client.post("/api/workflows/inbound/topics/order/events", json=body,
                                  headers=auth)
                answered = time.time()
                ms = (time.perf_counter() - t0) * 1000
                if res.status_code != 201:
                    raise RuntimeError(f"inbound event refused: {res.status_code} {res.text}")
                run_id = _wait_run_end(server, "take")
                run = client.get(f"/api/runs/{run_id}").json()
                if run["status"] != "committed":
                    raise RuntimeError(f"the consumer run did not commit: {run}")
                created = _ts(run["createdAt"])
                if i >= warmup:
                    post_ms.append(ms)
                    to_start.append((created - sent) * 1000)
                    answered_to_start.append((created - answered) * 1000)
                time.sleep(0.02)  # the host is idle again before the next event
    return {"events": n, "warmup": warmup, "post": _summary(post_ms),
            "send_to_consumer_start": _summary(to_start),
            "answer_to_consumer_start": _summary(answered_to_start)}


def _wait_run_end(server: Serve, handler: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.new_lines():
            if line.get("event") == "run.end" and line.get("handler") == handler:
                return str(line["run"])
        time.sleep(0.002)
    raise RuntimeError(f"no run of {handler!r} ended within {timeout} s")


# ----------------------------------------------------------------------------- entry


def run_backend(fresh: FreshStore, quick: bool, events: int | None = None,
                requests: int | None = None, inbound: int | None = None,
                serve: Sequence[str] = SERVE) -> dict[str, Any]:
    """Both benchmarks on one backend, each on a new store from ``fresh``."""
    return {
        "events_list": bench_events_list(
            events or (500 if quick else 100_000), requests or (5 if quick else 200), fresh(),
            deep=3 if quick else DEEP, warmup=2 if quick else 10, serve=serve),
        "inbound": bench_inbound(inbound or (5 if quick else 100), fresh(),
                                 warmup=1 if quick else 5, serve=serve),
    }


def run(names: Sequence[str], quick: bool = False, serve: Sequence[str] = SERVE,
        **sizes: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with backends(names) as b:
        for name in names:
            out[name] = {"store": store_label(name)} | run_backend(
                functools.partial(b.url, name), quick, serve=serve, **sizes)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.web",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (500 events, 5 inbound); the numbers mean nothing")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--events", type=int, help="events in the topic (default 100,000)")
    parser.add_argument("--requests", type=int, help="timed requests per case (default 200)")
    parser.add_argument("--inbound", type=int, help="inbound events (default 100)")
    parser.add_argument("--serve-command", help="how to start keepflow (default: "
                        "'python -m keepflow.cli'; `serve --port 0 --log-format json` follows)")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    names = [n for n in args.backends.split(",") if n]
    if set(names) - set(BACKENDS):
        parser.error(f"unknown backend(s); choose from {list(BACKENDS)}")
    serve = tuple(shlex.split(args.serve_command)) if args.serve_command else SERVE
    res = run(names, args.quick, serve, events=args.events, requests=args.requests,
              inbound=args.inbound)
    text = json.dumps(res, indent=2)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
