"""Every error keepflow raises, in one hierarchy with one root.

Two families live here:

* **Failures of a run** (SPEC §8). Each carries exactly one :class:`FailureClass`, decided by the
  type, never by parsing a message. Connectors raise the typed connector errors; the sandbox and
  the executor raise :class:`LogicError` subclasses.
* **Errors of an operation** a person asked for (bad CLI input, unknown workflow, invalid
  script). They are reported as one clear line and change nothing.

Each error has a stable ``code`` that people, logs and LLM prompts can rely on.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class FailureClass(StrEnum):
    """The closed set of failure classes of SPEC §8."""

    TRANSIENT = "transient"
    LOGIC = "logic"
    AUTH = "auth"
    PERMISSION = "permission"
    PRECONDITION = "precondition"
    INDETERMINATE = "indeterminate"


class KeepflowError(Exception):
    """Something went wrong in keepflow."""

    code = "keepflow_error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or self.code).strip().splitlines()[0]
        self.details = details
        super().__init__(self.message)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **_jsonable(self.details)}


class Cancelled(BaseException):
    """The host is shutting down; the current step stops at its next durable point.

    A ``BaseException`` so that no ``except Exception`` in user-facing code can swallow it.
    """


# --------------------------------------------------------------------------- operation errors


class UsageError(KeepflowError):
    """The request is malformed (bad argument, unknown option value)."""

    code = "usage"


class InvalidInput(UsageError):
    """A request body or field breaks a rule; ``field`` names it (HTTP 422)."""

    code = "invalid_input"


class Unauthorized(KeepflowError):
    """The request carries no credentials, or wrong ones (HTTP 401)."""

    code = "unauthorized"


class Forbidden(KeepflowError):
    """The request is understood and refused (HTTP 403)."""

    code = "forbidden"


class TooLarge(KeepflowError):
    """The request body is over a size limit (HTTP 413)."""

    code = "too_large"


class NotFound(KeepflowError):
    """The named thing does not exist."""

    code = "not_found"


class Conflict(KeepflowError):
    """The request conflicts with the current state (e.g. the workflow already has a run)."""

    code = "conflict"


class RunChanged(Conflict):
    """The run is no longer in the status the request started from: another actor (a person,
    another host) moved it on; nothing was written."""

    code = "run_changed"


class TransitionRefused(KeepflowError):
    """The runtime asked for a run transition SPEC §5.4 does not allow; nothing was written.
    A bug in keepflow, never in the script."""

    code = "transition_refused"


class ConfigError(KeepflowError):
    """A configuration file or setting is invalid."""

    code = "config"


class ScriptInvalid(KeepflowError):
    """The script failed validation; nothing was deployed."""

    code = "script_invalid"

    def __init__(self, message: str, findings: list[Any], *, source: str | None = None) -> None:
        super().__init__(message)
        self.findings = findings
        #: The script's file (or other name), for locating the findings.
        self.source = source

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["findings"] = [f.to_dict() if hasattr(f, "to_dict") else f for f in self.findings]
        return d


class StoreError(KeepflowError):
    """The store could not complete an operation."""

    code = "store"


class LeaseLost(StoreError):
    """This host no longer holds the workflow's lease; its commit was refused (SPEC §13)."""

    code = "lease_lost"


# --------------------------------------------------------------------------- run failures


class RunFailure(KeepflowError):
    """A run failed. Subclasses fix the failure class (SPEC §8)."""

    code = "run_failure"
    failure_class: FailureClass = FailureClass.LOGIC
    #: Whether retrying the same step can succeed (Temporal's "non-retryable" flag, inverted).
    retryable = False


class LogicError(RunFailure):
    """The script did something the host does not allow, or threw."""

    code = "logic"
    failure_class = FailureClass.LOGIC


class PhaseViolation(LogicError):
    """A ctx call that is not allowed in the current handler phase (SPEC §4, §5)."""

    code = "phase_violation"


class InvalidResult(LogicError):
    """A handler returned or published a value the host cannot accept."""

    code = "invalid_result"


class ReservationRejected(LogicError):
    """prepare reserved an event it may not reserve (SPEC §5.1)."""

    code = "reservation_rejected"


class ScriptError(LogicError):
    """The script threw an exception."""

    code = "script_error"

    def __init__(
        self,
        message: str,
        *,
        js_name: str = "Error",
        stack: str = "",
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(message, js_name=js_name, stack=stack, line=line, column=column)
        self.js_name = js_name
        self.stack = stack
        self.line = line
        self.column = column


class WorkflowDefinitionError(LogicError):
    """The script does not define what the host asked to run (Keep.workflow missing or called
    more than once, or no such handler)."""

    code = "workflow_definition"


class SandboxLimitExceeded(LogicError):
    """The script exceeded a sandbox limit (CPU, wall time, memory, microtasks, calls, size)."""

    code = "sandbox_limit"

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message, limit=limit)
        self.limit = limit


class QuotaExceeded(LogicError):
    """The workflow would keep more data than its storage quota allows; nothing was committed."""

    code = "quota_exceeded"


class SandboxCrashed(LogicError):
    """The sandbox worker process died while running the script."""

    code = "sandbox_crashed"


class NeverSettled(LogicError):
    """The handler awaited something that can never settle."""

    code = "never_settled"


class UnhandledRejection(LogicError):
    """A promise rejected and nothing handled it."""

    code = "unhandled_rejection"


class HostError(RunFailure):
    """keepflow itself failed while running the handler (a bug, or a value the store refused):
    the run stopped at its last durable point and its workflow needs a person."""

    code = "host_error"
    failure_class = FailureClass.LOGIC


# --------------------------------------------------------------------------- connector errors


class ConnectorError(RunFailure):
    """Raised by connectors. The subclass says what the outside world told us."""

    code = "connector"


class AuthError(ConnectorError):
    """Credentials are missing, expired or revoked, or lack a scope: reconnect the connection."""

    code = "auth"
    failure_class = FailureClass.AUTH


class TransientError(ConnectorError):
    """The request did not take effect and may succeed later (timeout before send, 429, 503)."""

    code = "transient"
    failure_class = FailureClass.TRANSIENT
    retryable = True

    def __init__(
        self, message: str | None = None, *, retry_after: float | None = None, **details: Any
    ) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class PreconditionError(ConnectorError):
    """Something the call refers to does not exist (table, folder, endpoint)."""

    code = "precondition"
    failure_class = FailureClass.PRECONDITION


class PermanentError(ConnectorError):
    """The request was rejected and did not take effect; repeating it will not help."""

    code = "permanent"
    failure_class = FailureClass.LOGIC


class PermissionDenied(PermanentError):
    """The external system or the permission envelope refused the call."""

    code = "permission"
    failure_class = FailureClass.PERMISSION


class UncertainOutcome(ConnectorError):
    """The request may or may not have taken effect (timeout after send, reset, ambiguous 5xx)."""

    code = "uncertain"
    failure_class = FailureClass.INDETERMINATE


def _jsonable(details: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in details.items():
        if v is None:
            continue
        out[k] = v if isinstance(v, (str, int, float, bool, list, dict)) else str(v)
    return out
