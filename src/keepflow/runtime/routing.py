"""Where a failed or blocked run leaves its workflow (SPEC §6.6, §7.4, §8). Pure functions."""

from __future__ import annotations

from typing import Protocol

from keepflow.errors import FailureClass, RunFailure
from keepflow.model import RunDraft, WorkflowStatus


class RepairHook(Protocol):
    """SPEC §8, §11.2: offered every ``logic`` failure first; returns True when it took the
    failure over (a Maintainer repair is under way), False to escalate to the person."""

    def __call__(self, failure: RunFailure, run: RunDraft) -> bool: ...


def no_repair(failure: RunFailure, run: RunDraft) -> bool:
    """Until the Maintainer exists (or when repairs are disabled): always escalate."""
    return False

_WHAT_TO_DO = {
    FailureClass.AUTH: "reconnect the connection named in the error, then resume the workflow",
    FailureClass.PERMISSION: "approve the permission named in the error (or change the "
                             "automation), then resume the workflow",
    FailureClass.PRECONDITION: "create or restore the missing resource named in the error, "
                               "then retry the run",
    FailureClass.TRANSIENT: "the external system kept failing after every retry; check that it "
                            "is up, then retry the run",
    FailureClass.LOGIC: "the script has a bug; a repair or a new version is needed before the "
                        "run is retried",
}


def route_failure(failure_class: FailureClass, handler: str, message: str
                  ) -> tuple[WorkflowStatus, str]:
    """SPEC §8: every failure that the host cannot fix by itself needs a person (a Maintainer
    repair, when enabled, hooks in here for ``logic``)."""
    todo = _WHAT_TO_DO.get(failure_class, "look at the failed run")
    return (
        WorkflowStatus.NEEDS_ACTION,
        f"{handler} failed ({failure_class.value}): {message} — what to do: {todo}",
    )


def route_indeterminate(description: str, titles: list[str], cause: str, can_verify: bool
                        ) -> tuple[WorkflowStatus, str]:
    """SPEC §6.6: one escalation saying which tool and target, what was attempted (by event
    title), why the outcome is unknown, whether the connector can verify, what to check."""
    about = "; ".join(f'"{t}"' for t in titles[:5]) or "this run"
    if len(titles) > 5:
        about += f" and {len(titles) - 5} more"
    verify = ("the connector can check again (Try again)" if can_verify
              else "the connector cannot verify it by itself")
    return (
        WorkflowStatus.NEEDS_ACTION,
        f"Unknown whether {description} for {about} took effect: {cause}. {verify}. Check the "
        f"target system by hand, then answer: it didn't happen (run it again) or skip it.",
    )
