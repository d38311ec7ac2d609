"""The long torture: ≥ 10,000 mutations and ≥ 500 SIGKILLs, one JSON line.

    python -m bench.torture [--mutations N] [--kills K] [--seed S] [--database-url URL]
                            [--lanes L] [--quick]

The harness of ``tests/integration/test_torture.py`` (:mod:`tests.support.torture`): a loopback
server that, seeded, applies, applies then times out, times out, rejects, answers 5xx or drops
the connection; ``keepflow drain`` subprocesses over 12 workflows (per lane, below); a scripted
person answering the inbox truthfully from the server's record. Each ``keepflow`` process gets
one kill plan:

* a **fault-point kill**: ``KEEPFLOW_FAULTS`` arms one or two of the consumer path's named
  points (``in_flight``, ``mutation.after_call``, ``settle_<status>``, ``next``,
  ``consumer_commit``, ``record_run``) at a random hit count, sized so the process does about
  ``mutations / kills`` mutations first; now and then a ``keepflow trigger wN poll`` armed at a
  producer point instead;
* a **kill at a random instant**: SIGKILL after a uniformly drawn delay (from 0.1 s, i.e.
  during start-up, to start-up plus about twice the time that many mutations take);
* none, once the kills are done.

The harness polls the producers in-process (polling is not what is tortured) but never runs
start-up recovery itself, so the unfinished runs a kill leaves are always recovered by the next
``keepflow`` process. At the end: no more kills, poll/drain/answer until everything is settled,
and compare keepflow's record with the server's.

One ``keepflow`` start costs ~0.5 s of imports, so 500 kills are ~4 minutes of start-ups alone.
To use both cores, the run is split into ``lanes`` (2 by default) that run side by side, each an
independent torture world with its own store (a SQLite file), server, source database and
seed (``seed + lane``), driving its ``keepflow`` processes strictly one after another and doing
``mutations / lanes`` and ``kills / lanes`` (rounded up). With ``--database-url`` there is one
store, so one lane. The keys below are over all lanes (sums; maxima for ``max_*``).

Keys of the JSON line (the others are detail):

* ``mutations``: mutation attempts the server saw (its ``POST /orders`` requests, any outcome);
* ``kills``: SIGKILLs delivered to ``keepflow`` processes (exit status -9), split into
  ``kills_at_fault_points`` (the process's stderr names the point; per point in
  ``kills_by_point``) and ``kills_at_random_instants`` (the harness's timer fired);
* ``duplicates``: effects the server applied more than once for one order, plus attempts the
  ledger calls ``failed`` that the server applied;
* ``lost``: orders whose event is not ``consumed``/``skipped`` (or does not exist), plus
  ``applied`` ledger attempts whose effect is not on the server exactly once;
* ``indeterminate_escalated``: the person's answers to suspended mutations whose outcome
  keepflow could not decide — audit-log entries ``run.didnt_happen``, ``run.skip`` and
  ``run.try_again`` of runs that were ``suspended`` (read from keepflow's store, not from the
  harness's tally). ``escalated_by_ledger`` splits them by the ledger status when answered:
  ``indeterminate`` (reconciliation impossible — no reconcile method — or exhausted) or
  ``needs_reconcile`` (still being retried in the background when the person answered). The
  person never answers "try again", so each answer settles a distinct ledger attempt;
* ``max_recovery_s``: over every restart after a kill, the time from spawning the new
  ``keepflow`` process (wall clock just before ``Popen``) until the ``created_at`` the store
  records for the first *new* run it starts. ``drain`` and ``trigger`` start new runs only
  after start-up recovery has resumed every unfinished run (SPEC §5.5) — for ``drain`` also
  after the reconciliations that were due — so this is an upper bound on start-up plus
  recovery. A restart that starts no new run but exits normally counts until its exit; one
  killed again before starting a new run never finished recovery and is not measured
  (``recoveries_measured`` / ``recoveries_interrupted``). With two lanes, a restart shares
  the two cores with the other lane's process, as a host on a busy machine would;
* ``seconds``: wall time of the whole run; ``backend``: ``sqlite`` or ``postgresql``;
  ``answers``: the person's answers by kind (``retry`` for failed runs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.torture import SEED, Proc, Torture

LANES = 2
WORKFLOWS = 12  # per lane
CALL_SECONDS = 0.03  # connector timeouts (policy): a hang costs this much, not 30 s
HANG_SECONDS = 0.2  # the server's hang, well past the client's timeout
ORDERS_PER_ATTEMPT = 0.87  # roughly: retries and answers make ~1.15 attempts per order

#: (point, weight, hits per mutation attempt, roughly) on the consumer path (`keepflow drain`).
CONSUMER_POINTS = [
    ("in_flight.mid_commit", 3, 1.0), ("in_flight.after_commit", 3, 1.0),
    ("mutation.after_call", 4, 1.0),
    ("settle_applied.mid_commit", 2, 0.8), ("settle_applied.after_commit", 2, 0.8),
    ("settle_failed.mid_commit", 1, 0.15), ("settle_failed.after_commit", 1, 0.15),
    ("settle_indeterminate.mid_commit", 1, 0.05),
    ("settle_indeterminate.after_commit", 1, 0.05),
    ("settle_needs_reconcile.after_commit", 1, 0.03),
    ("next.before_commit", 2, 0.85),
    ("consumer_commit.mid_commit", 2, 0.85), ("consumer_commit.after_commit", 2, 0.85),
    ("record_run.mid_commit", 1, 0.2), ("record_run.after_commit", 1, 0.2),
]
PRODUCER_POINTS = ["producer.before_commit", "producer_commit.mid_commit",
                   "producer_commit.after_commit"]
PRODUCER_SHARE = 0.05  # of the kills: a producer run (`keepflow trigger wN poll`) instead
FAULT_SHARE = 0.5  # of the other kills: at a fault point (else at a random instant)


class Driver:
    """Runs the ``keepflow`` processes one after another, each with its kill plan, and measures
    the restarts."""

    def __init__(self, t: Torture, mutations: int, kills: int) -> None:
        self.t = t
        self.mutations = mutations
        self.kills = kills
        self.startups: list[float] = []  # spawn → first new run, every process that got there
        self.busy_seconds = 0.0  # drain time after start-up …
        self.busy_mutations = 0  # … and the mutations done in it
        self.recoveries: list[float] = []
        self.interrupted = 0
        self.after_kill = False

    def done(self) -> bool:
        return self.t.sink_mutations() >= self.mutations and self.t.kills >= self.kills

    # ------------------------------------------------------------------ estimates

    def startup(self) -> float:
        return statistics.median(self.startups[-50:]) if self.startups else 0.5

    def seconds_per_mutation(self) -> float:
        if self.busy_mutations < 20:
            return 0.015
        return min(max(self.busy_seconds / self.busy_mutations, 0.005), 0.2)

    def per_kill(self, seen: int) -> float:
        """Mutations each remaining kill should let happen first."""
        left = self.kills - self.t.kills
        return max((self.mutations - seen) / max(left, 1), 2.0)

    # ------------------------------------------------------------------ one round

    def feed(self) -> None:
        """Keep enough orders pending, without leaving a long tail for the end."""
        t = self.t
        counts = t.event_counts()
        finished = counts.get("consumed", 0) + counts.get("skipped", 0)
        if counts.get("pending", 0) >= 8 * WORKFLOWS:
            return
        wanted = (self.mutations - t.sink_mutations()) * ORDERS_PER_ATTEMPT
        backlog = t.orders - finished
        if backlog < wanted or t.kills < self.kills:
            t.add_orders(int(min(max(wanted - backlog, 2 * WORKFLOWS), 30 * WORKFLOWS)))
        t.poll_idle()

    def step(self) -> Proc:
        """One ``keepflow`` process with its kill plan; then the person answers."""
        t, rng = self.t, self.t.rng
        seen = t.sink_mutations()
        if t.kills >= self.kills:
            proc = t.keepflow("drain")
        elif rng.random() < PRODUCER_SHARE and (name := self._idle_workflow()) is not None:
            proc = t.keepflow("trigger", name, "poll", faults=f"{rng.choice(PRODUCER_POINTS)}:1")
        elif rng.random() < FAULT_SHARE:
            proc = t.keepflow("drain", faults=self._faults(self.per_kill(seen)))
        else:
            window = self.startup() + 2 * self.per_kill(seen) * self.seconds_per_mutation()
            proc = t.keepflow("drain", kill_after=rng.uniform(0.1, max(window, 0.2)))
        first = self._first_new_run(proc)
        if first is not None:
            self.startups.append(first)
            if proc.args[0] == "drain":
                self.busy_seconds += max(proc.ended - proc.started - first, 0.0)
                self.busy_mutations += t.sink_mutations() - seen
        if self.after_kill:  # this process is a restart: how long did its recovery take?
            if first is not None:
                self.recoveries.append(first)
            elif not proc.killed:
                self.recoveries.append(proc.ended - proc.started)
            else:
                self.interrupted += 1
        self.after_kill = proc.killed
        t.answer_inbox()
        return proc

    def _faults(self, per_kill: float) -> str:
        rng = self.t.rng
        names = [p for p, _, _ in CONSUMER_POINTS]
        weights = [w for _, w, _ in CONSUMER_POINTS]
        rates = {p: r for p, _, r in CONSUMER_POINTS}
        chosen = set(rng.choices(names, weights, k=2 if rng.random() < 0.25 else 1))
        return ",".join(f"{p}:{rng.randint(1, max(1, round(2 * per_kill * rates[p])))}"
                        for p in sorted(chosen))

    def _idle_workflow(self) -> str | None:
        """A workflow with no unfinished run (else the trigger would be refused)."""
        with self.t.host() as host:
            for _ in range(3):
                name = self.t.rng.choice(self.t.names())
                if not host.store.active_runs(host.store.get_workflow(name).id):
                    return name
        return None

    def _first_new_run(self, proc: Proc) -> float | None:
        """Seconds from spawning ``proc`` to the first run it created (from the store; nothing
        else writes runs while a ``keepflow`` process runs)."""
        from sqlalchemy import select

        from keepflow.store.schema import runs

        lo = datetime.fromtimestamp(proc.started, UTC)
        hi = datetime.fromtimestamp(proc.ended, UTC)
        q = (select(runs.c.created_at).where(runs.c.created_at >= lo, runs.c.created_at <= hi)
             .order_by(runs.c.created_at).limit(1))
        with self.t.host() as host, host.store.read() as conn:
            at = conn.execute(q).scalar()
        return None if at is None else at.timestamp() - proc.started


def run(mutations: int, kills: int, seed: int, database_url: str | None = None, *,
        lanes: int | None = None) -> dict[str, Any]:
    """One torture run; the summary (see the module docstring for each key)."""
    started = time.monotonic()
    n = 1 if database_url else (lanes or LANES)
    with tempfile.TemporaryDirectory(prefix="keepflow-torture-") as tmp_dir:
        tmp = Path(tmp_dir)
        urls, worlds = [], []
        try:
            for i in range(n):
                (tmp / f"lane{i}").mkdir()
                urls.append(database_url or f"sqlite:///{tmp / f'lane{i}' / 'keepflow.db'}")
                _refuse_used_store(urls[i])
                # Built here, one after another: opening a store runs Alembic, whose
                # module-level context is not safe to use from two threads at once.
                worlds.append(Torture(tmp / f"lane{i}", urls[i], seed=seed + i,
                                      workflows=WORKFLOWS, call_seconds=CALL_SECONDS,
                                      hang_seconds=HANG_SECONDS))
            with ThreadPoolExecutor(n, thread_name_prefix="torture-lane") as pool:
                futures = [pool.submit(_lane, t, -(-mutations // n), -(-kills // n))
                           for t in worlds]
                results = [f.result() for f in futures]
        finally:
            for t in worlds:
                t.close()
    recoveries = [r for lane in results for r in lane["recoveries"]]

    def total(key: str) -> Any:
        return sum(lane[key] for lane in results)

    def merged(key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for lane in results:
            for k, v in lane[key].items():
                out[k] = out.get(k, 0) + v
        return dict(sorted(out.items()))

    return {
        "mutations": total("mutations"), "kills": total("kills"),
        "kills_at_fault_points": sum(merged("kills_by_point").values()),
        "kills_at_random_instants": total("kills_at_random_instants"),
        "duplicates": total("duplicates"), "lost": total("lost"),
        "indeterminate_escalated": sum(merged("escalated_by_ledger").values()),
        "max_recovery_s": round(max(recoveries, default=0.0), 3),
        "seconds": round(time.monotonic() - started, 1),
        "backend": "postgresql" if urls[0].startswith("postgresql") else "sqlite",
        "seed": seed, "answers": merged("answers"),
        "escalated_by_ledger": merged("escalated_by_ledger"),
        "recovery_median_s": round(statistics.median(recoveries), 3) if recoveries else None,
        "recoveries_measured": len(recoveries),
        "recoveries_interrupted": total("recoveries_interrupted"),
        "kills_by_point": merged("kills_by_point"),
        **{key: total(key) for key in (
            "mutations_while_killing", "ledger_attempts", "processes", "orders",
            "ledger_applied", "server_applied", "server_applied_torn", "inbox_left")},
        "events": merged("events"), "lanes": n, "workflows_per_lane": WORKFLOWS,
        "seconds_in_processes": round(total("seconds_in_processes"), 1),
    }


def _lane(t: Torture, mutations: int, kills: int) -> dict[str, Any]:
    """One torture world, its processes one after another; its raw tallies."""
    d = Driver(t, mutations, kills)
    while not d.done():
        d.feed()
        d.step()
    if d.after_kill:
        d.step()  # the last kill's restart, by `keepflow drain` (settling polls with recovery)
    seen = t.sink_mutations()
    t.settle()
    summary = t.verify(t.attempts())
    escalated = _escalations(t)
    total = t.sink_mutations()
    return {
        "mutations": total, "kills": t.kills, "kills_by_point": t.kills_at_fault_points,
        "kills_at_random_instants": t.kills_at_random_instants,
        "duplicates": summary["duplicates"], "lost": summary["lost"],
        "escalated_by_ledger": escalated, "recoveries": d.recoveries,
        "recoveries_interrupted": d.interrupted, "answers": t.answers,
        "mutations_while_killing": seen, "ledger_attempts": summary["mutations"],
        "processes": t.processes, "seconds_in_processes": t.process_seconds,
        "orders": summary["orders"], "events": summary["events"],
        "ledger_applied": summary["ledger_applied"],
        "server_applied": summary["server_applied"],
        "server_applied_torn": summary["server_applied_torn"],
        "inbox_left": summary["inbox_left"],
    }


def _refuse_used_store(url: str) -> None:
    """The counts assume a store of this run alone."""
    from keepflow.store.store import Store

    store = Store(url)
    try:
        if store.list_workflows():
            raise ValueError(f"the store at {url} already has workflows; give the torture an "
                             "empty database")
    finally:
        store.close()


def _escalations(t: Torture) -> dict[str, int]:
    """The person's answers to suspended mutations, by ledger status, from the audit log."""
    from sqlalchemy import select

    from keepflow.store.schema import audit_log

    q = select(audit_log.c.before).where(audit_log.c.action.in_(
        ["run.didnt_happen", "run.skip", "run.try_again"]))
    out: dict[str, int] = {}
    with t.host() as host, host.store.read() as conn:
        for (before,) in conn.execute(q):
            if (before or {}).get("status") == "suspended":
                key = str(before.get("ledger"))
                out[key] = out.get(key, 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.torture", description=__doc__
                                     .split("\n\n")[0])
    parser.add_argument("--mutations", type=int, help="mutation attempts (default 10000)")
    parser.add_argument("--kills", type=int, help="SIGKILLs (default 500)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--database-url", help="the store (default: SQLite in a temporary "
                        "directory); an empty database")
    parser.add_argument("--lanes", type=int, help=f"independent worlds side by side (default "
                        f"{LANES}; 1 with --database-url)")
    parser.add_argument("--quick", action="store_true",
                        help="a few hundred mutations and ~20 kills (CI smoke)")
    args = parser.parse_args(argv)
    mutations = args.mutations or (300 if args.quick else 10_000)
    kills = args.kills or (20 if args.quick else 500)
    try:
        result = run(mutations, kills, args.seed, args.database_url, lanes=args.lanes)
    except ValueError as exc:
        print(f"bench.torture: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 1 if result["duplicates"] or result["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
