"""The JSON API of every listing and operating action the CLI has (docs/api.md), served by
``keepflow serve``. Routes only translate HTTP to the service layer and tell the scheduler loop
to re-read what changed; they hold no logic of their own.

A person's answer (retry, resolve, approve, reject) is recorded durably by the service; the
run is then carried on by this server's scheduler loop, under the lease it holds
(:class:`CarriedByLoop`), so the answer returns at once with ``"accepted": true``.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from keepflow import service
from keepflow.errors import InvalidInput, TooLarge
from keepflow.model import WorkflowStatus
from keepflow.runtime.host import Host
from keepflow.runtime.outcome import RunOutcome
from keepflow.scheduler.loop import SchedulerLoop
from keepflow.views import outcome_view

#: The actor the audit log records for answers given through the API.
API_ACTOR = "api"


#: The body of an inbound event, as the OpenAPI schema shows it (parsed by :func:`read_json`
#: and checked by the same rules as a producer's ``ctx.publish``).
INBOUND_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["title"], "additionalProperties": False,
    "properties": {
        "messageId": {"type": "string", "minLength": 1, "maxLength": 256,
                      "description": "the external thing's id; the same id twice is one event"},
        "title": {"type": "string", "minLength": 1, "maxLength": 200},
        "payload": {"description": "any JSON value"},
    },
}


def bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, read up to a bound (the payload limit plus room for the
    title and messageId): a larger body is refused before it is all read."""
    bound = limit + 16 * 1024
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > bound:
            raise TooLarge(f"the request body is over {bound:,} bytes; an event's payload may "
                           f"be at most {limit:,} bytes as JSON (policy limits.payload_bytes)",
                           field="payload")
        chunks.append(chunk)
    if size == 0:
        raise InvalidInput("the request has no body; send a JSON object {messageId, title, "
                           "payload}", field="$")

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    too_big: list[str] = []

    def number(text: str) -> Any:
        value = float(text)
        if math.isfinite(value):
            return value
        too_big.append(text)  # 1e400 is valid JSON, but no float holds it (it would be inf)
        return _TOO_BIG

    try:
        body = json.loads(b"".join(chunks).decode("utf-8"), parse_constant=refuse,
                          parse_float=number)
    except UnicodeDecodeError:
        raise InvalidInput("the request body is not UTF-8 text", field="$") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"the request body is not valid JSON ({str(exc)[:120]})",
                           field="$") from None
    if too_big:
        in_payload = isinstance(body, dict) and _holds(body.get("payload"), _TOO_BIG)
        raise InvalidInput(f"the request body holds the number {too_big[0][:40]}, too large "
                           "to keep (numbers must be within ±1.8e308); send it as a string",
                           field="payload" if in_payload else "$")
    return body


#: What a number too large for a float parses to, until :func:`read_json` refuses the body.
_TOO_BIG = object()


def _holds(value: Any, marker: object) -> bool:
    """Whether ``marker`` is somewhere in a parsed JSON value (without recursion)."""
    todo = [value]
    while todo:
        v = todo.pop()
        if v is marker:
            return True
        todo.extend(v.values() if isinstance(v, dict) else v if isinstance(v, list) else ())
    return False


class CarriedByLoop:
    """The :class:`~keepflow.runtime.host.Handoff` of ``keepflow serve``: its scheduler loop
    carries every answered run on (the route tells it to re-read the workflow)."""

    def hand_over(self, workflow: str) -> bool:
        return True


