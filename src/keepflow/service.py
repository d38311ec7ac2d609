"""The operations people perform, used by every surface (CLI now, API and UI later).

Each function takes an explicit :class:`~keepflow.runtime.host.Host`, does one thing, and
returns plain data. Refusals are :class:`~keepflow.errors.KeepflowError` subclasses with one
clear sentence; nothing half-done is left behind.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from keepflow import examples
from keepflow.deploy.validation import Validation, validate_script
from keepflow.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    InvalidResult,
    KeepflowError,
    NotFound,
    ScriptInvalid,
    TooLarge,
    Unauthorized,
    UsageError,
)
from keepflow.model import (
    EventRecord,
    EventStatus,
    Fence,
    RunStatus,
    VersionRecord,
    WorkflowRecord,
    WorkflowStatus,
)
from keepflow.runtime import actions
from keepflow.runtime.host import Host
from keepflow.runtime.outcome import RunOutcome
from keepflow.runtime.recovery import RecoveryReport, recover
from keepflow.sandbox.findings import Finding
from keepflow.settings import Settings
from keepflow.storable import escape_text
from keepflow.store.queries import EventCursor, EventFilter
from keepflow.views import event_detail, event_view, run_view, workflow_view
from keepflow.workflow import WorkflowManifest

#: The script API as TypeScript declarations, copied into every home for editors.
TYPES_FILE = "keepflow.d.ts"

CONNECTIONS_TEMPLATE = """\
# keepflow connections: scripts reach each one as ctx.<name>.<tool> (docs/connectors.md).
# A connection named "http" of type "http" exists by default; it reaches public addresses
# only. To let scripts reach a service on this machine or your network, name its origin:
#
# [connections.http]
# type = "http"
# allow = ["http://127.0.0.1:9000"]            # exact origins (docs/security.md#network-egress)
#
# [connections.shop]
# type = "sql"
# url = "sqlite:////absolute/path/shop.db"     # or url_env = "SHOP_DB_URL"
"""


def init(settings: Settings, example: str | None = None) -> dict[str, Any]:
    """Create ``$KEEPFLOW_HOME``, the store (migrated), a commented connections file and the
    script API's type declarations; with ``example``, what that example needs to run
    (``keepflow.examples``). Running it again on an existing home changes nothing of it."""
    home = settings.home
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create KEEPFLOW_HOME {home}: {exc.strerror or exc}") from None
    created: list[str] = []
    if example is not None:
        created += [str(p) for p in examples.install(
            example, home, settings.connections_file, CONNECTIONS_TEMPLATE)]
    elif not settings.connections_file.exists():
        settings.connections_file.write_text(CONNECTIONS_TEMPLATE, encoding="utf-8")
        created.append(str(settings.connections_file))
    declarations = home / TYPES_FILE
    shipped = resources.files("keepflow") / TYPES_FILE
    if shipped.is_file() and (not declarations.exists()
                              or declarations.read_text(encoding="utf-8")
                              != shipped.read_text(encoding="utf-8")):
        declarations.write_text(shipped.read_text(encoding="utf-8"), encoding="utf-8")
        created.append(str(declarations))
    with Host(settings) as host:
        host.store.list_workflows()
    return {"home": str(home.resolve()), "store": settings.store_url.split("?")[0],
            "created": created, "example": example}


# ------------------------------------------------------------------------------ deploy


@dataclass
class DeployResult:
    workflow: WorkflowRecord
    version: str
    status: str  # created | updated | unchanged
    findings: list[Finding] = field(default_factory=list)


def _read_script(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None


def check(host: Host, path: Path) -> Validation:
    """Every check ``deploy`` makes, against this home's connections and policies, without
    deploying anything (``keepflow check``)."""
    return validate_script(_read_script(path), host.pool, host.connections, host.policies)


def deploy(host: Host, path: Path, name: str | None = None, actor: str = "cli") -> DeployResult:
    """Validate a script and make it the workflow's current version (SPEC §11.3, §14 14)."""
    source = _read_script(path)
    result = validate_script(source, host.pool, host.connections, host.policies)
    if not result.ok:
        raise ScriptInvalid(
            f"{path}: the script has {sum(f.severity == 'error' for f in result.findings)} "
            "error(s); nothing was deployed", result.findings, source=str(path))
    manifest = result.manifest
    assert manifest is not None
    wf_name = name or manifest.name
    _check_name(wf_name)
    sha = hashlib.sha256(source.encode()).hexdigest()
    wf = host.store.find_workflow(wf_name)
    status = "updated"
    if wf is None:
        wf = host.store.create_workflow(wf_name, actor)
        status = "created"
    elif wf.current_version_id is not None:
        current = host.store.get_version(wf.current_version_id)
        if current.source_sha256 == sha:
            return DeployResult(wf, current.label, "unchanged", result.findings)
    version = host.store.add_version(
        wf.id, source=source, source_sha256=sha, manifest=manifest.to_dict(),
        findings=[f.to_dict() for f in result.findings], created_by=actor)
    return DeployResult(host.store.get_workflow(wf.id), version.label, status, result.findings)


