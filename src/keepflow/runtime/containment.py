"""When keepflow itself fails during a run: stop that run, explain it, keep everything else going.

The runtime's own checks turn every bad value into a classified failure before it is recorded
(docs/security.md). If something still escapes — a bug, a value a store refuses, a connector
that raises something untyped while no mutation is in flight — the exception must not leave
the run unexplained, and must not stop other workflows: ``drain`` would otherwise abort for all
of them, and ``serve`` would start the same run again at once, forever.

So the run is recorded as failed with a :class:`~keepflow.errors.HostError` whose message says
what happened and what to do, its workflow goes to *needs action* (nothing of it runs on
schedule until a person looks), and the caller gets an ordinary outcome. The run stays at its
last durable point: an ``in_flight`` ledger attempt is reconciled on retry, never re-sent
blindly (SPEC §5.5). When even that record cannot be written, the workflow's status alone is
set; when that fails too, the original exception propagates and the scheduler backs off.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from keepflow.errors import Conflict, HostError, LeaseLost, TransitionRefused
from keepflow.model import RUN_TRANSITIONS, RunDraft, RunStatus, Transition, WorkflowStatus
from keepflow.runtime.bridge import RunScope
from keepflow.storable import escape_deep, escape_text

if TYPE_CHECKING:
    from keepflow.runtime.outcome import RunOutcome
    from keepflow.runtime.parts import RunParts

log = logging.getLogger("keepflow.runtime")

#: Exceptions that are not failures of this run: another host took the workflow, or another
#: actor moved the run on. They go to the caller unchanged.
PASS_THROUGH = (LeaseLost, Conflict)
HELP = "docs/operations.md#internal-errors"


def contained(host: RunParts, scope: RunScope, body: Callable[[], RunOutcome],
              outcome: Callable[[RunDraft], RunOutcome]) -> RunOutcome:
    """Run ``body``; an unexpected exception stops only this run (see the module docstring)."""
    try:
        return body()
    except PASS_THROUGH:
        raise
    except Exception as exc:
        if not stop_run(host, scope, exc):
            raise
        return outcome(scope.run)


def stop_run(host: RunParts, scope: RunScope, exc: Exception) -> bool:
    """Record the run as failed by ``exc`` and its workflow as needing action. Returns False
    when nothing could be recorded (the caller re-raises)."""
    run = scope.run
    what = escape_text(f"{type(exc).__name__}: {exc}")[:500]
    stack = escape_text("".join(traceback.format_exception(exc)))[-16_000:]
    # One line for the log; the traceback goes with the run (`keepflow run show RUN`).
    log.error("run %s (%s) stopped by an internal error: %s", run.id, run.handler, what)
    failure = HostError(
        f"keepflow hit an internal error while running {run.handler} ({what}); the run "
        f"stopped at its last durable point. See {HELP}, then retry the run")
    reason = (f"{run.handler} stopped: keepflow hit an internal error ({what}) — what to do: "
              f"see {HELP}, then retry run {run.id} or resume the workflow")
    status = (WorkflowStatus.NEEDS_ACTION, reason)
    if isinstance(exc, TransitionRefused) or RunStatus.FAILED not in RUN_TRANSITIONS[run.status]:
        run.rewind()  # back to the last durable point: the failure is recorded from there
    if RunStatus.FAILED in RUN_TRANSITIONS[run.status]:
        try:
            _scrub(run)
            run.failure = {
                "class": failure.failure_class.value, "code": failure.code,
                "message": failure.message, "phase": None, "handler": run.handler,
                "versionId": run.version_id, "details": failure.to_dict(), "stack": stack,
                "inputs": {},
            }
            run.step(RunStatus.FAILED, host.clock.now(), note=f"host error: {what}")
            host.store.fail_run(run, scope.fence, workflow_status=status)
            return True
        except PASS_THROUGH:
            raise
        except Exception as again:
            log.error("could not record the failure of run %s: %s", run.id,
                      escape_text(repr(again)))
    try:
        host.store.set_workflow_status(run.workflow_id, status[0], status[1], "host")
    except Exception as again:
        log.error("could not set the status of workflow %s: %s", run.workflow_id,
                  escape_text(repr(again)))
        return False
    return True


def _scrub(run: RunDraft) -> None:
    """Whatever the run collected, in a form the store can write whatever went wrong."""
    run.prepared = escape_deep(run.prepared)
    run.mutation_result = escape_deep(run.mutation_result)
    run.approval = escape_deep(run.approval)
    run.logs[:] = [replace(r, message=escape_text(r.message)) for r in run.logs]
    run.tool_calls[:] = [replace(c, params=escape_deep(c.params), result=escape_deep(c.result),
                                 error=escape_deep(c.error)) for c in run.tool_calls]
    run.transitions[:] = [_transition(t) for t in run.transitions]


def _transition(t: Transition) -> Transition:
    return t if t.note is None else replace(t, note=escape_text(t.note))
