"""Run drafts for tests that write the store directly: each one walks a legal SPEC §5.4 path
from ``pending`` to the status asked for, as the executor would, so the transition owner
accepts it (``keepflow.store.transitions``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from keepflow.ids import new_id
from keepflow.model import RunDraft, RunKind, RunStatus

S = RunStatus
#: The executor's way to each status (producers: pending → running → committed | failed).
PATHS: dict[tuple[RunKind, RunStatus], tuple[RunStatus, ...]] = {
    (RunKind.PRODUCER, S.RUNNING): (S.RUNNING,),
    (RunKind.PRODUCER, S.COMMITTED): (S.RUNNING, S.COMMITTED),
    (RunKind.PRODUCER, S.FAILED): (S.RUNNING, S.FAILED),
    (RunKind.CONSUMER, S.PREPARING): (S.PREPARING,),
    (RunKind.CONSUMER, S.PREPARED): (S.PREPARING, S.PREPARED),
    (RunKind.CONSUMER, S.MUTATING): (S.PREPARING, S.PREPARED, S.MUTATING),
    (RunKind.CONSUMER, S.FAILED): (S.PREPARING, S.FAILED),
    (RunKind.CONSUMER, S.COMMITTED): (S.PREPARING, S.PREPARED, S.EMITTING, S.COMMITTED),
}


def draft(workflow_id: str, version_id: str, at: datetime, status: RunStatus, *,
          kind: RunKind = RunKind.PRODUCER, handler: str = "h", run_id: str | None = None,
          **fields: Any) -> RunDraft:
    run = RunDraft(id=run_id or new_id(), workflow_id=workflow_id, version_id=version_id,
                   handler=handler, kind=kind, trigger="test", status=S.PENDING,
                   created_at=at, **fields)
    for to in PATHS[(kind, status)]:
        run.step(to, at, note="test")
    return run