def _check_name(name: str) -> None:
    from keepflow.runtime.values import TOPIC_RE

    if not TOPIC_RE.match(name):
        raise UsageError(f"workflow name {name!r} must match [a-z0-9][a-z0-9._-]{{0,63}}")


# ------------------------------------------------------------------------------ running


def _current(host: Host, workflow: str) -> tuple[WorkflowRecord, Any, WorkflowManifest]:
    wf = host.store.get_workflow(workflow)
    if wf.current_version_id is None:
        raise Conflict(f"workflow '{wf.name}' has no deployed version")
    version = host.store.get_version(wf.current_version_id)
    return wf, version, WorkflowManifest.from_dict(version.manifest)


def _refuse_if_busy(host: Host, wf: WorkflowRecord) -> None:
    """SPEC §7.1, §15 scenario 15: at most one active run per workflow."""
    active = host.store.active_runs(wf.id)
    if active:
        run_id, handler, status = active[0]
        raise Conflict(
            f"workflow '{wf.name}' has an unfinished run {run_id} ({handler}, {status}); "
            "nothing else of it runs until that run is resolved (see `keepflow run show "
            f"{run_id}`)")


def trigger(host: Host, workflow: str, handler: str) -> RunOutcome:
    """One run of one handler now, in this process (manual trigger: works when paused)."""
    host.store.get_workflow(workflow)  # an unknown name is refused before anything runs
    recover(host)  # SPEC §5.5: on every start
    wf, version, manifest = _current(host, workflow)
    if handler not in manifest.producers and handler not in manifest.consumers:
        known = ", ".join(sorted([*manifest.producers, *manifest.consumers]))
        raise NotFound(f"workflow '{wf.name}' has no handler '{handler}' (handlers: {known})")
    if wf.status is WorkflowStatus.DISABLED:
        raise Conflict(f"workflow '{wf.name}' is disabled; resume it first")
    _refuse_if_busy(host, wf)
    with host.lease(wf) as fence:
        if handler in manifest.producers:
            return host.executor.run_producer(wf, version, handler, "manual", fence)
        return host.executor.run_consumer(wf, version, handler, "manual", fence)


@dataclass
class DrainReport:
    recovered: RecoveryReport
    runs: list[RunOutcome] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)  # workflow → why it did not run