def operations(host: Host, loop: SchedulerLoop) -> APIRouter:
    api = APIRouter(prefix="/api")

    def refreshed(workflow_id: str) -> None:
        loop.refresh(workflow_id)

    def answered(run_id: str, outcome: RunOutcome | None) -> dict[str, Any]:
        refreshed(host.store.get_run(run_id).workflow_id)
        if outcome is not None:
            return outcome_view(outcome)
        return {"accepted": True, "id": run_id}

    # ---------------------------------------------------------------- reading

    @api.get("/workflows")
    async def workflows() -> list[dict[str, Any]]:
        return service.list_workflows(host)

    @api.get("/workflows/{name}")
    async def workflow(name: str) -> dict[str, Any]:
        return service.dashboard(host, name)

    @api.get("/workflows/{name}/topics")
    async def topics(name: str) -> list[dict[str, Any]]:
        return service.topics(host, name)

    @api.get("/workflows/{name}/events")
    async def events(name: str, topic: str | None = None, status: str | None = None,
                     limit: int = Query(200, ge=1, le=1000)) -> list[dict[str, Any]]:
        return service.list_events(host, name, topic, status, limit)

    @api.get("/workflows/{name}/topics/{topic}/events")
    async def topic_events(name: str, topic: str, status: str | None = None,
                           title: str | None = None, since: str | None = None,
                           until: str | None = None, after: str | None = None,
                           limit: int = Query(50, ge=1, le=service.PAGE_MAX)) -> dict[str, Any]:
        return service.event_page(host, name, topic=topic, status=status, title=title,
                                  since=since, until=until, after=after, limit=limit)

    @api.get("/workflows/{name}/topics/{topic}/events/{message_id}")
    async def event(name: str, topic: str, message_id: str) -> dict[str, Any]:
        return service.show_event(host, name, topic, message_id)

    @api.get("/workflows/{name}/runs")
    async def runs(name: str, limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        return service.list_runs(host, name, limit)

    @api.get("/workflows/{name}/ledger")
    async def ledger(name: str, status: str | None = None,
                     before: int | None = Query(None, ge=0, le=2**62),
                     limit: int = Query(100, ge=1, le=service.PAGE_MAX)) -> dict[str, Any]:
        return service.ledger(host, name, status=status, before=before, limit=limit)

    @api.get("/workflows/{name}/versions")
    async def versions(name: str) -> list[dict[str, Any]]:
        return service.versions(host, name)

    @api.get("/workflows/{name}/versions/{label}")
    async def version(name: str, label: str,
                      diff_from: str | None = Query(None, alias="diffFrom")) -> dict[str, Any]:
        return service.version(host, name, label, diff_from)

    @api.get("/audit")
    async def audit(workflow: str | None = None, action: str | None = None,
                    before: int | None = Query(None, ge=0, le=2**62),
                    limit: int = Query(100, ge=1, le=service.PAGE_MAX)) -> dict[str, Any]:
        return service.audit(host, workflow=workflow, before=before, action=action,
                             limit=limit)

    @api.get("/runs/{run_id}")
    async def run(run_id: str) -> dict[str, Any]:
        return service.show_run(host, run_id)

    @api.get("/inbox")
    async def inbox() -> list[dict[str, Any]]:
        service.sweep_notifications(host)
        return service.inbox(host)

    @api.get("/notifications")
    async def notifications(status: Literal["open", "resolved", "all"] = "open"
                            ) -> list[dict[str, Any]]:
        service.sweep_notifications(host)
        return service.notifications(host, None if status == "all" else status)

    @api.get("/policy")
    async def policy(workflow: str | None = None) -> dict[str, Any]:
        return service.policy_show(host, workflow)

    # ---------------------------------------------------------------- operating

    def set_status(name: str, status: WorkflowStatus, reason: str | None) -> dict[str, Any]:
        wf = service.set_status(host, name, status, actor=API_ACTOR, reason=reason)
        refreshed(wf.id)
        return {"workflow": wf.name, "status": wf.status.value, "statusReason": wf.status_reason}

    @api.post("/workflows/{name}/pause")
    async def pause(name: str, reason: str | None = None) -> dict[str, Any]:
        return set_status(name, WorkflowStatus.PAUSED, reason)

    @api.post("/workflows/{name}/resume")
    async def resume(name: str) -> dict[str, Any]:
        return set_status(name, WorkflowStatus.ACTIVE, None)

    @api.post("/workflows/{name}/disable")
    async def disable(name: str, reason: str | None = None) -> dict[str, Any]:
        return set_status(name, WorkflowStatus.DISABLED, reason)

    @api.post("/workflows/{name}/topics/{topic}/events/{message_id}/skip")
    async def skip_event(name: str, topic: str, message_id: str) -> dict[str, Any]:
        skipped: dict[str, Any] = service.skip_event(host, name, topic, message_id, API_ACTOR)
        refreshed(host.store.get_workflow(name).id)
        return skipped

    @api.post("/workflows/{name}/inbound-token")
    async def inbound_token(name: str) -> dict[str, Any]:
        return service.create_inbound_token(host, name, API_ACTOR)

    @api.post("/workflows/{name}/inbound-token/revoke")
    async def revoke_inbound_token(name: str) -> dict[str, Any]:
        return service.revoke_inbound_token(host, name, API_ACTOR)

    @api.post("/workflows/{name}/topics/{topic}/events", status_code=201,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": INBOUND_SCHEMA}}}},
              responses={200: {"description": "an event with this messageId already exists; "
                                               "nothing changed"}})
    async def receive(name: str, topic: str, request: Request) -> JSONResponse:
        token = bearer(request.headers.get("authorization"))
        service.inbound_gate(host, name, topic, token)
        body = await read_json(request, host.policies.for_workflow(name).limits.payload_bytes)
        out, created = service.receive_event(host, name, topic, body, token)
        if created:
            loop.notify(host.store.get_workflow(name).id)
        return JSONResponse(out, status_code=201 if created else 200)

    @api.post("/runs/{run_id}/retry")
    async def retry(run_id: str) -> dict[str, Any]:
        return answered(run_id, service.retry_run(host, run_id, API_ACTOR))

    @api.post("/runs/{run_id}/resolve")
    async def resolve(run_id: str, answer: Literal["try_again", "didnt_happen", "skip"]
                      ) -> dict[str, Any]:
        return answered(run_id, service.resolve(host, run_id, answer, API_ACTOR))

    @api.post("/runs/{run_id}/approve")
    async def approve(run_id: str) -> dict[str, Any]:
        return answered(run_id, service.approve(host, run_id, True, API_ACTOR))

    @api.post("/runs/{run_id}/reject")
    async def reject(run_id: str) -> dict[str, Any]:
        return answered(run_id, service.approve(host, run_id, False, API_ACTOR))

    return api
