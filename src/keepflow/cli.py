"""The ``keepflow`` command: parse arguments, call :mod:`keepflow.service`, print.

Every listing takes ``--json`` (stable fields, see ``docs/cli.md``). Errors are one clear line
on stderr and a non-zero exit, never a traceback. Exit codes: 0 ok, 1 refused or failed,
2 usage, 3 a run failed, 4 a run is suspended (waiting for reconciliation or a person).

What is printed comes from untrusted scripts and servers, so output has one shape
(docs/security.md#terminal-output): a command hands its data to :func:`_emit`, which prints
it as JSON (:func:`keepflow.terminal.dumps_json`) or gives the human printer the data passed
through :func:`keepflow.terminal.visible_data` — a printer never sees a raw string — and every
line leaves through :func:`_say`, the one place that writes, which also shows any control
character that still slipped in and stops writing quietly when the reader of a pipe has gone.
Arguments and the environment are checked once, before any command runs
(:class:`_Command`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from keepflow import examples, service
from keepflow.errors import KeepflowError, ScriptInvalid, UsageError
from keepflow.model import RunStatus, WorkflowStatus
from keepflow.runtime.host import Host
from keepflow.runtime.outcome import RunOutcome
from keepflow.sandbox.findings import Finding, format_finding
from keepflow.server.client import ServerInfo
from keepflow.server.link import ServerLink
from keepflow.settings import Settings
from keepflow.terminal import (
    dumps_json,
    json_preview,
    visible,
    visible_data,
    visible_line,
    visible_lines,
)
from keepflow.views import outcome_view

EXIT_REFUSED, EXIT_USAGE, EXIT_RUN_FAILED, EXIT_SUSPENDED = 1, 2, 3, 4


# ------------------------------------------------------------------------------ output


def _say(text: str = "", *, err: bool = False) -> None:
    """Write one piece of output: the only place in this module that writes.

    ``text`` is keepflow's own layout around values that are already visible; a control
    character that still got here is shown rather than obeyed (layout newlines stay). When
    the reader of a pipe has gone (``keepflow events wf | head -1``) the rest of the output is
    discarded quietly and the command still ends with its own exit code.
    """
    try:
        click.echo(visible_lines(text), err=err)
    except BrokenPipeError:
        _discard(sys.stderr if err else sys.stdout)


def _discard(stream: Any) -> None:
    """Point the stream's descriptor at /dev/null: later writes, and the flush of whatever is
    still buffered at exit, succeed without a reader (no "Exception ignored" at exit)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not backed by a descriptor (tests)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _fail(message: str, code: int = EXIT_REFUSED) -> None:
    """One line on stderr and the exit code. Messages quote untrusted values (names,
    messageIds, server replies), so the whole line is shown visibly."""
    _say(f"keepflow: {visible_line(message)}", err=True)
    sys.exit(code)


def friendly(fn: Callable[[], Any]) -> Any:
    """Call ``fn``; turn every keepflow error into one line on stderr and an exit code."""
    try:
        return fn()
    except ScriptInvalid as exc:
        where = visible(exc.source or "script")
        for f in exc.findings:
            shown = visible_data(f.to_dict() if hasattr(f, "to_dict") else f)
            _say(format_finding(Finding.from_dict(shown), where), err=True)
        _fail(exc.message)
    except KeepflowError as exc:
        _fail(exc.message, EXIT_USAGE if exc.code == "usage" else EXIT_REFUSED)
    except click.exceptions.Abort:  # e.g. end of input at a confirmation prompt
        _fail("aborted; nothing changed")
    except (click.exceptions.Exit, click.ClickException):
        raise  # click's own: it prints and exits
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:  # a bug: still one line, with the way to get details
        if os.environ.get("KEEPFLOW_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set KEEPFLOW_DEBUG=1 for the "
              "traceback, and please report it)")
    return None


def _emit(data: Any, as_json: bool, human: Callable[[Any], None], *,
          view: Any = None) -> None:
    """Print ``data`` as JSON, or call ``human`` with it (or with ``view``, a human-only shape
    of it) made visible: a human printer only ever receives visible text."""
    if as_json:
        _say(dumps_json(data))
    else:
        human(visible_data(data if view is None else view))


