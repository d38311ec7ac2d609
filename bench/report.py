"""Render one results document (``bench/results/<date>.json``) as ``docs/performance.md`` with
plots in ``docs/img/``. ``python -m bench.report RESULTS.json`` re-renders without measuring."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def _ok(met: bool | None) -> str:
    return "—" if met is None else ("**met**" if met else "**not met**")


def _get(d: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


# ----------------------------------------------------------------------------- plots


def _save(fig: Any, img: Path, name: str) -> str:
    """Write a figure into ``img``; its path relative to ``docs/``."""
    fig.tight_layout()
    fig.savefig(img / name, dpi=110)
    plt.close(fig)
    return f"img/{name}"


def _plot_floor(res: dict[str, Any], img: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels, bottoms = [], []
    for i, (name, b) in enumerate(res["backends"].items()):
        fl = b["consumer_run_floor"]
        parts = [("durable commits", fl["commits"] * fl["commit_ms"], "#4c72b0"),
                 ("sandbox (bare)", fl["invocations"] * fl["bare_sandbox_ms"], "#55a868"),
                 ("sink round trip", fl["sink_round_trip_ms"], "#c44e52"),
                 ("keepflow's own work",
                  max(0.0, b["consumer_run"]["latency"]["median"] - fl["floor_ms"]), "#bbbbbb")]
        left = 0.0
        for label, width, colour in parts:
            ax.barh(i, width, left=left, color=colour, label=label if i == 0 else None)
            left += width
        labels.append(NAMES[name])
        bottoms.append(left)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("ms per consumer run (median)")
    ax.set_title("One consumer run: the physical floor and the rest")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, img, "perf-floor.png")


def _plot_throughput(res: dict[str, Any], img: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, b in res["backends"].items():
        xs = [1, 10, 100]
        ys = [b["throughput"][f"workflows_{n}"]["runs_per_second"] for n in xs]
        ax.plot(xs, ys, marker="o", label=f"keepflow, {NAMES[name]}")
        peer = _get(res, "peer", name)
        if peer:
            ax.plot([1, 100], [peer[f"workflows_{n}"]["dbos"]["runs_per_second"]
                               for n in (1, 100)], marker="s", linestyle="--",
                    label=f"DBOS, {NAMES[name]}")
    ax.set_xscale("log")
    ax.set_xticks([1, 10, 100], ["1", "10", "100"])
    ax.set_xlabel("busy workflows in parallel")
    ax.set_ylabel("runs / s")
    ax.set_ylim(bottom=0)
    ax.set_title("Throughput (each run: prepare → HTTP POST → next → commit)")
    ax.legend(fontsize=8)
    return _save(fig, img, "perf-throughput.png")


def _plot_history(res: dict[str, Any], img: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 3))
    names = list(res["backends"])
    width = 0.35
    for j, key in enumerate(("empty", "with_history")):
        ys = [res["backends"][n]["history"][key]["runs_per_second"] for n in names]
        label = "0 events" if key == "empty" else (
            f"{res['backends'][names[0]]['history']['history_events']:,} consumed events")
        ax.bar([i + j * width for i in range(len(names))], ys, width, label=label)
    ax.set_xticks([i + width / 2 for i in range(len(names))], [NAMES[n] for n in names])
    ax.set_ylabel("runs / s")
    ax.set_title("History growth: one busy workflow")
    ax.legend(fontsize=8)
    return _save(fig, img, "perf-history.png")


#: The web benchmark's cases, in the order the report shows them (bench/web.py).
WEB_CASES = (
    ("api_health", "`GET /api/health` (the floor: what any answer costs)"),
    ("api_first", "API events, first page"),
    ("api_deep", "API events, deep page"),
    ("api_status_consumed", "API events, `status=consumed`"),
    ("api_title_few", "API events, title search matching few"),
    ("api_title_many", "API events, title search matching many"),
    ("page_first", "events page, first page"),
    ("page_deep", "events page, deep page"),
    ("page_status_consumed", "events page, `status=consumed`"),
    ("page_title_few", "events page, title search matching few"),
)


def _webs(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each backend's web benchmark results (``python -m bench --no-web`` has none)."""
    return {n: b["web"] for n, b in res.get("backends", {}).items() if b.get("web")}


