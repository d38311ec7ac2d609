"""The pages (SPEC §12): server-rendered HTML over the same service layer as the CLI and the
JSON API. Route functions gather what the service returns and pick a template; the words and
the decisions live in ``keepflow.service`` and ``keepflow.views``.

Every state change is a form POST with a CSRF field, answered by a redirect back (so a reload
never repeats it) and a one-time message on the next page. The dangerous answers — those that
may do something twice, or drop something — first show a confirmation page that says exactly
what will happen.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from keepflow import __version__, service
from keepflow.errors import Forbidden, KeepflowError, NotFound
from keepflow.model import WorkflowStatus
from keepflow.runtime.actions import EFFECTS
from keepflow.runtime.host import Host
from keepflow.scheduler.loop import SchedulerLoop
from keepflow.web.security import FLASH_COOKIE, SESSION_COOKIE, Guard

HERE = Path(__file__).parent
#: How many live-refresh streams may be open at once.
LIVE_STREAMS = 64
#: Who the audit log names for what a person does in the browser.
UI_ACTOR = "ui"
#: Answers that may do something twice or drop something: the page asks before it acts.
DANGEROUS = frozenset({"didnt_happen", "skip", "approve", "reject", "disable", "skip_event"})

#: What each failure class means, in plain words
#: (docs/execution-model.md#failures-and-the-workflow).
FAILURE_EXPLAINED = {
    "transient": "a network error, a timeout or a busy service: it usually passes on its own; "
                 "keepflow retried with backoff before giving up",
    "logic": "the script itself threw or returned something the host cannot accept: the code "
             "needs a fix (retrying without a change fails the same way)",
    "auth": "the external service refused the credentials: check the connection's secret",
    "permission": "the credentials work but may not do this: check the account's rights or "
                  "the connection's allow-list",
    "precondition": "something the run needs is missing (a connection, a setting): set it up, "
                    "then retry",
    "indeterminate": "keepflow cannot tell whether the external change happened: answer in "
                     "Action needed",
}

ACTION_LABELS = {
    "try_again": "Try again", "didnt_happen": "It didn't happen", "skip": "Skip",
    "approve": "Approve", "reject": "Reject", "retry": "Retry",
    "pause": "Pause", "resume": "Resume", "disable": "Disable", "skip_event": "Skip event",
}


#: Who settled a mutation's ledger record, in words (anything else is the person who answered).
SETTLED_BY = {"host": "the service's own answer", "reconcile": "a reconcile lookup"}


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False,
                                                 sort_keys=True)
    env.filters["short"] = _short
    env.filters["ago"] = _ago
    env.filters["when"] = _when
    env.filters["clock"] = _clock
    env.filters["settled_by"] = lambda who: SETTLED_BY.get(str(who), str(who))
    env.filters["q"] = lambda v: quote(str(v), safe="")
    env.filters["combine_after"] = lambda query, after: {**query, "after": after}
    env.globals.update(labels=ACTION_LABELS, effects=EFFECTS, explained=FAILURE_EXPLAINED,
                       version=__version__, dangerous=DANGEROUS, urlencode=urlencode)
    return env


def _short(value: Any, n: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= n else text[: n - 1] + "…"


def _parse(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _when(value: Any) -> str:
    at = _parse(value)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at else "—"


def _clock(value: Any) -> str:
    """The time of day to the millisecond (a run's steps; the full time is in the title)."""
    at = _parse(value)
    return at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3] if at else "—"


def _ago(value: Any) -> str:
    at = _parse(value)
    if at is None:
        return "—"
    seconds = (datetime.now(UTC) - at).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            text = f"{int(seconds // size)} {unit}"
            break
    else:
        text = f"{int(seconds)} s"
    return f"in {text}" if future else f"{text} ago"


