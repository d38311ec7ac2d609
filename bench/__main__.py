"""``python -m bench``: every benchmark, on SQLite and PostgreSQL, in one invocation.

Writes ``bench/results/<date>.json`` and regenerates ``docs/performance.md`` (with plots in
``docs/img/``). Ratios are computed from numbers measured in this same run, because absolute
times drift on shared machines.

    python -m bench                 # everything (≈ 16 minutes on 2 cores)
    python -m bench --quick --docs /tmp/report   # the smoke run CI makes (tiny sizes, < 1 min)
    python -m bench --backends sqlite --no-peer --no-torture
    python -m bench.web             # only the web surfaces (prints JSON; see bench/web.py)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import floor, report, runtime, scheduler, web
from bench.common import (
    BACKENDS,
    Backends,
    RemoteSink,
    backends,
    ratio,
    store_label,
    temp_home,
)
from keepflow.sandbox.pool import SandboxPool

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "sqlite": sqlite3.sqlite_version}


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _backend(name: str, b: Backends, floor_numbers: dict[str, Any], quick: bool,
             with_web: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"store": store_label(name)}

    def fresh() -> str | None:
        return b.url(name)

    n = 30 if quick else 300
    with SandboxPool(size=1) as pool, RemoteSink() as sink:
        _log(f"{name}: one consumer run")
        run = runtime.bench_consumer_run(pool, n, fresh(), sink)
    out["consumer_run"] = run
    fl = floor.consumer_run_floor(floor_numbers, name, run["durable_commits_per_run"],
                                  run["sandbox_invocations_per_run"])
    out["consumer_run_floor"] = fl
    out["consumer_run_vs_floor"] = ratio(run["latency"]["median"], fl["floor_ms"])
    with SandboxPool(size=scheduler.CONCURRENCY) as pool:
        _log(f"{name}: publish → consumer start latency")
        out["latency"] = scheduler.bench_latency(pool, 20 if quick else 300, fresh)
        _log(f"{name}: throughput 1 / 10 / 100 workflows")
        out["throughput"] = tp = scheduler.bench_throughput(pool, quick, fresh)
        commit = floor_numbers["sqlite_commit" if name == "sqlite" else "postgresql_commit"]
        busiest = max(tp[f"workflows_{k}"]["runs_per_second"] for k in (1, 10, 100))
        tp["store_commit_utilisation"] = round(
            busiest * run["durable_commits_per_run"] / commit["per_second"], 3)
        _log(f"{name}: history growth")
        out["history"] = scheduler.bench_history(pool, quick, fresh)
        _log(f"{name}: idle workflows")
        # --quick: the serve start-up and the readings still happen, without the long waits
        settle = 0.5 if quick else 10.0
        out["idle"] = scheduler.bench_idle(pool, 200 if quick else 10_000,
                                           0.5 if quick else 30, fresh, settle)
        _log(f"{name}: memory")
        out["memory"] = scheduler.bench_idle(pool, 50 if quick else 1_000,
                                             0.5 if quick else 2, fresh, settle)
    if with_web:
        _log(f"{name}: web surfaces (events list, inbound event → consumer start)")
        out["web"] = web.run_backend(fresh, quick)
    return out


def _peer(b: Backends, results: dict[str, Any], quick: bool) -> dict[str, Any]:
    from bench.peers import dbos_peer

    runs = 100 if quick else 1000
    out: dict[str, Any] = {}
    for name, res in results.items():
        url = None if name == "sqlite" else b.url(name).replace("+psycopg", "")
        side: dict[str, Any] = {}
        for n in (1, 100):
            _log(f"{name}: DBOS peer, {n} workflow(s)")
            dbos = dbos_peer.run(n, runs // n, database_url=url)
            ours = res["throughput"][f"workflows_{n}"]
            side[f"workflows_{n}"] = {
                "dbos": dbos, "keepflow": ours,
                "keepflow_vs_dbos_runs_per_second": ratio(ours["runs_per_second"],
                                                          dbos["runs_per_second"]),
                "keepflow_vs_dbos_p50": ratio(ours["run_latency"]["median"], dbos["p50_ms"]),
            }
        out[name] = side
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run with tiny sizes; its numbers mean nothing")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs",
                        help="where performance.md and its plots go (default: docs/)")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--no-peer", action="store_true", help="skip the DBOS side by side")
    parser.add_argument("--no-torture", action="store_true")
    parser.add_argument("--no-web", action="store_true",
                        help="skip the web surfaces (python -m bench.web runs only those)")
    parser.add_argument("--torture-mutations", type=int, default=10_000)
    parser.add_argument("--torture-kills", type=int, default=500)
    parser.add_argument("--output", type=Path, help="results file (default: bench/results/)")
    args = parser.parse_args()
    names = [n for n in args.backends.split(",") if n]
    unknown = set(names) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backend(s) {sorted(unknown)}; choose from {list(BACKENDS)}")
    quick = args.quick
    if quick and (args.output is None or args.docs == ROOT / "docs"):
        parser.error("--quick numbers mean nothing: give --output and --docs outside the "
                     "repository (e.g. /tmp) so they never replace the real report")
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "quick": quick,
        "machine": _machine(),
    }
    with backends(names) as b, temp_home() as tmp:
        pg_url = b.url("postgresql") if "postgresql" in names else None
        with SandboxPool(size=1) as pool, RemoteSink() as sink:
            _log("physical floor")
            results["floor"] = floor.run(Path(tmp), pool, sink, pg_url, quick)
            _log("handler invocation")
            results["invocation"] = runtime.bench_invocation(pool, 30 if quick else 300)
        results["backends"] = {name: _backend(name, b, results["floor"], quick,
                                              not args.no_web) for name in names}
        if not args.no_peer:
            results["peer"] = _peer(b, results["backends"], quick)
    if not args.no_torture:
        from bench import torture

        _log("torture")
        results["torture"] = torture.run(
            mutations=120 if quick else args.torture_mutations,
            kills=6 if quick else args.torture_kills, seed=20261127)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    optimisations = ROOT / "bench" / "optimisations.json"
    if optimisations.exists():
        results["optimisations"] = json.loads(optimisations.read_text())
    text = json.dumps(results, indent=2)
    out = args.output or RESULTS / f"{datetime.now(UTC).date().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n", encoding="utf-8")
    page = report.write(results, args.docs)
    _log(f"wrote {out} and {page} in {results['seconds']} s")


if __name__ == "__main__":
    main()
