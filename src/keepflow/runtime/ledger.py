"""The host procedure for a declared mutation (SPEC §6).

1. write ``in_flight`` durably; 2. call the connector with the idempotency key;
3. success → ``applied``; a definite failure → ``failed`` (transient ones re-execute mutate);
4. an uncertain outcome → reconcile *immediately*: ``applied`` | ``failed`` |
   ``needs_reconcile`` (run suspended, background reconciler) | ``indeterminate`` (no way to
   verify: run suspended, workflow needs action).

The script is no longer running when any of this happens, so uncertainty can never be caught
by script code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import timedelta
from enum import StrEnum
from typing import Any

from keepflow import faults
from keepflow.connectors.base import Connector, ReconcileOutcome, ToolCall, ToolKind
from keepflow.errors import (
    AuthError,
    ConnectorError,
    FailureClass,
    PermanentError,
    PermissionDenied,
    PreconditionError,
    TransientError,
    UncertainOutcome,
)
from keepflow.model import (
    EventClaim,
    LedgerStatus,
    MutationDraft,
    MutationRecord,
    Phase,
    RunStatus,
    Settle,
    ToolCallRecord,
)
from keepflow.runtime import outside
from keepflow.runtime.bridge import DeclaredMutation, RunScope
from keepflow.runtime.routing import route_indeterminate
from keepflow.runtime.values import json_size
from keepflow.storable import escape_text
from keepflow.store.convert import canonical_json


class Outcome(StrEnum):
    APPLIED = "applied"  # go on with next
    REMUTATE = "remutate"  # definitely did not happen and may succeed: mutate again
    FAILED = "failed"  # definitely did not happen; the run fails with ``error``
    SUSPENDED = "suspended"  # needs_reconcile or indeterminate


@dataclass(frozen=True)
class MutationOutcome:
    outcome: Outcome
    mutation: MutationRecord | None  # None while the mutation awaits approval (not attempted)
    error: ConnectorError | None = None


def idempotency_key(workflow_id: str, run_id: str, attempt: int) -> str:
    """SPEC §6: derived from workflow id + run id + attempt; stable across host restarts."""
    return f"kf-{workflow_id}-{run_id}-{attempt}"


_BY_CODE: dict[str, type[ConnectorError]] = {
    cls.code: cls for cls in (AuthError, TransientError, PreconditionError, PermanentError,
                              PermissionDenied, UncertainOutcome)
}


#: The ledger error code of an attempt a person declared did not happen (SPEC §6 user actions).
DIDNT_HAPPEN = "didnt_happen"


def failure_of(mutation: MutationRecord) -> ConnectorError:
    """The typed error a ``failed`` ledger attempt recorded (for recovery decisions)."""
    error = mutation.error or {}
    code = str(error.get("code"))
    if code in (UncertainOutcome.code, DIDNT_HAPPEN):
        # Reconciled, or a person answered, "it did not happen": safe to try again.
        return TransientError(str(error.get("message") or "the mutation did not happen"))
    cls = _BY_CODE.get(code, PermanentError)
    return cls(str(error.get("message") or "the mutation failed"))


def tool_call_of(scope: RunScope, m: MutationRecord | DeclaredMutation, key: str) -> ToolCall:
    return ToolCall(tool=m.tool, params=dict(m.params), idempotency_key=key,
                    timeout=scope.policy_for(m.connection).timeouts.tool_call_seconds,
                    attempted_at=m.created_at if isinstance(m, MutationRecord) else None)


def perform(scope: RunScope, declared: DeclaredMutation, attempt: int,
            claim: EventClaim | None) -> MutationOutcome:
    run = scope.run
    connector = scope.connections.get(declared.connection)
    key = idempotency_key(run.workflow_id, run.id, attempt)
    call = tool_call_of(scope, declared, key)
    risk = connector.tool(declared.tool).risk.value
    approvals = scope.policy_for(declared.connection).approvals
    if approvals.requires(declared.connection, declared.tool, risk) and \
            not approved(run.approval, declared):
        return _await_approval(scope, declared, connector.describe(call), claim)
    draft = MutationDraft(
        run_id=run.id, workflow_id=run.workflow_id, attempt=attempt,
        connection=declared.connection, connector_type=connector.type_name, tool=declared.tool,
        params=declared.params, idempotency_key=key, description=connector.describe(call),
        can_reconcile=connector.can_reconcile(call),
    )
    # SPEC §6 step 2: in_flight is durable before the external call starts.
    limits = limited(scope, declared.connection)
    mutation = scope.store.record_in_flight(run, scope.fence, draft, claim=claim)
    call = replace(call, attempted_at=mutation.created_at)
    t0 = time.perf_counter()
    try:
        got = outside.call(connector, call, _result_cap(scope, declared.connection),
                           limited=limits)
    except UncertainOutcome as exc:
        faults.point("mutation.after_call")
        _log(scope, declared, call, t0, None, exc)
        return reconcile_now(scope, mutation, connector, exc)
    except ConnectorError as exc:
        faults.point("mutation.after_call")
        _log(scope, declared, call, t0, None, exc)
        return _definitely_failed(scope, mutation, exc)
    except Exception as exc:
        faults.point("mutation.after_call")
        cause = UncertainOutcome(
            f"{connector.type_name} raised {type(exc).__name__}: {escape_text(str(exc))}")
        _log(scope, declared, call, t0, None, cause)
        return reconcile_now(scope, mutation, connector, cause)
    faults.point("mutation.after_call")
    note = got.note(mutation.description)
    if note is not None:
        scope.note(Phase.MUTATE, "warn", note)
    _log(scope, declared, call, t0, got.value, None)
    return _applied(scope, mutation, got.value, resolved_by="host")


def reconcile_now(scope: RunScope, mutation: MutationRecord, connector: Connector,
                  cause: ConnectorError) -> MutationOutcome:
    """SPEC §6 step 4 (and §5.5: an ``in_flight`` attempt found at start-up)."""
    run = scope.run
    call = tool_call_of(scope, mutation, mutation.idempotency_key)
    if not connector.can_reconcile(call):
        return _indeterminate(scope, mutation, cause)
    limits = limited(scope, mutation.connection)
    try:
        answer = outside.reconcile(connector, replace(
            call, timeout=scope.policy_for(mutation.connection).timeouts.reconcile_call_seconds),
            _result_cap(scope, mutation.connection), limited=limits)
    except Exception as exc:
        detail = exc.message if isinstance(exc, ConnectorError) else f"{type(exc).__name__}"
        answer_outcome, answer_result, answer_detail = ReconcileOutcome.RETRY, None, detail
    else:
        answer_outcome, answer_result, answer_detail = answer.outcome, answer.result, answer.detail
    if answer_outcome is ReconcileOutcome.APPLIED:
        return _applied(scope, mutation, answer_result, resolved_by="reconcile",
                        reconciled=True)
    if answer_outcome is ReconcileOutcome.FAILED:
        error = cause.to_dict() | {"reconcile": answer_detail or "did not take effect"}
        run.step(RunStatus.MUTATING, scope.clock.now(),
                 note=f"reconcile: attempt {mutation.attempt} did not take effect")
        rec = scope.store.settle_mutation(run, scope.fence, Settle(
            mutation.id, LedgerStatus.FAILED, error=error, reconcile_attempted=True,
            resolved_by="reconcile"))
        return MutationOutcome(Outcome.REMUTATE, rec, cause)
    if answer_outcome is ReconcileOutcome.INDETERMINATE:
        # The connector looked and says no later look can tell: ask the person now (§6 step 6)
        # rather than spend the reconcile budget on answers that cannot change.
        why = f"{cause.message}; {answer_detail or 'the connector cannot tell'}"
        return _indeterminate(scope, mutation, cause, why=why, reconciled=True)
    # SPEC §6 step 5: ask again later with backoff, within the policy's limits.
    policy = scope.policy_for(mutation.connection).reconcile
    attempts = mutation.reconcile_attempts + 1
    now = scope.clock.now()
    spent = (now - mutation.created_at).total_seconds()
    if attempts >= policy.max_attempts or spent >= policy.total_budget_seconds:
        why = (f"{cause.message}; the connector could not verify it after {attempts} "
               f"attempt(s) over {spent:.0f}s ({answer_detail or 'no answer'})")
        return _indeterminate(scope, mutation, cause, why=why, can_verify=True,
                              reconciled=True)
    delay = policy.delay(attempts)
    if run.status is not RunStatus.SUSPENDED:
        run.step(RunStatus.SUSPENDED, now,
                 note=f"reconciliation pending: {answer_detail or cause.message}")
    rec = scope.store.suspend_for_reconcile(run, scope.fence, mutation.id,
                                            error=cause.to_dict(),
                                            next_at=now + timedelta(seconds=delay))
    return MutationOutcome(Outcome.SUSPENDED, rec, cause)


def limited(scope: RunScope, connection: str) -> outside.Limited:
    """The host's limits on calls to ``connection`` (docs/connectors.md#call-limits)."""
    return outside.Limited(scope.connections.throttle(connection), scope.clock)


