"""Core runtime costs: one handler invocation, one full consumer run, commits per run.

    python -m bench.runtime [--quick]

* ``invocation``: fresh context + load a 50-line script + call a handler making 3 host calls
  (a search, two publishes; answered immediately) in a sandbox worker process; and a bare
  invocation (trivial script, no host calls) for comparison.
* ``consumer_run``: prepare → mutation (HTTP POST to a loopback sink, with reconcile) → next →
  commit, on the embedded SQLite store (WAL, synchronous=FULL), end to end.
* ``commits_per_run``: durable commits of one happy-path consumer run (target ≤ 3).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from keepflow import service
from keepflow.connectors.base import ConnectionConfig
from keepflow.connectors.config import Connections
from keepflow.runtime.host import Host
from keepflow.sandbox.api import HostCall, Invocation, Reply, Resolve
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from keepflow.store.engine import READ_ONLY
from tests.support.sink import Sink

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
    full = Invocation(source=INVOCATION_SCRIPT, handler=("producers", "pollInbox"),
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
        "n": n,
        "three_host_calls_median_ms": round(statistics.median(three) * 1000, 3),
        "three_host_calls_p95_ms": round(sorted(three)[int(n * 0.95) - 1] * 1000, 3),
        "bare_median_ms": round(statistics.median(bare) * 1000, 3),
        "host_call_round_trip_ms": round(
            (statistics.median(three) - statistics.median(bare)) / 3 * 1000, 3),
    }


def bench_consumer_run(pool: SandboxPool, n: int) -> dict[str, Any]:
    sink = Sink().start()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        connections = Connections([ConnectionConfig("http", "http", {}),
                                   ConnectionConfig("api", "http", {"base_url": sink.url})])
        host = Host(Settings(home=home), connections=connections, pool=pool)
        commits = 0

        def count(conn: Any) -> None:
            nonlocal commits
            if not conn.get_execution_options().get(READ_ONLY):  # reads commit nothing
                commits += 1

        event.listen(host.store.engine, "commit", count)
        script = home / "bench.js"
        script.write_text(SCRIPT.replace("const a = await ctx.peekless;", ""), encoding="utf-8")
        service.deploy(host, script)
        wf = host.store.get_workflow("bench")
        version = host.store.get_version(wf.current_version_id or "")
        from keepflow.model import EventDraft
        from keepflow.store.rows import sha256_json

        drafts = [EventDraft("orders", f"o{i}", f"Order #{i}", p := {
            "id": i, "customer": "ACME", "amount": 10 + i, "currency": "EUR"}, sha256_json(p))
            for i in range(n + 10)]
        with host.store.write() as conn:
            from keepflow.store import events as ev

            ev.publish_txn(conn, wf.id, None, drafts, host.clock.now())
        times, per_run = [], []
        with host.lease(wf) as fence:
            for _ in range(10):  # warm-up
                host.executor.run_consumer(wf, version, "work", "bench", fence)
            for _ in range(n):
                before = commits
                t0 = time.perf_counter()
                out = host.executor.run_consumer(wf, version, "work", "bench", fence)
                times.append(time.perf_counter() - t0)
                per_run.append(commits - before)
                assert out.ok, out
        host.close()
    sink.stop()
    return {
        "n": n,
        "store": "sqlite (WAL, synchronous=FULL)",
        "median_ms": round(statistics.median(times) * 1000, 3),
        "p95_ms": round(sorted(times)[int(n * 0.95) - 1] * 1000, 3),
        "runs_per_second": round(1 / statistics.median(times), 1),
        "durable_commits_per_run": statistics.median(per_run),
        "sandbox_invocations_per_run": 3,
    }


def run(quick: bool = False) -> dict[str, Any]:
    n = 30 if quick else 200
    with SandboxPool(size=1) as pool:
        inv = bench_invocation(pool, n)
        consumer = bench_consumer_run(pool, n // 2)
    consumer["sandbox_share"] = round(
        inv["three_host_calls_median_ms"] * 3 / consumer["median_ms"], 3)
    return {"invocation": inv, "consumer_run": consumer}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
