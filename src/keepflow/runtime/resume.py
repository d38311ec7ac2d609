"""Where a stored run goes on from (SPEC §5.5), decided from its durable state alone.

:func:`decide` is pure: given the run's record and its ledger attempts it names the next step;
the executor carries it out. The rule that matters most: mutate never runs again while the
ledger may say the mutation happened — an ``in_flight`` or ``needs_reconcile`` attempt is
reconciled first, an ``indeterminate`` one waits for a person.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from keepflow.model import (
    LedgerStatus,
    MutationRecord,
    RunKind,
    RunRecord,
    RunStatus,
    SuspendReason,
)


class Step(StrEnum):
    DONE = "done"  # committed: nothing to do
    PRODUCER = "producer"  # failed: a new run; running: discarded (nothing was committed)
    WAIT = "wait"  # a person (approval, unknown outcome) or a later reconcile moves it on
    PREPARE = "prepare"  # no durable PrepareResult: prepare runs again
    NEXT = "next"  # the mutation applied (or a person answered): next with the stored result
    RECONCILE = "reconcile"  # the outcome is uncertain: ask the connector, never re-send
    RECORD_FAILURE = "record_failure"  # the host stopped while recording a definite failure
    MUTATE = "mutate"  # no attempt yet, or the last one definitely failed: mutate (again)


@dataclass(frozen=True)
class Resume:
    step: Step
    #: The attempt the step concerns (RECONCILE, RECORD_FAILURE) or the last one (WAIT).
    mutation: MutationRecord | None = None
    #: MUTATE / RECONCILE: the next attempt number, and how many retries were spent.
    attempt: int = 1
    retries: int = 0
    #: NEXT: the mutation result when the run does not hold it yet (the ledger does).
    applied_result: Any = None


def decide(run: RunRecord, attempts: Sequence[MutationRecord], *, reconcile: bool,
           retryable: bool = True) -> Resume:
    """The next step of ``run`` (see the module docstring). ``reconcile``: the background
    reconciler asks, so a due ``needs_reconcile`` attempt is reconciled now. ``retryable``:
    whether the last attempt's recorded failure may be tried again (see
    ``runtime.ledger.failure_of``)."""
    if run.status is RunStatus.COMMITTED:
        return Resume(Step.DONE)
    if run.kind is RunKind.PRODUCER:
        return Resume(Step.PRODUCER)
    if run.suspend_reason is SuspendReason.AWAITING_APPROVAL:
        return Resume(Step.WAIT)  # SPEC §6 step 1: only a person's answer moves it on
    if run.prepared is None:
        return Resume(Step.PREPARE)
    last = attempts[-1] if attempts else None
    if run.mutation_result is not None or (last and last.status is LedgerStatus.APPLIED):
        result = last.result if run.mutation_result is None and last is not None else None
        return Resume(Step.NEXT, last, applied_result=result)
    if last is not None and last.status in (LedgerStatus.IN_FLIGHT, LedgerStatus.NEEDS_RECONCILE):
        if last.status is LedgerStatus.NEEDS_RECONCILE and not reconcile:
            return Resume(Step.WAIT, last)
        return Resume(Step.RECONCILE, last, attempt=last.attempt + 1,
                      retries=len(attempts) - 1)
    if last is not None and last.status is LedgerStatus.INDETERMINATE:
        return Resume(Step.WAIT, last)
    if (last is not None and last.status is LedgerStatus.FAILED
            and run.status is not RunStatus.FAILED and not retryable):
        return Resume(Step.RECORD_FAILURE, last)
    failed = sum(1 for m in attempts if m.status is LedgerStatus.FAILED)
    return Resume(Step.MUTATE, last, attempt=(last.attempt + 1) if last else 1,
                  retries=max(0, failed - 1) if run.status is not RunStatus.FAILED else 0)