def drain(host: Host, workflow: str | None = None, max_runs: int = 100_000) -> DrainReport:
    """Run ready consumers until none is ready (no waiting for timeouts or schedules)."""
    wf_id = host.store.get_workflow(workflow).id if workflow else None
    report = DrainReport(recovered=recover(host, wf_id))
    targets = [host.store.get_workflow(workflow)] if workflow else host.store.list_workflows()
    for wf in targets:
        if wf.status is not WorkflowStatus.ACTIVE:
            report.blocked[wf.name] = f"{wf.status.value}: {wf.status_reason or ''}".strip(": ")
            continue
        if wf.current_version_id is None:
            continue
        try:
            _drain_one(host, wf, report, max_runs)
        except Conflict as exc:  # another process holds its lease: it is being run already
            report.blocked[wf.name] = exc.message
        except Exception as exc:  # one workflow's trouble never stops the others from draining
            report.blocked[wf.name] = (
                f"keepflow hit an internal error: {escape_text(f'{type(exc).__name__}: {exc}')}"
                "; see docs/operations.md#internal-errors")
    for name, why in report.recovered.failed_workflows.items():
        report.blocked.setdefault(name, f"recovery failed: {why}")
    return report


def _drain_one(host: Host, wf: WorkflowRecord, report: DrainReport, max_runs: int) -> None:
    _, version, manifest = _current(host, wf.name)
    consumers = {name: c.subscribe for name, c in manifest.consumers.items()}
    with host.lease(wf) as fence:
        # Background reconciliations that are due now (SPEC §6 step 5) — drain does not wait.
        now = host.clock.now()
        for _, run_id, _, due in host.store.pending_reconciles(wf.id):
            if due is None or due <= now:
                report.runs.append(host.executor.reconcile_due(run_id, fence))
        if host.store.active_runs(wf.id):
            report.blocked[wf.name] = "has an unfinished run"
            return
        while len(report.runs) < max_runs:
            ready = host.store.ready_consumers(wf.id, consumers, host.clock.now())
            if not ready:
                return
            outcome = host.executor.run_consumer(wf, version, ready[0][1], "drain", fence)
            report.runs.append(outcome)
            if outcome.status is not RunStatus.COMMITTED:
                report.blocked[wf.name] = f"run {outcome.run_id} is {outcome.status.value}"
                return


def set_status(host: Host, workflow: str, status: WorkflowStatus, actor: str = "cli",
               reason: str | None = None) -> WorkflowRecord:
    """pause / resume / disable (SPEC §12), audited; a running server re-reads it at once."""
    wf = host.store.get_workflow(workflow)
    allowed = {
        WorkflowStatus.PAUSED: {WorkflowStatus.ACTIVE, WorkflowStatus.NEEDS_ACTION},
        WorkflowStatus.ACTIVE: {WorkflowStatus.PAUSED, WorkflowStatus.NEEDS_ACTION,
                                WorkflowStatus.FAILED, WorkflowStatus.DISABLED},
        WorkflowStatus.DISABLED: set(WorkflowStatus) - {WorkflowStatus.DISABLED},
    }[status]
    if wf.status not in allowed:
        raise Conflict(f"workflow '{wf.name}' is {wf.status.value}; it cannot be "
                       f"{_VERBS[status]}")
    default = {WorkflowStatus.PAUSED: f"paused by {actor}",
               WorkflowStatus.DISABLED: f"disabled by {actor}"}.get(status)
    return host.store.set_workflow_status(wf.id, status, reason or default, actor)


_VERBS = {WorkflowStatus.PAUSED: "paused", WorkflowStatus.ACTIVE: "resumed",
          WorkflowStatus.DISABLED: "disabled"}


def status(host: Host, workflow: str | None = None,
           server: dict[str, Any] | None = None) -> dict[str, Any]:
    from keepflow.views import status as status_view

    facts = host.store.workflow_facts(workflow)
    return {"server": server, "workflows": status_view.status(facts, host.clock.now())}


