"""What a run came to, as the executor reports it to its caller (CLI, scheduler, drain)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keepflow.model import RunKind, RunStatus


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    handler: str
    kind: RunKind
    status: RunStatus
    failure: dict[str, Any] | None = None
    mutation: str | None = None  # ledger status of the last attempt, if any

    @property
    def ok(self) -> bool:
        return self.status is RunStatus.COMMITTED
