"""``keepflow status``: per workflow, what runs when, and why something is not running
(SPEC §7.3, §12). Built from the store alone, so it answers with or without a server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from keepflow.model import WorkflowRecord, WorkflowStatus
from keepflow.scheduler import timing
from keepflow.store.read_models import ActiveRun, WorkflowFacts
from keepflow.store.schedule import HandlerFacts, LastRun, is_asleep
from keepflow.views import iso
from keepflow.workflow import WorkflowManifest


def _last(run: LastRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {"id": run.run_id, "status": run.status, "at": iso(run.at),
            "failureClass": run.failure_class}


def workflow_status(facts: WorkflowFacts, now: datetime) -> dict[str, Any]:
    wf, version, counts = facts.workflow, facts.version, facts.counts
    manifest = WorkflowManifest.from_dict(version.manifest) if version else None
    active = facts.active
    out: dict[str, Any] = {
        "name": wf.name, "status": wf.status.value, "statusReason": wf.status_reason,
        "version": version.label if version else None,
        "activeRun": {"id": active[0].run_id, "handler": active[0].handler,
                      "status": active[0].status} if active else None,
        "producers": [], "consumers": [],
        "topics": {t: counts.get(t, {"pending": 0, "consumed": 0, "skipped": 0})
                   for t in (manifest.topics if manifest else ())},
    }
    if manifest is None:
        out["why"] = "no version is deployed"
        return out
    running = wf.status is WorkflowStatus.ACTIVE
    last = facts.last_runs
    for name, p in sorted(manifest.producers.items()):
        f = facts.handlers.get(name)
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
        f = facts.handlers.get(name)
        state, wake = _consumer_state(facts, name, c.subscribe, f, now)
        out["consumers"].append({
            "name": name, "subscribe": list(c.subscribe), "state": state, "wake": wake,
            "pending": sum(counts.get(t, {}).get("pending", 0) for t in c.subscribe),
            "wokenAt": iso(f.woken_at) if f else None,
            "wakeReason": f.wake_reason if f else None,
            "lastRun": _last(last.get(name)),
        })
    newest = max(last.values(), key=lambda r: r.run_id, default=None)
    out["lastRun"] = _last(newest)
    out["why"] = _why(wf, out, active)
    return out


def _consumer_state(facts: WorkflowFacts, name: str, topics: tuple[str, ...],
                    f: HandlerFacts | None, now: datetime) -> tuple[str, str | None]:
    mine = [a for a in facts.active if a.handler == name]
    if mine:
        return ("running" if mine[0].status != "suspended" else "suspended"), None
    windows = [facts.ready.get(t, (None, None)) for t in topics]
    oldest = min((w[0] for w in windows if w[0] is not None), default=None)
    newest = max((w[1] for w in windows if w[1] is not None), default=None)
    until = f.sleep_until if f else None
    if is_asleep(until, f.sleep_watermark if f else None, newest, now):
        assert until is not None
        return "sleeping", (f"a new event in {', '.join(topics)}, or at "
                            f"{until.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC, or a manual trigger")
    if oldest is None:
        return "idle", "an event in " + ", ".join(topics)
    return "ready", None


def _why(wf: WorkflowRecord, out: dict[str, Any], active: list[ActiveRun]) -> str:
    if wf.status is not WorkflowStatus.ACTIVE:
        said = wf.status.value.replace("_", " ")
        return f"{said}: {wf.status_reason or 'nothing runs on schedule'}"
    if active:
        a = active[0]
        return f"run {a.run_id} of {a.handler} is {a.status}; nothing else of this workflow runs"
    if any(c["state"] == "ready" for c in out["consumers"]):
        return "a consumer is ready and runs next"
    due = [p["nextFire"] for p in out["producers"] if p["nextFire"]]
    if due:
        at = datetime.fromisoformat(min(due)).astimezone(UTC)
        return f"idle; the next producer tick is at {at:%Y-%m-%d %H:%M:%S} UTC"
    return "idle; waiting for events or a manual trigger"


def status(facts: list[WorkflowFacts], now: datetime) -> list[dict[str, Any]]:
    return [workflow_status(f, now) for f in facts]
