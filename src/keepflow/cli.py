"""The ``keepflow`` command: parse arguments, call :mod:`keepflow.service`, print.

Every listing takes ``--json`` (stable fields, see ``docs/cli.md``). Errors are one clear line
on stderr and a non-zero exit, never a traceback. Exit codes: 0 ok, 1 refused or failed,
2 usage, 3 a run failed, 4 a run is suspended (waiting for reconciliation or a person).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from keepflow import service
from keepflow.errors import KeepflowError, ScriptInvalid
from keepflow.model import RunStatus
from keepflow.runtime.executor import RunOutcome
from keepflow.runtime.host import Host
from keepflow.sandbox.findings import format_finding
from keepflow.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

EXIT_REFUSED, EXIT_USAGE, EXIT_RUN_FAILED, EXIT_SUSPENDED = 1, 2, 3, 4


def _fail(message: str, code: int = EXIT_REFUSED) -> None:
    click.echo(f"keepflow: {message}", err=True)
    sys.exit(code)


def friendly(fn: F) -> F:
    """Turn every keepflow error into one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ScriptInvalid as exc:
            for f in exc.findings:
                click.echo(format_finding(f, exc.message.split(":")[0]), err=True)
            _fail(exc.message)
        except KeepflowError as exc:
            _fail(exc.message, EXIT_USAGE if exc.code == "usage" else EXIT_REFUSED)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as exc:  # a bug: still one line, with the way to get details
            if os.environ.get("KEEPFLOW_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (set KEEPFLOW_DEBUG=1 for the "
                  "traceback, and please report it)")

    return wrapper  # type: ignore[return-value]


@contextmanager
def _host() -> Iterator[Host]:
    with Host(Settings()) as host:
        yield host


def _emit(data: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    else:
        human(data)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="keepflow")
def main() -> None:
    """keepflow: delegated automations that run safely for months.

    State lives in $KEEPFLOW_HOME (default ./.keepflow); set KEEPFLOW_DATABASE_URL to use
    PostgreSQL.
    """


@main.command()
@friendly
def init() -> None:
    """Create $KEEPFLOW_HOME, the store and a connections file."""
    info = service.init(Settings())
    click.echo(f"keepflow home: {info['home']}")
    click.echo(f"store: {info['store']}")
    for path in info["created"]:
        click.echo(f"created {path}")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", help="Workflow name (default: the script's `name`).")
@json_option
@friendly
def deploy(file: Path, name: str | None, as_json: bool) -> None:
    """Validate FILE and deploy it as a new version (refused if it has errors)."""
    with _host() as host:
        res = service.deploy(host, file, name)
    data = {"workflow": res.workflow.name, "id": res.workflow.id, "version": res.version,
            "status": res.status, "findings": [f.to_dict() for f in res.findings]}

    def human(_: Any) -> None:
        for f in res.findings:
            click.echo(format_finding(f, str(file)))
        click.echo(f"{res.workflow.name}: version {res.version} ({res.status})")

    _emit(data, as_json, human)


@main.command()
@json_option
@friendly
def workflows(as_json: bool) -> None:
    """List workflows with their status and event counts."""
    with _host() as host:
        data = service.list_workflows(host)

    def human(items: list[dict[str, Any]]) -> None:
        if not items:
            click.echo("no workflows (deploy one with `keepflow deploy FILE`)")
        for w in items:
            pending = sum(t["pending"] for t in w["topics"].values())
            click.echo(f"{w['name']:<24} {w['status']:<13} v{w['version'] or '-':<6} "
                       f"pending={pending}" + (f"  ({w['statusReason']})"
                                               if w["statusReason"] else ""))

    _emit(data, as_json, human)


def _run_exit(outcome: RunOutcome) -> None:
    if outcome.status is RunStatus.FAILED:
        sys.exit(EXIT_RUN_FAILED)
    if outcome.status is RunStatus.SUSPENDED:
        sys.exit(EXIT_SUSPENDED)


def _outcome_line(o: RunOutcome) -> str:
    line = f"run {o.run_id} {o.handler}: {o.status.value}"
    if o.mutation:
        line += f" (mutation {o.mutation})"
    if o.failure:
        line += f" — {o.failure['class']}: {o.failure['message']}"
    return line


def _outcome_json(o: RunOutcome) -> dict[str, Any]:
    return {"id": o.run_id, "handler": o.handler, "kind": o.kind.value,
            "status": o.status.value, "mutation": o.mutation,
            "failureClass": (o.failure or {}).get("class"),
            "failureMessage": (o.failure or {}).get("message")}


@main.command()
@click.argument("workflow")
@click.argument("handler")
@json_option
@friendly
def trigger(workflow: str, handler: str, as_json: bool) -> None:
    """Run HANDLER of WORKFLOW once, now, in this process."""
    with _host() as host:
        outcome = service.trigger(host, workflow, handler)
    _emit(_outcome_json(outcome), as_json, lambda _: click.echo(_outcome_line(outcome)))
    _run_exit(outcome)


@main.command()
@click.argument("workflow", required=False)
@json_option
@friendly
def drain(workflow: str | None, as_json: bool) -> None:
    """Run ready consumers until none is ready (does not wait for timeouts or schedules)."""
    with _host() as host:
        report = service.drain(host, workflow)
    runs = [*report.recovered.resumed, *report.runs]
    data = {"recovered": [_outcome_json(o) for o in report.recovered.resumed],
            "runs": [_outcome_json(o) for o in report.runs], "blocked": report.blocked}

    def human(_: Any) -> None:
        for o in report.recovered.resumed:
            click.echo("recovered " + _outcome_line(o))
        for o in report.runs:
            click.echo(_outcome_line(o))
        for name, why in report.blocked.items():
            click.echo(f"{name}: not drained — {why}")
        click.echo(f"{len(report.runs)} run(s)")

    _emit(data, as_json, human)
    bad = [o for o in runs if o.status in (RunStatus.FAILED, RunStatus.SUSPENDED)]
    if bad:
        _run_exit(bad[-1])


@main.command()
@click.argument("workflow")
@click.option("--topic", help="Only this topic.")
@click.option("--status", help="pending | consumed | skipped")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1, 10_000))
@json_option
@friendly
def events(workflow: str, topic: str | None, status: str | None, limit: int,
           as_json: bool) -> None:
    """List events of WORKFLOW, pending first."""
    with _host() as host:
        data = service.list_events(host, workflow, topic, status, limit)

    def human(items: list[dict[str, Any]]) -> None:
        for e in items:
            extra = f" reserved by {e['reservedBy']}" if e["reservedBy"] else ""
            click.echo(f"{e['status']:<9} {e['topic']:<20} {e['messageId']:<28} "
                       f"{e['title']}{extra}")
        click.echo(f"{len(items)} event(s)")

    _emit(data, as_json, human)


