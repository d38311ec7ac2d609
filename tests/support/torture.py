"""The torture harness, shared by ``tests/integration/test_torture.py`` and ``bench/torture.py``.

A loopback server (:class:`~tests.support.sink.Sink`) that, seeded, applies, applies then times
out, times out, rejects, answers 5xx or drops the connection; ``keepflow`` subprocesses that are
SIGKILLed at random instants or at named fault points (``KEEPFLOW_FAULTS``); a scripted person
who answers the inbox *truthfully* from the server's own record; and the final comparison of
keepflow's record with the server's (duplicates, lost).
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
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keepflow import service
from keepflow.errors import Conflict
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from tests.support.sink import Sink

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
tool_call_seconds = {call_seconds}
reconcile_call_seconds = {call_seconds}
"""

#: What a fault-point kill prints on the killed process's stderr (``keepflow.faults``).
_FAULT_LINE = "keepflow: fault point "


@dataclass
class Proc:
    """One ``keepflow`` subprocess: how it ended, and when (wall clock, ``time.time()``)."""

    args: tuple[str, ...]
    returncode: int
    started: float
    ended: float
    #: The fault point that SIGKILLed it (``KEEPFLOW_FAULTS``), if one did.
    fault: str | None = None
    #: SIGKILLed by the harness's timer at a random instant.
    timer: bool = False

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


@dataclass
class Running:
    """A ``keepflow`` subprocess not yet waited for."""

    args: tuple[str, ...]
    proc: subprocess.Popen[str]
    started: float
    timer: threading.Timer | None = None
    fired: threading.Event = field(default_factory=threading.Event)


