"""Torture: ≥ 2,000 mutations against a loopback server that randomly (seeded) applies then
times out, rejects, hangs, or answers 5xx; the host (`keepflow drain`) is SIGKILLed at random
instants; a scripted person answers the inbox *truthfully* (it looks at the server's record).

At the end: every event consumed or skipped, the server's effect exactly once per event the
ledger says applied, zero duplicates, zero lost — printed as one JSON summary line.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from keepflow import service
from keepflow.errors import Conflict
from keepflow.runtime.host import Host
from keepflow.settings import Settings
from tests.support.sink import Sink

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MUTATIONS = int(os.environ.get("KEEPFLOW_TORTURE_MUTATIONS", "2000"))
#: The same torture runs on PostgreSQL, shorter, to keep the suite's wall time sane.
MUTATIONS_PG = int(os.environ.get("KEEPFLOW_TORTURE_MUTATIONS_PG", "600"))
WORKFLOWS = 8
SEED = 20261127

BEHAVIOURS = [  # (behaviour, weight): what the server does with one mutation
    ("ok", 72), ("apply_then_timeout", 5), ("timeout", 3), ("reject_400", 3),
    ("unavailable_503", 8), ("apply_then_500", 4), ("error_500", 3), ("close", 2),
]

SCRIPT = """
export default Keep.workflow({
  name: "NAME",
  topics: { "orders": {} },
  producers: {
    poll: async (ctx, state) => {
      const res = await ctx.source.query({
        sql: "SELECT id FROM orders WHERE wf = :wf AND id > :after ORDER BY id LIMIT 100",
        params: { wf: "NAME", after: state?.after ?? 0 } });
      for (const o of res.rows)
        await ctx.publish("orders", { messageId: "o" + o.id, title: "Order #" + o.id,
                                      payload: o });
      return { after: res.rows.length ? res.rows[res.rows.length - 1].id : (state?.after ?? 0) };
    },
  },
  consumers: {
    send: Keep.consumer({
      subscribe: ["orders"],
      async prepare(ctx) {
        const [e] = await ctx.peek("orders", { limit: 1 });
        if (!e) return { reservations: [], data: {} };
        return { reservations: [{ topic: "orders", ids: [e.messageId] }], data: e.payload };
      },
      async mutate(ctx, prepared) {
        // Odd orders can be reconciled; even ones cannot: their uncertain outcomes go to the
        // person.
        if (prepared.data.id % 2)
          await ctx.api.post({ url: "/orders", json: { order: prepared.data.id },
                               reconcile: { url: "/records/{idempotencyKey}" } });
        else
          await ctx.api.post({ url: "/orders", json: { order: prepared.data.id } });
      },
      async next(ctx, prepared, mutation) { return { last: prepared.data.id }; },
    }),
  },
});
"""

POLICY = """
[retry]
max_attempts = 3
base_seconds = 0.01
jitter = 0
[reconcile]
max_attempts = 3
base_seconds = 0.0
max_delay_seconds = 0.0
[timeouts]
tool_call_seconds = 0.25
reconcile_call_seconds = 0.25
"""


class Torture:
    def __init__(self, tmp: Path, store_url: str) -> None:
        self.rng = random.Random(SEED)
        self.sink = Sink(hang_seconds=0.6)
        weights = [w for _, w in BEHAVIOURS]
        names = [b for b, _ in BEHAVIOURS]
        self.sink.chooser = lambda: self.rng.choices(names, weights)[0]
        self.sink.lookup_chooser = lambda: "unavailable_503" if self.rng.random() < 0.3 \
            else "truthful"
        self.sink.start()
        self.home = tmp / "home"
        self.home.mkdir()
        self.source = tmp / "source.db"
        with sqlite3.connect(self.source) as db:
            db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, wf TEXT)")
        (self.home / "connections.toml").write_text(textwrap.dedent(f"""
            [connections.source]
            type = "sql"
            url = "sqlite:///{self.source}"
            [connections.api]
            type = "http"
            base_url = "{self.sink.url}"
        """), encoding="utf-8")
        (self.home / "policy.toml").write_text(POLICY, encoding="utf-8")
        self.env = {**os.environ, "KEEPFLOW_HOME": str(self.home),
                    "KEEPFLOW_DATABASE_URL": store_url, "KEEPFLOW_SANDBOX_WORKERS": "1"}
        self.env.pop("KEEPFLOW_FAULTS", None)
        self.settings = Settings(home=self.home, database_url=store_url)
        self.orders = 0
        self.kills = 0
        self.answers: dict[str, int] = {}
        self.inbox_kinds: set[str] = set()
        self.cli_inbox_checked = False
        for i in range(WORKFLOWS):
            path = tmp / f"w{i}.js"
            path.write_text(SCRIPT.replace("NAME", f"w{i}"), encoding="utf-8")
            with self.host() as host:
                service.deploy(host, path)

    def host(self) -> Host:
        return Host(self.settings)

    def attempts(self) -> int:
        """Mutation attempts so far (ledger rows)."""
        from sqlalchemy import func, select

        from keepflow.store.schema import mutations

        with self.host() as host, host.store.read() as conn:
            return int(conn.execute(select(func.count()).select_from(mutations)).scalar() or 0)

    def poll_all(self) -> None:
        """The producers read new orders (in this process: polling is not what is tortured);
        a workflow waiting for an answer is polled in a later round."""
        with self.host() as host:
            for w in range(WORKFLOWS):
                with contextlib.suppress(Conflict):
                    service.trigger(host, f"w{w}", "poll")

    def settled(self) -> bool:
        with self.host() as host:
            if service.inbox(host):
                return False
            published = sum(len(service.list_events(host, f"w{w}", limit=100_000))
                            for w in range(WORKFLOWS))
            pending = sum(1 for w in range(WORKFLOWS)
                          for e in service.list_events(host, f"w{w}", status="pending"))
        return published == self.orders and pending == 0

    def add_orders(self, n: int) -> None:
        with sqlite3.connect(self.source) as db:
            for _ in range(n):
                self.orders += 1
                db.execute("INSERT INTO orders (id, wf) VALUES (?, ?)",
                           (self.orders, f"w{self.rng.randrange(WORKFLOWS)}"))

    def keepflow(self, *args: str, kill_after: float | None = None) -> int:
        proc = subprocess.Popen([sys.executable, "-m", "keepflow.cli", *args], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        timer = None
        if kill_after is not None:
            timer = threading.Timer(kill_after, lambda: _kill(proc))
            timer.start()
        _, err = proc.communicate(timeout=600)
        if timer is not None:
            timer.cancel()
        if proc.returncode == -signal.SIGKILL:
            self.kills += 1
        elif proc.returncode == 1 and "unfinished run" in err:
            pass  # trigger refused: the workflow waits for an answer first (SPEC §15.15)
        elif proc.returncode not in (0, 3, 4):
            raise AssertionError(f"keepflow {' '.join(args)} exited {proc.returncode}: {err}")
        return proc.returncode

    def answer_inbox(self) -> int:
        """The scripted person: truthful answers, from the server's own record."""
        answered = 0
        if not self.cli_inbox_checked:
            res = subprocess.run([sys.executable, "-m", "keepflow.cli", "inbox", "--json"],
                                 env=self.env, capture_output=True, text=True, timeout=120,
                                 check=True)
            items = json.loads(res.stdout)
            for item in items:  # what the person sees on the command line
                _check_precise(item)
            self.cli_inbox_checked = bool(items)
        with self.host() as host:
            for item in service.inbox(host):
                self.inbox_kinds.add(item["kind"])
                _check_precise(item)
                run_id = item["run"]
                try:
                    if item["kind"] == "failed_run":
                        answer = "retry"
                        service.retry_run(host, run_id, actor="torture")
                    elif item["kind"] in ("unknown_outcome", "reconciling"):
                        key = host.store.mutations_of(run_id)[-1].idempotency_key
                        happened = self.sink.record(key) is not None
                        answer = "skip" if happened else "didnt_happen"
                        service.resolve(host, run_id, answer,  # type: ignore[arg-type]
                                        actor="torture")
                    else:
                        continue
                except Conflict:
                    continue  # another of the workflow's runs must be answered first
                self.inbox_kinds.add(f"answered:{item['kind']}")
                self.answers[answer] = self.answers.get(answer, 0) + 1
                answered += 1
        return answered


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)


