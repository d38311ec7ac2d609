"""``keepflow status``: per workflow, what runs when, and why something is not running
(SPEC §7.3, §12). Built from the store alone, so it answers with or without a server."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from keepflow.model import WorkflowRecord, WorkflowStatus
from keepflow.runtime.host import Host
from keepflow.sandbox.rules import WorkflowManifest
from keepflow.scheduler import timing
from keepflow.store import events as ev
from keepflow.store import queries, schedule
from keepflow.store import runs as run_rows
from keepflow.store.schedule import HandlerFacts, LastRun
from keepflow.views import iso


def _last(run: LastRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {"id": run.run_id, "status": run.status, "at": iso(run.at),
            "failureClass": run.failure_class}


def workflow_status(host: Host, conn: Connection, wf: WorkflowRecord, now: datetime
                    ) -> dict[str, Any]:
    from keepflow.store import workflows as wfs

    version = wfs.version(conn, wf.current_version_id) if wf.current_version_id else None
    manifest = WorkflowManifest.from_dict(version.manifest) if version else None
    facts = schedule.handler_facts(conn, wf.id)
    last = schedule.last_runs(conn, wf.id)
    active = run_rows.active_runs(conn, wf.id)
    counts = queries.topic_counts(conn, wf.id)
    out: dict[str, Any] = {
        "name": wf.name, "status": wf.status.value, "statusReason": wf.status_reason,
        "version": version.label if version else None,
        "activeRun": {"id": active[0][0], "handler": active[0][1], "status": active[0][2]}
        if active else None,
        "producers": [], "consumers": [],
        "topics": {t: counts.get(t, {"pending": 0, "consumed": 0, "skipped": 0})
                   for t in (manifest.topics if manifest else ())},
    }
    if manifest is None:
        out["why"] = "no version is deployed"
        return out
    running = wf.status is WorkflowStatus.ACTIVE
    for name, p in sorted(manifest.producers.items()):
        f = facts.get((wf.id, name))
        nxt = (timing.first_due(p.schedule, f.last_fired_at if f else None, now)
               if p.schedule and running else None)
        out["producers"].append({
            "name": name,
            "schedule": timing.describe(p.schedule) if p.schedule else "manual trigger only",
            "nextFire": iso(nxt), "lastFiredAt": iso(f.last_fired_at if f else None),
            "skippedTicks": f.skipped_ticks if f else 0,
            "lastSkippedAt": iso(f.last_skipped_at if f else None),
            "lastRun": _last(last.get(name)),
        })
    for name, c in sorted(manifest.consumers.items()):
        state, wake = _consumer_state(conn, wf.id, name, c.subscribe, facts.get((wf.id, name)),
                                      active, now)
        out["consumers"].append({
            "name": name, "subscribe": list(c.subscribe), "state": state, "wake": wake,
            "pending": sum(counts.get(t, {}).get("pending", 0) for t in c.subscribe),
            "wokenAt": iso(facts[(wf.id, name)].woken_at) if (wf.id, name) in facts else None,
            "wakeReason": facts[(wf.id, name)].wake_reason if (wf.id, name) in facts else None,
            "lastRun": _last(last.get(name)),
        })
    newest = max(last.values(), key=lambda r: r.run_id, default=None)
    out["lastRun"] = _last(newest)
    out["why"] = _why(wf, out, active)
    return out


def _consumer_state(conn: Connection, workflow_id: str, name: str, topics: tuple[str, ...],
                    facts: HandlerFacts | None, active: list[tuple[str, str, str]],
                    now: datetime) -> tuple[str, str | None]:
    mine = [a for a in active if a[1] == name]
    if mine:
        return ("running" if mine[0][2] != "suspended" else "suspended"), None
    oldest, newest = ev.ready_window(conn, workflow_id, list(topics))
    until = facts.sleep_until if facts else None
    if schedule.is_asleep(until, facts.sleep_watermark if facts else None, newest, now):
        assert until is not None
        return "sleeping", (f"a new event in {', '.join(topics)}, or {until.isoformat()}, "
                            "or a manual trigger")
    if oldest is None:
        return "idle", "an event in " + ", ".join(topics)
    return "ready", None


def _why(wf: WorkflowRecord, out: dict[str, Any], active: list[tuple[str, str, str]]) -> str:
    if wf.status is not WorkflowStatus.ACTIVE:
        return f"{wf.status.value}: {wf.status_reason or 'nothing runs on schedule'}"
    if active:
        run_id, handler, status = active[0]
        return f"run {run_id} of {handler} is {status}; nothing else of this workflow runs"
    if any(c["state"] == "ready" for c in out["consumers"]):
        return "a consumer is ready and runs next"
    due = [p["nextFire"] for p in out["producers"] if p["nextFire"]]
    if due:
        return f"idle; the next producer tick is at {min(due)}"
    return "idle; waiting for events or a manual trigger"


def status(host: Host, workflow: str | None = None) -> list[dict[str, Any]]:
    now = host.clock.now()
    with host.store.read() as conn:
        from keepflow.store import workflows as wfs

        targets = [wfs.get(conn, workflow)] if workflow else wfs.list_all(conn)
        return [workflow_status(host, conn, wf, now) for wf in targets]