@main.group()
def event() -> None:
    """One event."""


@event.command("show")
@click.argument("workflow")
@click.argument("topic")
@click.argument("message_id")
@json_option
@friendly
def event_show(workflow: str, topic: str, message_id: str, as_json: bool) -> None:
    """Show an event: status history and every run that reserved it."""
    with _host() as host:
        data = service.show_event(host, workflow, topic, message_id)

    def human(e: dict[str, Any]) -> None:
        click.echo(f"{e['title']}\n  {e['topic']}/{e['messageId']}: {e['status']} "
                   f"(attempt {e['attempt']}), created by run {e['createdBy']}")
        click.echo("  payload: " + json.dumps(e["payload"], ensure_ascii=False)[:500])
        for h in e["history"]:
            click.echo(f"  {h['at']}  {h['status']:<9} {h['note'] or ''}")
        for r in e["reservations"]:
            click.echo(f"  reserved by run {r['runId']} (attempt {r['attempt']}): "
                       f"{r['runStatus']}, {r['outcome'] or 'in progress'}")

    _emit(data, as_json, human)


@main.command()
@click.argument("workflow")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@json_option
@friendly
def runs(workflow: str, limit: int, as_json: bool) -> None:
    """List runs of WORKFLOW, newest first."""
    with _host() as host:
        data = service.list_runs(host, workflow, limit)

    def human(items: list[dict[str, Any]]) -> None:
        for r in items:
            muts = ",".join(m["status"] for m in r["mutations"])
            fail = f"  {r['failureClass']}: {r['failureMessage']}" if r["failureClass"] else ""
            click.echo(f"{r['id']}  {r['kind']:<8} {r['handler']:<16} {r['status']:<10} "
                       f"{('mutation=' + muts) if muts else ''}{fail}")
        click.echo(f"{len(items)} run(s)")

    _emit(data, as_json, human)


@main.group()
def run() -> None:
    """One run."""


@run.command("show")
@click.argument("run_id")
@json_option
@friendly
def run_show(run_id: str, as_json: bool) -> None:
    """Show a run: transitions, reservations, ledger, tool calls, logs, failure."""
    with _host() as host:
        data = service.show_run(host, run_id)

    def human(r: dict[str, Any]) -> None:
        click.echo(f"run {r['id']}  {r['kind']} {r['handler']}: {r['status']}"
                   + (f" ({r['suspendReason']})" if r["suspendReason"] else ""))
        for t in r["transitions"]:
            click.echo(f"  {t['at']}  {t['from'] or '-':>9} → {t['to']:<10} {t['note'] or ''}")
        for res in r["reservations"]:
            click.echo(f"  reserved {res['topic']}/{res['messageId']} \"{res['title']}\" "
                       f"(attempt {res['attempt']}): {res['outcome'] or 'held'}")
        for m in r["mutations"]:
            click.echo(f"  mutation attempt {m['attempt']}: {m['description']} → {m['status']}"
                       f" [{m['idempotencyKey']}]")
        for c in r["toolCalls"]:
            click.echo(f"  call {c['seq']} {c['phase']}: {c['connection'] or ''}"
                       f"{'.' if c['connection'] else ''}{c['tool'] or c['target']} "
                       f"{'ok' if c['ok'] else 'error'} {c['durationMs']:.1f} ms")
        for e in r["published"]:
            click.echo(f"  published {e['topic']}/{e['messageId']} \"{e['title']}\"")
        for lg in r["logs"]:
            click.echo(f"  log [{lg['level']}] {lg['message']}")
        if r["failure"]:
            f = r["failure"]
            click.echo(f"  failed in {f['phase']} ({f['class']}): {f['message']}")

    _emit(data, as_json, human)


@main.command()
@click.argument("run_id")
@json_option
@friendly
def retry(run_id: str, as_json: bool) -> None:
    """Retry a failed run from its last durable point (an applied mutation is never redone)."""
    with _host() as host:
        outcome = service.retry_run(host, run_id)
    _emit(_outcome_json(outcome), as_json, lambda _: click.echo(_outcome_line(outcome)))
    _run_exit(outcome)


if __name__ == "__main__":
    main()