def retry_run(host: Host, run_id: str, actor: str = "cli") -> RunOutcome | None:
    """Continue a failed run from its last durable point with the current script version;
    an applied mutation is never repeated (SPEC §5.5, §15 scenario 7)."""
    run = host.store.get_run(run_id)
    if run.status is not RunStatus.FAILED:
        raise Conflict(f"run {run_id} is {run.status.value}; only a failed run can be retried")
    _refuse_if_other_active(host, run.workflow_id, run_id)
    wf, version, _ = _current(host, run.workflow_id)
    host.store.retry_run(run_id, actor=actor, reactivate=True,
                         before={"status": "failed",
                                 "failure": (run.failure or {}).get("message")},
                         after={"effect": actions.EFFECTS["retry"]})
    return _continue(host, wf, lambda fence: host.executor.resume(run_id, fence,
                                                                  version=version))


def resolve(host: Host, run_id: str, answer: actions.Answer, actor: str = "cli"
            ) -> RunOutcome | None:
    """Try again / It didn't happen / Skip for a mutation whose outcome is unknown (SPEC §6)."""
    rec = actions.resolve(host.store, run_id, answer, actor)
    wf = host.store.get_workflow(rec.workflow_id)
    return _continue(host, wf, lambda fence: host.executor.resume(
        run_id, fence, reconcile=answer == "try_again"))


def approve(host: Host, run_id: str, accept: bool, actor: str = "cli") -> RunOutcome | None:
    """Approve (the mutation runs) or reject (= skip) a mutation awaiting approval."""
    rec = actions.approve(host.store, run_id, actor, accept=accept)
    wf = host.store.get_workflow(rec.workflow_id)
    return _continue(host, wf, lambda fence: host.executor.resume(run_id, fence))


def skip_event(host: Host, workflow: str, topic: str, message_id: str, actor: str = "cli"
               ) -> dict[str, Any]:
    """A person skips a pending, unreserved event: no run will ever reserve it (SPEC §12)."""
    wf = host.store.get_workflow(workflow)
    return event_view(host.store.skip_event(wf.id, topic, message_id, actor))


def _refuse_if_other_active(host: Host, workflow_id: str, run_id: str) -> None:
    for other, handler, status in host.store.active_runs(workflow_id):
        if other != run_id:
            raise Conflict(f"run {other} ({handler}) is {status}; resolve it first, nothing "
                           "else of this workflow runs meanwhile")


def _continue(host: Host, wf: WorkflowRecord,
              step: Callable[[Fence], RunOutcome]) -> RunOutcome | None:
    """Carry a run on after a person's answer: here, or — when another process (a running
    server) takes it over — not here (``host.handoff`` decides)."""
    if host.handoff.hand_over(wf.name):
        return None
    with host.lease(wf) as fence:
        return step(fence)


# ------------------------------------------------------------------------------ reading


def list_workflows(host: Host) -> list[dict[str, Any]]:
    return [workflow_view(s) for s in host.store.workflow_summaries()]


