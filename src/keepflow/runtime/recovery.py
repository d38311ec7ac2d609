"""Start-up recovery (SPEC §5.5): resume every unfinished run from its last durable point."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from keepflow.errors import Conflict
from keepflow.runtime.outcome import RunOutcome
from keepflow.storable import escape_text

if TYPE_CHECKING:
    from keepflow.runtime.host import Host


@dataclass
class RecoveryReport:
    resumed: list[RunOutcome] = field(default_factory=list)
    #: Workflows whose lease another live host holds: that host recovers them.
    skipped_workflows: list[str] = field(default_factory=list)
    #: Workflows whose recovery failed inside the host (name → why); the others went on.
    failed_workflows: dict[str, str] = field(default_factory=dict)


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
        except Exception as exc:  # one workflow's trouble never stops the others' recovery
            why = escape_text(f"{type(exc).__name__}: {exc}")[:500]
            logging.getLogger("keepflow.runtime").error("recovery of %s failed: %s",
                                                        wf.name, why)
            report.failed_workflows[wf.name] = why
    return report
