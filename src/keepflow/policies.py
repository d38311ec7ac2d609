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

import random
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keepflow.errors import ConfigError
from keepflow.sandbox.api import SandboxLimits


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(_Section):
    """Transient failures are retried inside the run with exponential backoff (SPEC §7.4, §8)."""

    max_attempts: int = Field(default=5, ge=1, le=100)
    base_seconds: float = Field(default=1.0, ge=0)
    factor: float = Field(default=2.0, ge=1)
    max_delay_seconds: float = Field(default=60.0, ge=0)
    jitter: float = Field(default=0.1, ge=0, le=1, description="+/- fraction of each delay")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1 = first retry)."""
        raw = min(self.base_seconds * self.factor ** (attempt - 1), self.max_delay_seconds)
        if self.jitter and raw:
            r = (rng or random).uniform(-self.jitter, self.jitter)
            raw = max(0.0, raw * (1 + r))
        return raw


class ReconcilePolicy(_Section):
    max_attempts: int = Field(default=10, ge=1, le=1000)
    base_seconds: float = Field(default=5.0, ge=0)
    factor: float = Field(default=2.0, ge=1)
    max_delay_seconds: float = Field(default=600.0, ge=0)
    total_budget_seconds: float = Field(default=86_400.0, gt=0)


class RepairPolicy(_Section):
    enabled: bool = False
    max_consecutive_attempts: int = Field(default=3, ge=0)
    max_cost_usd: float = Field(default=1.0, ge=0)
    max_elapsed_seconds: float = Field(default=3600.0, gt=0)


class TimeoutPolicy(_Section):
    handler_cpu_seconds: float = Field(default=2.0, gt=0, le=600)
    handler_wall_seconds: float = Field(default=30.0, gt=0, le=3600)
    tool_call_seconds: float = Field(default=30.0, gt=0, le=3600)
    reconcile_call_seconds: float = Field(default=30.0, gt=0, le=3600)


class LimitPolicy(_Section):
    state_bytes: int = Field(default=256 * 1024, ge=1024)
    payload_bytes: int = Field(default=256 * 1024, ge=1024)
    prepared_bytes: int = Field(default=1024 * 1024, ge=1024)
    tool_calls_per_run: int = Field(default=200, ge=1)
    publishes_per_run: int = Field(default=1000, ge=1)
    peek_max: int = Field(default=100, ge=1)
    sandbox_memory_bytes: int = Field(default=64 * 1024 * 1024, ge=4 * 1024 * 1024)
    mutations_per_day: int | None = Field(default=None, ge=1)


class ConsumerPolicy(_Section):
    backoff_timeout_seconds: float = Field(default=300.0, gt=0)
    stale_event_days: float = Field(default=7.0, gt=0)


class Policy(_Section):
    retry: RetryPolicy = RetryPolicy()
    reconcile: ReconcilePolicy = ReconcilePolicy()
    repair: RepairPolicy = RepairPolicy()
    timeouts: TimeoutPolicy = TimeoutPolicy()
    limits: LimitPolicy = LimitPolicy()
    consumer: ConsumerPolicy = ConsumerPolicy()

    def sandbox_limits(self) -> SandboxLimits:
        return SandboxLimits(
            cpu_seconds=self.timeouts.handler_cpu_seconds,
            wall_seconds=self.timeouts.handler_wall_seconds,
            memory_bytes=self.limits.sandbox_memory_bytes,
            max_host_calls=self.limits.tool_calls_per_run + self.limits.publishes_per_run + 100,
        )


class PolicyBook:
    """The system policy plus per-workflow overrides; ``for_workflow`` gives effective values."""

    def __init__(self, system: Policy | None = None,
                 overrides: dict[str, dict[str, Any]] | None = None) -> None:
        self.system = system or Policy()
        self._overrides = overrides or {}
        self._cache: dict[str, Policy] = {}

    def for_workflow(self, name: str) -> Policy:
        if name not in self._overrides:
            return self.system
        if name not in self._cache:
            merged = _deep_merge(self.system.model_dump(), self._overrides[name])
            self._cache[name] = _validate(merged, f"workflows.{name}")
        return self._cache[name]

    @classmethod
    def load(cls, path: Path) -> PolicyBook:
        if not path.exists():
            return cls()
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        workflows = raw.pop("workflows", {})
        system = _validate(raw, str(path))
        book = cls(system, {k: dict(v) for k, v in workflows.items()})
        for name in workflows:  # validate every override now, not at first use
            book.for_workflow(name)
        return book


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
