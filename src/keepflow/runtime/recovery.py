"""Start-up recovery (SPEC §5.5): resume every unfinished run from its last durable point."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from keepflow.errors import Conflict
from keepflow.runtime.executor import RunOutcome

if TYPE_CHECKING:
    from keepflow.runtime.host import Host


@dataclass
class RecoveryReport:
    resumed: list[RunOutcome] = field(default_factory=list)
    #: Workflows whose lease another live host holds: that host recovers them.
    skipped_workflows: list[str] = field(default_factory=list)


def recover(host: Host, workflow_id: str | None = None) -> RecoveryReport:
    """Resume unfinished runs (all workflows, or one). Suspended runs stay suspended: they wait
    for the reconciler or a person (SPEC §6)."""
    report = RecoveryReport()
    by_workflow: dict[str, list[str]] = {}
    for run in host.store.unfinished_runs():
        if workflow_id is None or run.workflow_id == workflow_id:
            by_workflow.setdefault(run.workflow_id, []).append(run.id)
    for wid, run_ids in by_workflow.items():
        wf = host.store.get_workflow(wid)
        try:
            with host.lease(wf) as fence:
                for run_id in run_ids:
                    report.resumed.append(host.executor.resume(run_id, fence))
        except Conflict:
            report.skipped_workflows.append(wf.name)
    return report
