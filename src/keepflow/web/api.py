"""The JSON API of every listing and operating action the CLI has (docs/api.md), served by
``keepflow serve``. Routes only translate HTTP to the service layer and tell the scheduler loop
to re-read what changed; they hold no logic of their own.

A person's answer (retry, resolve, approve, reject) is recorded durably by the service; the
run is then carried on by this server's scheduler loop, under the lease it holds
(:class:`CarriedByLoop`), so the answer returns at once with ``"accepted": true``.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query

from keepflow import service
from keepflow.model import WorkflowStatus
from keepflow.runtime.host import Host
from keepflow.runtime.outcome import RunOutcome
from keepflow.scheduler.loop import SchedulerLoop
from keepflow.views import outcome_view

#: The actor the audit log records for answers given through the API.
API_ACTOR = "api"


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

    @api.get("/workflows/{name}/events")
    async def events(name: str, topic: str | None = None, status: str | None = None,
                     limit: int = Query(200, ge=1, le=1000)) -> list[dict[str, Any]]:
        return service.list_events(host, name, topic, status, limit)

    @api.get("/workflows/{name}/topics/{topic}/events/{message_id}")
    async def event(name: str, topic: str, message_id: str) -> dict[str, Any]:
        return service.show_event(host, name, topic, message_id)

    @api.get("/workflows/{name}/runs")
    async def runs(name: str, limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        return service.list_runs(host, name, limit)

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
