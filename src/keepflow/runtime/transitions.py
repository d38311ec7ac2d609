"""Run state changes (SPEC §5.4): validated against the table in ``keepflow.model``."""

from __future__ import annotations

from datetime import datetime

from keepflow.errors import StoreError
from keepflow.model import RUN_TRANSITIONS, RunDraft, RunStatus, Transition


def move(run: RunDraft, to: RunStatus, at: datetime, note: str | None = None) -> None:
    """Record ``run.status → to`` with its timestamp; written at the next durable point."""
    if to not in RUN_TRANSITIONS[run.status]:
        raise StoreError(f"run {run.id}: illegal transition {run.status.value} → {to.value}")
    run.transitions.append(Transition(run.status, to, at, note))
    run.status = to
    if to.finished:
        run.finished_at = at
