"""Host policies (SPEC §10): retry, reconciliation, timeouts, limits.

One document with system defaults; a TOML file under ``$KEEPFLOW_HOME/policy.toml`` may
override any value, globally or for one workflow::

    [retry]
    max_attempts = 5

    [workflows.invoice-rows.limits]
    payload_bytes = 1048576

Unknown keys and out-of-range values are rejected at load with the exact key and reason.
"""

from __future__ import annotations

import math
import random
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from keepflow.errors import ConfigError
from keepflow.sandbox.api import SandboxLimits


class _Section(BaseModel):
    # Infinity and NaN are never a meaningful delay, budget or limit.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def backoff(base: float, factor: float, attempt: int, cap: float) -> float:
    """``min(base * factor**(attempt-1), cap)`` without overflowing for large ``attempt``."""
    try:
        return min(base * factor ** max(0, attempt - 1), cap)
    except OverflowError:
        return cap


class RetryPolicy(_Section):
    """Transient failures are retried inside the run with exponential backoff (SPEC §7.4, §8)."""

    max_attempts: int = Field(default=5, ge=1, le=100)
    base_seconds: float = Field(default=1.0, ge=0, le=3600)
    factor: float = Field(default=2.0, ge=1, le=10)
    max_delay_seconds: float = Field(default=60.0, ge=0, le=3600)
    jitter: float = Field(default=0.1, ge=0, le=1, description="+/- fraction of each delay")

    def wait(self, attempt: int, retry_after: float | None) -> float:
        """The delay before retry ``attempt``, or longer if the external system asked (its
        ``Retry-After``), but never beyond ``max_delay_seconds``: a server's number, however
        large or odd, cannot hold a run."""
        asked = retry_after if retry_after is not None and math.isfinite(retry_after) else 0.0
        return min(max(self.delay(attempt), asked), self.max_delay_seconds)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1 = first retry)."""
        raw = backoff(self.base_seconds, self.factor, attempt, self.max_delay_seconds)
        if self.jitter and raw:
            r = (rng or random).uniform(-self.jitter, self.jitter)
            raw = max(0.0, raw * (1 + r))
        return raw


class ReconcilePolicy(_Section):
    max_attempts: int = Field(default=10, ge=1, le=1000)
    base_seconds: float = Field(default=5.0, ge=0, le=86_400)
    factor: float = Field(default=2.0, ge=1, le=10)
    max_delay_seconds: float = Field(default=600.0, ge=0, le=86_400)
    total_budget_seconds: float = Field(default=86_400.0, gt=0, le=30 * 86_400)

    def delay(self, attempt: int) -> float:
        """Seconds before background reconcile attempt ``attempt`` (1 = the first)."""
        return backoff(self.base_seconds, self.factor, attempt, self.max_delay_seconds)


class RepairPolicy(_Section):
    enabled: bool = False
    max_consecutive_attempts: int = Field(default=3, ge=0, le=100)
    max_cost_usd: float = Field(default=1.0, ge=0, le=10_000)
    max_elapsed_seconds: float = Field(default=3600.0, gt=0, le=30 * 86_400)


#: The longest a connector call may take. A mutation's call must end well before the workflow's
#: lease (5 minutes, renewed when its attempt is recorded in_flight) could expire: otherwise a
#: second host could take the workflow over, find the attempt unanswered and, if its
#: reconcile says "not there yet", send it again while the first request is still open.
MAX_CALL_SECONDS = 240.0


class TimeoutPolicy(_Section):
    handler_cpu_seconds: float = Field(default=2.0, gt=0, le=600)
    handler_wall_seconds: float = Field(default=30.0, gt=0, le=3600)
    tool_call_seconds: float = Field(default=30.0, gt=0, le=MAX_CALL_SECONDS)
    reconcile_call_seconds: float = Field(default=30.0, gt=0, le=MAX_CALL_SECONDS)


class LimitPolicy(_Section):
    """What one run, one value and one workflow may cost (docs/security.md#limits)."""

    state_bytes: int = Field(default=256 * 1024, ge=1024)
    payload_bytes: int = Field(default=256 * 1024, ge=1024)
    prepared_bytes: int = Field(default=1024 * 1024, ge=1024)
    tool_calls_per_run: int = Field(default=200, ge=1)
    publishes_per_run: int = Field(default=1000, ge=1)
    #: Payload, title and messageId bytes one run may publish in all (buffered until commit).
    publish_bytes_per_run: int = Field(default=4 * 1024 * 1024, ge=1024)
    #: Bytes a workflow may make the store keep: events, states, run logs and tool calls.
    workflow_storage_bytes: int = Field(default=2 * 1024 ** 3, ge=1024 * 1024)
    #: The shortest producer interval a script may declare (checked at deploy).
    min_interval_seconds: int = Field(default=30, ge=1, le=86_400)
    #: The largest JSON value (and one turn's host calls together) crossing the sandbox.
    message_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024)
    peek_max: int = Field(default=100, ge=1)
    sandbox_memory_bytes: int = Field(default=64 * 1024 * 1024, ge=4 * 1024 * 1024,
                                      le=2 * 1024 ** 3)
    #: Reserved for the permission envelope; refused until it is enforced, so that nobody
    #: relies on a cap that does nothing.
    mutations_per_day: int | None = Field(default=None, ge=1)

    @field_validator("mutations_per_day")
    @classmethod
    def _not_yet(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("is not enforced yet; remove it (docs/security.md#limits)")
        return value


class ConsumerPolicy(_Section):
    backoff_timeout_seconds: float = Field(default=300.0, gt=0, le=7 * 86_400)
    stale_event_days: float = Field(default=7.0, gt=0, le=3650)


class ApprovalPolicy(_Section):
    """SPEC §6 step 1: mutations that wait for a person's approval before they run."""

    #: ``connection.tool`` patterns (``*`` matches any tool), e.g. ``["api.post", "books.*"]``.
    require: tuple[str, ...] = ()
    #: Every mutation whose tool's risk tier is at least this needs approval.
    min_risk: Literal["low", "medium", "high"] | None = None

    def requires(self, connection: str, tool: str, risk: str) -> bool:
        for pattern in self.require:
            conn, _, t = pattern.partition(".")
            if conn == connection and t in ("*", tool):
                return True
        order = ["low", "medium", "high"]
        return self.min_risk is not None and order.index(risk) >= order.index(self.min_risk)


class NotificationPolicy(_Section):
    """SPEC §12 notifications: in-app always; a webhook when a URL is set."""

    webhook_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$",
                                    description="an http(s) URL")
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    consecutive_failures: int = Field(default=3, ge=1, le=1000)