# ------------------------------------------------------------------------------ input


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be handed to the host (stored, sent, printed), or None.

    Linux passes arguments and the environment as bytes; Python decodes bytes that are not
    UTF-8 into lone surrogates (U+DC80–U+DCFF), which no store, HTTP request or terminal can
    encode. NUL ends strings in C, in file names and in PostgreSQL text.
    """
    for i, ch in enumerate(text, 1):
        cp = ord(ch)
        if 0xDC80 <= cp <= 0xDCFF:
            return f"is not valid UTF-8 text (byte 0x{cp - 0xDC00:02x} at character {i})"
        if 0xD800 <= cp <= 0xDFFF:
            return f"is not valid UTF-8 text (lone surrogate U+{cp:04X} at character {i})"
        if cp == 0:
            return f"contains a NUL character (at character {i})"
    return None


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, os.PathLike):
        path = os.fspath(value)
        yield path if isinstance(path, str) else os.fsdecode(path)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _texts(v)


def _param_label(param: click.Parameter) -> str:
    if isinstance(param, click.Argument):
        return f"argument {param.human_readable_name}"
    return f"option {param.opts[0] if param.opts else param.name}"


def _environment_read() -> Iterable[tuple[str, str]]:
    """The variables this command reads: KEEPFLOW_* (settings, actor) and USER (the actor
    when KEEPFLOW_ACTOR is not set)."""
    for name, value in os.environ.items():
        if name.startswith("KEEPFLOW_"):
            yield name, value
    if not os.environ.get("KEEPFLOW_ACTOR") and "USER" in os.environ:
        yield "USER", os.environ["USER"]


def check_input(ctx: click.Context) -> None:
    """Refuse, once and before anything runs, any argument, option or environment value that
    is not text the host can encode (a usage error, exit 2)."""
    for param in ctx.command.params:
        for text in _texts(ctx.params.get(param.name or "")):
            problem = text_problem(text)
            if problem:
                raise UsageError(f"{_param_label(param)} {problem}; pass it as UTF-8 text — "
                                 "see docs/cli.md#arguments-and-environment")
    for name, value in _environment_read():
        problem = text_problem(name) or text_problem(value)
        if problem:
            raise UsageError(f"environment variable {visible(name)} {problem}; set it to "
                             "UTF-8 text or unset it — see docs/cli.md#arguments-and-environment")


class _Command(click.Command):
    """Every keepflow command: input checked first, errors reported by :func:`friendly`."""

    def invoke(self, ctx: click.Context) -> Any:
        return friendly(lambda: self._checked_invoke(ctx))

    def _checked_invoke(self, ctx: click.Context) -> Any:
        check_input(ctx)
        return super().invoke(ctx)


class _Group(click.Group):
    """Commands and sub-groups made with ``@group.command()`` / ``@group.group()`` are
    :class:`_Command` / :class:`_Group`: no command can skip the checks."""

    command_class = _Command
    group_class = type  # sub-groups are of this class too


def _settings() -> Settings:
    """The settings of an existing home: every command but ``init`` refuses a home that
    ``keepflow init`` did not make (docs/cli.md#the-home-directory)."""
    settings = Settings.load()
    settings.existing_home()
    return settings


@contextmanager
def _host() -> Iterator[Host]:
    settings = _settings()
    with Host(settings, handoff=ServerLink(settings)) as host:
        yield host


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="keepflow")
def main() -> None:
    """keepflow: delegated automations that run safely for months.

    State lives in $KEEPFLOW_HOME (default ./.keepflow); set KEEPFLOW_DATABASE_URL to use
    PostgreSQL.
    """


@main.command()
@click.option("--example", type=click.Choice(sorted(examples.EXAMPLES)),
              help="Also set up an example: its script, local databases and connections.")
