"""The executor: runs producers (SPEC §4) and consumers (SPEC §5) from any durable point.

Durable points of a consumer run (SPEC §5.5), and what the happy path commits:

1. ``record_in_flight``: PrepareResult + reservations + run ``mutating`` + ledger ``in_flight``
   (mutate has already run in the sandbox: it only *declares* the mutation, so nothing
   external happened before this commit);
2. ``settle_mutation``: ledger ``applied`` + result + run ``mutated``;
3. ``commit_consumer_run``: publishes + state + events ``consumed`` + run ``committed``.

A run with empty reservations, or whose mutate makes no mutation call, commits once (3 only).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from keepflow import faults
from keepflow.errors import (
    ConnectorError,
    FailureClass,
    InvalidResult,
    PhaseViolation,
    PreconditionError,
    QuotaExceeded,
    RunFailure,
    ScriptError,
    TransientError,
    UncertainOutcome,
)
from keepflow.model import (
    EventClaim,
    EventStatus,
    Fence,
    LedgerStatus,
    Phase,
    RunDraft,
    RunKind,
    RunRecord,
    RunStatus,
    Sleep,
    StateUpdate,
    VersionRecord,
    WorkflowRecord,
)
from keepflow.runtime import containment, ledger, resume, values
from keepflow.runtime.bridge import Bridge, RunScope
from keepflow.runtime.outcome import RunOutcome
from keepflow.runtime.parts import RunParts
from keepflow.runtime.routing import route_failure
from keepflow.sandbox.api import Invocation, InvocationResult
from keepflow.workflow import WorkflowManifest


class Executor:
    def __init__(self, host: RunParts) -> None:
        self.host = host

    # ------------------------------------------------------------------ set-up

    def _scope(self, run: RunDraft, version: VersionRecord, fence: Fence | None,
               policy_name: str) -> RunScope:
        manifest = WorkflowManifest.from_dict(version.manifest)
        subscribed: frozenset[str] = frozenset()
        if run.kind is RunKind.CONSUMER:
            subscribed = frozenset(manifest.consumers[run.handler].subscribe)
        return RunScope(
            run=run, version=version, fence=fence, store=self.host.store,
            connections=self.host.connections,
            policy=self.host.policies.for_workflow(policy_name), policies=self.host.policies,
            workflow_name=policy_name, clock=self.host.clock,
            declared_topics=frozenset(manifest.topics), subscribed=subscribed,
            needs_connections=manifest.connections,
        )

    def _require_connections(self, scope: RunScope) -> None:
        """Every connection the script calls is configured (it was when the version was
        deployed; the connections file may have changed since). One missing is a
        ``precondition`` failure naming it — a configuration problem, not a script bug."""
        have = set(scope.connections.names())
        missing = [name for name in scope.needs_connections if name not in have]
        if not missing:
            return
        names = ", ".join(missing)
        where = self.host.connections_problem
        why = (f"the connections file has an error, so its last valid version is in use: "
               f"{where}; fix the file" if where else
               f"add [connections.{missing[0]}] to connections.toml in the keepflow home")
        raise PreconditionError(
            f"the script calls connection{'s' if len(missing) > 1 else ''} {names}, which "
            f"{'are' if len(missing) > 1 else 'is'} not configured: {why} (a running server "
            "reads the change within seconds; see docs/connectors.md#changing-connections)",
            connections=missing)

    def _invoke(self, scope: RunScope, phase: Phase, path: tuple[str, ...],
                args: tuple[Any, ...], undefined: frozenset[int] = frozenset()
                ) -> tuple[InvocationResult, Bridge]:
        self._require_connections(scope)
        bridge = Bridge(scope, phase)
        inv = Invocation(
            source=scope.version.source, handler=path, args=args, undefined_args=undefined,
            connections=scope.connections.stub_shape(),
            terminal=scope.connections.terminal_shape(),
            limits=scope.policy.sandbox_limits(),
        )
        result = self.host.pool.invoke(inv, bridge, bridge.on_log)
        # SPEC §5.2: nothing may follow the terminal mutation; a call queued after it (in the
        # same turn, since it never returns) means the script is wrong: nothing is performed.
        for call in getattr(result, "after_terminal", None) or []:
            mutating = call.tool in scope.connections.terminal_shape().get(
                call.connection or "", ())
            what = ("a second mutation" if call.target == "tool" and mutating
                    else "a publish" if call.target == "publish" else "a call")
            raise PhaseViolation(
                f"{call.display}: {what} after the terminal mutation; the mutation must be "
                "the last thing mutate does (docs/execution-model.md#the-terminal-mutation)",
                phase=phase.value, call=call.display)
        return result, bridge

    def new_run(self, wf: WorkflowRecord, version: VersionRecord, handler: str, kind: RunKind,
                trigger: str) -> RunDraft:
        from keepflow.ids import new_id

        now = self.host.clock.now()
        run = RunDraft(id=new_id(), workflow_id=wf.id, version_id=version.id, handler=handler,
                       kind=kind, trigger=trigger, status=RunStatus.PENDING, created_at=now)
        return run

    # ------------------------------------------------------------------ producers (SPEC §4)

    def run_producer(self, wf: WorkflowRecord, version: VersionRecord, handler: str,
                     trigger: str, fence: Fence | None) -> RunOutcome:
        run = self.new_run(wf, version, handler, RunKind.PRODUCER, trigger)
        scope = self._scope(run, version, fence, wf.name)
        return self._contained(scope, lambda: self._producer(scope, handler))

    def _contained(self, scope: RunScope, body: Callable[[], RunOutcome]) -> RunOutcome:
        return containment.contained(self.host, scope, body, self._outcome)

    def _producer(self, scope: RunScope, handler: str) -> RunOutcome:
        run, wf_id = scope.run, scope.run.workflow_id
        run.step(RunStatus.RUNNING, self.host.clock.now())
        has, state = self.host.store.load_state(wf_id, handler)
        try:
            res, _ = self._invoke(scope, Phase.PRODUCER, ("producers", handler),
                                  (state,), frozenset() if has else frozenset({0}))
            new_state = None
            if not res.returned_undefined:
                run.stored_bytes += values.check_size(res.value, scope.policy.limits.state_bytes,
                                                      f"the state returned by {handler}")
                new_state = StateUpdate(handler, res.value)
        except RunFailure as f:
            return self._fail(scope, f, Phase.PRODUCER, {"state": state})
        self._note_duplicates(scope, Phase.PRODUCER)
        faults.point("producer.before_commit")
        return self._commit(scope, Phase.PRODUCER, {"state": state}, None, lambda quota:
                            self.host.store.commit_producer_run(
                                run, scope.fence, scope.buffers.publishes, new_state, quota=quota))

    def _commit(self, scope: RunScope, phase: Phase, inputs: dict[str, Any],
                claim: EventClaim | None, commit: Callable[[int], object]) -> RunOutcome:
        """The run's final commit, within the workflow's storage quota (docs/security.md#limits):
        refused, nothing of it is written and the run fails at its last durable point."""
        run = scope.run
        seen = len(run.transitions)
        run.step(RunStatus.COMMITTED, self.host.clock.now())
        try:
            commit(scope.policy.limits.workflow_storage_bytes)
        except QuotaExceeded as exc:
            run.rewind(keep=seen)
            return self._fail(scope, exc, phase, inputs, claim=claim)
        return self._outcome(run)

    # ------------------------------------------------------------------ consumers (SPEC §5)

    def run_consumer(self, wf: WorkflowRecord, version: VersionRecord, consumer: str,
                     trigger: str, fence: Fence | None) -> RunOutcome:
        run = self.new_run(wf, version, consumer, RunKind.CONSUMER, trigger)
        scope = self._scope(run, version, fence, wf.name)
        return self._contained(scope, lambda: self._prepare(scope))

    def _prepare(self, scope: RunScope) -> RunOutcome:
        run, store, clock = scope.run, self.host.store, self.host.clock
        if run.status is not RunStatus.PREPARING:
            run.step(RunStatus.PREPARING, clock.now())
        # Read before prepare: any event newer than this wakes a sleeping consumer (SPEC §7.3).
        watermark, has, state = store.consumer_inputs(run.workflow_id, run.handler)
        try:
            res, _ = self._invoke(scope, Phase.PREPARE,
                                  ("consumers", run.handler, "prepare"), (state,),
                                  frozenset() if has else frozenset({0}))
            prepared = values.prepare_result(
                None if res.returned_undefined else res.value, subscribed=scope.subscribed,
                limit=scope.policy.limits.prepared_bytes)
            reserved = store.check_reservations(run.workflow_id, run.id, prepared.reservations,
                                                sorted(scope.subscribed))
        except RunFailure as f:
            return self._fail(scope, f, Phase.PREPARE, {"state": state})
        scope.buffers.reserved_titles = [e.title for e in reserved]
        run.prepared = prepared.to_json()
        run.stored_bytes += prepared.size
        run.step(RunStatus.PREPARED, clock.now(),
                 note=f"reserved {len(reserved)} event(s)" if reserved else "nothing to do")
        claim = EventClaim(tuple(prepared.reservations), tuple(sorted(scope.subscribed)))
        if prepared.empty:
            # SPEC §5.1: skip mutate, run next with {status: "none"}, then sleep (SPEC §7.3).
            run.mutation_result = {"status": "none"}
            run.step(RunStatus.EMITTING, clock.now())
            until = clock.now() + timedelta(seconds=scope.policy.consumer.backoff_timeout_seconds)
            return self._next(scope, prepared.to_json(), claim=None,
                              sleep=Sleep(until=until, watermark=watermark))
        return self._mutate(scope, prepared.to_json(), attempt=1, claim=claim)

    def _mutate(self, scope: RunScope, prepared: dict[str, Any], attempt: int,
                claim: EventClaim | None, retries: int = 0,
                pending: ledger.MutationOutcome | None = None) -> RunOutcome:
        """Run mutate and the ledger procedure; re-execute mutate only after a definite
        failure (SPEC §5.2), with backoff, up to the retry policy."""
        run, clock = scope.run, self.host.clock
        while True:
            if pending is None:
                if run.status is not RunStatus.MUTATING:
                    run.step(RunStatus.MUTATING, clock.now(),
                             note=f"attempt {attempt}" if attempt > 1 else None)
                try:
                    _, bridge = self._invoke(scope, Phase.MUTATE,
                                             ("consumers", run.handler, "mutate"), (prepared,))
                except RunFailure as f:
                    return self._fail(scope, f, Phase.MUTATE, {"prepared": prepared},
                                      claim=claim)
                if bridge.declared is None:
                    # SPEC §5.2: no mutation call → next gets {status: "none"}.
                    run.mutation_result = {"status": "none"}
                    run.step(RunStatus.MUTATED, clock.now(), note="mutate made no mutation call")
                    run.step(RunStatus.EMITTING, clock.now())
                    return self._next(scope, prepared, claim=claim)
                done = ledger.perform(scope, bridge.declared, attempt, claim)
                claim = None  # written with the in_flight commit
            else:
                done, pending = pending, None
            if done.outcome is ledger.Outcome.APPLIED:
                run.step(RunStatus.EMITTING, clock.now())
                return self._next(scope, prepared, claim=None)
            if done.outcome is ledger.Outcome.SUSPENDED:
                return self._outcome(run, done.mutation.status if done.mutation else None)
            assert done.error is not None
            assert done.mutation is not None
            retry = scope.policy_for(done.mutation.connection).retry
            if done.outcome is ledger.Outcome.FAILED or retries + 1 >= retry.max_attempts:
                err = done.error
                if done.outcome is ledger.Outcome.REMUTATE and not isinstance(err, TransientError):
                    err = TransientError(f"{err.message} (reconciled: it did not take effect)")
                return self._fail(scope, err, Phase.MUTATE, {"prepared": prepared})
            retries += 1
            attempt = done.mutation.attempt + 1
            delay = retry.wait(retries, getattr(done.error, "retry_after", None))
            scope.note(Phase.MUTATE, "warn",
                       f"attempt {done.mutation.attempt} definitely failed ({done.error.message});"
                       f" mutate runs again in {delay:.1f}s")
            clock.sleep(delay)

    # ------------------------------------------------------------------ resume (SPEC §5.5)

    def resume(self, run_id: str, fence: Fence | None, *, version: VersionRecord | None = None,
               reconcile: bool = False) -> RunOutcome:
        """Continue a run from its last durable point (start-up recovery, or a retry of a
        failed run). Never calls mutate again while the ledger may say it happened."""
        store = self.host.store
        rec = store.get_run(run_id)
        if rec.status is RunStatus.COMMITTED:
            return RunOutcome(rec.id, rec.handler, rec.kind, rec.status)
        wf = store.get_workflow(rec.workflow_id)
        if version is None and rec.retry_requested_at is not None and wf.current_version_id:
            version = store.get_version(wf.current_version_id)  # a retry runs the current code
        ver = version or store.get_version(rec.version_id)
        run = RunDraft.from_record(rec, version_id=ver.id)
        scope = self._scope(run, ver, fence, wf.name)
        return self._contained(scope, lambda: self._resume(scope, rec, wf, ver, reconcile))

    def _resume(self, scope: RunScope, rec: RunRecord, wf: WorkflowRecord, ver: VersionRecord,
                reconcile: bool) -> RunOutcome:
        run, store = scope.run, self.host.store
        scope.buffers.reserved_titles = store.reserved_titles(run.id)
        now = self.host.clock.now()
        if run.status is RunStatus.FAILED:
            run.failure, run.finished_at = None, None
        muts = store.mutations_of(run.id) if rec.kind is RunKind.CONSUMER else []
        last = muts[-1] if muts else None
        retryable = last is None or last.status is not LedgerStatus.FAILED or \
            ledger.failure_of(last).retryable
        how = resume.decide(rec, muts, reconcile=reconcile, retryable=retryable)
        if how.step is resume.Step.PRODUCER:
            return self._resume_producer(scope, wf, ver)
        if how.step is resume.Step.WAIT:
            return self._outcome(run, how.mutation.status if how.mutation else None)
        if how.step is resume.Step.PREPARE:  # SPEC §5.5: preparing → re-run prepare
            return self._prepare(scope)
        prepared = run.prepared
        if how.step is resume.Step.NEXT:
            # SPEC §5.5: ledger applied → next with the stored result; emitting → next again.
            if run.mutation_result is None:
                run.mutation_result = {"status": "applied", "result": how.applied_result}
            if run.status is not RunStatus.EMITTING:
                if run.status is RunStatus.SUSPENDED:
                    run.step(RunStatus.MUTATED, now)
                run.step(RunStatus.EMITTING, now, note="resumed from the stored result")
            skipped = run.mutation_result.get("status") == "skipped"
            return self._next(scope, prepared, claim=None,
                              outcome=EventStatus.SKIPPED if skipped else EventStatus.CONSUMED)
        if how.step is resume.Step.RECONCILE:
            assert how.mutation is not None
            # SPEC §5.5: in_flight → needs_reconcile, never call mutate again blindly.
            # (A suspended run stays suspended while the background reconciler asks.)
            if run.status not in (RunStatus.MUTATING, RunStatus.SUSPENDED):
                run.step(RunStatus.MUTATING, now, note="resumed: reconciling")
            cause = UncertainOutcome("the host stopped while this mutation was in flight")
            self._require_connections(scope)
            connector = scope.connections.get(how.mutation.connection)
            done = ledger.reconcile_now(scope, how.mutation, connector, cause)
            return self._mutate(scope, prepared, attempt=how.attempt, claim=None,
                                retries=how.retries, pending=done)
        if how.step is resume.Step.RECORD_FAILURE:
            assert how.mutation is not None
            # The host stopped while recording this failure: record it, never re-send.
            return self._fail(scope, ledger.failure_of(how.mutation), Phase.MUTATE,
                              {"prepared": prepared})
        # No ledger entry, or the last attempt definitely failed: run mutate (SPEC §5.2, §5.5).
        return self._mutate(scope, prepared, attempt=how.attempt, claim=None,
                            retries=how.retries)

    def reconcile_due(self, run_id: str, fence: Fence | None) -> RunOutcome:
        """The background reconciler's step (SPEC §6 step 5): one more reconcile of a
        suspended run whose attempt is ``needs_reconcile`` and due; anything else is left."""
        rec = self.host.store.get_run(run_id)
        muts = self.host.store.mutations_of(run_id)
        last = muts[-1] if muts else None
        if (rec.status is not RunStatus.SUSPENDED or last is None
                or last.status is not LedgerStatus.NEEDS_RECONCILE):
            return RunOutcome(rec.id, rec.handler, rec.kind, rec.status, rec.failure,
                              last.status.value if last else None)
        return self.resume(run_id, fence, reconcile=True)

    def _resume_producer(self, scope: RunScope, wf: WorkflowRecord, ver: VersionRecord
                         ) -> RunOutcome:
        run = scope.run
        if run.status is RunStatus.FAILED:  # a retry is simply a new run of the producer
            return self.run_producer(wf, ver, run.handler, "retry", scope.fence)
        # SPEC §5.5: producer running → discard; nothing was committed.
        return self._fail(scope, TransientError(
            "the host stopped during this producer run; nothing was committed and it runs "
            "again on schedule"), Phase.PRODUCER, {}, escalate=False)

    def _next(self, scope: RunScope, prepared: dict[str, Any], claim: EventClaim | None,
              sleep: Sleep | None = None,
              outcome: EventStatus = EventStatus.CONSUMED) -> RunOutcome:
        """SPEC §5.3: next always runs; its commit is one transaction."""
        run = scope.run
        try:
            res, _ = self._invoke(scope, Phase.NEXT, ("consumers", run.handler, "next"),
                                  (prepared, run.mutation_result))
            state = None
            if not res.returned_undefined:
                run.stored_bytes += values.check_size(
                    res.value, scope.policy.limits.state_bytes,
                    f"the state returned by {run.handler}.next")
                state = StateUpdate(run.handler, res.value)
        except RunFailure as f:
            return self._fail(scope, f, Phase.NEXT,
                              {"prepared": prepared, "mutationResult": run.mutation_result},
                              claim=claim)
        self._note_duplicates(scope, Phase.NEXT)
        faults.point("next.before_commit")
        return self._commit(
            scope, Phase.NEXT, {"prepared": prepared, "mutationResult": run.mutation_result},
            claim, lambda quota: self.host.store.commit_consumer_run(
                run, scope.fence, publishes=scope.buffers.publishes, state=state, outcome=outcome,
                claim=claim, sleep=sleep, quota=quota))

    # ------------------------------------------------------------------ failures (SPEC §8)

    def _fail(self, scope: RunScope, failure: RunFailure, phase: Phase,
              inputs: dict[str, Any], claim: EventClaim | None = None,
              escalate: bool = True) -> RunOutcome:
        run = scope.run
        cls = failure.failure_class
        if cls is FailureClass.INDETERMINATE:  # an uncertain outcome of a *read* is transient
            cls = FailureClass.TRANSIENT
        run.failure = {
            "class": cls.value,
            "code": failure.code,
            "message": failure.message,
            "phase": phase.value,
            "handler": run.handler,
            "versionId": run.version_id,
            "details": failure.to_dict(),
            "stack": failure.stack if isinstance(failure, ScriptError) else _host_stack(failure),
            "inputs": inputs,
        }
        run.step(RunStatus.FAILED, self.host.clock.now(), note=f"{cls.value}: {failure.message}")
        if cls is FailureClass.LOGIC and escalate and self.host.repair_hook(failure, run):
            escalate = False  # SPEC §8: the Maintainer took it over
        status = route_failure(cls, run.handler, failure.message) if escalate else None
        self.host.store.fail_run(run, scope.fence, claim=claim, workflow_status=status)
        return self._outcome(run)

    def _note_duplicates(self, scope: RunScope, phase: Phase) -> None:
        """SPEC §3, §15.1: a re-published messageId is a no-op, noted on the run."""
        if not scope.buffers.publishes:
            return
        known = self.host.store.existing_events(scope.run.workflow_id, scope.buffers.publishes)
        for draft in scope.buffers.publishes:
            old = known.get((draft.topic, draft.message_id))
            if old is None:
                continue
            same = old == draft.payload_sha256
            scope.note(
                phase, "warn" if not same else "info",
                f"event {draft.topic}/{draft.message_id} already exists; publish ignored"
                + ("" if same else " (its payload differs: the original is kept)"))

    def _outcome(self, run: RunDraft, mutation: LedgerStatus | None = None) -> RunOutcome:
        return RunOutcome(run.id, run.handler, run.kind, run.status, run.failure,
                          mutation.value if mutation else None)


def _host_stack(failure: RunFailure) -> str:
    if isinstance(failure, (ConnectorError, InvalidResult, PhaseViolation)):
        return ""
    return "".join(traceback.format_exception(failure)[-3:])