class Policy(_Section):
    retry: RetryPolicy = RetryPolicy()
    reconcile: ReconcilePolicy = ReconcilePolicy()
    repair: RepairPolicy = RepairPolicy()
    timeouts: TimeoutPolicy = TimeoutPolicy()
    limits: LimitPolicy = LimitPolicy()
    consumer: ConsumerPolicy = ConsumerPolicy()
    approvals: ApprovalPolicy = ApprovalPolicy()
    notifications: NotificationPolicy = NotificationPolicy()

    def sandbox_limits(self) -> SandboxLimits:
        return SandboxLimits(
            cpu_seconds=self.timeouts.handler_cpu_seconds,
            wall_seconds=self.timeouts.handler_wall_seconds,
            memory_bytes=self.limits.sandbox_memory_bytes,
            max_host_calls=self.limits.tool_calls_per_run + self.limits.publishes_per_run + 100,
            max_message_bytes=self.limits.message_bytes,
        )


DEFAULTS_FILE = Path(__file__).with_name("default_policy.toml")


class PolicyBook:
    """The system policy plus overrides; effective values are resolved in this order:
    system ← ``[connectors.X]`` ← ``[workflows.W]`` ← ``[workflows.W.connectors.X]``."""

    #: Sections a connector override may set (they describe the external system).
    CONNECTOR_SECTIONS = frozenset({"retry", "reconcile", "timeouts", "approvals"})

    def __init__(self, system: Policy | None = None,
                 overrides: dict[str, dict[str, Any]] | None = None,
                 connectors: dict[str, dict[str, Any]] | None = None) -> None:
        self.system = system or Policy()
        self._overrides = overrides or {}
        self._connectors = connectors or {}
        self._cache: dict[tuple[str, str | None], Policy] = {}

    def for_workflow(self, name: str) -> Policy:
        return self.effective(name, None)

    def effective(self, workflow: str, connection: str | None) -> Policy:
        key = (workflow, connection)
        if key not in self._cache:
            if workflow not in self._overrides and connection not in self._connectors:
                self._cache[key] = self.system
            else:
                layers: list[tuple[str, dict[str, Any]]] = []
                if connection is not None and connection in self._connectors:
                    layers.append((f"connectors.{connection}", self._connectors[connection]))
                wf = dict(self._overrides.get(workflow, {}))
                per_conn = wf.pop("connectors", {})
                layers.append((f"workflows.{workflow}", wf))
                if connection is not None and connection in per_conn:
                    layers.append((f"workflows.{workflow}.connectors.{connection}",
                                   per_conn[connection]))
                merged = self.system.model_dump()
                policy = self.system
                for where, layer in layers:  # validated layer by layer: errors name the layer
                    merged = _deep_merge(merged, layer)
                    policy = _validate(merged, where)
                self._cache[key] = policy
        return self._cache[key]

    def show(self, workflow: str | None = None) -> dict[str, Any]:
        """Effective values (``keepflow policy show``)."""
        base = self.for_workflow(workflow) if workflow else self.system
        out: dict[str, Any] = base.model_dump(mode="json")
        url = out["notifications"].get("webhook_url")
        if url:  # webhook URLs often carry a token in their path: never shown (SPEC §12)
            head = url.split("://", 1)
            host = head[-1].split("/", 1)[0].rsplit("@", 1)[-1]
            out["notifications"]["webhook_url"] = f"{head[0]}://{host}/…" if len(head) == 2 \
                else "…"
        conns = set(self._connectors)
        if workflow:
            conns |= set(self._overrides.get(workflow, {}).get("connectors", {}))
        if conns:
            out["connectors"] = {
                c: {k: v for k, v in self.effective(workflow or "", c).model_dump(
                    mode="json").items() if k in self.CONNECTOR_SECTIONS}
                for c in sorted(conns)}
        return out

    @classmethod
    def load(cls, path: Path) -> PolicyBook:
        if not path.exists():
            return cls()
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8"
                              ) from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
        workflows = _tables(raw.pop("workflows", {}), f"policy {path}: workflows")
        connectors = _tables(raw.pop("connectors", {}), f"policy {path}: connectors")
        for name, layer in workflows.items():
            if "connectors" in layer:
                _tables(layer["connectors"], f"policy {path}: workflows.{name}.connectors")
        system = _validate(raw, str(path))
        for name, layer in connectors.items():
            extra = set(layer) - cls.CONNECTOR_SECTIONS
            if extra:
                allowed = ", ".join(sorted(cls.CONNECTOR_SECTIONS))
                raise ConfigError(f"policy {path}: connectors.{name}.{sorted(extra)[0]}: a "
                                  f"connector may only set {allowed}")
        book = cls(system, {k: dict(v) for k, v in workflows.items()},
                   {k: dict(v) for k, v in connectors.items()})
        for name in connectors:  # validate every override now, not at first use
            book.effective("", name)
        for name, layer in workflows.items():
            book.for_workflow(name)
            for conn in layer.get("connectors", {}):
                book.effective(name, conn)
        return book


def _tables(value: Any, where: str) -> dict[str, dict[str, Any]]:
    """``value`` must be a table whose entries are tables (``[workflows.<name>]``)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a table of [sections], one per name")
    for name, layer in value.items():
        if not isinstance(layer, dict):
            section = where.rsplit(": ", 1)[-1]
            raise ConfigError(f"{where}.{name}: must be a table, e.g. [{section}.{name}.limits]")
    return value


def _validate(data: dict[str, Any], where: str) -> Policy:
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"policy {where}: {key}: {first['msg']}") from None


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out
