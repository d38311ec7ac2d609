"""What a connector is (SPEC §9): declared tools, typed errors, and an optional reconcile.

A connector is the only code that talks to an external system. It declares every tool it
offers up front (name, kind, capability, risk tier, scope dimensions, whether the outcome of a
mutation can be verified), performs calls, and classifies every failure by raising one of the
typed errors of :mod:`keepflow.errors`. Higher layers never guess from strings.

Built-in connectors register exactly like a third party's would (see ``registry.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from keepflow.connectors.limits import CallLimits
from keepflow.errors import UsageError


class ToolKind(StrEnum):
    """SPEC §9: what a tool does to the outside world. Phase rules (SPEC §4–5) key on this."""

    READ = "read"  # list / search: allowed in producers and prepare
    READ_BY_ID = "read_by_id"  # fetch one known thing: also allowed in mutate
    MUTATE = "mutate"  # the single, terminal side effect of a consumer run


class RiskTier(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(frozen=True)
class ToolSpec:
    """The declaration of one tool."""

    name: str
    kind: ToolKind
    capability: str  # e.g. "http.write", "sql.write"
    risk: RiskTier
    description: str
    #: Scope dimensions the permission envelope can restrict (e.g. ("host",) or ("table",)).
    scope: tuple[str, ...] = ()
    #: Whether the connector can (in general) verify a mutation's outcome. A connector may still
    #: decide per call (see :meth:`Connector.can_reconcile`), e.g. HTTP needs a reconcile URL.
    reconcile: bool = False
    #: The call parameter that gives one call its reconcile, when the tool needs one (e.g.
    #: http's ``reconcile: {url}``); ``None``: every call can be verified when ``reconcile``.
    reconcile_param: str | None = None
    #: Where the docs explain how this tool's outcome is verified (shown in deploy warnings).
    reconcile_doc: str = "docs/execution-model.md#the-ledger-procedure"
    #: The call's parameters in one line, as a script writes them (docs and the Planner).
    params: str = ""
    #: What the call returns, in one line (docs and the Planner).
    result: str = ""
    #: For a mutation: how its outcome is verified after an uncertain call — or, when it
    #: cannot be, ``"none: <why>"``. The registry refuses a mutation that says neither.
    reconcile_strategy: str = ""


@dataclass(frozen=True)
class ToolCall:
    """One call of a tool, as the host hands it to a connector (one dataclass per hook call)."""

    tool: str
    params: Mapping[str, Any]
    #: Seconds the connector may spend on this call (already capped by policy).
    timeout: float
    #: Set for mutations only: stable across retries of the same ledger attempt (SPEC §6).
    idempotency_key: str | None = None
    #: Mutations and reconciles: when the host recorded this attempt ``in_flight`` (SPEC §6
    #: step 2), on the host's clock. The mutation cannot have taken effect before it, so a
    #: reconcile may look only at what the service created since (less a margin for clock
    #: skew between the host and the service).
    attempted_at: datetime | None = None


class ReconcileOutcome(StrEnum):
    APPLIED = "applied"  # the mutation took effect; ``result`` is what it produced
    FAILED = "failed"  # it definitely did not take effect
    RETRY = "retry"  # cannot tell yet; ask again later
    #: The connector looked, and no later look can tell (an SMTP server that took a message
    #: and never answered: RFC 1047): only the person can. ``detail`` is the question to ask.
    #: The runtime asks the person at once (SPEC §6 step 6); it is never read as FAILED.
    INDETERMINATE = "indeterminate"


@dataclass(frozen=True)
class ReconcileResult:
    outcome: ReconcileOutcome
    result: Any = None
    detail: str = ""


@dataclass(frozen=True)
class ConnectionConfig:
    """A configured connection: ``ctx.<name>`` in scripts (SPEC §9)."""

    name: str
    type: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: The host's limits on calls to it (docs/connectors.md#call-limits); ``None``: the
    #: connector type's ``default_limits``.
    limits: CallLimits | None = None


class Connector(ABC):
    """Base class of every connector.

    Subclasses set ``type_name`` and ``tools`` and implement :meth:`call`. Mutating tools whose
    outcome can be verified implement :meth:`reconcile`.
    """

    type_name: ClassVar[str]
    tools: ClassVar[Mapping[str, ToolSpec]]
    #: Limits the host keeps to when ``connections.toml`` sets none (the service's published
    #: limits, docs/connectors.md#call-limits).
    default_limits: ClassVar[CallLimits] = CallLimits()

    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config
        self.name = config.name

    # -- declarations ------------------------------------------------------------------------

    @classmethod  # noqa: B027 - optional hook
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        """Reject bad settings when ``connections.toml`` is loaded, before any instance exists.

        Raise :class:`~keepflow.errors.ConfigError` with a ``key=`` detail naming the setting;
        the loader adds the file and the connection. Secret values arrive as
        :class:`~keepflow.connectors.secret.Secret` and must never appear in the message.
        """

    def tool(self, name: str) -> ToolSpec:
        try:
            return self.tools[name]
        except KeyError:
            known = ", ".join(sorted(self.tools))
            raise UsageError(
                f"connection '{self.name}' ({self.type_name}) has no tool '{name}'; "
                f"its tools are: {known}"
            ) from None

    def can_reconcile(self, call: ToolCall) -> bool:
        """Whether the outcome of this particular mutation call can be verified."""
        return self.tool(call.tool).reconcile

    def describe(self, call: ToolCall) -> str:
        """The call in plain words, for escalations and the UI (e.g. ``POST https://x/orders``)."""
        return f"{self.name}.{call.tool}"

    def validate(self, call: ToolCall) -> None:  # noqa: B027 - optional hook
        """Reject malformed params before anything is recorded (raise ``PermanentError``)."""

    # -- effects -----------------------------------------------------------------------------

    @abstractmethod
    def call(self, call: ToolCall) -> Any:
        """Perform the call and return a JSON-serialisable result, or raise a typed error."""

    def reconcile(self, call: ToolCall) -> ReconcileResult:
        """Find out whether the mutation with ``call.idempotency_key`` took effect."""
        raise NotImplementedError(f"{self.type_name}.{call.tool} cannot reconcile")

    def check(self) -> None:  # noqa: B027 - optional hook
        """Validate the connection's settings and credentials (raise ``AuthError`` etc.)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients and pools."""
