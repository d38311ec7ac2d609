"""Running what the scheduler decided: one request → one run of the executor."""

from __future__ import annotations

from enum import StrEnum

from keepflow.errors import Conflict
from keepflow.model import Fence, RunKind
from keepflow.runtime.host import Host
from keepflow.runtime.outcome import RunOutcome
from keepflow.scheduler.core import RunRequest


class Route(StrEnum):
    """Which of the executor's entry points carries a request out."""

    RECONCILE = "reconcile"  # a suspended run's background reconciliation is due
    RESUME = "resume"  # carry an unfinished run on from its last durable point
    PRODUCER = "producer"  # a new producer run
    CONSUMER = "consumer"  # a new consumer run


def route(request: RunRequest) -> Route:
    """Where ``request`` goes (pure): an existing run is reconciled or resumed, else a new run
    of the handler's kind starts."""
    if request.run_id is not None:
        return Route.RECONCILE if request.trigger == "reconcile" else Route.RESUME
    return Route.PRODUCER if request.kind is RunKind.PRODUCER else Route.CONSUMER


def execute(host: Host, fence: Fence | None, request: RunRequest) -> RunOutcome:
    """Run the request with the workflow's *current* version: a deploy takes effect between
    runs (SPEC §7, issue: deploy to a running host)."""
    wf = host.store.get_workflow(request.workflow_id)
    if wf.current_version_id is None:
        raise Conflict(f"workflow '{wf.name}' has no deployed version")
    version = host.store.get_version(wf.current_version_id)
    where = route(request)
    if where is Route.RECONCILE:
        assert request.run_id is not None
        return host.executor.reconcile_due(request.run_id, fence)
    if where is Route.RESUME:
        assert request.run_id is not None
        return host.executor.resume(request.run_id, fence, version=version)
    if where is Route.PRODUCER:
        return host.executor.run_producer(wf, version, request.handler, request.trigger, fence)
    return host.executor.run_consumer(wf, version, request.handler, request.trigger, fence)