def _result_cap(scope: RunScope, connection: str) -> int:
    """A mutation's result is kept (it happened) but must still fit next's arguments together
    with the PrepareResult: half of the largest message."""
    return scope.policy_for(connection).limits.message_bytes // 2


def _applied(scope: RunScope, mutation: MutationRecord, result: Any, *,
             resolved_by: str, reconciled: bool = False) -> MutationOutcome:
    run = scope.run
    run.mutation_result = {"status": "applied", "result": result}
    run.step(RunStatus.MUTATED, scope.clock.now(),
             note="reconciled: applied" if reconciled else None)
    rec = scope.store.settle_mutation(run, scope.fence, Settle(
        mutation.id, LedgerStatus.APPLIED, result=result, reconcile_attempted=reconciled,
        resolved_by=resolved_by))
    return MutationOutcome(Outcome.APPLIED, rec)


def _definitely_failed(scope: RunScope, mutation: MutationRecord, exc: ConnectorError
                       ) -> MutationOutcome:
    """SPEC §6 step 3: ``failed``; transient → mutate again after backoff, else the run fails.

    The run's own failure is recorded by the executor, in the same commit when possible.
    """
    retry = exc.failure_class is FailureClass.TRANSIENT
    rec = scope.store.settle_mutation(scope.run, scope.fence, Settle(
        mutation.id, LedgerStatus.FAILED, error=exc.to_dict(), resolved_by="host"))
    return MutationOutcome(Outcome.REMUTATE if retry else Outcome.FAILED, rec, exc)


