"""The cost of one invocation (fresh context + prelude + module + handler), measured.

Run with ``-s`` to see the numbers; the bounds are generous so that only a regression of an
order of magnitude fails.
"""

from __future__ import annotations

import statistics
import time

import pytest
from sbx_it_helpers import Host, workflow

from keepflow.sandbox.api import HostCall, Invocation, Resolve
from keepflow.sandbox.pool import SandboxPool

pytestmark = pytest.mark.integration

FIFTY_LINES = """
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


def reply(call: HostCall) -> Resolve:
    if call.target == "tool":
        return Resolve({"items": ITEMS, "newest": "2024-01-02"})
    return Resolve(None)


def median_ms(pool: SandboxPool, inv: Invocation, n: int = 200) -> float:
    host = Host(reply)
    for _ in range(20):  # warm up
        pool.invoke(inv, host)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        pool.invoke(inv, host)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def test_invocation_cost() -> None:
    with SandboxPool(size=1) as pool:
        full = Invocation(FIFTY_LINES, ("producers", "pollInbox"), args=(None,),
                          undefined_args=frozenset({0}),
                          connections={"email": ("search",), "sql": ("insert",)})
        assert FIFTY_LINES.count("\n") >= 50
        result = pool.invoke(full, Host(reply))
        assert result.host_calls == 3
        assert result.value == {"since": "2024-01-02"}
        bare = Invocation(workflow("return 1;"), ("producers", "p"))
        full_ms = median_ms(pool, full)
        bare_ms = median_ms(pool, bare)
        describe_start = time.perf_counter()
        for _ in range(50):
            pool.describe(FIFTY_LINES)
        describe_ms = (time.perf_counter() - describe_start) / 50 * 1000
        print(f"\ninvoke, 50-line script, 3 host calls: median {full_ms:.2f} ms")
        print(f"invoke, bare, no host calls:          median {bare_ms:.2f} ms")
        print(f"describe, 50-line script:             mean   {describe_ms:.2f} ms")
        assert full_ms < 50
        assert bare_ms < 30