def _safe_next(target: str | None, fallback: str = "/") -> str:
    """Only a path of this site: never ``//host`` or ``https://…`` (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target \
            or any(ord(c) < 32 for c in target):
        return fallback
    return target


def _badge(status: str) -> str:
    return {"needs_action": "needs action"}.get(status, status.replace("_", " "))


def pages(host: Host, loop: SchedulerLoop, guard: Guard,
          stopping: Callable[[], bool]) -> APIRouter:
    env = _environment()
    env.filters["badge"] = _badge

    async def live_since(request: Request) -> None:
        """The store's change marker before a page reads anything: its live stream starts
        from there, so a change made while the page loads still refreshes it."""
        if request.method == "GET" and request.url.path != "/live" \
                and not request.url.path.startswith("/static/"):
            request.state.live_since = host.store.change_marker()

    ui = APIRouter(include_in_schema=False, dependencies=[Depends(live_since)])
    live_streams = [0]  # open /live streams (one event loop: no lock needed)

    def inbox_items() -> list[dict[str, Any]]:
        service.sweep_notifications(host)
        return service.inbox(host)

    def render(request: Request, template: str, status_code: int = 200,
               **context: Any) -> HTMLResponse:
        flash = guard.unseal(request.cookies.get(FLASH_COOKIE))
        items = context.pop("inbox", None)
        count = len(items) if items is not None else len(inbox_items())
        html = env.get_template(template).render(
            request=request, path=request.url.path, csrf=guard.csrf(), flash=flash,
            inbox_count=count, login=guard.token is not None,
            live_since=getattr(request.state, "live_since", None), **context)
        response = HTMLResponse(html, status_code=status_code, headers=_HEADERS)
        if flash is not None:
            response.delete_cookie(FLASH_COOKIE, path="/")
        return response

    def done(target: str, message: str) -> RedirectResponse:
        response = RedirectResponse(_safe_next(target), status_code=303)
        response.set_cookie(FLASH_COOKIE, guard.seal(message), max_age=120, httponly=True,
                            samesite="strict", path="/")
        return response

    def act(csrf: str | None, target: str, step: Callable[[], str]) -> RedirectResponse:
        if not guard.csrf_ok(csrf):
            raise Forbidden("this form is out of date (the server restarted since the page was "
                            "loaded, or it came from another site); reload the page and try "
                            "again")
        try:
            message = step()
        except KeepflowError as exc:
            return done(target, f"Not done: {exc.message}")
        return done(target, message)

    # ---------------------------------------------------------------- reading

    @ui.get("/", response_class=HTMLResponse)
    async def automations(request: Request) -> HTMLResponse:
        workflows = service.status(host)["workflows"]
        listed = {w["name"]: w for w in service.list_workflows(host)}
        for w in workflows:
            w["pending"] = sum(c.get("pending", 0) for c in w["topics"].values())
            nxt = [p["nextFire"] for p in w["producers"] if p["nextFire"]]
            w["nextFire"] = min(nxt) if nxt else None
            w["updatedAt"] = listed.get(w["name"], {}).get("updatedAt")
        return render(request, "automations.html", title="Automations", active="automations",
                      workflows=workflows)

    @ui.get("/workflows/{name}", response_class=HTMLResponse)
    async def workflow(request: Request, name: str) -> HTMLResponse:
        d = service.dashboard(host, name)
        stale = sum(t["stale"] for t in d["topics"])
        return render(request, "workflow.html", title=d["name"], active="automations", wf=d,
                      stale=stale,
                      activity=service.audit(host, workflow=d["name"], limit=8)["entries"])

    @ui.get("/workflows/{name}/topics/{topic}", response_class=HTMLResponse)
    async def events(request: Request, name: str, topic: str, status: str | None = None,
                     title: str | None = None, since: str | None = None,
                     until: str | None = None, after: str | None = None) -> HTMLResponse:
        filters = {"status": status or None, "title": title or None, "since": since or None,
                   "until": until or None}
        page = service.event_page(host, name, topic=topic, after=after, limit=50, **filters)
        topics = {t["topic"]: t for t in service.topics(host, name)}
        if topic not in topics and not page["events"]:
            raise NotFound(f"workflow '{name}' has no topic '{topic}'")
        shown = {k: v for k, v in filters.items() if v}
        return render(request, "events.html", title=f"{topic} · {name}", active="automations",
                      wf_name=name, topic=topic, info=topics.get(topic), page=page,
                      filters=filters, query=shown, first=not after)

    @ui.get("/workflows/{name}/topics/{topic}/events/{message_id:path}",
            response_class=HTMLResponse)
    async def event(request: Request, name: str, topic: str, message_id: str) -> HTMLResponse:
        e = service.show_event(host, name, topic, message_id)
        return render(request, "event.html", title=e["title"], active="automations",
                      wf_name=name, e=e)

    @ui.get("/workflows/{name}/runs", response_class=HTMLResponse)
    async def runs(request: Request, name: str, status: str | None = None,
                   before: str | None = None) -> HTMLResponse:
        page = service.list_runs_page(host, name, before=before or None, status=status or None)
        return render(request, "runs.html", title=f"Runs · {name}", active="automations",
                      wf_name=name, page=page, status=status or "")

    @ui.get("/runs/{run_id}", response_class=HTMLResponse)
    async def run(request: Request, run_id: str) -> HTMLResponse:
        r = service.show_run(host, run_id)
        wf = host.store.get_workflow(r["workflowId"])
        items = inbox_items()
        mine = [i for i in items if i.get("run") == run_id]
        return render(request, "run.html", title=f"Run {run_id}", active="automations",
                      r=r, wf_name=wf.name, items=mine, inbox=items,
                      phases=_phases(r["transitions"]))

    @ui.get("/workflows/{name}/versions", response_class=HTMLResponse)
    async def versions(request: Request, name: str) -> HTMLResponse:
        wf = host.store.get_workflow(name)
        return render(request, "versions.html", title=f"Versions · {wf.name}",
                      active="automations", wf_name=wf.name,
                      versions=service.versions(host, wf.name))

    @ui.get("/workflows/{name}/versions/{label}", response_class=HTMLResponse)
    async def version(request: Request, name: str, label: str,
                      diff: str | None = None) -> HTMLResponse:
        v = service.version(host, name, label, diff or None)
        labels = [x["version"] for x in service.versions(host, v["workflow"])]
        return render(request, "version.html", title=f"Version {v['version']} · {name}",
                      active="automations", wf_name=v["workflow"], v=v, labels=labels)

    @ui.get("/inbox", response_class=HTMLResponse)
    async def inbox(request: Request) -> HTMLResponse:
        items = inbox_items()
        return render(request, "inbox.html", title="Action needed", active="inbox",
                      items=items, inbox=items)

    @ui.get("/notifications", response_class=HTMLResponse)
    async def notifications(request: Request, status: str = "open") -> HTMLResponse:
        service.sweep_notifications(host)
        chosen = status if status in ("open", "resolved", "all") else "open"
        rows = service.notifications(host, None if chosen == "all" else chosen)
        return render(request, "notifications.html", title="Notifications",
                      active="notifications", rows=rows, status=chosen)

    @ui.get("/audit", response_class=HTMLResponse)
    async def audit(request: Request, workflow: str | None = None,
                    before: int | None = None) -> HTMLResponse:
        page = service.audit(host, workflow=workflow or None, before=before, limit=100)
        return render(request, "audit.html", title="Audit log", active="audit", page=page,
                      workflow=workflow or "")

    @ui.get("/confirm", response_class=HTMLResponse)
    async def confirm(request: Request, action: str, target: str, back: str = "/"
                      ) -> HTMLResponse:
        """Asks before a dangerous action: what it is about and what it does, both read from
        the store (never from the link, which anyone could craft), then one button."""
        fields = {k[2:]: v for k, v in request.query_params.items()
                  if k.startswith("f.") and k[2:] in _FORM_FIELDS}
        about = confirmed_about(action, target, fields)
        effect = EFFECTS.get(action) or _EFFECTS_MORE.get(action, "")
        return render(request, "confirm.html", title=f"{ACTION_LABELS[action]}?",
                      active="", action=action, target=target, back=_safe_next(back),
                      about=about, effect=effect, fields=fields)

    def confirmed_about(action: str, target: str, fields: dict[str, str]) -> str:
        nothing = NotFound("there is no such action to confirm")
        if action not in ACTION_LABELS:
            raise nothing
        parts = target.split("/")
        if len(parts) == 5 and parts[:3] == ["", "ui", "runs"] and parts[4] == action:
            run_id = parts[3]
            rec = host.store.get_run(run_id)
            item = next((i for i in inbox_items() if i.get("run") == run_id), None)
            return str(item["title"]) if item else f"run {rec.id} of {rec.handler}"
        if target == "/ui/events/skip" and action == "skip_event":
            e = service.show_event(host, fields.get("workflow", ""), fields.get("topic", ""),
                                   fields.get("message_id", ""))
            return f"\u201c{e['title']}\u201d in {e['topic']}"
        if len(parts) == 5 and parts[:3] == ["", "ui", "workflows"] and parts[4] == action:
            return f"the automation '{host.store.get_workflow(unquote(parts[3])).name}'"
        raise nothing

    @ui.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/") -> HTMLResponse:
        return HTMLResponse(env.get_template("login.html").render(
            next=_safe_next(next), error=None, version=__version__), headers=_HEADERS)

    @ui.post("/login")
    async def login(token: str = Form(""), next: str = Form("/")) -> Response:
        if not guard.login(token):
            return HTMLResponse(env.get_template("login.html").render(
                next=_safe_next(next), error="That is not this server's access token.",
                version=__version__), status_code=401, headers=_HEADERS)
        response = RedirectResponse(_safe_next(next), status_code=303)
        response.set_cookie(SESSION_COOKIE, guard.session(), httponly=True, samesite="strict",
                            path="/")
        return response

    @ui.get("/live")
    async def live(request: Request, since: str = "") -> StreamingResponse:
        """Server-sent events: ``change`` whenever what the pages show has changed. At most
        :data:`LIVE_STREAMS` at once (each polls the store 4 times a second); beyond that the
        pages simply do not refresh by themselves. ``since``: the marker the page was read at
        (a change while it loaded refreshes it at once); a reconnect resumes from the last
        change sent (its ``id``, which the browser sends back as ``Last-Event-ID``)."""
        if live_streams[0] >= LIVE_STREAMS:
            return StreamingResponse(iter(["retry: 30000\n\n"]), status_code=503,
                                     media_type="text/event-stream")

        async def stream() -> AsyncIterator[str]:
            live_streams[0] += 1
            try:
                async for chunk in changes():
                    yield chunk
            finally:
                live_streams[0] -= 1

        async def changes() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            last = (request.headers.get("last-event-id") or since)[:200] \
                or host.store.change_marker()
            quiet = 0.0
            for _ in range(240):  # the browser reconnects after a minute; nothing piles up
                await asyncio.sleep(0.25)
                if stopping() or await request.is_disconnected():
                    return
                marker = host.store.change_marker()
                quiet += 0.25
                if marker != last:
                    last, quiet = marker, 0.0
                    yield f"id: {marker}\nevent: change\ndata: {{}}\n\n"
                elif quiet >= 15:
                    quiet = 0.0
                    yield ": still here\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", **_HEADERS})

    @ui.get("/static/{name}")
    async def static(name: str) -> Response:
        kind = _STATIC.get(name)
        if kind is None:
            raise NotFound("no such file")
        return Response((HERE / "static" / name).read_bytes(), media_type=kind,
                        headers={"Cache-Control": "max-age=300", **_HEADERS})

    # ---------------------------------------------------------------- operating

    # The token routes come first: the generic verb route would take them.
    @ui.post("/ui/workflows/{name}/inbound-token")
    async def inbound_token(request: Request, name: str, csrf: str = Form("")) -> Response:
        if not guard.csrf_ok(csrf):
            raise Forbidden("this form is out of date; reload the page and try again")
        made = service.create_inbound_token(host, name, UI_ACTOR)
        base = f"{request.url.scheme}://{request.headers.get('host', '')}"
        return render(request, "token.html", title="Inbound-event token", active="automations",
                      made=made, base=base)

    @ui.post("/ui/workflows/{name}/inbound-token/revoke")
    async def revoke_inbound_token(name: str, csrf: str = Form(""), back: str = Form("/")
                                   ) -> RedirectResponse:
        def step() -> str:
            wf = service.revoke_inbound_token(host, name, UI_ACTOR)
            return f"'{wf['workflow']}' has no inbound-event token now: inbound events are refused."

        return act(csrf, back, step)

    @ui.post("/ui/workflows/{name}/{verb}")
    async def set_status(name: str, verb: str, csrf: str = Form(""), back: str = Form("/")
                         ) -> RedirectResponse:
        status = {"pause": WorkflowStatus.PAUSED, "resume": WorkflowStatus.ACTIVE,
                  "disable": WorkflowStatus.DISABLED}.get(verb)
        if status is None:
            raise NotFound(f"no action '{verb}'")

        def step() -> str:
            wf = service.set_status(host, name, status, actor=UI_ACTOR)
            loop.refresh(wf.id)
            return f"'{wf.name}' is {_badge(wf.status.value)} now."

        return act(csrf, back, step)

    @ui.post("/ui/events/skip")
    async def skip_event(workflow: str = Form(...), topic: str = Form(...),
                         message_id: str = Form(...), csrf: str = Form(""),
                         back: str = Form("/")) -> RedirectResponse:
        def step() -> str:
            e = service.skip_event(host, workflow, topic, message_id, UI_ACTOR)
            loop.refresh(host.store.get_workflow(workflow).id)
            return f"Skipped \u201c{e['title']}\u201d: no run will take it."

        return act(csrf, back, step)

    @ui.post("/ui/runs/{run_id}/{answer}")
    async def answer(run_id: str, answer: str, csrf: str = Form(""), back: str = Form("/")
                     ) -> RedirectResponse:
        actions: dict[str, Callable[[], Any]] = {
            "retry": lambda: service.retry_run(host, run_id, UI_ACTOR),
            "try_again": lambda: service.resolve(host, run_id, "try_again", UI_ACTOR),
            "didnt_happen": lambda: service.resolve(host, run_id, "didnt_happen", UI_ACTOR),
            "skip": lambda: service.resolve(host, run_id, "skip", UI_ACTOR),
            "approve": lambda: service.approve(host, run_id, True, UI_ACTOR),
            "reject": lambda: service.approve(host, run_id, False, UI_ACTOR),
        }
        if answer not in actions:
            raise NotFound(f"no answer '{answer}'")

        def step() -> str:
            actions[answer]()
            loop.refresh(host.store.get_run(run_id).workflow_id)
            return f"{ACTION_LABELS[answer]}: done — {EFFECTS[answer]}."

        return act(csrf, back, step)

    return ui


_EFFECTS_MORE = {
    "disable": "nothing of this workflow runs, not even manual triggers, until it is resumed",
    "pause": "nothing runs on schedule; manual triggers still work",
    "resume": "the workflow runs on schedule again",
    "skip_event": "no run will ever take this event; it ends skipped (the external thing is "
                  "left as it is)",
}

#: The hidden fields a confirmation page may carry on to the form it confirms.
_FORM_FIELDS = frozenset({"workflow", "topic", "message_id"})

_STATIC = {"keepflow.css": "text/css; charset=utf-8",
           "keepflow.js": "text/javascript; charset=utf-8"}

#: No page may be framed, sniffed, or load anything from elsewhere.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def _phases(transitions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each step of a run with how long the run spent in the status it left."""
    out = []
    for i, t in enumerate(transitions):
        nxt = transitions[i + 1]["at"] if i + 1 < len(transitions) else None
        start, end = _parse(t["at"]), _parse(nxt)
        ms = (end - start).total_seconds() * 1000 if start and end else None
        out.append(t | {"ms": ms})
    return out


def error_page(host: Host, guard: Guard, request: Request, exc: KeepflowError,
               status_code: int) -> HTMLResponse:
    """A refusal or a missing thing, as a page that says what happened and where to go."""
    env = _environment()
    env.filters["badge"] = _badge
    html = env.get_template("error.html").render(
        request=request, path=request.url.path, csrf=guard.csrf(), flash=None,
        inbox_count=0, login=guard.token is not None, title="Not possible", active="",
        message=exc.message, code=exc.code, status_code=status_code)
    return HTMLResponse(html, status_code=status_code, headers=_HEADERS)
