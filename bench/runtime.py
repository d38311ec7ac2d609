"""Core runtime costs: one handler invocation, one full consumer run, commits per run.

    python -m bench.runtime [--quick]

* ``invocation``: fresh context + load a 200-line script + call a handler making 3 host calls
  (a search, two publishes; answered immediately) in a sandbox worker process; and a bare
  invocation (trivial script, no host calls) for comparison.
* ``consumer_run``: prepare → mutation (HTTP POST to the loopback sink in its own process,
  with reconcile) → next → commit, end to end, on SQLite (WAL, synchronous=FULL) or
  PostgreSQL; with its durable commits and SQL statements per run (target ≤ 3 commits).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from bench.common import RemoteSink, summary
from keepflow import service
from keepflow.connectors.base import ConnectionConfig
from keepflow.connectors.config import Connections
from keepflow.model import EventDraft
from keepflow.runtime.host import Host
from keepflow.sandbox.api import HostCall, Invocation, Reply, Resolve
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from keepflow.store import events as ev
from keepflow.store.convert import sha256_json
from keepflow.store.database import READ_ONLY

SCRIPT = """
// A typical small workflow: ~50 lines.
const FIELDS = ["id", "customer", "amount", "currency"];
function pick(o) { const out = {}; for (const f of FIELDS) out[f] = o[f]; return out; }
function title(o) { return `Order #${o.id} from ${o.customer} (${o.amount} ${o.currency})`; }
export default Keep.workflow({
  name: "bench",
  topics: { "orders": {}, "done": {} },
  producers: {
    poll: {
      schedule: { interval: "5m" },
      async handler(ctx, state) {
        const a = await ctx.peekless;
        return state;
      },
    },
  },
  consumers: {
    work: Keep.consumer({
      subscribe: ["orders"],
      async prepare(ctx, state) {
        const evs = await ctx.peek("orders", { limit: 1 });
        if (!evs.length) return { reservations: [], data: {} };
        const e = evs[0];
        return { reservations: [{ topic: "orders", ids: [e.messageId] }],
                 data: { order: pick(e.payload), title: e.title } };
      },
      async mutate(ctx, prepared) {
        await ctx.api.post({ url: "/orders", json: prepared.data.order,
                             reconcile: { url: "/records/{idempotencyKey}" } });
      },
      async next(ctx, prepared, mutation) {
        if (mutation.status === "applied")
          await ctx.publish("done", { messageId: "done-" + prepared.data.order.id,
                                      title: "Done: " + prepared.data.title,
                                      payload: { id: prepared.data.order.id } });
        return { last: prepared.data.order.id };
      },
    }),
    fin: Keep.consumer({
      subscribe: ["done"],
      async prepare(ctx) { return { reservations: [], data: {} }; },
      async mutate(ctx, prepared) {},
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
"""

INVOCATION_SCRIPT = """
const FOLDER = "INBOX";
function titleOf(m) {
  return `Email from ${m.from}: "${m.subject}"`;
}
function normalise(items) {
  const out = [];
  for (const m of items) {
    if (!m || !m.id) continue;
    out.push({ id: String(m.id), from: m.from.toLowerCase(), subject: m.subject.trim() });
  }
  return out;
}
export default Keep.workflow({
  name: "invoice-rows",
  topics: { "email.received": {}, "row.created": {} },
  producers: {
    pollInbox: {
      schedule: { interval: "5m" },
      async handler(ctx, state) {
        const msgs = await ctx.email.search({ folder: FOLDER, since: state?.since });
        const items = normalise(msgs.items);
        for (const m of items) {
          await ctx.publish("email.received", {
            messageId: m.id,
            title: titleOf(m),
            payload: { from: m.from, subject: m.subject },
          });
        }
        ctx.log("published", items.length);
        return { since: msgs.newest ?? state?.since };
      },
    },
  },
  consumers: {
    addRow: Keep.consumer({
      subscribe: ["email.received"],
      async prepare(ctx, state) {
        const [e] = await ctx.peek("email.received", { limit: 1 });
        if (!e) return { reservations: [], data: {} };
        return { reservations: [{ topic: "email.received", ids: [e.messageId] }],
                 data: { email: e.payload, id: e.messageId } };
      },
      async mutate(ctx, prepared) {
        await ctx.sql.insert({ table: "invoices", values: prepared.data.email });
      },
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
"""

#: 150 lines of helpers a real script carries (formatting, validation), parsed on every load.
HELPERS = "\n".join(
    f"function field{i}(o, d) {{ const v = o && o.f{i}; if (v === undefined) return d;"
    f" return typeof v === 'string' ? v.trim() : String(v); }}"
    for i in range(150))
SCRIPT_200 = HELPERS + "\n" + INVOCATION_SCRIPT

ITEMS = [{"id": f"m{i}", "from": "A@Example.com", "subject": f" Invoice {i} "} for i in (1, 2)]
BARE_SCRIPT = """
export default Keep.workflow({ name: "bare", topics: {}, consumers: {},
  producers: { p: async (ctx, state) => ({ n: 0 }) } });
"""


def _answer(call: HostCall) -> Reply:
    """Host calls answered at once: a search result for the tool call, nothing otherwise."""
    if call.target == "tool":
        return Resolve({"items": ITEMS, "newest": "2024-01-02"})
    return Resolve(None)


def bench_invocation(pool: SandboxPool, n: int) -> dict[str, Any]:
    full = Invocation(source=SCRIPT_200, handler=("producers", "pollInbox"),
                      args=(None,), undefined_args=frozenset({0}),
                      connections={"email": ("search",), "sql": ("insert",)})
    bare_inv = Invocation(source=BARE_SCRIPT, handler=("producers", "p"))

    def once(inv: Invocation) -> float:
        t0 = time.perf_counter()
        result = pool.invoke(inv, _answer)
        elapsed = time.perf_counter() - t0
        assert inv is bare_inv or result.host_calls == 3, result
        return elapsed

    for _ in range(20):
        once(full)
    three = [once(full) for _ in range(n)]
    bare = [once(bare_inv) for _ in range(n)]
    return {
        "script_lines": SCRIPT_200.count("\n") + 1,
        "three_host_calls": summary([t * 1000 for t in three]),
        "bare": summary([t * 1000 for t in bare]),
    }


def seed_history(host: Host, workflow_id: str, topic: str, count: int) -> float:
    """``count`` consumed events (and a history row each) already in ``topic``, inserted by
    the database itself from one template row; returns the seconds it took."""
    if count == 0:
        return 0.0
    t0 = time.perf_counter()
    with host.store.write() as conn:
        ev.publish_txn(conn, workflow_id, None, [EventDraft(
            topic, "h0", "Order #h0", p := {"id": 0, "customer": "ACME"}, sha256_json(p))],
            host.clock.now())
        series = ("generate_series(1, :n) AS s(n)" if conn.dialect.name == "postgresql" else
                  "(WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < :n)"
                  " SELECT n FROM r) AS s")
        conn.execute(text(
            "INSERT INTO events (workflow_id, topic, message_id, title, payload, payload_sha256,"
            " status, attempt, created_by, created_at, updated_at)"
            " SELECT t.workflow_id, t.topic, 'h' || s.n, 'Order #h' || s.n, t.payload,"
            " t.payload_sha256, 'consumed', 1, NULL, t.created_at, t.updated_at"
            f" FROM events t, {series} WHERE t.message_id = 'h0' AND t.topic = :topic"
        ), {"n": count - 1, "topic": topic})
        conn.execute(text(
            "UPDATE events SET status = 'consumed' WHERE message_id = 'h0' AND topic = :topic"
        ), {"topic": topic})
        conn.execute(text(
            "INSERT INTO event_history (event_id, at, status, run_id, note)"
            " SELECT id, created_at, 'consumed', NULL, 'consumed' FROM events"
            " WHERE workflow_id = :wf AND topic = :topic"), {"wf": workflow_id, "topic": topic})
    if host.store.engine.dialect.name == "postgresql":
        with host.store.engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
    return time.perf_counter() - t0


def bench_consumer_run(pool: SandboxPool, n: int, database_url: str | None = None,
                       sink: RemoteSink | None = None, history: int = 0) -> dict[str, Any]:
    """One workflow's consumer runs back to back; ``history`` consumed events already in the
    topic before the ``n`` pending ones."""
    own_sink = sink is None
    sink = sink or RemoteSink()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        connections = Connections([ConnectionConfig("http", "http", {}),
                                   ConnectionConfig("api", "http", {"base_url": sink.url})])
        host = Host(Settings(home=home, database_url=database_url), connections=connections,
                    pool=pool)
        commits = statements = 0

        def count(conn: Any) -> None:
            nonlocal commits
            if not conn.get_execution_options().get(READ_ONLY):  # reads commit nothing
                commits += 1

        def count_statement(*_: Any) -> None:
            nonlocal statements
            statements += 1

        event.listen(host.store.engine, "commit", count)
        event.listen(host.store.engine, "before_cursor_execute", count_statement)
        script = home / "bench.js"
        script.write_text(SCRIPT.replace("const a = await ctx.peekless;", ""), encoding="utf-8")
        service.deploy(host, script)
        wf = host.store.get_workflow("bench")
        version = host.store.get_version(wf.current_version_id or "")
        seeded = seed_history(host, wf.id, "orders", history)
        drafts = [EventDraft("orders", f"o{i}", f"Order #{i}", p := {
            "id": i, "customer": "ACME", "amount": 10 + i, "currency": "EUR"}, sha256_json(p))
            for i in range(n + 10)]
        with host.store.write() as conn:
            ev.publish_txn(conn, wf.id, None, drafts, host.clock.now())
        times, per_run, stmts = [], [], []
        with host.lease(wf) as fence:
            for _ in range(10):  # warm-up
                host.executor.run_consumer(wf, version, "work", "bench", fence)
            for _ in range(n):
                before, before_stmts = commits, statements
                t0 = time.perf_counter()
                out = host.executor.run_consumer(wf, version, "work", "bench", fence)
                times.append(time.perf_counter() - t0)
                per_run.append(commits - before)
                stmts.append(statements - before_stmts)
                assert out.ok, out
        host.close()
    if own_sink:
        sink.stop()
    return {
        "n": n,
        "store": "sqlite (WAL, synchronous=FULL)" if database_url is None else "postgresql",
        "latency": summary([t * 1000 for t in times]),
        "median_ms": round(statistics.median(times) * 1000, 3),
        "runs_per_second": round(1 / statistics.median(times), 1),
        "durable_commits_per_run": statistics.median(per_run),
        "statements_per_run": statistics.median(stmts),
        "sandbox_invocations_per_run": 3,
        "history_events": history,
        "history_seed_seconds": round(seeded, 1),
    }


def run(quick: bool = False) -> dict[str, Any]:
    n = 30 if quick else 200
    with SandboxPool(size=1) as pool:
        return {"invocation": bench_invocation(pool, n),
                "consumer_run": bench_consumer_run(pool, n)}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
