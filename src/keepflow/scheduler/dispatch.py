"""Running what the scheduler decided: one request → one run of the executor."""

from __future__ import annotations

from keepflow.errors import Conflict
from keepflow.model import Fence, RunKind
from keepflow.runtime.host import Host
from keepflow.runtime.outcome import RunOutcome
from keepflow.scheduler.core import RunRequest


def execute(host: Host, fence: Fence | None, request: RunRequest) -> RunOutcome:
    """Run the request with the workflow's *current* version: a deploy takes effect between
    runs (SPEC §7, issue: deploy to a running host)."""
    wf = host.store.get_workflow(request.workflow_id)
    if wf.current_version_id is None:
        raise Conflict(f"workflow '{wf.name}' has no deployed version")
    version = host.store.get_version(wf.current_version_id)
    if request.run_id is not None:
        if request.trigger == "reconcile":
            return host.executor.reconcile_due(request.run_id, fence)
        return host.executor.resume(request.run_id, fence, version=version)
    if request.kind is RunKind.PRODUCER:
        return host.executor.run_producer(wf, version, request.handler, request.trigger, fence)
    return host.executor.run_consumer(wf, version, request.handler, request.trigger, fence)