def list_events(host: Host, workflow: str, topic: str | None = None,
                status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    wf = host.store.get_workflow(workflow)
    st = _event_status(status)
    return [event_view(e, with_payload=False)
            for e in host.store.event_list(wf.id, topic=topic, status=st, limit=limit)]


def show_event(host: Host, workflow: str, topic: str, message_id: str) -> dict[str, Any]:
    wf = host.store.get_workflow(workflow)
    return event_detail(host.store.event_detail(wf, topic, message_id))


def list_runs(host: Host, workflow: str, limit: int = 100) -> list[dict[str, Any]]:
    wf = host.store.get_workflow(workflow)
    return [run_view(s) for s in host.store.run_list(wf.id, limit)]


def show_run(host: Host, run_id: str) -> dict[str, Any]:
    return run_view(host.store.run_detail(run_id))


def inbox(host: Host) -> list[dict[str, Any]]:
    """Every action-needed item (SPEC §12)."""
    from keepflow.views import inbox as inbox_view

    facts = host.store.inbox_facts(inbox_view.stale_cutoff(host.policies, host.clock.now()))
    return inbox_view.inbox(facts, host.policies)


def policy_show(host: Host, workflow: str | None = None) -> dict[str, Any]:
    """Effective policy values, system-wide or for one workflow (SPEC §10)."""
    if workflow:
        workflow = host.store.get_workflow(workflow).name
    return host.policies.show(workflow)


# ---------------------------------------------------------------- connections (SPEC §9)


def connection_add(host: Host, name: str, type_name: str, settings: dict[str, Any],
                   secrets: dict[str, str], actor: str = "cli") -> dict[str, Any]:
    """A new connection in connections.toml, its secrets sealed in the store."""
    from keepflow.connectors import manage

    done = manage.add(host.settings.connections_file, host.vault, name, type_name, settings,
                      secrets, actor)
    host.credentials_changed()
    return done


def connection_secret(host: Host, name: str, key: str, value: str, actor: str = "cli"
                      ) -> dict[str, Any]:
    """Replace (rotate) one stored secret of a connection."""
    from keepflow.connectors import manage

    done = manage.set_secret(host.settings.connections_file, host.vault, name, key, value,
                             actor)
    host.credentials_changed()
    done["retried"] = reconnected(host, name, actor)
    return done


def reconnected(host: Host, connection: str, actor: str = "cli") -> list[str]:
    """Retry every run that failed because ``connection``'s credentials were refused (its
    inbox item asked to reconnect it): the ones that could be retried now."""
    retried = []
    for item in inbox(host):
        if item["kind"] == "reconnect" and item.get("connection") == connection:
            try:
                retry_run(host, item["run"], actor)
            except KeepflowError:  # another run of the workflow holds it: it waits its turn
                continue
            retried.append(item["run"])
    return retried


def connection_list(host: Host) -> list[dict[str, Any]]:
    from keepflow.connectors import manage

    return manage.listing(host.settings.connections_file, host.vault)


def connection_check(host: Host, name: str) -> dict[str, Any]:
    """The connector's own check against the real server: credentials valid, access enough."""
    from keepflow.connectors import manage

    return manage.check(host.connections, name)


def connection_remove(host: Host, name: str, actor: str = "cli") -> dict[str, Any]:
    from keepflow.connectors import manage

    return manage.remove(host.settings.connections_file, host.vault, name, actor)


def _event_status(status: str | None) -> EventStatus | None:
    if status is None:
        return None
    try:
        return EventStatus(status)
    except ValueError:
        raise UsageError(
            f"unknown event status {status!r}; use one of: "
            f"{', '.join(s.value for s in EventStatus)}") from None


# ------------------------------------------------------------------------------ notifications


def sweep_notifications(host: Host) -> None:
    """Bring notifications up to date with the store (SPEC §12): a handful of indexed queries,
    so the CLI runs it before ``inbox``, ``status`` and ``notifications`` — the in-app list is
    current without a server (a server also sweeps every 30 s and sends the webhooks)."""
    from keepflow.notifications import sweep

    sweep(host.store, host.policies, host.clock.now())


def notifications(host: Host, status: str | None = None) -> list[dict[str, Any]]:
    """Notifications, newest first: ``open``, ``resolved`` or (None) all."""
    from keepflow.notifications import notification_view

    if status not in (None, "open", "resolved"):
        raise UsageError(f"unknown notification status {status!r}; use open or resolved")
    return [notification_view(n) for n in host.store.list_notifications(status=status)]


# ------------------------------------------------------------------------------ pages and API

#: The largest page any listing serves.
PAGE_MAX = 500
_CURSOR = re.compile(r"^([pd])([0-9]{1,18})$")


def _cursor(text: str | None) -> EventCursor | None:
    if not text:
        return None
    m = _CURSOR.match(text)
    if m is None:
        raise InvalidInput(f"`after` must be a cursor this API returned as `next` (got "
                           f"{escape_text(text[:40])!r})", field="after")
    return EventCursor(m.group(1) == "p", int(m.group(2)))


def _cursor_text(c: EventCursor | None) -> str | None:
    return None if c is None else f"{'p' if c.pending else 'd'}{c.event_id}"


def _when(text: str | None, name: str) -> datetime | None:
    """An ISO 8601 date or time from a filter field; without a zone it means UTC."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(f"`{name}` must be an ISO 8601 date or time such as 2026-12-01 or "
                           f"2026-12-01T08:00:00+00:00 (got {escape_text(text[:40])!r})",
                           field=name) from None
    try:
        # In UTC here, as the store compares it: 0001-01-01T00:00+01:00 is before year 1.
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError:
        raise InvalidInput(f"`{name}` is outside the years 1 to 9999 once in UTC (got "
                           f"{escape_text(text[:40])!r})", field=name) from None


def _limit(limit: int) -> int:
    if not 1 <= limit <= PAGE_MAX:
        raise InvalidInput(f"`limit` must be 1 to {PAGE_MAX} (got {limit})", field="limit")
    return limit


def stale_before(host: Host, wf: WorkflowRecord) -> datetime:
    """Pending events created before this count as stale (policy notify.stale_event_days)."""
    from keepflow.views import inbox as inbox_view

    return inbox_view.stale_cutoff(host.policies, host.clock.now())(wf)


def event_page(host: Host, workflow: str, *, topic: str | None = None,
               status: str | None = None, title: str | None = None, since: str | None = None,
               until: str | None = None, after: str | None = None, limit: int = 50
               ) -> dict[str, Any]:
    """One page of a workflow's events, pending first, with the cursor of the next page
    (SPEC §12 "Events"); each event says whether it is stale."""
    wf = host.store.get_workflow(workflow)
    if title is not None and len(title) > 200:
        raise InvalidInput("`title` (the search text) is over 200 characters", field="title")
    f = EventFilter(topic=topic or None, status=_event_status(status), title=title or None,
                    since=_when(since, "since"), until=_when(until, "until"))
    got, nxt = host.store.event_page(wf.id, f, after=_cursor(after), limit=_limit(limit))
    cut = stale_before(host, wf)
    return {
        "workflow": wf.name, "topic": topic,
        "events": [event_view(e, with_payload=False) | {"stale": _is_stale(e, cut)}
                   for e in got],
        "next": _cursor_text(nxt),
    }


def _is_stale(e: EventRecord, cut: datetime) -> bool:
    return e.status is EventStatus.PENDING and e.reserved_by is None and e.created_at < cut


def topics(host: Host, workflow: str) -> list[dict[str, Any]]:
    """Every topic of the current version: counts, stale pending events, its consumers."""
    wf, _, manifest = _current(host, workflow)
    counts = host.store.topic_counts(wf.id)
    stale = host.store.stale_counts(wf.id, stale_before(host, wf))
    return [{"topic": t, "counts": counts.get(t, {s.value: 0 for s in EventStatus}),
             "stale": stale.get(t, 0),
             "consumers": sorted(n for n, c in manifest.consumers.items() if t in c.subscribe)}
            for t in manifest.topics]


def dashboard(host: Host, workflow: str) -> dict[str, Any]:
    """A workflow's page (SPEC §12 "Workflow"): status and why, topics with their counts and
    stale events, consumers and what wakes them, next producer runs, recent runs, versions."""
    wf = host.store.get_workflow(workflow)
    out: dict[str, Any] = status(host, wf.name)["workflows"][0]
    out["topics"] = topics(host, wf.name) if wf.current_version_id else []
    out["staleDays"] = host.policies.for_workflow(wf.name).consumer.stale_event_days
    out["recentRuns"] = list_runs(host, wf.name, 10)
    out["versions"] = versions(host, wf.name)
    out["inboundToken"] = host.store.inbound_token_sha(wf.id) is not None
    return out


def list_runs_page(host: Host, workflow: str, *, before: str | None = None,
                   status: str | None = None, limit: int = 50) -> dict[str, Any]:
    wf = host.store.get_workflow(workflow)
    if status is not None:
        try:
            RunStatus(status)
        except ValueError:
            raise InvalidInput(f"unknown run status {escape_text(status[:40])!r}; use one of: "
                               f"{', '.join(s.value for s in RunStatus)}",
                               field="status") from None
    got = host.store.run_list(wf.id, _limit(limit) + 1, before=before, status=status)
    runs = [run_view(s) for s in got[:limit]]
    return {"workflow": wf.name, "runs": runs,
            "next": runs[-1]["id"] if len(got) > limit else None}


def ledger(host: Host, workflow: str, *, status: str | None = None, before: int | None = None,
           limit: int = 100) -> dict[str, Any]:
    """A workflow's mutation ledger, newest first (SPEC §6)."""
    from keepflow.model import LedgerStatus
    from keepflow.views import mutation_view

    wf = host.store.get_workflow(workflow)
    st = None
    if status is not None:
        try:
            st = LedgerStatus(status)
        except ValueError:
            raise InvalidInput(f"unknown ledger status {escape_text(status[:40])!r}; use one "
                               f"of: {', '.join(s.value for s in LedgerStatus)}",
                               field="status") from None
    got = host.store.ledger_page(wf.id, status=st, before=before, limit=_limit(limit) + 1)
    rows = [mutation_view(m) | {"id": m.id, "runId": m.run_id} for m in got[:limit]]
    return {"workflow": wf.name, "mutations": rows,
            "next": rows[-1]["id"] if len(got) > limit else None}


def versions(host: Host, workflow: str) -> list[dict[str, Any]]:
    """Script versions, newest first, without their source."""
    wf = host.store.get_workflow(workflow)
    return [{"version": v.label, "id": v.id, "current": v.id == wf.current_version_id,
             "createdBy": v.created_by, "createdAt": v.created_at.isoformat(),
             "sha256": v.source_sha256, "findings": len(v.findings)}
            for v in reversed(host.store.versions(wf.id))]


def version(host: Host, workflow: str, label: str, diff_from: str | None = None
            ) -> dict[str, Any]:
    """One version's source, manifest and findings; with ``diff_from``, the unified diff from
    that version to this one."""
    import difflib

    wf = host.store.get_workflow(workflow)
    by_label = {v.label: v for v in host.store.versions(wf.id)}

    def find(name: str, what: str) -> VersionRecord:
        if name not in by_label:
            raise NotFound(f"workflow '{wf.name}' has no version {escape_text(name[:20])!r} "
                           f"({what}; versions: {', '.join(by_label) or 'none'})")
        return by_label[name]

    v = find(label, "version")
    out: dict[str, Any] = {
        "workflow": wf.name, "version": v.label, "id": v.id,
        "current": v.id == wf.current_version_id, "createdBy": v.created_by,
        "createdAt": v.created_at.isoformat(), "sha256": v.source_sha256, "source": v.source,
        "manifest": v.manifest, "findings": v.findings, "diffFrom": None, "diff": None}
    if diff_from:
        old = find(diff_from, "diffFrom")
        out["diffFrom"] = old.label
        out["diff"] = list(difflib.unified_diff(
            old.source.splitlines(), v.source.splitlines(), fromfile=f"version {old.label}",
            tofile=f"version {v.label}", lineterm=""))
    return out


def audit(host: Host, *, workflow: str | None = None, before: int | None = None,
          action: str | None = None, limit: int = 100) -> dict[str, Any]:
    """The audit log, newest first (SPEC §12): who did what, when, before → after."""
    wf_id = host.store.get_workflow(workflow).id if workflow else None
    rows = host.store.audit_page(before=before, limit=_limit(limit) + 1, workflow_id=wf_id,
                                 action=action)
    return {"entries": rows[:limit], "next": rows[limit - 1]["id"] if len(rows) > limit
            else None}


# ------------------------------------------------------------------------------ inbound events


def create_inbound_token(host: Host, workflow: str, actor: str = "cli") -> dict[str, Any]:
    """Make (or replace) the token that authenticates a workflow's inbound events; the token
    is returned this once — the store keeps only its SHA-256."""
    wf = host.store.get_workflow(workflow)
    token = "kfi_" + secrets.token_urlsafe(32)
    host.store.set_inbound_token(wf.id, _sha(token), actor)
    return {"workflow": wf.name, "token": token,
            "path": f"/api/workflows/{wf.name}/topics/{{topic}}/events"}


def revoke_inbound_token(host: Host, workflow: str, actor: str = "cli") -> dict[str, Any]:
    wf = host.store.get_workflow(workflow)
    host.store.set_inbound_token(wf.id, None, actor)
    return {"workflow": wf.name, "token": None}


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def inbound_gate(host: Host, workflow: str, topic: str, token: str | None
                 ) -> tuple[WorkflowRecord, WorkflowManifest]:
    """Whether this token may publish into this topic — checked before the body is read."""
    from keepflow.storable import first_unstorable

    # An unknown workflow, one without a token and a wrong token get the same answer: a
    # caller without the token learns nothing, not even which workflows exist.
    said = escape_text(workflow[:64])
    refused = Unauthorized(
        f"missing or wrong inbound-event token for workflow {said!r}: send the token "
        f"`keepflow token {said}` made as `Authorization: Bearer <token>`; a workflow "
        "without one takes no inbound events (docs/api.md#inbound-events)")
    try:
        wf = host.store.get_workflow(workflow)
    except NotFound:
        raise refused from None
    expected = host.store.inbound_token_sha(wf.id)
    if expected is None or not token or first_unstorable(token) is not None \
            or not hmac.compare_digest(_sha(token), expected):
        raise refused
    _, _, manifest = _current(host, wf.name)
    if topic not in manifest.topics:
        raise NotFound(f"workflow '{wf.name}' declares no topic {escape_text(topic[:64])!r} "
                       f"(topics: {', '.join(manifest.topics) or 'none'})", field="topic")
    return wf, manifest


def receive_event(host: Host, workflow: str, topic: str, body: Any, token: str | None
                  ) -> tuple[dict[str, Any], bool]:
    """An event from outside into a topic the script declares (docs/api.md#inbound-events):
    idempotent by ``messageId`` exactly like a producer's publish. Returns the event and
    whether it is new."""
    from keepflow.runtime.outside import MAX_DEPTH, nesting
    from keepflow.runtime.values import event_draft
    from keepflow.storable import first_unstorable

    wf, manifest = inbound_gate(host, workflow, topic, token)
    # As deep as a script may publish (the sandbox's bound): deeper, the payload could not
    # cross to a consumer, and the host's own encoders would exhaust their recursion.
    if isinstance(body, dict) and nesting(body.get("payload")) > MAX_DEPTH:
        raise InvalidInput(f"the event's payload nests arrays or objects more than {MAX_DEPTH} "
                           "levels deep; send a flatter value", field="payload")
    bad = first_unstorable(body)
    if bad is not None:
        raise InvalidInput(bad.describe("the event"), field=bad.path)
    policy = host.policies.for_workflow(wf.name)
    try:
        draft = event_draft(topic, body, declared=frozenset(manifest.topics),
                            payload_limit=policy.limits.payload_bytes, where="the event")
    except InvalidResult as exc:
        if "size" in exc.details:
            raise TooLarge(exc.message, **exc.details) from None
        raise InvalidInput(exc.message, **exc.details) from None
    report = host.store.publish_inbound(wf.id, draft, policy.limits.workflow_storage_bytes)
    found = host.store.event_detail(wf, topic, draft.message_id).event
    out = event_view(found, with_payload=False) | {"created": bool(report.inserted)}
    if report.differing:
        out["warning"] = ("an event with this messageId already exists with a different "
                          "payload; the first one is kept (events are idempotent by messageId)")
    return out, bool(report.inserted)