def plot_web(res: dict[str, Any], img: Path) -> str | None:
    webs = _webs(res)
    if not webs:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    cases = [c for c, _ in WEB_CASES]
    height = 0.8 / len(webs)
    for j, (name, w) in enumerate(webs.items()):
        t = w["events_list"]["timings"]
        ys = [i + j * height for i in range(len(cases))]
        ax.barh(ys, [t[c]["p95"] if c in t else 0 for c in cases], height,
                label=f"{NAMES[name]} p95")
        ax.barh(ys, [t[c]["median"] if c in t else 0 for c in cases], height * 0.4,
                color="black", alpha=0.35, label="p50" if j == 0 else None)
    target = next(iter(webs.values()))["events_list"]["target_p95_ms"]
    ax.axvline(target, color="#c44e52", linestyle="--", label=f"target p95 {target:g} ms")
    ax.set_yticks([i + height * (len(webs) - 1) / 2 for i in range(len(cases))], cases,
                  fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms per request")
    events = next(iter(webs.values()))["events_list"]["seed"]["events"]
    ax.set_title(f"Events list of a topic with {events:,} events (a real keepflow serve)")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, img, "perf-web.png")


# ----------------------------------------------------------------------------- markdown


def _goals(res: dict[str, Any]) -> list[str]:
    rows = ["| goal | backend | achieved | |", "|---|---|---|---|"]
    for name, b in res["backends"].items():
        n = NAMES[name]
        r = b["consumer_run_vs_floor"]
        rows.append(f"| consumer run ≤ 1.5 × the physical floor | {n} | {r} × "
                    f"({b['consumer_run']['latency']['median']} ms vs "
                    f"{b['consumer_run_floor']['floor_ms']} ms) | {_ok(r <= 1.5)} |")
        h = b["history"]["ratio"]
        rows.append(f"| throughput with {b['history']['history_events']:,} consumed events ≥ "
                    f"0.9 × with none | {n} | {h} | {_ok(h >= 0.9)} |")
        lat = b["latency"]["median"]
        rows.append(f"| publish → consumer start median < 10 ms | {n} | {lat} ms | "
                    f"{_ok(lat < 10)} |")
        idle = b["idle"]
        rows.append(f"| {idle['workflows']:,} idle workflows: start-up < 10 s, CPU < 1 % | {n} | "
                    f"{idle['startup_seconds']} s, {idle['cpu_percent_of_one_core']} % | "
                    f"{_ok(idle['startup_seconds'] < 10 and idle['cpu_percent_of_one_core'] < 1)}"
                    " |")
        web = b.get("web")
        if web:
            ev = web["events_list"]
            worst = max((k for k in ev["timings"] if k not in ("api_walk_next", "api_health")),
                        key=lambda k: ev["timings"][k]["p95"])
            rows.append(f"| events list of a topic with {ev['seed']['events']:,} events (API and "
                        f"page, every case) p95 < {ev['target_p95_ms']:g} ms | {n} | worst "
                        f"{ev['worst_p95_ms']} ms (`{worst}`) | {_ok(ev['target_met'])} |")
        peer = _get(res, "peer", name)
        if peer:
            one = peer["workflows_1"]
            hundred = peer["workflows_100"]
            r1 = one["keepflow_vs_dbos_runs_per_second"]
            r100 = hundred["keepflow_vs_dbos_runs_per_second"]
            rows.append(f"| within 1.5 × DBOS at 1 workflow (runs/s keepflow ÷ DBOS ≥ 0.67) | "
                        f"{n} | {r1} | {_ok(r1 is not None and r1 >= 1 / 1.5)} |")
            rows.append(f"| ahead of DBOS at 100 workflows (runs/s keepflow ÷ DBOS > 1) | {n} | "
                        f"{r100} | {_ok(r100 is not None and r100 > 1)} |")
    t = res.get("torture")
    if t:
        store = NAMES[t.get("backend", "sqlite")]
        rows.append(f"| torture: duplicates = 0 and lost = 0 | {store} | "
                    f"{t['duplicates']} / {t['lost']} over {t['mutations']:,} mutations, "
                    f"{t['kills']} kills | {_ok(t['duplicates'] == 0 and t['lost'] == 0)} |")
    return rows


def _stat(s: dict[str, Any]) -> str:
    return f"{s['median']} / {s['p95']} / {s['min']} / {s['max']}"


def _p(s: dict[str, Any]) -> str:
    return f"{s['median']} / {s['p95']} / {s['p99']}"


