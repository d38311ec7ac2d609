"""Where a stored run goes on from (SPEC §5.5): the executor's resume decision, pure."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from keepflow.model import (
    LedgerStatus,
    MutationRecord,
    RunKind,
    RunRecord,
    RunStatus,
    SuspendReason,
)
from keepflow.runtime.resume import Step, decide

NOW = datetime(2026, 1, 1, tzinfo=UTC)
L = LedgerStatus
PREPARED = {"reservations": [], "data": {}}


def run(status: RunStatus = RunStatus.MUTATING, *, kind: RunKind = RunKind.CONSUMER,
        prepared: object = PREPARED, result: object = None,
        reason: SuspendReason | None = None) -> RunRecord:
    return RunRecord(id="r", workflow_id="w", version_id="v", handler="h", kind=kind,
                     status=status, suspend_reason=reason, trigger="t", prepared=prepared,
                     mutation_result=result, failure=None, created_at=NOW, updated_at=NOW,
                     finished_at=None)


def attempt(n: int, status: LedgerStatus, result: object = None) -> MutationRecord:
    return MutationRecord(
        id=n, run_id="r", workflow_id="w", attempt=n, connection="api",
        tool="post", params={}, idempotency_key=f"k{n}", description="POST x",
        can_reconcile=True, status=status, result=result, error=None, reconcile_attempts=0,
        resolved_by=None, created_at=NOW, updated_at=NOW)


def test_committed_runs_and_producers() -> None:
    assert decide(run(RunStatus.COMMITTED), [], reconcile=False).step is Step.DONE
    assert decide(run(RunStatus.RUNNING, kind=RunKind.PRODUCER), [],
                  reconcile=False).step is Step.PRODUCER


def test_without_a_durable_prepare_result_prepare_runs_again() -> None:
    assert decide(run(RunStatus.PREPARING, prepared=None), [], reconcile=False).step \
        is Step.PREPARE


@pytest.mark.parametrize("status", [L.IN_FLIGHT, L.NEEDS_RECONCILE])
def test_an_uncertain_attempt_is_reconciled_never_sent_again(status: LedgerStatus) -> None:
    how = decide(run(), [attempt(1, L.FAILED), attempt(2, status)], reconcile=True)
    assert (how.step, how.attempt, how.retries) == (Step.RECONCILE, 3, 1)
    assert how.mutation is not None
    assert how.mutation.attempt == 2


def test_needs_reconcile_waits_for_the_background_reconciler() -> None:
    how = decide(run(RunStatus.SUSPENDED), [attempt(1, L.NEEDS_RECONCILE)], reconcile=False)
    assert how.step is Step.WAIT


@pytest.mark.parametrize("reconcile", [False, True])
def test_indeterminate_and_awaiting_approval_wait_for_a_person(reconcile: bool) -> None:
    assert decide(run(RunStatus.SUSPENDED), [attempt(1, L.INDETERMINATE)],
                  reconcile=reconcile).step is Step.WAIT
    assert decide(run(RunStatus.SUSPENDED, reason=SuspendReason.AWAITING_APPROVAL), [],
                  reconcile=reconcile).step is Step.WAIT


def test_an_applied_attempt_goes_to_next_with_the_ledgers_result() -> None:
    how = decide(run(), [attempt(1, L.APPLIED, {"id": 7})], reconcile=False)
    assert (how.step, how.applied_result) == (Step.NEXT, {"id": 7})
    answered = decide(run(RunStatus.EMITTING, result={"status": "skipped"}),
                      [attempt(1, L.INDETERMINATE)], reconcile=False)
    assert (answered.step, answered.applied_result) == (Step.NEXT, None)


def test_definite_failures_mutate_again_counting_retries() -> None:
    assert decide(run(RunStatus.PREPARED), [], reconcile=False).attempt == 1
    how = decide(run(), [attempt(1, L.FAILED), attempt(2, L.FAILED)], reconcile=False)
    assert (how.step, how.attempt, how.retries) == (Step.MUTATE, 3, 1)
    # a person's retry of a failed run starts the retry budget over
    retry = decide(run(RunStatus.FAILED), [attempt(1, L.FAILED)], reconcile=False)
    assert (retry.step, retry.attempt, retry.retries) == (Step.MUTATE, 2, 0)


def test_a_permanent_failure_whose_run_was_not_failed_is_recorded_not_resent() -> None:
    how = decide(run(), [attempt(1, L.FAILED)], reconcile=False, retryable=False)
    assert how.step is Step.RECORD_FAILURE
    # once the run itself is failed, a person's retry sends it again
    assert decide(run(RunStatus.FAILED), [attempt(1, L.FAILED)], reconcile=False,
                  retryable=False).step is Step.MUTATE