class Torture:
    """The world of one torture run: the sink, the source database of orders, ``workflows``
    workflows deployed from :data:`SCRIPT`, and the tallies of kills and answers."""

    def __init__(self, tmp: Path, store_url: str, *, seed: int = SEED, workflows: int = 8,
                 call_seconds: float = 0.25, hang_seconds: float = 0.6) -> None:
        self.rng = random.Random(seed)
        self.workflows = workflows
        self.sink = Sink(hang_seconds=hang_seconds)
        weights = [w for _, w in BEHAVIOURS]
        names = [b for b, _ in BEHAVIOURS]
        self.sink.chooser = lambda: self.rng.choices(names, weights)[0]
        self.sink.lookup_chooser = lambda: "unavailable_503" if self.rng.random() < 0.3 \
            else "truthful"
        self.sink.start()
        _quiet_disconnects(self.sink)
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
        (self.home / "policy.toml").write_text(POLICY.format(call_seconds=call_seconds),
                                               encoding="utf-8")
        self.env = {**os.environ, "KEEPFLOW_HOME": str(self.home),
                    "KEEPFLOW_DATABASE_URL": store_url, "KEEPFLOW_SANDBOX_WORKERS": "1"}
        self.env.pop("KEEPFLOW_FAULTS", None)
        self.settings = Settings(home=self.home, database_url=store_url)
        self.orders = 0
        self.kills = 0
        self.kills_at_fault_points: dict[str, int] = {}
        self.kills_at_random_instants = 0
        self.processes = 0
        self.process_seconds = 0.0  # wall time spent waiting for `keepflow` subprocesses
        self.answers: dict[str, int] = {}
        self.inbox_kinds: set[str] = set()
        self.cli_inbox_checked = False
        self._applied_keys: set[str] = set()
        self._applied_seen = 0
        # One in-process host (and sandbox worker) for the harness's own work: polling and the
        # person's answers. The `keepflow` subprocesses are what is tortured.
        self._pool = SandboxPool(size=1)
        self._host = Host(self.settings, pool=self._pool)
        for i in range(workflows):
            path = tmp / f"w{i}.js"
            path.write_text(SCRIPT.replace("NAME", f"w{i}"), encoding="utf-8")
            with self.host() as host:
                service.deploy(host, path)

    def close(self) -> None:
        self._host.close()
        self._pool.close()
        self.sink.stop()

    @contextlib.contextmanager
    def host(self) -> Iterator[Host]:
        yield self._host

    def names(self) -> list[str]:
        return [f"w{i}" for i in range(self.workflows)]

    # ------------------------------------------------------------------ counting

    def attempts(self) -> int:
        """Mutation attempts so far (ledger rows)."""
        from sqlalchemy import func, select

        from keepflow.store.schema import mutations

        with self.host() as host, host.store.read() as conn:
            return int(conn.execute(select(func.count()).select_from(mutations)).scalar() or 0)

    def sink_mutations(self) -> int:
        """Mutation attempts the server saw (requests to ``POST /orders``)."""
        return sum(1 for method, path, _ in list(self.sink.requests)
                   if method == "POST" and path == "/orders")

    def event_counts(self) -> dict[str, int]:
        """Events of all workflows by status."""
        from sqlalchemy import func, select

        from keepflow.store.schema import events

        with self.host() as host, host.store.read() as conn:
            rows = conn.execute(select(events.c.status, func.count())
                                .group_by(events.c.status)).all()
        return {str(status): int(n) for status, n in rows}

    def happened(self, key: str) -> bool:
        """Whether the server applied the mutation with this idempotency key (its record)."""
        with self.sink.lock:
            fresh = self.sink.applied[self._applied_seen:]
            self._applied_seen += len(fresh)
        self._applied_keys.update(a.key for a in fresh)
        return key in self._applied_keys

    # ------------------------------------------------------------------ driving

    def poll_all(self) -> None:
        """The producers read new orders (in this process: polling is not what is tortured);
        a workflow waiting for an answer is polled in a later round."""
        with self.host() as host:
            for name in self.names():
                with contextlib.suppress(Conflict):
                    service.trigger(host, name, "poll")

    def poll_idle(self) -> None:
        """Like :meth:`poll_all`, but without the start-up recovery ``service.trigger`` does:
        workflows with an unfinished run are left alone, so a run that a kill left unfinished
        is always resumed by the next ``keepflow`` process."""
        with self.host() as host:
            for name in self.names():
                wf = host.store.get_workflow(name)
                if wf.current_version_id is None or host.store.active_runs(wf.id):
                    continue
                version = host.store.get_version(wf.current_version_id)
                with contextlib.suppress(Conflict), host.lease(wf) as fence:
                    host.executor.run_producer(wf, version, "poll", "manual", fence)

    def settled(self) -> bool:
        with self.host() as host:
            if service.inbox(host):
                return False
        counts = self.event_counts()
        return sum(counts.values()) == self.orders and counts.get("pending", 0) == 0

    def add_orders(self, n: int) -> None:
        with sqlite3.connect(self.source) as db:
            for _ in range(n):
                self.orders += 1
                db.execute("INSERT INTO orders (id, wf) VALUES (?, ?)",
                           (self.orders, f"w{self.rng.randrange(self.workflows)}"))

    def keepflow(self, *args: str, kill_after: float | None = None,
                 faults: str | None = None) -> Proc:
        """Run ``keepflow ARGS``; SIGKILL it after ``kill_after`` seconds, or let
        ``KEEPFLOW_FAULTS=faults`` kill it at a named point."""
        return self.wait(self.spawn(*args, kill_after=kill_after, faults=faults))

    def spawn(self, *args: str, kill_after: float | None = None,
              faults: str | None = None) -> Running:
        """Start ``keepflow ARGS`` (see :meth:`keepflow`); :meth:`wait` for it."""
        env = self.env if faults is None else {**self.env, "KEEPFLOW_FAULTS": faults}
        started = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "keepflow.cli", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.processes += 1
        running = Running(tuple(args), proc, started)
        if kill_after is not None:
            running.timer = threading.Timer(kill_after, _kill, (proc, running.fired))
            running.timer.start()
        return running

    def wait(self, running: Running) -> Proc:
        """Wait for a spawned ``keepflow`` process; tally how it ended."""
        proc, args = running.proc, running.args
        _, err = proc.communicate(timeout=600)
        ended = time.time()
        self.process_seconds += ended - running.started
        if running.timer is not None:
            running.timer.cancel()
        out = Proc(args, proc.returncode, running.started, ended)
        if proc.returncode == -signal.SIGKILL:
            self.kills += 1
            fault = _fault_of(err)
            if fault is not None:
                out.fault = fault
                self.kills_at_fault_points[fault] = self.kills_at_fault_points.get(fault, 0) + 1
            else:
                assert running.fired.is_set(), \
                    f"keepflow {' '.join(args)} was SIGKILLed by nobody: {err}"
                out.timer = True
                self.kills_at_random_instants += 1
        elif proc.returncode == 1 and "unfinished run" in err:
            pass  # trigger refused: the workflow waits for an answer first (SPEC §15.15)
        elif proc.returncode not in (0, 3, 4):
            raise AssertionError(f"keepflow {' '.join(args)} exited {proc.returncode}: {err}")
        return out

    def answer_inbox(self) -> int:
        """The scripted person: truthful answers, from the server's own record."""
        answered = 0
        if not self.cli_inbox_checked:
            res = subprocess.run([sys.executable, "-m", "keepflow.cli", "inbox", "--json"],
                                 env=self.env, capture_output=True, text=True, timeout=120,
                                 check=True)
            items = json.loads(res.stdout)
            for item in items:  # what the person sees on the command line
                check_precise(item)
            self.cli_inbox_checked = bool(items)
        with self.host() as host:
            for item in service.inbox(host):
                self.inbox_kinds.add(item["kind"])
                check_precise(item)
                run_id = item["run"]
                try:
                    if item["kind"] == "failed_run":
                        answer = "retry"
                        service.retry_run(host, run_id, actor="torture")
                    elif item["kind"] in ("unknown_outcome", "reconciling"):
                        key = host.store.mutations_of(run_id)[-1].idempotency_key
                        answer = "skip" if self.happened(key) else "didnt_happen"
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

    def settle(self, rounds: int = 200) -> None:
        """No more kills: poll, drain and answer until nothing is left."""
        for _ in range(rounds):
            self.poll_all()
            self.keepflow("drain")
            if self.answer_inbox() == 0 and self.settled():
                return

    # ------------------------------------------------------------------ verification

    def verify(self, attempts: int) -> dict[str, Any]:
        """keepflow's record against the server's: an effect applied more than once, or applied
        although the ledger says it failed, is a duplicate; an event neither consumed nor
        skipped, or an applied ledger attempt whose effect is not there exactly once, is lost."""
        lost = 0
        statuses: dict[str, int] = {}
        ledger: list[dict[str, Any]] = []
        with self.host() as host:
            for name in self.names():
                for e in service.list_events(host, name, limit=100_000):
                    statuses[e["status"]] = statuses.get(e["status"], 0) + 1
                    if e["status"] not in ("consumed", "skipped"):
                        lost += 1
                ledger += [m for r in service.list_runs(host, name, 100_000)
                           for m in r["mutations"]]
            inbox_left = len(service.inbox(host))
        order_of_key = {m["idempotencyKey"]: int(m["params"]["json"]["order"]) for m in ledger}
        applied_by_order: dict[int | None, int] = {}
        torn = 0
        with self.sink.lock:
            applied = list(self.sink.applied)
        for a in applied:
            if isinstance(a.body, dict):
                order = a.body["order"]
            else:
                # The host was killed between sending the request's headers and its body, and
                # the server applied it anyway: which order it was is in the ledger, by key.
                torn += 1
                order = order_of_key.get(a.key)
            applied_by_order[order] = applied_by_order.get(order, 0) + 1
        duplicates = sum(n - 1 for order, n in applied_by_order.items()
                         if order is not None and n > 1)
        duplicates += applied_by_order.get(None, 0)  # an effect keepflow knows nothing about
        ledger_applied = 0
        for m in ledger:
            if m["status"] == "applied":
                ledger_applied += 1
                if applied_by_order.get(order_of_key[m["idempotencyKey"]]) != 1:
                    lost += 1  # the effect is not there exactly once
            elif m["status"] == "failed" and self.happened(m["idempotencyKey"]):
                duplicates += 1  # the ledger said it did not happen, but it did
        lost += self.orders - sum(statuses.values())
        return {"mutations": attempts, "orders": self.orders, "events": statuses,
                "ledger_applied": ledger_applied, "server_applied": len(applied),
                "server_applied_torn": torn, "kills": self.kills, "answers": self.answers,
                "inbox_kinds": sorted(self.inbox_kinds), "inbox_left": inbox_left,
                "duplicates": duplicates, "lost": lost}


def _quiet_disconnects(sink: Sink) -> None:
    """A killed host drops its connections mid-request: expected here, so not worth a
    traceback on stderr (other errors still get one)."""
    server = sink.server
    assert server is not None
    report = server.handle_error

    def handle_error(request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            report(request, client_address)

    server.handle_error = handle_error  # type: ignore[method-assign]


def _kill(proc: subprocess.Popen[str], fired: threading.Event) -> None:
    if proc.poll() is None:
        fired.set()
        proc.send_signal(signal.SIGKILL)


def _fault_of(stderr: str) -> str | None:
    """The fault point named by a fault-point kill's last words on stderr."""
    for line in stderr.splitlines():
        if line.startswith(_FAULT_LINE):
            return line[len(_FAULT_LINE):].split(" hit ", 1)[0]
    return None


def check_precise(item: dict[str, Any]) -> None:
    """Every inbox item says what is blocked, why, what to check, and what each choice does."""
    for name in ("title", "blocked", "why", "check"):
        assert item[name], (name, item)
        assert "None" not in item[name], (name, item)
    assert item["choices"], item
    for c in item["choices"]:
        assert c["command"].startswith("keepflow "), item
        assert c["effect"], item