def web_section(res: dict[str, Any], plot: str | None = None) -> list[str]:
    """``## Web surfaces``: the events list and inbound events against a real ``serve``."""
    webs = _webs(res)
    if not webs:
        return []
    first = next(iter(webs.values()))
    ev = first["events_list"]
    seed = ev["seed"]
    st = seed["statuses"]
    matches = seed["title_matches"]
    names = list(webs)
    out = [
        "## Web surfaces", "",
        "`bench/web.py`: a real `keepflow serve` (its own process, `--log-format json`) asked "
        "over loopback HTTP, one request at a time, by one `httpx` client that keeps its "
        "connection open. No run happens meanwhile (the workflow is paused).", "",
        f"**The events list.** One topic holding {seed['events']:,} events ({st['pending']:,} "
        f"pending, {st['consumed']:,} consumed, {st['skipped']:,} skipped; order, refund and "
        "invoice titles over 30 days), seeded in bulk through the store. `?limit=50` on the "
        f"API (the page shows 50). The deep page is {ev['deep_pages']} pages "
        f"({ev['deep_offset']:,} events) in, reached by following `next` (the first row times "
        f"each of those requests). The title searches match {min(matches.values()):,} and "
        f"{max(matches.values()):,} events. {ev['timings']['api_first']['n']} timed requests "
        f"per row (after {ev.get('warmup', 10)} untimed); milliseconds from sending the "
        "request to having read the whole answer.", "",
        "| request | " + " | ".join(f"{NAMES[n]} p50 / p95 / p99 (ms)" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for case, label in (("api_walk_next", "API events, each of the pages walked by `next`"),
                        *WEB_CASES):
        cells = [_p(w["events_list"]["timings"][case]) if case in w["events_list"]["timings"]
                 else "—" for w in webs.values()]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    if plot:
        out += ["", f"![web]({plot})"]
    out += [
        "", f"**An inbound event → its consumer run.** `POST "
        "/api/workflows/{name}/topics/{topic}/events` with the workflow's inbound token, "
        f"{first['inbound']['events']} events one at a time, each waited for (its consumer "
        "run ends) before the next: the POST's own latency, and from sending the POST to the "
        "consumer run's `createdAt` (the store's run row, to the microsecond; the JSON log's "
        "`run.start` line has only a second-precise `at`, its `run.end` line names the run). "
        "A negative \"answer → consumer run start\" means the run started before the answer "
        "arrived.",
        "",
        "| backend | POST p50 / p95 / p99 (ms) | send → consumer run start p50 / p95 / p99 (ms) "
        "| answer → consumer run start p50 / p95 (ms) |", "|---|---|---|---|",
    ]
    for name, w in webs.items():
        i = w["inbound"]
        a = i["answer_to_consumer_start"]
        out.append(f"| {NAMES[name]} | {_p(i['post'])} | {_p(i['send_to_consumer_start'])} | "
                   f"{a['median']} / {a['p95']} |")
    return out


def render(res: dict[str, Any], docs: Path) -> str:
    img = docs / "img"
    img.mkdir(parents=True, exist_ok=True)
    plots = [_plot_floor(res, img), _plot_throughput(res, img), _plot_history(res, img)]
    web_plot = plot_web(res, img)
    fl, inv, m = res["floor"], res["invocation"], res["machine"]
    out = [
        "# Performance",
        "",
        "<!-- Generated by `python -m bench` from bench/results/; edit bench/report.py, not "
        "this file. -->",
        "",
        f"Measured {res['date']} on {m['cores']} cores ({m['platform']}, Python {m['python']},"
        f" SQLite {m['sqlite']}), loopback only, in one `python -m bench` invocation that took "
        f"{res['seconds']:.0f} s. Every ratio below compares numbers measured in that same run:"
        " absolute times drift on shared machines, ratios much less. Each benchmark repeats and"
        " reports median / p95 / min / max. Reproduce with `make bench` (≈ 15–20 minutes).",
        "",
        "## Goals",
        "",
        *_goals(res),
        "",
        "## The physical floor",
        "",
        "What the hardware and the parts we do not own cost, measured in this run: nothing "
        "keepflow does can be cheaper.",
        "",
        "| measure | median / p95 / min / max (ms) | per second |",
        "|---|---|---|",
        f"| `fsync` of a 4 KiB write on the store's filesystem | {_stat(fl['fsync'])} | "
        f"{fl['fsync']['per_second']:,} |",
        f"| SQLite single-row commit (WAL, `synchronous=FULL`, plain `sqlite3`) | "
        f"{_stat(fl['sqlite_commit'])} | {fl['sqlite_commit']['per_second']:,} |",
    ]
    if "postgresql_commit" in fl:
        out.append(f"| PostgreSQL single-row commit (fsync on, plain `psycopg`, unix socket) | "
                   f"{_stat(fl['postgresql_commit'])} | "
                   f"{fl['postgresql_commit']['per_second']:,} |")
    out += [
        f"| bare sandbox: fresh context + trivial script + one call | "
        f"{_stat(fl['bare_sandbox'])} | |",
        f"| HTTP POST with an idempotency key to the loopback sink (own process) | "
        f"{_stat(fl['sink_round_trip'])} | |",
        "",
        "The floor of one consumer run = durable commits × commit + sandbox invocations × bare "
        "sandbox + one sink round trip.",
        "",
        f"![floor]({plots[0]})",
        "",
        "## One consumer run and one handler invocation",
        "",
        "| measure | backend | median / p95 / min / max (ms) | floor (ms) | achieved ÷ floor "
        "| commits | SQL statements |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, b in res["backends"].items():
        c = b["consumer_run"]
        out.append(f"| consumer run: prepare → POST to the sink → next → commit | {NAMES[name]} "
                   f"| {_stat(c['latency'])} | {b['consumer_run_floor']['floor_ms']} | "
                   f"{b['consumer_run_vs_floor']} | {c['durable_commits_per_run']} | "
                   f"{c['statements_per_run']} |")
    out += [
        "",
        f"Handler invocation (fresh context, {inv['script_lines']}-line script, a handler "
        f"making 3 host calls): {_stat(inv['three_host_calls'])} ms; bare invocation "
        f"{_stat(inv['bare'])} ms.",
        "",
        "## Throughput, 1 / 10 / 100 busy workflows",
        "",
        "Each workflow has a queue of events; each run is prepare → HTTP POST (idempotency "
        "key, reconcile) to the sink in its own process → next → commit. The scheduler runs up "
        "to 8 runs at once (the `serve` default).",
        "",
        "| backend | workflows | runs/s | run latency median / p95 (ms) | host CPU (% of one "
        "core) | ratio to 1 workflow |",
        "|---|---|---|---|---|---|",
    ]
    for name, b in res["backends"].items():
        tp = b["throughput"]
        for n in (1, 10, 100):
            w = tp[f"workflows_{n}"]
            r = "1.0" if n == 1 else str(tp[f"ratio_{n}_vs_1"])
            out.append(f"| {NAMES[name]} | {n} | {w['runs_per_second']} | "
                       f"{w['run_latency']['median']} / {w['run_latency']['p95']} | "
                       f"{w['host_cpu_percent_of_one_core']} | {r} |")
    out += ["", f"![throughput]({plots[1]})", "", "**Group commit.** "]
    util = {NAMES[n]: b["throughput"]["store_commit_utilisation"]
            for n, b in res["backends"].items()}
    util_text = ", ".join(f"{k} {v * 100:.0f} %" for k, v in util.items())
    bottleneck = any(v > 0.5 for v in util.values())
    out[-1] += (
        f"At the best throughput above, the durable commits use {util_text} of what the store "
        "can commit per second (commits per run × runs/s ÷ the floor's commits/s). "
        + ("The store is close to its limit: batching commits of different workflows would pay."
           if bottleneck else
           "The store is not the bottleneck, the host's CPU is (see the host CPU column: one "
           "Python process, close to one full core). Batching durable writes of different "
           "workflows into one commit would save a fraction of the store's share and add "
           "latency to every run, so keepflow does not do it; the lever is keepflow's own work "
           "per run (the grey bar above).")
    )
    out += ["", "## History growth", "",
            "| backend | runs/s, empty topic | runs/s, with history | ratio | goal |",
            "|---|---|---|---|---|"]
    for name, b in res["backends"].items():
        h = b["history"]
        out.append(f"| {NAMES[name]} | {h['empty']['runs_per_second']} | "
                   f"{h['with_history']['runs_per_second']} ({h['history_events']:,} consumed "
                   f"events, seeded in {h['with_history']['history_seed_seconds']} s) | "
                   f"{h['ratio']} | ≥ {h['goal']} |")
    out += ["", f"![history]({plots[2]})", "", "## Scheduler", "",
            "| backend | publish → consumer start median / p95 / p99 (ms) | idle workflows | "
            "start-up (s) | CPU of `serve` and its workers over a quiet window from 10 s after "
            "start-up (% of one core) |", "|---|---|---|---|---|"]
    for name, b in res["backends"].items():
        lat, idle = b["latency"], b["idle"]
        out.append(f"| {NAMES[name]} | {lat['median']} / {lat['p95']} / {lat['p99']} | "
                   f"{idle['workflows']:,} | {idle['startup_seconds']} | "
                   f"{idle['cpu_percent_of_one_core']} ({idle['window_seconds']} s) |")
    out += ["", "## Memory", "",
            "`serve` with idle workflows (RSS of the server process, and of its sandbox "
            "workers: the pool starts workers when runs need them), and the sandbox workers "
            "after the throughput benchmark (each has run hundreds of fresh contexts).", "",
            "| backend | idle workflows | `serve` RSS (MiB) | workers while idle | RSS per "
            "sandbox worker after load (MiB, median / max) |", "|---|---|---|---|---|"]
    for name, b in res["backends"].items():
        mem = b["memory"]
        rss = mem["rss"]
        per = sorted(b["throughput"].get("sandbox_worker_rss_mib") or [0.0])
        out.append(f"| {NAMES[name]} | {mem['workflows']:,} | {rss['serve_mib']} | "
                   f"{rss['sandbox_workers']} | {per[len(per) // 2]} / {per[-1]} |")
    web = web_section(res, web_plot)
    if web:
        out += ["", *web]
    if res.get("peer"):
        out += ["", "## Side by side: DBOS Transact", "",
                "The same pipeline written for DBOS Transact (`bench/peers/dbos_peer.py`): a "
                "workflow reads an event, one step POSTs it to the same loopback sink with the "
                "workflow id as idempotency key, the workflow records the sink's answer. Same "
                "machine, same sink, same invocation. DBOS uses its own defaults for its "
                "system database; keepflow gives stronger guarantees on every run (the "
                "`in_flight` ledger row is durable before every external call, a crash between "
                "call and commit is reconciled, the workflow code runs in a sandbox).", "",
                "| backend | workflows | DBOS runs/s | keepflow runs/s | keepflow ÷ DBOS | "
                "DBOS p50 / p95 (ms) | keepflow p50 / p95 (ms) |",
                "|---|---|---|---|---|---|---|"]
        for name, side in res["peer"].items():
            for n in (1, 100):
                s = side[f"workflows_{n}"]
                d, k = s["dbos"], s["keepflow"]
                out.append(f"| {NAMES[name]} | {n} | {d['runs_per_second']} | "
                           f"{k['runs_per_second']} | {s['keepflow_vs_dbos_runs_per_second']} | "
                           f"{d['p50_ms']} / {d['p95_ms']} | {k['run_latency']['median']} / "
                           f"{k['run_latency']['p95']} |")
    t = res.get("torture")
    if t:
        out += ["", "## Torture", "", "`bench/torture.py`: one long run of the crash and fault "
                "tests together (see its docstring for what each number means).", "", "```json",
                json.dumps(t), "```"]
    opts = res.get("optimisations")
    if opts:
        out += ["", "## Optimisations, before → after", "",
                "Each found by profiling (cProfile, py-spy) and measured before and after; "
                "`python -m bench.ab BEFORE AFTER` runs both revisions in one invocation, "
                "alternating. Kept in `bench/optimisations.json`.", "",
                "| change | measured by | before | after | after ÷ before | SQL statements "
                "per run |", "|---|---|---|---|---|---|"]
        for o in opts:
            out.append(f"| {o['change']} | {o['measure']} | {o['before']} | {o['after']} | "
                       f"{o['ratio_after_vs_before']} | {o.get('statements', '—')} |")
    notes = docs.parent / "bench" / "NOTES.md"
    if notes.exists():
        out += ["", notes.read_text(encoding="utf-8").strip()]
    return "\n".join(out) + "\n"


def write(res: dict[str, Any], docs: Path) -> Path:
    path = docs / "performance.md"
    path.write_text(render(res, docs), encoding="utf-8")
    return path


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    print(write(json.loads(Path(sys.argv[1]).read_text()), root / "docs"))