def _check_precise(item: dict[str, Any]) -> None:
    """Every inbox item says what is blocked, why, what to check, and what each choice does."""
    for field in ("title", "blocked", "why", "check"):
        assert item[field], (field, item)
        assert "None" not in item[field], (field, item)
    assert item["choices"], item
    for c in item["choices"]:
        assert c["command"].startswith("keepflow "), item
        assert c["effect"], item


@pytest.mark.timeout(2400)
def test_torture(tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    t = Torture(tmp_path, store_url)
    target = MUTATIONS_PG if store_url.startswith("postgresql") else MUTATIONS
    while True:
        attempts = t.attempts()
        if attempts >= target:
            break
        t.add_orders(150)
        t.poll_all()
        for _ in range(6):
            kill = t.rng.uniform(0.3, 2.5) if t.rng.random() < 0.5 else None
            t.keepflow("drain", kill_after=kill)
            t.answer_inbox()
    # settle: no more kills; poll, drain and answer until nothing is left
    for _ in range(200):
        t.poll_all()
        t.keepflow("drain")
        if t.answer_inbox() == 0 and t.settled():
            break
    summary = _verify(t, attempts)
    t.sink.stop()
    with capsys.disabled():
        print(f"\ntorture: {json.dumps(summary)}")
    assert summary["duplicates"] == 0
    assert summary["lost"] == 0
    assert summary["mutations"] >= target
    assert summary["inbox_left"] == 0


def _verify(t: Torture, attempts: int) -> dict[str, Any]:
    applied_by_order: dict[int, int] = {}
    for body in t.sink.applied_bodies():
        applied_by_order[body["order"]] = applied_by_order.get(body["order"], 0) + 1
    duplicates = sum(n - 1 for n in applied_by_order.values() if n > 1)
    lost = 0
    statuses: dict[str, int] = {}
    ledger_applied = 0
    with t.host() as host:
        for w in range(WORKFLOWS):
            events = {e["messageId"]: e for e in service.list_events(host, f"w{w}",
                                                                      limit=100_000)}
            runs = service.list_runs(host, f"w{w}", 100_000)
            for e in events.values():
                statuses[e["status"]] = statuses.get(e["status"], 0) + 1
                if e["status"] not in ("consumed", "skipped"):
                    lost += 1
            for r in runs:
                for m in r["mutations"]:
                    if m["status"] == "applied":
                        ledger_applied += 1
                        order = int(m["params"]["json"]["order"])
                        if applied_by_order.get(order) != 1:  # effect not exactly once
                            lost += 1
                    elif m["status"] == "failed" and t.sink.record(m["idempotencyKey"]):
                        duplicates += 1  # the ledger said it did not happen, but it did
        inbox_left = len(service.inbox(host))
        expected = t.orders
    lost += expected - sum(statuses.values())
    return {"mutations": attempts, "orders": expected, "events": statuses,
            "ledger_applied": ledger_applied, "server_applied": len(t.sink.applied),
            "kills": t.kills, "answers": t.answers, "inbox_kinds": sorted(t.inbox_kinds),
            "inbox_left": inbox_left, "duplicates": duplicates, "lost": lost}