@json_option
def init(example: str | None, as_json: bool) -> None:
    """Create $KEEPFLOW_HOME, the store, a connections file and keepflow.d.ts (types for
    editors). Safe to run again: it changes nothing that exists."""
    info = service.init(Settings.load(), example)

    def human(d: dict[str, Any]) -> None:
        _say(f"keepflow home: {d['home']}")
        _say(f"store: {d['store']}")
        for path in d["created"]:
            _say(f"created {path}")
        if d["example"]:
            ex = examples.EXAMPLES[d["example"]]
            _say(f"next: keepflow deploy {Path(d['home']) / ex.script} && keepflow trigger "
                 f"{ex.workflow} {ex.producer} && keepflow drain")

    _emit(info, as_json, human)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", help="Workflow name (default: the script's `name`).")
@json_option
def deploy(file: Path, name: str | None, as_json: bool) -> None:
    """Validate FILE and deploy it as a new version (refused if it has errors)."""
    with _host() as host:
        res = service.deploy(host, file, name)
    _notify_server(res.workflow.name)
    data = {"workflow": res.workflow.name, "id": res.workflow.id, "version": res.version,
            "status": res.status, "findings": [f.to_dict() for f in res.findings]}

    def human(d: dict[str, Any]) -> None:
        for f in d["findings"]:
            _say(format_finding(Finding.from_dict(f), d["file"]))
        _say(f"{d['workflow']}: version {d['version']} ({d['status']})")

    _emit(data, as_json, human, view=data | {"file": str(file)})


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def check(file: Path, as_json: bool) -> None:
    """Run every deploy check on FILE without deploying it: exit 0 when it would deploy
    (warnings allowed), 1 when it has errors."""
    with _host() as host:
        result = service.check(host, file)
    findings = [f.to_dict() for f in result.findings]
    errors = sum(f["severity"] == "error" for f in findings)
    manifest = result.manifest
    data = {"file": str(file), "ok": result.ok, "errors": errors,
            "warnings": len(findings) - errors, "findings": findings,
            "workflow": manifest.name if manifest else None,
            "producers": list(manifest.producers) if manifest else [],
            "consumers": list(manifest.consumers) if manifest else []}

    def human(d: dict[str, Any]) -> None:
        for f in d["findings"]:
            _say(format_finding(Finding.from_dict(f), d["file"]))
        if d["ok"]:
            _say(f"{d['file']}: ok, workflow {d['workflow']} would deploy "
                 f"({d['warnings']} warning(s)); nothing was deployed")
        else:
            _say(f"{d['file']}: {d['errors']} error(s), {d['warnings']} warning(s); it would "
                 "not deploy")

    _emit(data, as_json, human)
    if not result.ok:
        sys.exit(EXIT_REFUSED)


def _notify_server(workflow: str) -> None:
    """A running server re-reads the workflow now (it would notice within a second anyway)."""
    ServerLink(_settings()).notify(workflow)


def _server() -> ServerInfo | None:
    return ServerLink(_settings()).server


@main.command()
@json_option
def workflows(as_json: bool) -> None:
    """List workflows with their status and event counts."""
    with _host() as host:
        data = service.list_workflows(host)

    def human(items: list[dict[str, Any]]) -> None:
        if not items:
            _say("no workflows (deploy one with `keepflow deploy FILE`)")
        for w in items:
            pending = sum(t["pending"] for t in w["topics"].values())
            _say(f"{w['name']:<24} {w['status']:<13} v{w['version'] or '-':<6} "
                 f"pending={pending}" + (f"  ({w['statusReason']})"
                                         if w["statusReason"] else ""))

    _emit(data, as_json, human)


def _run_exit(outcome: RunOutcome) -> None:
    _run_exit_status(outcome.status.value)


def _run_exit_status(status: str) -> None:
    if status == RunStatus.FAILED.value:
        sys.exit(EXIT_RUN_FAILED)
    if status == RunStatus.SUSPENDED.value:
        sys.exit(EXIT_SUSPENDED)


def _run_line(d: dict[str, Any]) -> str:
    """One run outcome (``outcome_view``, or the server's run view), already visible."""
    line = f"run {d['id']} {d['handler']}: {d['status']}"
    if d.get("mutation"):
        line += f" (mutation {d['mutation']})"
    if d.get("failureClass"):
        line += f" — {d['failureClass']}: {d['failureMessage']}"
    return line


@main.command()
@click.argument("workflow")
@click.argument("handler")
@json_option
def trigger(workflow: str, handler: str, as_json: bool) -> None:
    """Run HANDLER of WORKFLOW once, now (through the server when one runs, else here)."""
    server = _server()
    if server is not None:
        data = server.post(f"/api/workflows/{workflow}/trigger/{handler}", timeout=330.0,
                           wait=True)
        if "id" not in data:
            _emit(data, as_json, lambda d: _say(f"queued on the server: {d['message']}"))
            return
        _emit(data, as_json, lambda d: _say(_run_line(d)))
        _run_exit_status(data["status"])
        return
    with _host() as host:
        outcome = service.trigger(host, workflow, handler)
    _emit(outcome_view(outcome), as_json, lambda d: _say(_run_line(d)))
    _run_exit(outcome)


@main.command()
@click.argument("workflow", required=False)
@json_option
def drain(workflow: str | None, as_json: bool) -> None:
    """Run ready consumers until none is ready (does not wait for timeouts or schedules)."""
    server = _server()
    if server is not None:
        _fail(f"a keepflow server is running (pid {server.pid}, {server.url}); it runs ready "
              "consumers itself — see `keepflow status`")
    with _host() as host:
        report = service.drain(host, workflow)
    runs = [*report.recovered.resumed, *report.runs]
    data = {"recovered": [outcome_view(o) for o in report.recovered.resumed],
            "runs": [outcome_view(o) for o in report.runs], "blocked": report.blocked}

    def human(d: dict[str, Any]) -> None:
        for o in d["recovered"]:
            _say("recovered " + _run_line(o))
        for o in d["runs"]:
            _say(_run_line(o))
        for name, why in d["blocked"].items():
            _say(f"{name}: not drained — {why}")
        _say(f"{len(d['runs'])} run(s)")

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
def events(workflow: str, topic: str | None, status: str | None, limit: int,
           as_json: bool) -> None:
    """List events of WORKFLOW, pending first."""
    with _host() as host:
        data = service.list_events(host, workflow, topic, status, limit)

    def human(items: list[dict[str, Any]]) -> None:
        for e in items:
            extra = f" reserved by {e['reservedBy']}" if e["reservedBy"] else ""
            _say(f"{e['status']:<9} {e['topic']:<20} {e['messageId']:<28} "
                 f"{e['title']}{extra}")
        _say(f"{len(items)} event(s)")

    _emit(data, as_json, human)


@main.group()
def event() -> None:
    """One event."""


@event.command("show")
@click.argument("workflow")
@click.argument("topic")
@click.argument("message_id")
@json_option
def event_show(workflow: str, topic: str, message_id: str, as_json: bool) -> None:
    """Show an event: status history and every run that reserved it."""
    with _host() as host:
        data = service.show_event(host, workflow, topic, message_id)

    def human(e: dict[str, Any]) -> None:
        _say(f"{e['title']}\n  {e['topic']}/{e['messageId']}: {e['status']} "
             f"(attempt {e['attempt']}), created by run {e['createdBy']}")
        _say(f"  payload: {e['payloadPreview']}")
        for h in e["history"]:
            _say(f"  {h['at']}  {h['status']:<9} {h['note'] or ''}")
        for r in e["reservations"]:
            _say(f"  reserved by run {r['runId']} (attempt {r['attempt']}): "
                 f"{r['runStatus']}, {r['outcome'] or 'in progress'}")

    _emit(data, as_json, human,
          view=data | {"payloadPreview": json_preview(data["payload"], 500)})


@main.command()
@click.argument("workflow")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@json_option
def runs(workflow: str, limit: int, as_json: bool) -> None:
    """List runs of WORKFLOW, newest first."""
    with _host() as host:
        data = service.list_runs(host, workflow, limit)

    def human(items: list[dict[str, Any]]) -> None:
        for r in items:
            muts = ",".join(m["status"] for m in r["mutations"])
            fail = f"  {r['failureClass']}: {r['failureMessage']}" if r["failureClass"] else ""
            _say(f"{r['id']}  {r['kind']:<8} {r['handler']:<16} {r['status']:<10} "
                 f"{('mutation=' + muts) if muts else ''}{fail}")
        _say(f"{len(items)} run(s)")

    _emit(data, as_json, human)


@main.group()
def run() -> None:
    """One run."""


@run.command("show")
@click.argument("run_id")
@json_option
def run_show(run_id: str, as_json: bool) -> None:
    """Show a run: transitions, reservations, ledger, tool calls, logs, failure."""
    with _host() as host:
        data = service.show_run(host, run_id)

    def human(r: dict[str, Any]) -> None:
        _say(f"run {r['id']}  {r['kind']} {r['handler']}: {r['status']}"
             + (f" ({r['suspendReason']})" if r["suspendReason"] else ""))
        for t in r["transitions"]:
            _say(f"  {t['at']}  {t['from'] or '-':>9} → {t['to']:<10} {t['note'] or ''}")
        for res in r["reservations"]:
            _say(f"  reserved {res['topic']}/{res['messageId']} \"{res['title']}\" "
                 f"(attempt {res['attempt']}): {res['outcome'] or 'held'}")
        for m in r["mutations"]:
            _say(f"  mutation attempt {m['attempt']}: {m['description']} → {m['status']}"
                 f" [{m['idempotencyKey']}]")
        for c in r["toolCalls"]:
            _say(f"  call {c['seq']} {c['phase']}: {c['connection'] or ''}"
                 f"{'.' if c['connection'] else ''}{c['tool'] or c['target']} "
                 f"{'ok' if c['ok'] else 'error'} {c['durationMs']:.1f} ms")
        for e in r["published"]:
            _say(f"  published {e['topic']}/{e['messageId']} \"{e['title']}\"")
        for lg in r["logs"]:
            _say(f"  log [{lg['level']}] {lg['message']}")
        if r["failure"]:
            f = r["failure"]
            _say(f"  failed in {f['phase']} ({f['class']}): {f['message']}")

    _emit(data, as_json, human)


def _set_status(workflow: str, status: WorkflowStatus, reason: str | None, as_json: bool
                ) -> None:
    with _host() as host:
        wf = service.set_status(host, workflow, status, reason=reason)
    _notify_server(wf.name)
    data = {"workflow": wf.name, "status": wf.status.value, "statusReason": wf.status_reason}
    _emit(data, as_json, lambda d: _say(f"{d['workflow']}: {d['status']}"))


@main.command()
@click.argument("workflow")
@click.option("--revoke", is_flag=True, help="Remove the token: inbound events are refused.")
@json_option
def token(workflow: str, revoke: bool, as_json: bool) -> None:
    """Make the token of WORKFLOW's inbound events, shown this once (replaces the old one).

    Other systems then publish with POST /api/workflows/WORKFLOW/topics/TOPIC/events and
    `Authorization: Bearer TOKEN` (docs/api.md#inbound-events)."""
    with _host() as host:
        if revoke:
            data = service.revoke_inbound_token(host, workflow, _actor())
        else:
            data = service.create_inbound_token(host, workflow, _actor())

    def show(d: dict[str, Any]) -> None:
        if d["token"] is None:
            _say(f"{d['workflow']}: inbound events are refused now (no token)")
            return
        _say(f"inbound-event token of {d['workflow']} (shown this once; the old one, if any, "
             "no longer works):")
        _say(f"  {d['token']}")
        _say(f"publish with: POST {d['path']}  Authorization: Bearer <token>")

    _emit(data, as_json, show)


@main.command()
@click.argument("workflow")
@click.option("--reason", help="Why (kept with the status and in the audit log).")
@json_option
def pause(workflow: str, reason: str | None, as_json: bool) -> None:
    """Stop running WORKFLOW on schedule (manual triggers still work)."""
    _set_status(workflow, WorkflowStatus.PAUSED, reason, as_json)


@main.command()
@click.argument("workflow")
@json_option
def resume(workflow: str, as_json: bool) -> None:
    """Run WORKFLOW on schedule again (from paused, needs action or disabled)."""
    _set_status(workflow, WorkflowStatus.ACTIVE, None, as_json)


@main.command()
@click.argument("workflow")
@click.option("--reason", help="Why (kept with the status and in the audit log).")
@json_option
def disable(workflow: str, reason: str | None, as_json: bool) -> None:
    """Turn WORKFLOW off: nothing runs, not even manual triggers, until resumed."""
    _set_status(workflow, WorkflowStatus.DISABLED, reason, as_json)


@main.command()
@click.argument("workflow", required=False)
@json_option
def status(workflow: str | None, as_json: bool) -> None:
    """What runs when, and why something is not running."""
    server = _server()
    with _host() as host:
        service.sweep_notifications(host)
        data = service.status(host, workflow,
                              server={"pid": server.pid, "url": server.url} if server else None)
    _emit(data, as_json, _print_status)


def _print_status(data: dict[str, Any]) -> None:
    srv = data["server"]
    _say(f"server: running, pid {srv['pid']}, {srv['url']}" if srv else
         "server: not running (start it with `keepflow serve`)")
    for w in data["workflows"]:
        _say(f"\n{w['name']} (v{w['version'] or '-'}): {w['status']} — {w['why']}")
        for p in w["producers"]:
            last = p["lastRun"]
            _say(f"  producer {p['name']}: {p['schedule']}; next {p['nextFire'] or '-'}"
                 f"; last run {last['status'] if last else 'never'}"
                 + (f"; {p['skippedTicks']} tick(s) skipped" if p["skippedTicks"] else ""))
        for c in w["consumers"]:
            wake = f" until {c['wake']}" if c["state"] == "sleeping" else ""
            _say(f"  consumer {c['name']}: {c['state']}{wake}; {c['pending']} pending")
        for topic, n in w["topics"].items():
            _say(f"  topic {topic}: {n['pending']} pending, {n['consumed']} consumed, "
                 f"{n['skipped']} skipped")


@main.command()
@click.option("--host", "bind", default="127.0.0.1", show_default=True,
              help="Address to listen on; beyond loopback every request needs the access "
                   "token ($KEEPFLOW_HOME/api-token).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port for the API and UI; 0 picks a free port and prints it.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Structured logs on stderr as text or JSON lines.")
@click.option("--grace", default=30.0, show_default=True, type=click.FloatRange(0, 3600),
              help="Seconds runs get to reach a durable point on shutdown.")
@click.option("--no-ui", is_flag=True, help="Serve the JSON API only, no pages.")
def serve(bind: str, port: int, log_format: str, grace: float, no_ui: bool) -> None:
    """Run the host: scheduler, recovery, the web UI and the API, until SIGINT/SIGTERM.

    Open the printed address in a browser (http://127.0.0.1:8765/ by default)."""
    from keepflow.server.serve import ServeOptions
    from keepflow.server.serve import serve as run_server

    sys.exit(run_server(_settings(), ServeOptions(host=bind, port=port, log_format=log_format,
                                                 grace_seconds=grace, ui=not no_ui)))


def _after_answer(outcome: RunOutcome | None, as_json: bool) -> None:
    if outcome is None:  # a server holds the workflow: it carries the run on
        _emit({"handedTo": "server"}, as_json,
              lambda _: _say("recorded; the running server carries the run on now"))
        return
    _emit(outcome_view(outcome), as_json, lambda d: _say(_run_line(d)))
    _run_exit(outcome)


@main.command()
@click.argument("run_id")
@json_option
def retry(run_id: str, as_json: bool) -> None:
    """Retry a failed run from its last durable point (an applied mutation is never redone)."""
    with _host() as host:
        outcome = service.retry_run(host, run_id, _actor())
    _after_answer(outcome, as_json)


@main.command()
@click.argument("run_id")
@click.option("--try-again", "answer", flag_value="try_again",
              help="Ask the external system again whether it happened.")
@click.option("--didnt-happen", "answer", flag_value="didnt_happen",
              help="It did not happen: mutate runs again (a wrong answer duplicates it).")
@click.option("--skip", "answer", flag_value="skip",
              help="Leave it; next runs with skipped and the reserved events end skipped.")
@click.option("--yes", is_flag=True, help="Do not ask to confirm --didnt-happen.")
@json_option
def resolve(run_id: str, answer: str | None, yes: bool, as_json: bool) -> None:
    """Answer for a run whose mutation outcome is unknown (or skip a failed run)."""
    if answer is None:
        raise UsageError("say what happened: --try-again, --didnt-happen or --skip")
    if answer == "didnt_happen":
        _say("warning: if it did happen after all, answering 'it didn't happen' makes "
             "it happen twice", err=True)
        if not yes and sys.stdin.isatty() and not click.confirm("It did not happen?"):
            _fail("nothing changed")
    with _host() as host:
        outcome = service.resolve(host, run_id, answer, _actor())  # type: ignore[arg-type]
    _after_answer(outcome, as_json)


@main.command()
@click.argument("run_id")
@json_option
def approve(run_id: str, as_json: bool) -> None:
    """Approve the mutation RUN waits for: it runs now, exactly as shown in the inbox."""
    with _host() as host:
        outcome = service.approve(host, run_id, True, _actor())
    _after_answer(outcome, as_json)


@main.command()
@click.argument("run_id")
@json_option
def reject(run_id: str, as_json: bool) -> None:
    """Reject the mutation RUN waits for (= skip: it never runs, its events end skipped)."""
    with _host() as host:
        outcome = service.approve(host, run_id, False, _actor())
    _after_answer(outcome, as_json)


@event.command("skip")
@click.argument("workflow")
@click.argument("topic")
@click.argument("message_id")
@json_option
def event_skip(workflow: str, topic: str, message_id: str, as_json: bool) -> None:
    """Skip a pending, unreserved event: no run will ever reserve it."""
    with _host() as host:
        data = service.skip_event(host, workflow, topic, message_id, _actor())
    _notify_server(workflow)
    _emit(data, as_json, lambda e: _say(f"{e['topic']}/{e['messageId']}: {e['status']}"))


@main.command()
@json_option
def inbox(as_json: bool) -> None:
    """Everything that needs a person: what is blocked, why, what to check, the choices."""
    with _host() as host:
        service.sweep_notifications(host)
        items = service.inbox(host)

    def human(data: list[dict[str, Any]]) -> None:
        if not data:
            _say("nothing needs you")
        for i, item in enumerate(data, 1):
            _say(f"\n{i}. [{item['workflow']}] {item['title']}")
            _say(f"   blocked: {item['blocked']}")
            _say(f"   why:     {item['why']}")
            _say(f"   check:   {item['check']}")
            for c in item["choices"]:
                warn = f"  (warning: {c['warning']})" if c.get("warning") else ""
                _say(f"   → {c['command']}\n     {c['effect']}{warn}")

    _emit(items, as_json, human)


@main.command()
@click.option("--all", "show_all", is_flag=True, help="Resolved ones too (newest first).")
@json_option
def notifications(show_all: bool, as_json: bool) -> None:
    """Notifications: needs action, stale events, repeated failures (open ones by default)."""
    with _host() as host:
        service.sweep_notifications(host)
        items = service.notifications(host, None if show_all else "open")

    def human(data: list[dict[str, Any]]) -> None:
        if not data:
            _say("no open notifications" if not show_all else "no notifications")
        for n in data:
            state = n["status"] if n["status"] == "open" else f"resolved {n['resolvedAt']}"
            hook = "" if n["webhookStatus"] == "none" else f", webhook {n['webhookStatus']}"
            _say(f"\n#{n['id']} [{n['workflow']}] {n['title']}  ({state}{hook})")
            _say(f"   {n['body']}")
            if n["webhookError"]:
                _say(f"   webhook error: {n['webhookError']}")

    _emit(items, as_json, human)


@main.group()
def connection() -> None:
    """Connections of scripts (ctx.NAME): add, list, check, rotate a secret, remove
    (docs/connectors.md#configuring-connections)."""


def _read_secrets(keys: tuple[str, ...]) -> dict[str, str]:
    """One value per ``--secret KEY``: from a hidden prompt on a terminal, else one line of
    stdin each — never from the command line, where other users and the shell history see
    it."""
    values: dict[str, str] = {}
    for key in keys:
        if sys.stdin.isatty():
            value = click.prompt(f"{key}", hide_input=True, err=True)
        else:
            line = sys.stdin.readline()
            if not line:
                raise UsageError(f"no value for --secret {key} on stdin (one line per secret)")
            value = line.rstrip("\r\n")
        values[key] = value
    return values


@connection.command("add")
@click.argument("name")
@click.option("--type", "type_name", required=True, help="Connector type (http, sql, files, "
              "feed, …; see docs/connectors.md).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="A plain setting (repeatable); VALUE is TOML when it parses as TOML.")
@click.option("--secret", "secret_keys", multiple=True, metavar="KEY",
              help="A secret setting (repeatable), read from a prompt or one line of stdin; "
                   "sealed in the store, never written to connections.toml.")
@json_option
def connection_add(name: str, type_name: str, sets: tuple[str, ...],
                   secret_keys: tuple[str, ...], as_json: bool) -> None:
    """Add connection NAME to connections.toml; its secrets are encrypted in the store."""
    from keepflow.connectors.manage import parse_setting

    settings = dict(parse_setting(s) for s in sets)
    secrets = _read_secrets(secret_keys)
    with _host() as host:
        data = service.connection_add(host, name, type_name, settings, secrets, _actor())
    _emit(data, as_json, lambda d: _say(
        f"connection {d['connection']} ({d['type']}) added to {d['file']}"
        + (f"; secrets sealed in the store: {', '.join(d['secrets'])}" if d["secrets"] else "")
        + f"\ncheck it: keepflow connection check {d['connection']}"))


@connection.command("secret")
@click.argument("name")
@click.argument("key")
@json_option
def connection_secret(name: str, key: str, as_json: bool) -> None:
    """Replace the stored secret KEY of connection NAME (read from a prompt or stdin)."""
    value = _read_secrets((key,))[key]
    with _host() as host:
        data = service.connection_secret(host, name, key, value, _actor())
    _emit(data, as_json, lambda d: _say(f"{d['secret']} replaced; runs from now on use it"))


@connection.command("list")
@json_option
def connection_list(as_json: bool) -> None:
    """Every connection: type, settings, and where each secret comes from (never its value)."""
    with _host() as host:
        data = service.connection_list(host)

    def human(items: list[dict[str, Any]]) -> None:
        if not items:
            _say("no connections configured (ctx.http is always there)")
        for c in items:
            _say(f"{c['name']} ({c['type']})")
            for k, v in c["settings"].items():
                _say(f"  {k} = {dumps_json(v, indent=None)}")
            for sec in c["secrets"]:
                state = "set" if sec["present"] else "MISSING"
                _say(f"  {sec['setting']}: secret from {sec['from']} ({state})")

    _emit(data, as_json, human)


@connection.command("check")
@click.argument("name")
@json_option
def connection_check(name: str, as_json: bool) -> None:
    """Check connection NAME against its real server (credentials valid, access enough);
    exit 1 when the check fails."""
    with _host() as host:
        data = service.connection_check(host, name)

    def human(d: dict[str, Any]) -> None:
        if d["ok"]:
            _say(f"{d['connection']} ({d['type']}): ok")
        else:
            _say(f"{d['connection']} ({d['type']}): {d['error']['code']}: "
                 f"{d['error']['message']}")

    _emit(data, as_json, human)
    if not data["ok"]:
        raise SystemExit(1)


@connection.command("remove")
@click.argument("name")
@json_option
def connection_remove(name: str, as_json: bool) -> None:
    """Remove connection NAME from connections.toml and its secrets from the store."""
    with _host() as host:
        data = service.connection_remove(host, name, _actor())
    _emit(data, as_json, lambda d: _say(
        f"connection {d['connection']} removed"
        + (f"; secrets deleted: {', '.join(d['secretsRemoved'])}" if d["secretsRemoved"]
           else "")))


@main.group()
def policy() -> None:
    """Host policies (retry, reconcile, timeouts, limits, approvals, notifications)."""


@policy.command("show")
@click.argument("workflow", required=False)
@json_option
def policy_show(workflow: str | None, as_json: bool) -> None:
    """Print the effective policy (system-wide, or for WORKFLOW)."""
    with _host() as host:
        data = service.policy_show(host, workflow)

    def human(settings: list[tuple[str, str]]) -> None:
        for key, value in settings:
            _say(f"{key} = {value}")

    _emit(data, as_json, human, view=[(key, dumps_json(value, indent=None))
                                      for key, value in _flatten(data)])


def _flatten(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``retry.max_attempts``-style keys for the leaves of a nested policy."""
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _actor() -> str:
    return os.environ.get("KEEPFLOW_ACTOR") or os.environ.get("USER") or "cli"


if __name__ == "__main__":
    main()