def _indeterminate(scope: RunScope, mutation: MutationRecord, cause: ConnectorError, *,
                   why: str | None = None, can_verify: bool = False,
                   reconciled: bool = False) -> MutationOutcome:
    """SPEC §6 step 6: nothing can (or could) verify it; the person must answer."""
    run = scope.run
    why = why or cause.message
    note = f"outcome unknown: {why}"
    run.step(RunStatus.SUSPENDED, scope.clock.now(), note=note)  # a note if already suspended
    status = route_indeterminate(mutation.description, scope.buffers.reserved_titles, why,
                                 can_verify=can_verify)
    rec = scope.store.suspend_indeterminate(run, scope.fence, mutation.id,
                                            error=cause.to_dict(), reconciled=reconciled,
                                            workflow_status=status)
    return MutationOutcome(Outcome.SUSPENDED, rec, cause)


def approved(approval: dict[str, Any] | None, declared: DeclaredMutation) -> bool:
    """Whether a person approved exactly this declaration: same connection, tool and params,
    compared as canonical JSON — with types, so ``1`` is not ``true`` and ``"1"`` is not ``1``
    (Python's ``==`` would say ``1 == True``): what was approved is exactly what is sent."""
    if not approval or approval.get("status") != "approved":
        return False
    m = approval.get("mutation") or {}
    shown = {"connection": m.get("connection"), "tool": m.get("tool"), "params": m.get("params")}
    sent = {"connection": declared.connection, "tool": declared.tool, "params": declared.params}
    return canonical_json(shown) == canonical_json(sent)


def _await_approval(scope: RunScope, declared: DeclaredMutation, description: str,
                    claim: EventClaim | None) -> MutationOutcome:
    """SPEC §6 step 1: the permission requires approval; suspend before anything happens."""
    run = scope.run
    now = scope.clock.now()
    run.approval = {"status": "pending", "requestedAt": now.isoformat(), "mutation": {
        "connection": declared.connection, "tool": declared.tool, "params": declared.params,
        "description": description}}
    run.step(RunStatus.SUSPENDED, now, note=f"awaiting approval: {description}")
    scope.store.await_approval(run, scope.fence, claim=claim)
    return MutationOutcome(Outcome.SUSPENDED, None)


def _log(scope: RunScope, declared: DeclaredMutation | MutationRecord, call: ToolCall,
         t0: float, result: Any, error: ConnectorError | None) -> None:
    scope.buffers.call_seq += 1
    # The attempt's params and result, kept by the ledger and the run (docs/security.md#limits).
    scope.run.stored_bytes += json_size(dict(call.params)) + json_size(result)
    scope.run.tool_calls.append(ToolCallRecord(
        seq=scope.buffers.call_seq, phase=Phase.MUTATE, target="tool",
        connection=declared.connection,
        tool=declared.tool, kind=ToolKind.MUTATE.value,
        params={**call.params, "idempotencyKey": call.idempotency_key}, ok=error is None,
        result=result, error=error.to_dict() if error else None, started_at=scope.clock.now(),
        duration_ms=(time.perf_counter() - t0) * 1000,
    ))
